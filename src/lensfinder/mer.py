"""Euclid MER tile products on disk: one place for their file names and catalogue columns.

The MER processing function (Euclid Collaboration: Romelli et al. 2025, arXiv:2503.15305) puts
every band of a tile on one common 0.1"/px grid with a TAN WCS. Its products, as the Q1 data
release names them (IRSA's Euclid Q1 documentation)::

    EUC_MER_BGSUB-MOSAIC-<BAND>_TILE<tile>-<tag>.fits   background-subtracted mosaic
    EUC_MER_MOSAIC-<BAND>-RMS_TILE<tile>-<tag>.fits     its RMS map
    EUC_MER_MOSAIC-<BAND>-FLAG_TILE<tile>-<tag>.fits    its bit flags
    EUC_MER_FINAL-CAT_TILE<tile>-<tag>.fits             the final catalogue

(``<tag>``: ``<id>_<timestamp>_<version>``)
with ``<BAND>`` VIS, NIR-Y, NIR-J or NIR-H, and catalogue columns OBJECT_ID,
RIGHT_ASCENSION, DECLINATION (deg), FLUX_VIS_PSF and FLUX_<Y|J|H>_TEMPLFIT (with FLUXERR_...,
in microjansky) and POINT_LIKE_PROB. The tile simulator writes these names and the cutter
reads them, so the two cannot drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BAND_NAMES: dict[str, str] = {"VIS": "VIS", "Y": "NIR-Y", "J": "NIR-J", "H": "NIR-H"}
ID_COLUMN = "OBJECT_ID"
RA_COLUMN = "RIGHT_ASCENSION"
DEC_COLUMN = "DECLINATION"
FLUX_COLUMNS: dict[str, str] = {
    "VIS": "FLUX_VIS_PSF",
    "Y": "FLUX_Y_TEMPLFIT",
    "J": "FLUX_J_TEMPLFIT",
    "H": "FLUX_H_TEMPLFIT",
}
POINT_LIKE_COLUMN = "POINT_LIKE_PROB"
AB_ZERO_POINT_UJY = 23.9  # AB magnitude of 1 microjansky

PRODUCTS = ("science", "rms", "flag")
_PREFIX = {"science": "EUC_MER_BGSUB-MOSAIC-", "rms": "EUC_MER_MOSAIC-", "flag": "EUC_MER_MOSAIC-"}
_SUFFIX = {"science": "", "rms": "-RMS", "flag": "-FLAG"}
_FILE = re.compile(
    r"^EUC_MER_(?P<prefix>BGSUB-MOSAIC|MOSAIC)-(?P<band>VIS|NIR-[YJH])(?P<suffix>-RMS|-FLAG)?"
    r"_TILE(?P<tile>\d+)(?:[-_].*)?\.fits(?:\.gz|\.fz)?$"
)
_MER_TO_BAND = {mer: band for band, mer in BAND_NAMES.items()}


@dataclass(frozen=True)
class TileFileName:
    product: str  # one of PRODUCTS
    band: str  # VIS, Y, J or H
    tile: str  # the tile index, as written


def image_name(product: str, band: str, tile: int | str, tag: str) -> str:
    """The file name of a tile's ``product`` in ``band``; ``tag`` is what follows the tile
    index (``<id>_<timestamp>_<version>``)."""
    return f"{_PREFIX[product]}{BAND_NAMES[band]}{_SUFFIX[product]}_TILE{tile}-{tag}.fits"


def catalog_name(tile: int | str, tag: str) -> str:
    return f"EUC_MER_FINAL-CAT_TILE{tile}-{tag}.fits"


def parse_image_name(name: str) -> TileFileName | None:
    """What a MER image file holds, from its name; None for any other file (a background
    mosaic with no RMS/FLAG suffix under the plain MOSAIC prefix is not a science image)."""
    match = _FILE.match(name)
    if match is None:
        return None
    suffix, prefix = match["suffix"], match["prefix"]
    if suffix is None and prefix != "BGSUB-MOSAIC":
        return None
    if suffix is not None and prefix != "MOSAIC":
        return None
    product = {None: "science", "-RMS": "rms", "-FLAG": "flag"}[suffix]
    return TileFileName(product, _MER_TO_BAND[match["band"]], match["tile"])
