"""Grades of candidates by people: an append-only table in a real database, and their consensus.

Every grade is a new row (candidate ID, grader, grade, notes, UTC time) committed on its own, so
a crash or ``kill -9`` loses at most the grade being typed; a grader's current grade of a
candidate is their latest row. SQLite (a file, the default) or any SQLAlchemy URL, e.g.
``postgresql://host/lenses`` for a team that shares one database.

Grades follow the Euclid Q1 lens searches: A = definite lens, B = probable, C = possible,
X = not a lens. The consensus of a candidate is the median of its graders' current grades on
the scale X=0, C=1, B=2, A=3 (the lower middle value on a tie: a split vote is not promoted).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from lensfinder.errors import ConfigError, DataError
from lensfinder.utils import atomic_path, read_table

GRADES: dict[str, str] = {
    "A": "definite lens",
    "B": "probable lens",
    "C": "possible lens",
    "X": "not a lens",
}
GRADE_VALUE: dict[str, int] = {"X": 0, "C": 1, "B": 2, "A": 3}
MAX_GRADER = 64
MAX_NOTES = 4000


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


@dataclass
class Consensus:
    candidate_id: int
    grade: str
    n_graders: int
    mean_value: float  # on X=0 .. A=3
    grades: dict[str, str]  # grader -> current grade
    notes: dict[str, str]  # grader -> notes of their current grade (non-empty only)


def database_url(db: str | Path) -> str:
    """A SQLAlchemy URL from a URL or a file path (a path means SQLite)."""
    text = str(db)
    return text if "://" in text else f"sqlite:///{Path(text).expanduser().resolve()}"


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


class GradeBook:
    """The grades database: record a grade, read current grades and consensus, export."""

    def __init__(self, db: str | Path, create: bool = True) -> None:
        self.url = database_url(db)
        if self.url.startswith("sqlite:///") and not create:
            path = Path(self.url.removeprefix("sqlite:///"))
            if not path.is_file():
                raise DataError(f"{path}: no grades database here")
        try:
            self.engine = create_engine(self.url)
        except (ArgumentError, ImportError) as exc:
            raise ConfigError(f"grades database {self.url!r}: {exc}") from None
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            _Base.metadata.create_all(self.engine)
        except OperationalError as exc:
            raise DataError(f"grades database {self.url}: cannot open ({exc.orig})") from None

    def close(self) -> None:
        self.engine.dispose()

    def record(self, candidate_id: int, grader: str, grade: str, notes: str = "") -> Grade:
        """Store one grade and commit it before returning."""
        row = Grade(
            candidate_id=int(candidate_id),
            grader=check_grader(grader),
            grade=check_grade(grade),
            notes=str(notes or "")[:MAX_NOTES],
            graded_at=datetime.now(UTC),
        )
        with Session(self.engine, expire_on_commit=False) as session:
            session.add(row)
            session.commit()
        return row

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


def consensus_table(book: GradeBook):
    """The consensus as an Arrow table: id, grade, n_graders, mean_value, grades, notes."""
    import pyarrow as pa

    rows = sorted(book.consensus().values(), key=lambda c: c.candidate_id)
    return pa.table(
        {
            "id": pa.array([c.candidate_id for c in rows], pa.int64()),
            "grade": pa.array([c.grade for c in rows], pa.string()),
            "n_graders": pa.array([c.n_graders for c in rows], pa.int32()),
            "mean_value": pa.array([c.mean_value for c in rows], pa.float64()),
            "grades": pa.array(
                [";".join(f"{k}:{v}" for k, v in c.grades.items()) for c in rows], pa.string()
            ),
            "notes": pa.array(
                [" | ".join(f"{k}: {v}" for k, v in c.notes.items()) for c in rows], pa.string()
            ),
        }
    )


def export_grades(db: str | Path, out: str | Path) -> tuple[Path, int]:
    """Write the consensus per candidate to ``out`` (.csv or .parquet), atomically."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ConfigError(f"{out}: export to a .csv or .parquet file")
    book = GradeBook(db, create=False)
    try:
        table = consensus_table(book)
    finally:
        book.close()
    with atomic_path(out) as tmp:
        if suffix == ".csv":
            pacsv.write_csv(table, tmp)
        else:
            pq.write_table(table, tmp)
    return out, table.num_rows


def read_graded(path: str | Path) -> dict[int, str]:
    """ID -> consensus grade from an export (``lensfinder grades export``), CSV or Parquet."""
    path = Path(path)
    table = read_table(path, "grades file", "make one with 'lensfinder grades export'")
    if not {"id", "grade"} <= set(table.column_names):
        raise DataError(f"{path}: a grades file needs columns id and grade")
    grades = {}
    for candidate, grade in zip(table["id"].to_pylist(), table["grade"].to_pylist(), strict=True):
        if candidate is None or grade is None or str(grade).strip().upper() not in GRADES:
            raise DataError(f"{path}: row with id {candidate!r} has no valid grade ({grade!r})")
        grades[int(candidate)] = str(grade).strip().upper()
    return grades
