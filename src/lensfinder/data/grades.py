"""Grades of candidates by people: an append-only table in a real database, and their consensus.

Every grade is a new row (candidate ID, grader, grade, notes, UTC time) committed on its own, so
a crash or ``kill -9`` loses at most the grade being typed; a grader's current grade of a
candidate is their latest row. SQLite (a file, the default) or any SQLAlchemy URL, e.g.
``postgresql://host/lenses`` for a team that shares one database (``postgresql://`` is read with
psycopg 3, ``pip install 'psycopg[binary]'``; ``postgresql+psycopg2://`` picks psycopg2).

Grades follow the Euclid Q1 lens searches: A = definite lens, B = probable, C = possible,
X = not a lens. The consensus of a candidate is the median of its graders' current grades on
the scale X=0, C=1, B=2, A=3 (the lower middle value on a tie: a split vote is not promoted).

Grades of hidden sentinels (known lenses and non-lenses mixed into the queue) go to a table of
their own, ``sentinel_grades``, with the sentinel's truth: they never mix with candidates'
grades, and they are what each grader's skill is learnt from (``assess``, ``data.swap``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    DateTime,
    Integer,
    String,
    Text,
    create_engine,
    event,
    select,
)
from sqlalchemy import inspect as inspect_database
from sqlalchemy.exc import ArgumentError, DatabaseError, IntegrityError, ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from lensfinder.config import GradingConfig
from lensfinder.data import swap
from lensfinder.data.swap import GRADE_VALUE
from lensfinder.errors import ConfigError, DataError
from lensfinder.files import atomic_path, read_table

T = TypeVar("T")  # a table row

GRADES: dict[str, str] = {
    "A": "definite lens",
    "B": "probable lens",
    "C": "possible lens",
    "X": "not a lens",
}
MAX_GRADER = 64
MAX_NOTES = 4000
DB_NAME = "grades.sqlite"  # the default database, in the scan directory


class _Base(DeclarativeBase):
    pass


class Grade(_Base):
    """One grade given by one person at one time (never updated, never deleted)."""

    __tablename__ = "grades"

    row: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    candidate_id: Mapped[int] = mapped_column(BigInteger, index=True)
    grader: Mapped[str] = mapped_column(String(MAX_GRADER), index=True)
    grade: Mapped[str] = mapped_column(String(1))
    notes: Mapped[str] = mapped_column(Text, default="")
    graded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SentinelGrade(_Base):
    """One grade of a hidden sentinel, with its truth (server-side only, never served)."""

    __tablename__ = "sentinel_grades"

    row: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sentinel_id: Mapped[int] = mapped_column(BigInteger, index=True)
    is_lens: Mapped[int] = mapped_column(Integer)
    grader: Mapped[str] = mapped_column(String(MAX_GRADER), index=True)
    grade: Mapped[str] = mapped_column(String(1))
    graded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


@dataclass
class Consensus:
    candidate_id: int
    grade: str
    n_graders: int
    mean_value: float  # on X=0 .. A=3
    grades: dict[str, str]  # grader -> current grade
    notes: dict[str, str]  # grader -> notes of their current grade (non-empty only)


def database_url(db: str | Path) -> str:
    """A SQLAlchemy URL from a URL, a file path (SQLite) or a scan directory (its grades.sqlite).

    A bare ``postgresql://`` (or ``postgres://``) URL means psycopg 3, the driver lensfinder's
    ``postgres`` extra installs (SQLAlchemy's own default would be psycopg2)."""
    text = str(db)
    for scheme in ("postgresql://", "postgres://"):
        if text.startswith(scheme):
            return "postgresql+psycopg://" + text.removeprefix(scheme)
    if "://" in text:
        return text
    path = Path(text).expanduser().resolve()
    return f"sqlite:///{path / DB_NAME if path.is_dir() else path}"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets graders read while one writes; synchronous FULL makes each commit durable."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def consensus_grade(grades: list[str]) -> str:
    """The lower median of the grades on X < C < B < A."""
    values = sorted(GRADE_VALUE[g] for g in grades)
    middle = values[(len(values) - 1) // 2]
    return next(g for g, v in GRADE_VALUE.items() if v == middle)


def check_grade(grade: str) -> str:
    grade = str(grade).strip().upper()
    if grade not in GRADES:
        raise DataError(f"grade {grade!r}: expected one of {', '.join(GRADES)}")
    return grade


def check_grader(grader: str) -> str:
    grader = str(grader).strip()
    if not grader or len(grader) > MAX_GRADER or not grader.isprintable():
        raise DataError(f"grader name {grader!r}: need 1-{MAX_GRADER} printable characters")
    return grader


def _one_line(exc: Exception) -> str:
    """The driver's message of a database error, on one line (SQLAlchemy adds SQL and links)."""
    return " ".join(str(getattr(exc, "orig", None) or exc).split())


def _hide_password(url: str) -> str:
    """The URL as messages show it: a team database's password is not printed."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def check_notes(notes: str | None) -> str:
    """Notes up to MAX_NOTES characters; longer ones are refused, never cut."""
    notes = str(notes or "")
    if len(notes) > MAX_NOTES:
        raise DataError(
            f"notes of {len(notes)} characters: at most {MAX_NOTES} are kept with a grade; "
            "shorten them"
        )
    return notes


class GradeBook:
    """The grades database: record a grade, read current grades and consensus, export."""

    def __init__(self, db: str | Path, create: bool = True) -> None:
        self.url = database_url(db)
        self.shown_url = shown = _hide_password(self.url)
        sqlite_file = (
            Path(self.url.removeprefix("sqlite:///")) if self.url.startswith("sqlite:///") else None
        )
        if sqlite_file is not None and not create and not sqlite_file.is_file():
            missing = Path(db) if Path(db).is_dir() else sqlite_file
            raise DataError(f"{missing}: no grades database here")
        try:
            self.engine = create_engine(self.url)
        except ArgumentError as exc:
            raise ConfigError(f"grades database {shown!r}: {exc}") from None
        except ImportError as exc:
            hint = " (pip install 'psycopg[binary]')" if "postgres" in self.url else ""
            raise ConfigError(f"grades database {shown!r}: {exc}{hint}") from None
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        where = str(sqlite_file or shown)
        try:
            self._check_foreign(sqlite_file)
            self._create_table()
        except DatabaseError as exc:  # not a database (a text file), unreachable server, ...
            self.engine.dispose()
            reason = _one_line(exc)
            raise DataError(f"{where}: cannot use as a grades database ({reason})") from None

    def _check_foreign(self, sqlite_file: Path | None) -> None:
        """An SQLite file of another program (tables, none of them ours) is not written into."""
        if sqlite_file is None or not sqlite_file.is_file():
            return
        tables = inspect_database(self.engine).get_table_names()
        if tables and Grade.__tablename__ not in tables:
            self.engine.dispose()
            raise DataError(
                f"{sqlite_file}: a database of something else (tables {', '.join(tables[:5])}), "
                "not lensfinder grades; give another --db"
            )

    def _create_table(self) -> None:
        """Create the grades table if it is missing. Two servers starting at once on a fresh
        server database may both try; the loser finds the table made and goes on."""
        try:
            _Base.metadata.create_all(self.engine)
        except (IntegrityError, ProgrammingError):
            _Base.metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def record(self, candidate_id: int, grader: str, grade: str, notes: str = "") -> Grade:
        """Store one grade and commit it before returning."""
        row = Grade(
            candidate_id=int(candidate_id),
            grader=check_grader(grader),
            grade=check_grade(grade),
            notes=check_notes(notes),
            graded_at=datetime.now(UTC),
        )
        return self._commit(row)

    def record_sentinel(self, sentinel_id: int, is_lens: bool, grader: str, grade: str) -> None:
        """Store one grade of a sentinel and commit it before returning."""
        row = SentinelGrade(
            sentinel_id=int(sentinel_id),
            is_lens=int(bool(is_lens)),
            grader=check_grader(grader),
            grade=check_grade(grade),
            graded_at=datetime.now(UTC),
        )
        self._commit(row)

    def _commit(self, row: T) -> T:
        """Add one row and commit it before returning (a grade survives a kill at once)."""
        with Session(self.engine, expire_on_commit=False) as session:
            session.add(row)
            session.commit()
        return row

    def sentinel_history(self) -> list[SentinelGrade]:
        """Every sentinel grade, oldest first."""
        with Session(self.engine) as session:
            return list(session.scalars(select(SentinelGrade).order_by(SentinelGrade.row)))

    def history(self) -> list[Grade]:
        """Every grade ever given, oldest first."""
        with Session(self.engine) as session:
            return list(session.scalars(select(Grade).order_by(Grade.row)))

    def current(self) -> dict[int, dict[str, Grade]]:
        """candidate ID -> grader -> that grader's latest grade."""
        latest: dict[int, dict[str, Grade]] = defaultdict(dict)
        for row in self.history():
            latest[row.candidate_id][row.grader] = row
        return dict(latest)

    def consensus(self) -> dict[int, Consensus]:
        """Per graded candidate: the consensus grade and what each grader said."""
        out: dict[int, Consensus] = {}
        for candidate, by_grader in self.current().items():
            grades = {name: row.grade for name, row in sorted(by_grader.items())}
            values = [GRADE_VALUE[g] for g in grades.values()]
            out[candidate] = Consensus(
                candidate_id=candidate,
                grade=consensus_grade(list(grades.values())),
                n_graders=len(grades),
                mean_value=sum(values) / len(values),
                grades=grades,
                notes={n: r.notes for n, r in sorted(by_grader.items()) if r.notes},
            )
        return out


@dataclass
class Assessment:
    """The team's grades weighed (SWAP, ``data.swap``): per grader a skill from the sentinels,
    per candidate a prior, a posterior, agreement and a retirement verdict."""

    consensus: dict[int, Consensus]
    skills: dict[str, swap.Skill]  # graders who graded sentinels
    default_skill: swap.Skill  # the prior skill, for graders with no sentinel yet
    priors: dict[int, float]  # every candidate given or graded
    posteriors: dict[int, float]
    agreement: dict[int, float]  # fraction of grader pairs agreeing (NaN with one grader)
    kappa: float  # Fleiss' kappa over candidates with several graders
    verdicts: dict[int, str | None]  # "lens", "not" or None (still in the queue)
    sentinel_rows: list[SentinelGrade] = field(default_factory=list)

    def skill(self, grader: str) -> swap.Skill:
        return self.skills.get(grader, self.default_skill)


def assess(
    book: GradeBook,
    scores: Mapping[int, float] | None = None,
    grading: GradingConfig | None = None,
) -> Assessment:
    """Weigh every grade: skills from sentinel grades (each grader's latest grade of each
    sentinel), priors from ``scores`` (candidate -> network score; missing: the base rate),
    posteriors from each grader's current grade with their current skill."""
    cfg = grading or GradingConfig()
    consensus = book.consensus()
    sentinel_rows = book.sentinel_history()
    latest = {(r.grader, r.sentinel_id): r for r in sentinel_rows}
    skills = swap.team_skills(
        ((r.grader, r.grade, bool(r.is_lens)) for r in latest.values()),
        cfg.skill_prior_mean,
        cfg.skill_prior_strength,
        cfg.c_weight,
    )
    default = swap.Skill(prior_mean=cfg.skill_prior_mean, prior_strength=cfg.skill_prior_strength)
    scores = scores or {}
    priors = {
        candidate: swap.prior_from_score(
            scores.get(candidate), cfg.prior_base_rate, cfg.prior_weight
        )
        for candidate in set(scores) | set(consensus)
    }
    grades = {candidate: c.grades for candidate, c in consensus.items()}
    posteriors = swap.candidate_posteriors(priors, grades, skills, default, cfg.c_weight)
    counted = sorted(consensus)
    counts = swap.category_counts([list(consensus[c].grades.values()) for c in counted])
    retirement = swap.Retirement(cfg.retire_below, cfg.retire_above, cfg.retire_min_grades)
    return Assessment(
        consensus=consensus,
        skills=skills,
        default_skill=default,
        priors=priors,
        posteriors=posteriors,
        agreement=dict(zip(counted, swap.pair_agreement(counts).tolist(), strict=True)),
        kappa=swap.fleiss_kappa(counts),
        verdicts={
            c: retirement.verdict(p, consensus[c].n_graders if c in consensus else 0)
            for c, p in posteriors.items()
        },
        sentinel_rows=sentinel_rows,
    )


def consensus_table(book: GradeBook, assessment: Assessment | None = None):
    """The graded candidates as an Arrow table: id, grade (consensus), n_graders, mean_value
    (the mean grade, X=0 .. A=3), class (from the mean: A > 2.5, B 1.5-2.5, C 0.5-1.5, else X),
    agreement (share of grader pairs agreeing), prior and posterior lens probability, retired
    (lens, not, or empty), grades, notes."""
    import pyarrow as pa

    weighed = assessment or assess(book)
    rows = sorted(weighed.consensus.values(), key=lambda c: c.candidate_id)
    return pa.table(
        {
            "id": pa.array([c.candidate_id for c in rows], pa.int64()),
            "grade": pa.array([c.grade for c in rows], pa.string()),
            "n_graders": pa.array([c.n_graders for c in rows], pa.int32()),
            "mean_value": pa.array([c.mean_value for c in rows], pa.float64()),
            "class": pa.array([swap.grade_class(c.mean_value) for c in rows], pa.string()),
            "agreement": pa.array(
                [_or_none(weighed.agreement[c.candidate_id]) for c in rows], pa.float64()
            ),
            "prior": pa.array([weighed.priors[c.candidate_id] for c in rows], pa.float64()),
            "posterior": pa.array([weighed.posteriors[c.candidate_id] for c in rows], pa.float64()),
            "retired": pa.array([weighed.verdicts[c.candidate_id] for c in rows], pa.string()),
            "grades": pa.array(
                [";".join(f"{k}:{v}" for k, v in c.grades.items()) for c in rows], pa.string()
            ),
            "notes": pa.array(
                [" | ".join(f"{k}: {v}" for k, v in c.notes.items()) for c in rows], pa.string()
            ),
        }
    )


def _or_none(value: float) -> float | None:
    return None if math.isnan(value) else value


@dataclass(frozen=True)
class GradesExport:
    path: Path
    n: int  # graded candidates written
    kappa: float  # Fleiss' kappa over candidates with several graders
    n_graders_with_skill: int  # graders who graded sentinels
    prior: str  # where the priors came from

    def summary(self) -> str:
        kappa = (
            "n/a (no candidate has two graders)" if math.isnan(self.kappa) else f"{self.kappa:.3f}"
        )
        return (
            f"{self.n} graded candidates -> {self.path} (Fleiss' kappa {kappa}; "
            f"{self.n_graders_with_skill} graders with a skill from sentinels; prior: {self.prior})"
        )


def export_grades(
    db: str | Path,
    out: str | Path,
    overwrite: bool = False,
    grading: GradingConfig | None = None,
    scores: Mapping[int, float] | None = None,
    prior: str = "the base rate (no scan scores)",
) -> GradesExport:
    """Write the consensus, mean grade, class, agreement and posterior per candidate to ``out``
    (.csv or .parquet), atomically; ``scores`` (candidate -> network score, described by
    ``prior``) give the posteriors' priors.

    ``db``: a database file, a scan directory holding grades.sqlite, or a URL. An existing
    ``out`` is replaced only with ``overwrite`` (it may be a file someone edited by hand)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ConfigError(f"{out}: export to a .csv or .parquet file")
    if out.is_dir():
        raise ConfigError(f"{out}: is a directory; give a file name ending .csv or .parquet")
    book = GradeBook(db, create=False)
    if out.exists() and not overwrite:
        book.close()
        raise ConfigError(f"{out}: exists; pass --overwrite to replace it, or give a new file")
    try:
        weighed = assess(book, scores, grading)
        table = consensus_table(book, weighed)
    except DatabaseError as exc:
        raise DataError(f"{database_url(db)}: cannot read grades ({_one_line(exc)})") from None
    finally:
        book.close()
    try:
        with atomic_path(out) as tmp:
            if suffix == ".csv":
                pacsv.write_csv(table, tmp)
            else:
                pq.write_table(table, tmp)
    except OSError as exc:
        raise DataError(f"{out}: cannot write the grades ({exc.strerror or exc})") from None
    return GradesExport(out, table.num_rows, weighed.kappa, len(weighed.skills), prior)


def read_graded(path: str | Path) -> dict[int, str]:
    """ID -> consensus grade from an export (``lensfinder grades export``), CSV or Parquet."""
    return _read_column(path, "grade", _letter)


def read_graded_posteriors(path: str | Path) -> dict[int, float]:
    """ID -> posterior lens probability from an export that has them."""
    return _read_column(path, "posterior", _probability)


def posterior_grades(
    posteriors: Mapping[int, float], lens_above: float, nonlens_below: float
) -> dict[int, str]:
    """Labels from posteriors as grades: "A" (a lens) at or above ``lens_above``, "X" (not) at
    or below ``nonlens_below``; the uncertain ones in between are left out."""
    out = {}
    for candidate, probability in posteriors.items():
        if probability >= lens_above:
            out[candidate] = "A"
        elif probability <= nonlens_below:
            out[candidate] = "X"
    return out


def _letter(value: Any) -> str | None:
    letter = "" if value is None else str(value).strip().upper()
    return letter if letter in GRADES else None


def _probability(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if 0.0 <= number <= 1.0 else None


def _read_column(path: str | Path, column: str, parse: Any) -> dict[int, Any]:
    """ID -> ``parse(value)`` of ``column`` of a grades export, one row per ID."""
    path = Path(path)
    table = read_table(path, "grades file", "make one with 'lensfinder grades export'")
    if not {"id", column} <= set(table.column_names):
        raise DataError(f"{path}: a grades file needs columns id and {column}")
    if table.num_rows == 0:
        raise DataError(f"{path}: no graded candidates (a header and no rows)")
    values: dict[int, Any] = {}
    for candidate, raw in zip(table["id"].to_pylist(), table[column].to_pylist(), strict=True):
        value = parse(raw)
        if value is None:
            raise DataError(f"{path}: row with id {candidate!r} has no valid {column} ({raw!r})")
        object_id = _whole_id(candidate, path)
        if object_id in values:
            raise DataError(
                f"{path}: ID {object_id} appears more than once ({column} {values[object_id]} "
                f"and {value}); a grades file holds one row per ID, as 'lensfinder grades "
                "export' writes it: keep the row you mean"
            )
        values[object_id] = value
    return values


def _whole_id(value: Any, path: Path) -> int:
    """An object ID as the catalogue reader takes it: a whole number (never rounded down) that
    fits in 64 bits."""
    text = "" if value is None else str(value).strip()
    if isinstance(value, int) and not isinstance(value, bool):
        object_id = value
    else:
        try:
            object_id = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                number = float("nan")
            if not number.is_integer():
                raise DataError(f"{path}: ID {text!r} is not a whole number") from None
            object_id = int(number)
    if not -(2**63) <= object_id < 2**63:
        raise DataError(f"{path}: ID {text} is beyond a 64-bit integer")
    return object_id
