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
# Catalogue IDs of the real training set that have no images (REFERENCE.md).
KNOWN_MISSING_IDS: frozenset[int] = frozenset(
    {213913, 226305, 233597, 244071, 259871, 261145, 270458, 288731, 294173}
)
_FILE_ID = re.compile(r"^imageEUC_(?P<band>[A-Za-z]+)-(?P<id>\d+)\.fits$")


def band_dir(root: str | Path, band: Band) -> Path:
    return Path(root) / PUBLIC_DIR / band.directory


def image_path(root: str | Path, band: Band, object_id: int) -> Path:
    return band_dir(root, band) / f"imageEUC_{band.name}-{object_id}.fits"


def parse_image_name(name: str) -> tuple[str, int] | None:
    """(band, ID) from a file name like ``imageEUC_VIS-200123.fits``, or None."""
    match = _FILE_ID.match(name)
    return (match["band"], int(match["id"])) if match else None


def catalog_path(root: str | Path) -> Path:
    return Path(root) / CATALOG_NAME


def format_catalog(rows: Sequence[Mapping[str, float]], comments: Sequence[str] = ()) -> str:
    """The catalogue CSV text, challenge style; missing values are written as empty fields."""
    lines = [f"# {c}" for c in comments]
    lines.append("," + ",".join(CATALOG_COLUMNS))
    for index, row in enumerate(rows):
        fields = [str(index)]
        for column in CATALOG_COLUMNS:
            value = row.get(column, np.nan)
            if value is None or (isinstance(value, float) and not np.isfinite(value)):
                fields.append("")
            elif column in ("ID", "source_ID") or float(value).is_integer():
                fields.append(str(int(value)))
            else:
                fields.append(f"{float(value):.6g}")
        lines.append(",".join(fields))
    return "\n".join(lines) + "\n"
