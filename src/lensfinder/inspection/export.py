"""``lensfinder grades export`` with the scan's scores as the posteriors' priors."""

from __future__ import annotations

from pathlib import Path

from lensfinder.config import GradingConfig
from lensfinder.data.grades import GradesExport, database_url, export_grades
from lensfinder.scan.catalog import CANDIDATES_PARQUET, read_candidates


def scan_of(db: str | Path) -> Path | None:
    """The scan directory a grades database sits in (its candidates beside it), if any."""
    url = database_url(db)
    if not url.startswith("sqlite:///"):
        return None
    folder = Path(url.removeprefix("sqlite:///")).parent
    return folder if (folder / CANDIDATES_PARQUET).is_file() else None


def export_with_scores(
    db: str | Path,
    out: str | Path,
    grading: GradingConfig,
    scan: str | Path | None = None,
    overwrite: bool = False,
) -> GradesExport:
    """Export the grades with posteriors whose priors are the network scores of ``scan`` (by
    default the scan the database sits in; none found: every prior is the base rate)."""
    scan = scan if scan is not None else scan_of(db)
    if scan is None:
        return export_grades(db, out, overwrite, grading)
    table = read_candidates(scan)
    scores = dict(zip(table["id"].to_pylist(), table["score"].to_pylist(), strict=True))
    finite = {int(i): float(s) for i, s in scores.items() if s is not None and s == s}
    return export_grades(db, out, overwrite, grading, finite, f"the scores of {scan}")
