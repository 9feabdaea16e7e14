"""Write simulated objects in the challenge layout, atomically and resumably.

Per object: one FITS file per band (``lensfinder.layout.image_path``), then a row file
``ROOT/.sim_rows/<ID>.json``. The row file is written last, so its presence (with all band files)
means the object is finished; a re-run skips it. The catalogue is assembled from the row files at
the end, in one atomic write.
"""

from __future__ import annotations

import functools
import io
import json
import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from lensfinder import layout
from lensfinder.errors import ConfigError, DataError
from lensfinder.files import atomic_path, atomic_write_text
from lensfinder.labels import LabelRule
from lensfinder.presentation.preview import write_preview
from lensfinder.surveys import Band

ROWS_DIR = ".sim_rows"
RUN_FILE = "run.json"
BUNIT = "electron/s"


def rows_dir(root: str | Path) -> Path:
    return Path(root) / ROWS_DIR


def row_path(root: str | Path, object_id: int) -> Path:
    return rows_dir(root) / f"{object_id}.json"


def band_header(band: Band, object_id: int, ra: float, dec: float) -> Any:
    """A header with the band, pixel scale, ID, units and a TAN WCS centred on (ra, dec)."""
    header = _header_template(band).copy()
    for key, value in _object_cards(object_id, ra, dec).items():
        header[key] = value  # keeps the card's comment (Header.update would drop it)
    return header


def _object_cards(object_id: int, ra: float, dec: float) -> dict[str, float | int]:
    """The cards that differ between two objects' files of one band."""
    return {"CRVAL1": float(ra), "CRVAL2": float(dec), "OBJ_ID": int(object_id)}


@lru_cache(maxsize=16)
def _header_template(band: Band) -> Any:
    """Built once per band: making a WCS header takes longer than writing the file."""
    from astropy.wcs import WCS

    n = band.cutout_pixels
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.crval = [0.0, 0.0]  # set per object (_object_cards)
    wcs.wcs.crpix = [(n + 1) / 2.0, (n + 1) / 2.0]  # the cutout centre, FITS 1-based
    wcs.wcs.cdelt = [-band.pixel_scale / 3600.0, band.pixel_scale / 3600.0]  # East left
    header = wcs.to_header()
    header["BAND"] = (band.name, "band name")
    header["INSTRUME"] = (band.instrument, "instrument")
    header["PIXSCALE"] = (band.pixel_scale, "pixel scale, arcsec")
    header["OBJ_ID"] = (0, "object ID")
    header["BUNIT"] = (BUNIT, "pixel unit")
    header["MAGZP"] = (band.zero_point, "AB magnitude of 1 e-/s")
    header["PSF_FWHM"] = (band.psf_fwhm, "Gaussian PSF FWHM, arcsec")
    header["EXPTIME"] = (band.total_exposure, "total exposure, s")
    header["ORIGIN"] = ("lensfinder.simulate", "simulated with lenstronomy")
    return header


@lru_cache(maxsize=16)
def _file_template(band: Band) -> tuple[bytes, dict[str, tuple[int, str]]]:
    """The header block astropy writes for a band's cutout, and where each object card sits in
    it (byte offset, comment). Writing a file is then this block with three 80-byte cards
    replaced, plus the pixels: astropy's own bytes (``tests/test_simulate.py`` compares them)
    at a fraction of the cost of updating and re-serialising a header per file."""
    from astropy.io import fits

    n = band.cutout_pixels
    buffer = io.BytesIO()
    hdu = fits.PrimaryHDU(np.zeros((n, n), np.float32), _header_template(band))
    hdu.writeto(buffer, output_verify="ignore")
    header = buffer.getvalue()[: len(buffer.getvalue()) - _padded(n * n * 4)]
    cards = {}
    for key in _object_cards(0, 0.0, 0.0):
        offset = next(
            i for i in range(0, len(header), 80) if header[i : i + 8].decode().strip() == key
        )
        cards[key] = (offset, hdu.header.comments[key])
    return header, cards


def _padded(size: int) -> int:
    return -(-size // 2880) * 2880  # FITS blocks


def fits_bytes(band: Band, object_id: int, image: np.ndarray, ra: float, dec: float) -> bytes:
    """One cutout as a FITS file (float32 primary HDU, ``band_header``), byte for byte what
    astropy writes."""
    from astropy.io import fits

    header, cards = _file_template(band)
    block = bytearray(header)
    for key, value in _object_cards(object_id, ra, dec).items():
        offset, comment = cards[key]
        block[offset : offset + 80] = fits.Card(key, value, comment).image.encode()
    data = np.asarray(image, dtype=">f4").tobytes()
    return bytes(block) + data + bytes(_padded(len(data)) - len(data))


def write_band_fits(
    root: str | Path, band: Band, object_id: int, image: np.ndarray, ra: float, dec: float
) -> Path:
    """Write one cutout (float32 primary HDU) atomically; returns its path."""
    n = band.cutout_pixels
    if image.shape != (n, n):
        raise ValueError(f"band {band.name}: image shape {image.shape}, expected {(n, n)}")
    path = layout.image_path(root, band, object_id)
    with atomic_path(path) as tmp:
        tmp.write_bytes(fits_bytes(band, object_id, image, ra, dec))
    return path


def write_arc_map(root: str | Path, object_id: int, mask: np.ndarray) -> Path:
    """An object's arc map (``layout.arc_map_path``, uint8 primary HDU), atomically."""
    from astropy.io import fits

    path = layout.arc_map_path(root, object_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = fits.Header()
    header["OBJ_ID"] = (int(object_id), "object ID")
    header["CONTENT"] = ("arc map", "1: lensed source above 1 sigma of the VIS noise")
    buffer = io.BytesIO()
    fits.PrimaryHDU(np.asarray(mask, dtype=np.uint8), header=header).writeto(buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return path


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def write_row(
    root: str | Path, object_id: int, row: Mapping[str, float], meta: Mapping[str, Any]
) -> None:
    """The object's catalogue row plus simulator truth (kind, Einstein radius, sky position)."""
    record = {
        "row": {k: _json_safe(v) for k, v in row.items()},
        "meta": {k: _json_safe(v) for k, v in meta.items()},
    }
    atomic_write_text(row_path(root, object_id), json.dumps(record, sort_keys=True) + "\n")


def read_row(root: str | Path, object_id: int) -> dict[str, Any] | None:
    """The stored record of a finished object, or None if it is missing or unreadable."""
    path = row_path(root, object_id)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or "row" not in record:
        return None
    record["row"] = {k: (math.nan if v is None else v) for k, v in record["row"].items()}
    return record


def is_done(root: str | Path, object_id: int, bands: Sequence[Band], arc_map: bool = False) -> bool:
    """Finished = the row file (written last), every band's FITS file and (``arc_map``) the
    arc map exist."""
    if not row_path(root, object_id).is_file():
        return False
    if arc_map and not layout.arc_map_path(root, object_id).is_file():
        return False
    return all(layout.image_path(root, band, object_id).is_file() for band in bands)


def check_run_settings(
    root: str | Path, settings: Mapping[str, Any], added: Mapping[str, Any] | None = None
) -> None:
    """Record what this directory is simulated with; refuse to mix objects of other settings.
    ``added``: settings newer than some directories, with the value their absence meant."""
    path = rows_dir(root) / RUN_FILE
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
        except ValueError:
            raise DataError(f"{path}: not valid JSON; delete it to start afresh") from None
        stored = dict(added or {}) | stored
        changed = {k: (stored.get(k), v) for k, v in settings.items() if stored.get(k) != v}
        if changed:
            detail = ", ".join(f"{k} was {old!r}, now {new!r}" for k, (old, new) in changed.items())
            raise ConfigError(
                f"{Path(root)}: already holds a simulation made with other settings ({detail}); "
                "re-run with the same settings to resume, or choose another --out"
            )
        return
    atomic_write_text(path, json.dumps(dict(settings), indent=1, sort_keys=True) + "\n")


def write_catalogue(
    root: str | Path, rows: Sequence[Mapping[str, float]], comments: Sequence[str]
) -> Path:
    """The challenge catalogue from the objects' rows, in one atomic write."""
    path = layout.catalog_path(root)
    atomic_write_text(path, layout.format_catalog(rows, comments))
    return path


def finish_layout(
    out: Path, ids: Sequence[int], rule: LabelRule, comments: list[str]
) -> tuple[Path, Path | None, int]:
    """The last step of a layout writer (``simulate``, ``inject``): every object's stored row
    into the catalogue (with ``comments``), the preview, and how many objects are lenses by
    ``rule``. A missing row is an error naming its file."""
    rows = []
    for object_id in ids:
        record = read_row(out, int(object_id))
        if record is None:
            raise DataError(f"{row_path(out, int(object_id))}: missing or unreadable")
        rows.append(record["row"])
    columns = {c: np.array([r.get(c, np.nan) for r in rows], dtype=float) for c in rule.columns}
    lenses = int(rule.apply(columns).sum())
    catalog = write_catalogue(out, rows, comments)
    truth = functools.partial(read_row, out)
    preview = write_preview(out, out / "preview.png", label_rule=str(rule), truth=truth)
    return catalog, preview, lenses
