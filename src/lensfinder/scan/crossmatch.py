"""Flag candidates that sit on a known lens, so eyes go to the new ones first.

A catalogue is a CSV, ECSV or FITS table with RA and Dec in degrees and a name column (found
case-insensitively), or the word ``"lenscat"`` for the catalogue shipped inside the ``lenscat``
package (about 33,000 known and candidate lenses; no network needed).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lensfinder.config import GalleryConfig
from lensfinder.errors import ConfigError, DataError

LENSCAT = "lenscat"
_RA_NAMES = ("ra", "ra_deg", "radeg", "raj2000", "ra_j2000", "_raj2000")
_DEC_NAMES = ("dec", "dec_deg", "decdeg", "dej2000", "decj2000", "dec_j2000", "_dej2000")
_NAME_NAMES = ("name", "id", "object", "objname", "object_name", "obj_name", "source_id")


@dataclass(frozen=True)
class LensCatalog:
    """Known lenses as plain arrays: degrees, and one name per row."""

    ra: np.ndarray
    dec: np.ndarray
    names: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.names)


def _find_column(colnames: list[str], wanted: tuple[str, ...]) -> str | None:
    lower = {c.lower(): c for c in colnames}
    return next((lower[w] for w in wanted if w in lower), None)


def _as_degrees(table, column: str, where: str) -> np.ndarray:
    """A float column with masked entries as NaN; text that is not a number is an error."""
    values = table[column]
    if hasattr(values, "filled"):
        values = values.filled(np.nan) if values.dtype.kind == "f" else values.filled("")
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(
            f"{where}: column {column!r} is not numeric degrees (sexagesimal is not supported)"
        ) from None


def _read_table(path: Path):
    from astropy.table import Table

    suffixes = "".join(path.suffixes).lower()
    if "csv" in suffixes and ".ecsv" not in suffixes:
        fmt: str | None = "ascii.csv"
    elif ".ecsv" in suffixes:
        fmt = "ascii.ecsv"
    elif any(s in suffixes for s in (".fits", ".fit", ".fts")):
        fmt = "fits"
    else:
        fmt = None  # let astropy guess
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Table.read(path, format=fmt) if fmt else Table.read(path)
    except Exception as exc:  # astropy raises many kinds for a file it cannot parse
        raise DataError(f"{path}: cannot read known-lens catalogue ({exc})") from None


def _load_lenscat():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lenscat's dependencies warn noisily on import
            import lenscat
    except ImportError:
        raise ConfigError(
            "known lenses 'lenscat': the lenscat package is not installed (pip install lenscat)"
        ) from None
    return lenscat.catalog


def load_lens_catalog(catalog: str | Path) -> LensCatalog:
    """Read a known-lens catalogue; rows without finite coordinates are dropped."""
    if str(catalog).lower() == LENSCAT and not Path(catalog).exists():
        table, where = _load_lenscat(), "lenscat"
    else:
        path = Path(catalog)
        if not path.is_file():
            raise DataError(f"{path}: no such known-lens catalogue file (or use 'lenscat')")
        table, where = _read_table(path), str(path)
    colnames = list(table.colnames)
    ra_col, dec_col = _find_column(colnames, _RA_NAMES), _find_column(colnames, _DEC_NAMES)
    if ra_col is None or dec_col is None:
        raise DataError(
            f"{where}: needs RA and Dec columns in degrees (e.g. 'ra', 'dec'); "
            f"found {', '.join(colnames) or 'no columns'}"
        )
    ra, dec = _as_degrees(table, ra_col, where), _as_degrees(table, dec_col, where)
    name_col = _find_column(colnames, _NAME_NAMES)
    if name_col is not None:
        names = [str(n).strip() for n in table[name_col]]
    else:
        names = [f"{Path(where).stem} row {i}" for i in range(len(ra))]
    keep = np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90.0)
    return LensCatalog(
        ra=ra[keep] % 360.0,
        dec=dec[keep],
        names=[n for n, k in zip(names, keep, strict=True) if k],
        source=where,
    )


def flag_known_lenses(
    ra: np.ndarray,
    dec: np.ndarray,
    catalog: str | Path | LensCatalog,
    radius_arcsec: float = GalleryConfig.radius_arcsec,
) -> tuple[np.ndarray, list[str | None], np.ndarray]:
    """Match positions to a known-lens catalogue within ``radius_arcsec``.

    Returns ``(matched, names, separation_arcsec)``: ``names`` holds the nearest catalogue name
    where matched (None elsewhere); ``separation_arcsec`` is the distance to the nearest entry
    for every row with coordinates (NaN for rows without, which are never matched).
    """
    if not radius_arcsec > 0:
        raise ConfigError(f"known-lens match radius must be positive, got {radius_arcsec}")
    known = catalog if isinstance(catalog, LensCatalog) else load_lens_catalog(catalog)
    ra = np.asarray(ra, dtype=np.float64).reshape(-1)
    dec = np.asarray(dec, dtype=np.float64).reshape(-1)
    if ra.shape != dec.shape:
        raise ValueError(f"ra and dec differ in length ({ra.size} != {dec.size})")
    matched = np.zeros(ra.size, dtype=bool)
    separation = np.full(ra.size, np.nan)
    names: list[str | None] = [None] * ra.size
    has_coords = np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90.0)
    if len(known) == 0 or not has_coords.any():
        return matched, names, separation

    import astropy.units as u
    from astropy.coordinates import SkyCoord

    rows = np.flatnonzero(has_coords)
    targets = SkyCoord(ra=ra[rows] * u.deg, dec=dec[rows] * u.deg)
    reference = SkyCoord(ra=known.ra * u.deg, dec=known.dec * u.deg)
    nearest, sep2d, _ = targets.match_to_catalog_sky(reference)
    sep = np.atleast_1d(sep2d.to_value(u.arcsec))
    nearest = np.atleast_1d(nearest)
    separation[rows] = sep
    close = sep <= radius_arcsec
    matched[rows[close]] = True
    for row, index in zip(rows[close], nearest[close], strict=True):
        names[row] = known.names[index]
    return matched, names, separation
