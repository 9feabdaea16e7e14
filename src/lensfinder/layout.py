"""The Bologna Lens Finding Challenge 2 layout on disk: one place for its paths and columns.

``ROOT/Public/EUC_<BAND>/imageEUC_<BAND>-<ID>.fits`` per band and object, plus
``ROOT/image_catalog2.0train.csv``: ``#`` comment lines, a header row, then rows whose first field
is an unnamed index followed by ``CATALOG_COLUMNS``. Both the simulator (writer) and the data
layer (reader) use these definitions, so the two cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lensfinder.surveys import Band

CATALOG_NAME = "image_catalog2.0train.csv"
PUBLIC_DIR = "Public"
CATALOG_COLUMNS: tuple[str, ...] = (
    "ID", "x_crit", "y_crit", "source_ID", "z_source", "z_lens", "mag_source", "ein_area",
    "n_crit", "r_source", "crit_area", "n_pix_source", "source_flux", "n_pix_lens", "lens_flux",
    "n_source_im", "mag_eff", "sb_contrast", "color_diff", "n_gal_3", "n_gal_5", "n_gal_10",
    "halo_mass", "star_mass", "mag_lens", "n_sources",
)  # fmt: skip
# Text columns that readers carry (as string arrays) when a catalogue has them; any other column
# beyond the challenge's is ignored unless it holds numbers only. ``kind``: what the simulator
# drew (lens, elliptical, spiral, ring, merger, ...), for per-kind evaluation.
STRING_COLUMNS: tuple[str, ...] = ("kind",)
SOURCE_MAGNITUDE = "mag_source"  # the lensed source's magnitude: completeness, failure titles
# Catalogue IDs of the real training set that have no images (REFERENCE.md).
KNOWN_MISSING_IDS: frozenset[int] = frozenset(
    {213913, 226305, 233597, 244071, 259871, 261145, 270458, 288731, 294173}
)
_FILE_ID = re.compile(r"^imageEUC_(?P<band>[A-Za-z]+)-(?P<id>\d+)\.fits$")


def band_dir(root: str | Path, band: Band) -> Path:
    return Path(root) / PUBLIC_DIR / band.directory


def image_path(root: str | Path, band: Band, object_id: int) -> Path:
    return band_dir(root, band) / f"imageEUC_{band.name}-{object_id}.fits"


ARC_MAP_DIR = "arc_maps"  # beside Public/: simulator truth, not part of the challenge's layout


def arc_map_path(root: str | Path, object_id: int) -> Path:
    """An object's arc map (``SimulateConfig.arc_maps``): uint8 FITS on the VIS grid, 1 where
    the noise-free lensed source is above 1 sigma of the noise (the pixels of n_pix_source)."""
    return Path(root) / ARC_MAP_DIR / f"arc-{object_id}.fits"


def parse_image_name(name: str) -> tuple[str, int] | None:
    """(band, ID) from a file name like ``imageEUC_VIS-200123.fits``, or None."""
    match = _FILE_ID.match(name)
    return (match["band"], int(match["id"])) if match else None


def catalog_path(root: str | Path) -> Path:
    return Path(root) / CATALOG_NAME


def format_catalog(
    rows: Sequence[Mapping[str, float | str | None]],
    comments: Sequence[str] = (),
    extra_columns: Sequence[str] | None = None,
) -> str:
    """The catalogue CSV text, challenge style; missing values are written as empty fields.

    ``extra_columns`` (default: every key of ``rows`` that is not a challenge column, in order of
    first appearance) follow the 26 challenge columns, so readers that know only the challenge's
    columns still find theirs; their values may be text (an object's ``kind``). Text holding a
    comma, quote or line break is refused: it would shift every later field of the row.
    """
    if extra_columns is None:
        extra_columns = [k for k in dict.fromkeys(k for r in rows for k in r)
                         if k not in CATALOG_COLUMNS]  # fmt: skip
    columns = (*CATALOG_COLUMNS, *extra_columns)
    lines = [f"# {c}" for c in comments]
    lines.append("," + ",".join(columns))
    for index, row in enumerate(rows):
        fields = [str(index)]
        for column in columns:
            fields.append(_format_field(row.get(column, np.nan), column, index))
        lines.append(",".join(fields))
    return "\n".join(lines) + "\n"


def _format_field(value: float | str | None, column: str, row: int) -> str:
    """One CSV field: integers plainly, floats to 6 significant digits, text as it is."""
    if isinstance(value, str):
        if any(c in value for c in ',"\r\n'):
            raise ValueError(
                f"catalogue row {row}, column {column}: {value!r} holds a comma, quote or line "
                "break, which the challenge CSV cannot carry"
            )
        return value
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    if column in ("ID", "source_ID") or float(value).is_integer():
        return str(int(value))
    return f"{float(value):.6g}"
