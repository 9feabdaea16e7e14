"""Cutouts straight from survey mosaic tiles (Euclid MER style) and their catalogue, into a store.

Why: a survey hands out mosaics and a catalogue, not one small file per object and band; a lens
search over millions of objects must cut them itself, without writing 10^9 files first.

- **Catalogue**: a FITS table, Parquet or CSV; ID, RA and Dec columns by name (Euclid MER's by
  default), an optional selection (``parse_selection``: ``COLUMN OP NUMBER [and ...]``, parsed,
  never evaluated as code).
- **Tiles** (``lensfinder.mer`` file names): each object is cut from a tile holding its whole
  cutout, by the VIS mosaic's WCS; near an edge, from the neighbouring tile that holds it
  whole, else it is counted as cut off; outside every tile, counted. A tile with a missing or
  damaged band file costs its objects (counted, with the file); a wrong WCS or bands of one
  tile on different footprints stop the run with one line naming the file.
- **Geometry** (one model input whatever the grid): VIS is cut 200 x 200 at 0.1"/px around the
  pixel corner nearest the object (so the object lies within half a pixel of the centre; its
  tile pixel position is kept in ``TILE_X``/``TILE_Y``); NISP is 66 x 66 at 0.3"/px on the same
  centre, from each band's own WCS and pixel scale: on a grid 1/k as fine (MER's common 0.1"
  grid: k = 3) the k x k pixel blocks are summed (flux-conserving: a 0.3" pixel holds the
  flux of its nine 0.1" pixels, as the challenge's NISP cutouts do); on any other grid the
  surface brightness is interpolated bilinearly at the 0.3" pixel centres and scaled by the
  pixel-area ratio.
- **Pixels**: each window copied from a memory map of just its rows (``_pixels``), never a
  whole tile per object, nor a map of the whole file whose pages would stay in memory;
  FLAG pixels (``flag_mask``) become NaN, then the non-finite policy of ``data/nonfinite.py``
  (masked regions: missing data; a few scattered pixels: repaired; more: the object skipped),
  as for any other reader.

``cut_tile`` (one tile's files and catalogue rows -> ``Cutouts`` plus reasons) is a pure
function that ``cutouts`` runs per task on Dask and a scan shard can run per tile.
``cutouts`` writes the packed store ``data.store`` reads, resumable as ``pack``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import mmap
import operator
import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from lensfinder import mer
from lensfinder.config import CutoutsConfig
from lensfinder.data.challenge import (
    BadImage,
    LoadedObject,
    Problem,
    check_regular_file,
    summarise_problems,
)
from lensfinder.data.cutouts import NISP_SHAPE, VIS_SHAPE, Cutouts
from lensfinder.data.nonfinite import checked_pixels
from lensfinder.data.store import STORE_KIND, PackResult, _zarr_entry, write_store
from lensfinder.errors import ConfigError, DataError
from lensfinder.files import read_table
from lensfinder.stages import run_stage
from lensfinder.surveys import EUCLID

VIS_BAND, NISP_BANDS = EUCLID.bands[0], EUCLID.bands[1:]
TASK_OBJECTS = 1024  # objects cut per task (~220 MB of pixels); a tile's objects go in order
SCALE_TOLERANCE = 1e-3  # relative: pixel scales equal, or an integer ratio, within this
GRID_TOLERANCE = 1.0  # VIS pixels: how far a band's footprint may sit from the VIS one's
TILE_COLUMNS = ("TILE_INDEX", "TILE_X", "TILE_Y")  # added to the store's catalogue

_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}
_CONDITION = re.compile(
    r"^\s*(?P<column>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op><=|>=|==|!=|<|>)\s*"
    r"(?P<value>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)
_AND = re.compile(r"\s+(?:and|AND)\s+|\s*&\s*")


# ----------------------------------------------------------------------------- catalogue


@dataclass(frozen=True)
class Condition:
    column: str
    op: str
    value: float

    def apply(self, values: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return np.asarray(_OPERATORS[self.op](values.astype(float), self.value), dtype=bool)


def parse_selection(text: str) -> list[Condition]:
    """``"FLUX_VIS_PSF > 10 and POINT_LIKE_PROB < 0.5"`` -> conditions, all of which must hold.
    Only ``COLUMN OP NUMBER`` joined by ``and`` (or ``&``): ConfigError for anything else."""
    conditions = []
    for part in _AND.split(text.strip()):
        match = _CONDITION.match(part)
        if match is None:
            raise ConfigError(
                f"selection {text!r}: cannot read {part.strip()!r}; write COLUMN OP NUMBER "
                "joined by 'and', with OP one of < <= > >= == !="
            )
        conditions.append(Condition(match["column"], match["op"], float(match["value"])))
    return conditions


@dataclass
class CatalogRows:
    """The objects a catalogue asks for (after the selection), in its row order."""

    path: Path
    ids: np.ndarray  # int64
    ra: np.ndarray  # deg
    dec: np.ndarray
    columns: dict[str, np.ndarray]  # the kept columns
    n_rows: int  # rows in the file
    n_selected: int  # rows that passed the selection


def _read_columns(path: Path, wanted: list[str], where: str) -> dict[str, np.ndarray]:
    """The named columns of a FITS table, Parquet or CSV file; DataError naming the file and
    the missing column otherwise."""

    if path.name.lower().endswith((".fits", ".fit", ".fits.gz")):
        from astropy.io import fits

        try:
            check_regular_file(path)
            with fits.open(path, memmap=True) as hdul:
                table = next((h for h in hdul if isinstance(h, fits.BinTableHDU)), None)
                if table is None:
                    raise DataError(f"{path}: FITS file holds no table")
                names = list(table.columns.names)
                _check_columns(path, wanted, names, where)
                return {c: np.array(table.data[c]) for c in wanted}
        except BadImage as exc:
            raise DataError(f"{path}: {exc.reason}") from None
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{path}: cannot read the catalogue ({type(exc).__name__})") from None
    table = read_table(path, "catalogue", "a FITS table, Parquet or CSV file")
    _check_columns(path, wanted, table.column_names, where)
    return {c: table.column(c).to_numpy(zero_copy_only=False) for c in wanted}


def _check_columns(path: Path, wanted: list[str], names: list[str], where: str) -> None:
    missing = [c for c in wanted if c not in names]
    if missing:
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise DataError(
            f"{path}: no column {missing[0]} ({where}); it has {shown}" if names else
            f"{path}: no column {missing[0]} ({where}); the table has no columns"
        )  # fmt: skip


def read_catalog(path: str | Path, config: CutoutsConfig) -> CatalogRows:
    """The catalogue's ID, RA, Dec and kept columns for the rows that pass the selection."""
    path = Path(path)
    conditions = parse_selection(config.select) if config.select else []
    names = [config.id_column, config.ra_column, config.dec_column]
    wanted = list(dict.fromkeys([*names, *config.keep_columns, *(c.column for c in conditions)]))
    where = "set the column names with --id-column, --ra-column, --dec-column"
    columns = _read_columns(path, wanted, where)
    n_rows = len(columns[config.id_column])
    keep = np.ones(n_rows, dtype=bool)
    for condition in conditions:
        keep &= condition.apply(columns[condition.column])
    raw_ids = columns[config.id_column]
    if raw_ids.dtype.kind not in "iu":
        raise DataError(f"{path}: column {config.id_column} holds {raw_ids.dtype}, not integers")
    ids = raw_ids.astype(np.int64)[keep]
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{path}: object ID {int(unique[counts > 1][0])} appears more than once")
    ra = columns[config.ra_column].astype(np.float64)[keep]
    dec = columns[config.dec_column].astype(np.float64)[keep]
    kept = {c: np.asarray(columns[c])[keep] for c in config.keep_columns}
    return CatalogRows(path, ids, ra, dec, kept, n_rows, int(keep.sum()))


# ----------------------------------------------------------------------------- tiles


@dataclass(frozen=True)
class TileFiles:
    """One tile's files by band (science mosaics and, where present, their FLAG maps)."""

    index: str
    science: dict[str, Path]
    flags: dict[str, Path]

    @property
    def reference(self) -> Path:
        return self.science.get(VIS_BAND.name) or next(iter(self.science.values()))


def find_tiles(root: str | Path) -> list[TileFiles]:
    """Every tile under ``root`` (any depth), by the MER file names; DataError if none."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such tiles directory")
    science: dict[str, dict[str, Path]] = {}
    flags: dict[str, dict[str, Path]] = {}
    for path in sorted(root.rglob("EUC_MER_*")):
        name = mer.parse_image_name(path.name)
        if name is None or name.product == "rms":
            continue
        into = science if name.product == "science" else flags
        band = into.setdefault(name.tile, {})
        if name.band in band:
            raise DataError(
                f"{path}: a second {mer.BAND_NAMES[name.band]} {name.product} file for tile "
                f"{name.tile} (also {band[name.band]}); keep one"
            )
        band[name.band] = path
    if not science:
        raise DataError(f"{root}: no MER mosaic files (EUC_MER_BGSUB-MOSAIC-*_TILE*.fits)")
    return [TileFiles(t, science[t], flags.get(t, {})) for t in sorted(science)]


def _image_hdu(hdul: Any, path: Path) -> Any:
    """The first 2-D image HDU of an open file, checked to hold all its bytes; BadImage."""

    for hdu in hdul:
        if hdu.is_image and hdu.header.get("NAXIS", 0) == 2:
            info = hdu.fileinfo()
            if info is not None and info["datLoc"] + info["datSpan"] > os.path.getsize(path):
                raise BadImage(path, f"truncated FITS file ({os.path.getsize(path)} bytes)")
            return hdu
    raise BadImage(path, "FITS file holds no 2-D image")


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[Any]:
    """The file's image HDU (its header read; pixels are read by window, ``_pixels``); BadImage
    for an unreadable or damaged file."""
    from astropy.io import fits

    check_regular_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hdul = fits.open(path, memmap=True, lazy_load_hdus=True)
    except Exception as exc:
        raise BadImage(path, f"corrupt FITS ({type(exc).__name__}: {exc})") from None
    try:
        try:
            hdu = _image_hdu(hdul, path)
        except BadImage:
            raise
        except Exception as exc:
            raise BadImage(path, f"corrupt FITS ({type(exc).__name__}: {exc})") from None
        yield hdu
    finally:
        hdul.close()


@dataclass
class BandGrid:
    """One band's pixel grid: its WCS, shape and pixel scale (arcsec)."""

    path: Path
    wcs: Any
    shape: tuple[int, int]  # (ny, nx)
    scale: float


def _grid(path: Path, header: Any, shape: tuple[int, int]) -> BandGrid:
    """The band's celestial WCS; DataError naming the file for a missing or unusable one."""
    from astropy.wcs import WCS
    from astropy.wcs.utils import proj_plane_pixel_scales

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(header, naxis=2)
    except Exception as exc:
        raise DataError(f"{path}: unusable WCS ({type(exc).__name__}: {exc})") from None
    types = [str(t) for t in wcs.wcs.ctype]
    if not wcs.has_celestial or not types[0].startswith("RA") or not types[1].startswith("DEC"):
        raise DataError(f"{path}: no celestial WCS (CTYPE {types}); expected RA---TAN/DEC--TAN")
    scales = proj_plane_pixel_scales(wcs) * 3600.0
    if not np.all(np.isfinite(scales)) or scales.min() <= 0 or wcs.pixel_scale_matrix.size != 4:
        raise DataError(f"{path}: WCS with no usable pixel scale")
    if abs(scales[0] - scales[1]) > SCALE_TOLERANCE * scales.max():
        raise DataError(f'{path}: non-square pixels in the WCS ({scales[0]:g}" x {scales[1]:g}")')
    return BandGrid(path, wcs, shape, float(scales[0]))


def tile_grids(tile: TileFiles) -> tuple[dict[str, BandGrid], dict[str, str]]:
    """Every readable band's grid, and why each other band cannot be used (missing or damaged
    file). DataError for a wrong WCS, a VIS grid other than the store's 0.1"/px, or bands on
    different footprints (the file named)."""
    grids: dict[str, BandGrid] = {}
    broken: dict[str, str] = {}
    for band in EUCLID.bands:
        path = tile.science.get(band.name)
        if path is None:
            broken[band.name] = (
                f"{tile.reference}: no {mer.BAND_NAMES[band.name]} mosaic for tile {tile.index}"
            )
            continue
        try:
            with _opened(path) as hdu:
                header = hdu.header.copy()
                shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
        except BadImage as exc:
            broken[band.name] = f"{exc.path}: {exc.reason}"
            continue
        grids[band.name] = _grid(path, header, shape)
    vis = grids.get(VIS_BAND.name)
    if vis is not None:
        if abs(vis.scale / VIS_BAND.pixel_scale - 1) > SCALE_TOLERANCE:
            raise DataError(
                f'{vis.path}: VIS pixel scale {vis.scale:g}"/px; the store holds VIS at '
                f'{VIS_BAND.pixel_scale:g}"/px'
            )
        for name, grid in grids.items():
            _check_footprint(vis, grid, tile.index, name)
    return grids, broken


def _check_footprint(vis: BandGrid, grid: BandGrid, tile: str, band: str) -> None:
    """A band's image corners must fall on the VIS image's corners (one footprint per tile)."""
    ny, nx = grid.shape
    corners = np.array([[-0.5, -0.5], [nx - 0.5, -0.5], [-0.5, ny - 0.5], [nx - 0.5, ny - 0.5]])
    ra, dec = grid.wcs.pixel_to_world_values(corners[:, 0], corners[:, 1])
    x, y = vis.wcs.world_to_pixel_values(ra, dec)
    vy, vx = vis.shape
    expected = np.array([[-0.5, -0.5], [vx - 0.5, -0.5], [-0.5, vy - 0.5], [vx - 0.5, vy - 0.5]])
    off = float(np.max(np.hypot(x - expected[:, 0], y - expected[:, 1])))
    if not off <= GRID_TOLERANCE:
        raise DataError(
            f"{grid.path}: its grid does not match the VIS mosaic of tile {tile} "
            f"({vis.path.name}): corners {off:.1f} VIS pixels apart; the bands of one tile must "
            "cover one footprint"
        )


# ----------------------------------------------------------------------------- cutting


def _corner_start(position: np.ndarray | float, pixels: int) -> Any:
    """First pixel of a ``pixels``-wide (even) cutout centred on the pixel corner nearest
    ``position`` (0-based pixel coordinates: centres at integers, corners half-way): that
    corner is ``floor(position) + 0.5``."""
    return np.floor(np.asarray(position)).astype(np.int64) + 1 - pixels // 2


_PLAIN_DTYPES = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}  # BITPIX


def _plain_dtype(hdu: Any) -> np.dtype | None:
    """The on-disk dtype of a plain (unscaled, uncompressed) image; None for any other."""
    from astropy.io import fits

    header = hdu.header
    if isinstance(hdu, fits.CompImageHDU) or header.get("BSCALE", 1) != 1:
        return None
    if header.get("BZERO", 0) != 0 or header.get("BITPIX") not in _PLAIN_DTYPES:
        return None
    return np.dtype(_PLAIN_DTYPES[header["BITPIX"]])


def _pixels(hdu: Any, rows: slice, cols: slice) -> np.ndarray:
    """A window of an image: for a plain image, copied from a memory map of just the window's
    rows, unmapped at once; astropy's ``section`` otherwise (it scales or decompresses just
    the window, but reads row by row: ~10x slower).

    Why not one map of the whole file (``fits.open(memmap=True).data``): every page it touches
    stays in the process's RSS until the file closes, and the kernel maps the neighbourhood of
    each page touched (a 19,200-pixel row is 75 kB): measured, a peak RSS of 4.4 GB after
    cutting 256 objects from a full-size tile, which Dask's worker memory limit counts. A map
    per window holds at most its rows' pages, for the time of one copy; reading each row with
    ``os.pread`` instead is as flat but 4x slower (benchmarks/bench_tiles.py)."""
    dtype = _plain_dtype(hdu)
    if dtype is None:
        return np.asarray(hdu.section[rows, cols])
    nx, info = int(hdu.header["NAXIS1"]), hdu.fileinfo()
    start = info["datLoc"] + rows.start * nx * dtype.itemsize
    aligned = start - start % mmap.ALLOCATIONGRANULARITY
    length = start - aligned + (rows.stop - rows.start) * nx * dtype.itemsize
    with (
        open(info["file"].name, "rb") as handle,
        mmap.mmap(handle.fileno(), length, access=mmap.ACCESS_READ, offset=aligned) as span,
    ):
        block = np.frombuffer(span, dtype, (rows.stop - rows.start) * nx, start - aligned)
        window = np.array(block.reshape(-1, nx)[:, cols])
        del block  # the map closes now: no view of it may be left
    return window


def _read(hdu: Any, flag_hdu: Any, rows: slice, cols: slice, mask: int) -> np.ndarray:
    """A window of an image as float32, flagged pixels NaN."""
    image = _pixels(hdu, rows, cols).astype(np.float32)
    if flag_hdu is not None and mask:
        flags = _pixels(flag_hdu, rows, cols).astype(np.int64)
        image[(flags & mask) != 0] = np.nan
    return image


def _window(hdu: Any, path: Path, r0: int, c0: int, size: int, flag_hdu: Any, mask: int) -> Any:
    ny, nx = hdu.shape
    if r0 < 0 or c0 < 0 or r0 + size > ny or c0 + size > nx:
        raise BadImage(path, f"cutout crosses the tile edge (at pixel {c0}, {r0})")
    return _read(hdu, flag_hdu, slice(r0, r0 + size), slice(c0, c0 + size), mask)


def resample_nisp(
    hdu: Any, grid: BandGrid, centre: tuple[float, float], flag_hdu: Any, mask: int
) -> np.ndarray:
    """The 66 x 66 NISP cutout at 0.3"/px centred on ``centre`` (this band's pixel
    coordinates): k x k block sums where the grid is k times finer, else bilinear
    interpolation of the surface brightness times the pixel-area ratio."""
    out_pixels, out_scale = NISP_BANDS[0].cutout_pixels, NISP_BANDS[0].pixel_scale
    ratio = out_scale / grid.scale
    block = round(ratio)
    if block >= 1 and abs(ratio - block) <= SCALE_TOLERANCE * ratio:
        size = out_pixels * block
        r0, c0 = (int(_corner_start(c, size)) for c in (centre[1], centre[0]))
        image = _window(hdu, grid.path, r0, c0, size, flag_hdu, mask)
        return image.reshape(out_pixels, block, out_pixels, block).sum(axis=(1, 3))
    from scipy import ndimage

    offsets = (np.arange(out_pixels) - (out_pixels - 1) / 2.0) * ratio
    xs, ys = centre[0] + offsets, centre[1] + offsets
    r0, c0 = math.floor(ys[0]) - 1, math.floor(xs[0]) - 1
    size = math.ceil(ys[-1]) + 2 - r0
    image = _window(hdu, grid.path, r0, c0, size, flag_hdu, mask)
    yy, xx = np.meshgrid(ys - r0, xs - c0, indexing="ij")
    sampled = ndimage.map_coordinates(image, [yy, xx], order=1, mode="nearest", cval=np.nan)
    return (sampled * ratio**2).astype(np.float32)


def _checked(image: np.ndarray, path: Path) -> int:
    """The checks of every reader (``nonfinite.checked_pixels``): pixels repaired, or
    BadImage with the reason."""
    repaired, reason = checked_pixels(image)
    if reason is not None:
        raise BadImage(path, reason)
    return repaired


@dataclass
class TileCut:
    """What ``cut_tile`` gives: pixels (invalid rows zero-filled with a reason), the
    repairs made, and each object's pixel position on the tile's VIS mosaic."""

    cutouts: Cutouts
    repaired: np.ndarray  # pixels repaired per object
    repaired_bands: list[tuple[str, ...]]
    x: np.ndarray
    y: np.ndarray


def cut_tile(tile: TileFiles, ra: np.ndarray, dec: np.ndarray, config: CutoutsConfig) -> TileCut:
    """Every object at (ra, dec) cut from this tile's files (windows read, never the whole
    tile), each file opened once. Objects that cannot be cut (a damaged or missing band, a
    cut-off cutout, too many NaN or flagged pixels) come back invalid with the reason naming
    the file."""
    n = len(ra)
    cut = TileCut(Cutouts.empty(n), np.zeros(n, np.int64), [()] * n, np.full(n, np.nan),
                  np.full(n, np.nan))  # fmt: skip
    try:
        grids, broken = tile_grids(tile)
    except DataError as exc:
        cut.cutouts.valid[:] = False
        cut.cutouts.reasons[:] = [str(exc)] * n
        return cut
    if broken:
        reason = next(iter(broken.values()))
        cut.cutouts.valid[:] = False
        cut.cutouts.reasons[:] = [reason] * n
        return cut
    with contextlib.ExitStack() as stack:
        try:
            hdus = {b: stack.enter_context(_opened(g.path)) for b, g in grids.items()}
            flag_hdus = {
                b: stack.enter_context(_opened(tile.flags[b])) if b in tile.flags else None
                for b in grids
            }
        except BadImage as exc:
            cut.cutouts.valid[:] = False
            cut.cutouts.reasons[:] = [f"{exc.path}: {exc.reason}"] * n
            return cut
        vis = grids[VIS_BAND.name]
        cut.x[:], cut.y[:] = vis.wcs.world_to_pixel_values(ra, dec)
        for i in range(n):
            try:
                _cut_one(cut, i, grids, hdus, flag_hdus, config)
            except BadImage as exc:
                cut.cutouts.valid[i] = False
                cut.cutouts.reasons[i] = f"{exc.path}: {exc.reason}"
                cut.cutouts.vis[i], cut.cutouts.nisp[i] = 0.0, 0.0
    return cut


def _cut_one(
    cut: TileCut,
    i: int,
    grids: dict[str, BandGrid],
    hdus: dict[str, Any],
    flag_hdus: dict[str, Any],
    config: CutoutsConfig,
) -> None:
    vis = grids[VIS_BAND.name]
    pixels = VIS_SHAPE[0]
    c0, r0 = int(_corner_start(cut.x[i], pixels)), int(_corner_start(cut.y[i], pixels))
    image = _window(hdus["VIS"], vis.path, r0, c0, pixels, flag_hdus["VIS"], config.flag_mask)
    repaired = {"VIS": _checked(image, vis.path)}
    cut.cutouts.vis[i] = image
    # the cutout's centre (a VIS pixel corner) on the sky, then on each NISP band's grid
    centre_ra, centre_dec = vis.wcs.pixel_to_world_values(
        c0 + pixels / 2 - 0.5, r0 + pixels / 2 - 0.5
    )
    for k, band in enumerate(NISP_BANDS):
        grid = grids[band.name]
        bx, by = grid.wcs.world_to_pixel_values(centre_ra, centre_dec)
        plane = resample_nisp(
            hdus[band.name], grid, (float(bx), float(by)), flag_hdus[band.name], config.flag_mask
        )
        repaired[band.name] = _checked(plane, grid.path)
        cut.cutouts.nisp[i, k] = plane
    cut.repaired[i] = sum(repaired.values())
    cut.repaired_bands[i] = tuple(b for b, count in repaired.items() if count)


# ----------------------------------------------------------------------------- the plan


@dataclass
class TileTask:
    """A run of consecutive plan positions, all cut from one tile."""

    tile: TileFiles
    start: int
    stop: int


@dataclass
class TilePlan:
    """The objects to cut, in store order (tile by tile, rows of the tile in order), with the
    tile each comes from; a ``data.store.PackListing``."""

    root: Path
    ids: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    catalog: dict[str, np.ndarray]
    problems: list[Problem]
    tasks: list[TileTask]
    labels: np.ndarray  # int8: -1, a survey's catalogue has no labels
    label_rule: str | None = None
    label_gaps: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @cached_property
    def index_of(self) -> dict[int, int]:
        return {int(object_id): i for i, object_id in enumerate(self.ids)}

    def path(self, index: int, band: str) -> Path:
        task = next(t for t in self.tasks if t.start <= index < t.stop)
        return task.tile.science.get(band, task.tile.reference)

    def digest(self) -> str:
        """Identifies the objects and their tiles, so a resumed run never mixes two plans."""
        digest = hashlib.sha256(np.ascontiguousarray(self.ids, dtype="<i8").tobytes())
        for task in self.tasks:
            digest.update(f"{task.tile.index}:{task.start}:{task.stop};".encode())
        return digest.hexdigest()[:16]


def _unit_vectors(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    ra, dec = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def _unplaced(
    missing: np.ndarray,
    rows: CatalogRows,
    root: Path,
    finite: np.ndarray,
    reason: list[str | None],
    on_edge: list[str | None],
) -> list[Problem]:
    """Why each object no tile can give whole is left out: no position, a broken tile, a tile
    edge, or outside every tile."""
    problems = []
    for i in missing.tolist():
        object_id = int(rows.ids[i])
        if not finite[i]:
            problems.append(Problem(object_id, str(rows.path), "no position (RA or Dec missing)"))
        elif reason[i] is not None or on_edge[i] is not None:
            where, _, why = str(reason[i] or on_edge[i]).partition(": ")
            problems.append(Problem(object_id, where, why))
        else:
            where_not = f"outside every tile (RA {rows.ra[i]:.6f}, Dec {rows.dec[i]:.6f}) in {root}"
            problems.append(Problem(object_id, str(rows.path), where_not))
    return problems


def plan_cutouts(tiles: list[TileFiles], rows: CatalogRows, root: Path) -> TilePlan:
    """Which tile each object is cut from: one holding its whole cutout with every band usable
    (the one where it lies furthest from an edge); the others become counted problems."""
    n = len(rows.ids)
    pixels = VIS_SHAPE[0]
    best = np.full(n, -1)
    best_margin = np.full(n, -np.inf)
    reason: list[str | None] = [None] * n
    on_edge: list[str | None] = [None] * n
    xy = np.full((n, 2), np.nan)
    finite = np.isfinite(rows.ra) & np.isfinite(rows.dec)
    vectors = _unit_vectors(np.where(finite, rows.ra, 0.0), np.where(finite, rows.dec, 0.0))
    for t, tile in enumerate(tiles):
        grids, broken = tile_grids(tile)
        grid = grids.get(VIS_BAND.name) or next(iter(grids.values()), None)
        if grid is None:  # no readable band: its objects cannot be found from it
            continue
        ny, nx = grid.shape
        centre = _unit_vectors(*(np.asarray(v) for v in grid.wcs.pixel_to_world_values(
            (nx - 1) / 2, (ny - 1) / 2)))  # fmt: skip
        radius = math.radians(math.hypot(nx, ny) * grid.scale / 3600.0)  # generous
        near = np.flatnonzero(finite & (vectors @ centre >= math.cos(min(radius, math.pi))))
        if near.size == 0:
            continue
        x, y = grid.wcs.world_to_pixel_values(rows.ra[near], rows.dec[near])
        factor = grid.scale / VIS_BAND.pixel_scale  # 1 but where VIS itself is unreadable
        x, y, nx, ny = x * factor, y * factor, round(nx * factor), round(ny * factor)
        c0, r0 = _corner_start(x, pixels), _corner_start(y, pixels)
        margin = np.minimum.reduce([c0, r0, nx - (c0 + pixels), ny - (r0 + pixels)])
        inside = (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)
        for j, i in enumerate(near.tolist()):
            if margin[j] >= 0:
                if broken:
                    reason[i] = reason[i] or next(iter(broken.values()))
                elif margin[j] > best_margin[i]:
                    best[i], best_margin[i], xy[i] = t, margin[j], (x[j], y[j])
            elif inside[j] and on_edge[i] is None:
                on_edge[i] = (
                    f"{tile.reference}: cutout crosses the tile edge (tile {tile.index}, pixel "
                    f"{x[j]:.0f}, {y[j]:.0f}; no neighbouring tile holds it whole)"
                )
    problems = _unplaced(np.flatnonzero(best < 0), rows, root, finite, reason, on_edge)
    chosen = np.flatnonzero(best >= 0)
    # tile by tile, and within a tile by pixel row: consecutive objects share file pages
    order = chosen[np.lexsort((xy[chosen, 0], xy[chosen, 1], best[chosen]))]
    tasks = []
    position = 0
    for t in np.unique(best[order]).tolist():
        count = int((best[order] == t).sum())
        for lo in range(0, count, TASK_OBJECTS):
            hi = min(count, lo + TASK_OBJECTS)
            tasks.append(TileTask(tiles[t], position + lo, position + hi))
        position += count
    catalog: dict[str, np.ndarray] = {
        "TILE_INDEX": np.array([int(tiles[t].index) for t in best[order]], dtype=np.int64),
        "TILE_X": xy[order, 0],
        "TILE_Y": xy[order, 1],
    }
    catalog |= {name: values[order] for name, values in rows.columns.items()}
    labels = np.full(len(order), -1, dtype=np.int8)
    return TilePlan(
        root, rows.ids[order], rows.ra[order], rows.dec[order], catalog, problems, tasks, labels
    )


# ----------------------------------------------------------------------------- running


@contextlib.contextmanager
def _client(workers: int) -> Iterator[Any]:
    """A quiet LocalCluster of ``workers`` single-threaded processes."""

    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": ":0"},
        silence_logs=logging.CRITICAL,
    )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def _task_results(
    plan: TilePlan, tasks: list[TileTask], config: CutoutsConfig
) -> Iterator[tuple[TileTask, TileCut]]:
    """Each task's cut, in plan order: in this process, or on Dask (a bounded window of tasks
    in flight, so memory stays flat however many tiles)."""

    def arguments(task: TileTask) -> tuple:
        span = slice(task.start, task.stop)
        return task.tile, plan.ra[span], plan.dec[span], config

    if config.workers <= 1:
        for task in tasks:
            yield task, cut_tile(*arguments(task))
        return
    with _client(config.workers) as client:
        pending: list[tuple[TileTask, Any]] = []
        queue = iter(tasks)
        for task in queue:
            pending.append((task, client.submit(cut_tile, *arguments(task), pure=False)))
            if len(pending) >= 2 * config.workers:
                break
        while pending:
            task, future = pending.pop(0)
            result = future.result()
            future.release()
            following = next(queue, None)
            if following is not None:
                pending.append(
                    (following, client.submit(cut_tile, *arguments(following), pure=False))
                )
            yield task, result


def _loaded(
    plan: TilePlan, start: int, config: CutoutsConfig
) -> Iterator[tuple[int, LoadedObject | Problem]]:
    """(plan position, pixels or why not) from ``start`` on: ``data.store``'s loader."""
    tasks = [t for t in plan.tasks if t.stop > start]
    for task, cut in _task_results(plan, tasks, config):
        c = cut.cutouts
        for k in range(max(task.start, start) - task.start, task.stop - task.start):
            position = task.start + k
            object_id = int(plan.ids[position])
            if not c.valid[k]:
                where, _, why = str(c.reasons[k]).partition(": ")
                yield position, Problem(object_id, where, why)
                continue
            yield (
                position,
                LoadedObject(
                    c.vis[k],
                    c.nisp[k],
                    float(plan.ra[position]),
                    float(plan.dec[position]),
                    int(cut.repaired[k]),
                    cut.repaired_bands[k],
                ),
            )


def validate(config: CutoutsConfig) -> None:
    field_arcsec = VIS_SHAPE[0] * VIS_BAND.pixel_scale
    if abs(config.cutout_arcsec - field_arcsec) > 1e-6:
        raise ConfigError(
            f"cutouts: cutout_arcsec {config.cutout_arcsec:g}: the packed store holds "
            f'{field_arcsec:g}" cutouts (VIS {VIS_SHAPE[0]} px at {VIS_BAND.pixel_scale:g}"/px, '
            f'NISP {NISP_SHAPE[1]} px at {NISP_BANDS[0].pixel_scale:g}"/px), what every model '
            "reads"
        )
    if config.chunk < 1 or config.workers < 1:
        raise ConfigError("cutouts: chunk and workers must be at least 1")
    if config.select:
        parse_selection(config.select)


def cutouts(
    tiles_dir: str | Path,
    catalog: str | Path,
    out: str | Path,
    config: CutoutsConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> PackResult:
    """Cut every catalogue object (that passes the selection) from the tiles into a packed
    store at ``out``; resumable and atomic like ``pack`` (``<out>.partial``)."""
    config = config or CutoutsConfig()
    validate(config)
    tiles_dir, catalog = Path(tiles_dir), Path(catalog)
    with run_stage(
        "cutouts",
        STORE_KIND,
        out,
        [tiles_dir, catalog],
        progress=progress,
        overwrite=overwrite,
        staged=True,
        owns=_zarr_entry,
    ) as stage:
        rows = read_catalog(catalog, config)
        plan = plan_cutouts(find_tiles(tiles_dir), rows, tiles_dir)
        if len(plan) == 0:
            raise DataError(
                f"{catalog}: no object to cut ({rows.n_selected} of {rows.n_rows} rows "
                f"selected; {summarise_problems(plan.problems)})"
            )
        identity = {
            "source": str(tiles_dir.resolve()),
            "catalog_file": str(catalog.resolve()),
            "label_rule": None,
            "listing": plan.digest(),
            "chunk": config.chunk,
            "flag_mask": config.flag_mask,
        }
        load = lambda start: _loaded(plan, start, config)  # noqa: E731
        return stage.finish(write_store(plan, identity, config.chunk, load, stage))
