"""``simulate_tile()``: a Euclid MER-like mosaic tile, so survey-scale cutting and scanning can be
tested and benchmarked without real data.

What is drawn (every draw from seeded generators: same settings, same files):

- **galaxies** at the sky's density: VIS differential counts ``dN/dm ~ 10^(0.33 m)`` normalised
  to 30 per arcmin^2 brighter than VIS 24.5, drawn to VIS 25.5 (~64 per arcmin^2, ~3,000 on a
  4,096^2 tile at 0.1"/px): slope from deep-field counts (Metcalfe et al. 2001, MNRAS 323, 795;
  McCracken et al. 2003, A&A 410, 17), density that of the Euclid wide survey (Laureijs et al.
  2011, arXiv:1110.3193); ``simulate/sky.py`` holds the numbers (``SimulateConfig.field_*``).
  Those fainter than ``scene_mag_limit`` are the cutout simulator's field galaxies
  (``scene.field_galaxy``); brighter ones are its central galaxies with their satellites and
  groups (``run.draw_scene``: ellipticals, spirals, rings, mergers, ...), and
  ``lens_fraction`` of all galaxies are its lenses (a lens galaxy plus a source passing the
  label rule). Unrelated neighbours come from the tile itself, not from each scene;
- **stars**: ``star_density`` per arcmin^2 (2 per arcmin^2 at VIS < 24.5, the order of star
  counts at high galactic latitude), magnitudes and colours as around every cutout.

Geometry and pixels: one TAN WCS, North up and East left, ``pixel_scale`` (0.1") in every band,
as MER resamples NISP onto the VIS grid. Each object is rendered noise-free in its own stamp by
the cutout simulator's renderer (``render.SceneRenderer``) with NISP bands moved onto the 0.1"
grid (their Gaussian PSFs, FWHM from ``surveys/euclid.py``, drawn on that grid), and added in
at its position: galaxies sit on pixel corners (so stamps add in without resampling; a
quantisation of at most 0.05", a third of the VIS PSF's FWHM), stars anywhere (their PSF
shifted by linear interpolation, as lenstronomy's ``add_layer2image``). Units: e-/s per pixel
(``BUNIT``, ``MAGZERO``). Noise per pixel: the band's sky and read noise
(lenstronomy's exposure model) scaled by the pixel-size ratio (so a 3x3 block of NISP pixels
holds the noise of one native 0.3" pixel) plus Poisson noise of the sources; RMS maps are that
sigma, FLAG maps zero.

Files (``lensfinder.mer`` names): per band a science mosaic, its RMS map and FLAG map, a MER-style
catalogue of the detected objects (positions and fluxes, no labels) and ``truth.csv`` (kind,
is_lens, Einstein radius, ...) beside it. Resumable: objects are rendered in parts kept under
``.tile_parts/`` until every band is written, and band files already written are skipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from lensfinder import mer
from lensfinder.config import TileSimulateConfig, to_dict
from lensfinder.errors import ConfigError
from lensfinder.files import atomic_path, atomic_write_text
from lensfinder.safety import TILES
from lensfinder.simulate import scene as scenes
from lensfinder.simulate import sky
from lensfinder.simulate.observing import NOMINAL
from lensfinder.simulate.render import SceneRenderer, _exposure, counts_per_second, preload
from lensfinder.simulate.simulation import _pool_context, _single_threaded_blas, draw_scene
from lensfinder.stages import progress_bar, run_stage
from lensfinder.surveys import EUCLID, Band, Survey

PARTS_DIR = ".tile_parts"
RUN_FILE = "tile_run.json"
TRUTH_NAME = "truth.csv"
PART_OBJECTS = 32  # objects rendered per task; also the resume granularity of the render
MIN_STAMP = 32  # pixels
STAMP_STEP = 16  # stamp sides are multiples of this (few distinct grids to set up)
APERTURE_ARCSEC = 1.0  # radius of the aperture the catalogue's flux errors are quoted in
_PLAN_TAG = 0x711E  # keeps the plan's generator apart from the per-object ones


@dataclass
class TileObject:
    """One planned object: where it is and what it is (its looks are drawn from its own seed)."""

    object_id: int
    kind: str  # "star", "galaxy" (field), "central" (scene generator) or "lens"
    x: float  # 0-based pixel position on the tile
    y: float
    mag: float  # VIS magnitude from the counts (a scene's own galaxy replaces it)
    blue: bool


@dataclass
class TileSimulateResult:
    out: Path
    tile_files: list[Path]
    catalog: Path
    truth: Path
    n_objects: int
    n_catalogued: int
    n_lenses: int
    bands_written: int
    seconds: float

    def summary(self) -> str:
        return (
            f"simulated tile {self.out}: {self.n_objects} objects ({self.n_lenses} lenses), "
            f"{self.n_catalogued} in the catalogue {self.catalog.name}; {self.bands_written} "
            f"band(s) written in {self.seconds:.1f} s; truth in {self.truth.name}"
        )


# ----------------------------------------------------------------------------- geometry


def tile_wcs(size: int, pixel_scale: float, ra: float, dec: float) -> Any:
    """The tile's TAN WCS: centred on (ra, dec), North up, East left."""
    from astropy.wcs import WCS

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [(size + 1) / 2.0, (size + 1) / 2.0]
    wcs.wcs.cd = [[-pixel_scale / 3600.0, 0.0], [0.0, pixel_scale / 3600.0]]
    return wcs


def grid_bands(pixel_scale: float, pixels: int, survey: Survey = EUCLID) -> tuple[Band, ...]:
    """The survey's bands resampled onto one common grid of ``pixels`` at ``pixel_scale``."""
    return tuple(
        dataclasses.replace(band, pixel_scale=pixel_scale, cutout_pixels=pixels)
        for band in survey.bands
    )


def noise_sigma(band: Band, pixel_scale: float) -> float:
    """Sky and read noise (e-/s) of one ``pixel_scale`` pixel of ``band`` resampled from its own
    pixels: its native sigma times the pixel-size ratio, so ``k x k`` summed pixels hold the
    native noise of one ``k``-times larger pixel."""
    return float(_exposure(band).background_noise) * pixel_scale / band.pixel_scale


def image_header(wcs: Any, band: Band, what: str) -> Any:
    """A MER-like image header: the WCS, band, units and zero point."""
    header = wcs.to_header()
    header["FILTER"] = (mer.BAND_NAMES[band.name], "Euclid filter")
    header["INSTRUME"] = (band.instrument, "instrument")
    header["BUNIT"] = ("electron/s" if what != "flag" else "", "pixel unit")
    header["MAGZERO"] = (band.zero_point, "AB magnitude of 1 e-/s")
    header["PSF_FWHM"] = (band.psf_fwhm, "Gaussian PSF FWHM, arcsec")
    header["ORIGIN"] = ("lensfinder.simulate.tile", "simulated with lenstronomy")
    return header


def write_image(path: Path, data: np.ndarray, header: Any) -> Path:
    """One image as a FITS primary HDU, atomically."""
    from astropy.io import fits

    with atomic_path(path) as tmp:
        fits.PrimaryHDU(data, header).writeto(tmp, overwrite=True)
    return path


# ----------------------------------------------------------------------------- the plan


def plan_objects(config: TileSimulateConfig) -> list[TileObject]:
    """Every object of the tile: galaxies from the counts (lenses among them), then stars."""
    rng = np.random.default_rng([config.seed, config.tile_index, _PLAN_TAG])
    population = config.population
    side = config.size * config.pixel_scale  # arcsec
    n_galaxies = int(rng.poisson(sky.field_density(population) * side**2))
    mags = sky.power_law_mags(
        rng, population.field_count_slope, *population.field_mag_range, n_galaxies
    )
    # pixel corners k - 0.5 inside the tile
    corners = rng.integers(1, config.size, size=(n_galaxies, 2)) - 0.5
    blue = rng.random(n_galaxies) < population.field_blue_fraction
    lenses = set(
        rng.choice(n_galaxies, round(n_galaxies * config.lens_fraction), replace=False).tolist()
    )
    first = config.tile_index * 1_000_000
    objects = []
    for i in range(n_galaxies):
        kind = "galaxy" if mags[i] >= config.scene_mag_limit else "central"
        objects.append(
            TileObject(
                first + i,
                "lens" if i in lenses else kind,
                float(corners[i, 0]),
                float(corners[i, 1]),
                float(mags[i]),
                bool(blue[i]),
            )
        )
    n_stars = int(rng.poisson(config.star_density * (side / 60.0) ** 2))
    positions = rng.uniform(-0.5, config.size - 0.5, size=(n_stars, 2))
    for j in range(n_stars):
        x, y = positions[j]
        objects.append(TileObject(first + n_galaxies + j, "star", float(x), float(y), 0.0, False))
    if len(objects) >= 1_000_000:
        raise ConfigError(f"simulate-tile: {len(objects)} objects do not fit the ID scheme")
    return objects


def _object_rng(config: TileSimulateConfig, obj: TileObject) -> np.random.Generator:
    return np.random.default_rng([config.seed, obj.object_id])


def _scene(config: TileSimulateConfig, obj: TileObject) -> tuple[scenes.Scene, dict[str, Any]]:
    """The object's scene centred on the origin, and its truth."""
    rng = _object_rng(config, obj)
    bands = EUCLID.bands
    if obj.kind == "galaxy":
        lights = scenes.field_galaxy(rng, bands, obj.mag, obj.blue, config.population)
        kind = "field_blue" if obj.blue else "field_red"
        return scenes.Scene(kind=kind, central_type="field", central=lights), {"kind": kind}
    # The tile is the field: no unrelated neighbours or stars around each scene.
    population = dataclasses.replace(config.population, field_count_density=0.0)
    scene, row = draw_scene(population, obj.object_id, obj.kind == "lens", rng)
    scene.stars = []
    truth = {
        "kind": scene.kind,
        "theta_E": scene.theta_e,
        "z_lens": scene.z_lens,
        "z_source": scene.z_source,
        **{k: row.get(k, math.nan) for k in ("n_source_im", "mag_eff", "n_pix_source")},
    }
    return scene, truth


def _stamp_pixels(scene: scenes.Scene, pixel_scale: float, max_stamp: int) -> int:
    """An even stamp side holding the scene's light (truncated profiles, the lensed arcs'
    region) and the PSF's reach, between ``MIN_STAMP`` and ``max_stamp``."""
    extent = 0.0
    for light in scene.central + scene.field:
        reach = light.truncated().reach
        if not math.isfinite(reach):
            reach = 10.0 * light.size
        extent = max(extent, math.hypot(*light.centre) + reach)
    if scene.has_source and math.isfinite(scene.theta_e):  # the lensed arcs' region
        beta = math.hypot(*scene.source_centre)
        extent = max(extent, scene.theta_e + beta + 5 * scene.source_radius + 0.5)
    psf = 4.0 * max(band.psf_fwhm for band in EUCLID.bands)
    pixels = 2 * math.ceil((extent + psf) / pixel_scale)
    pixels = STAMP_STEP * math.ceil(pixels / STAMP_STEP)
    return int(min(max(pixels, MIN_STAMP), max_stamp))


def render_scene(scene: scenes.Scene, pixel_scale: float, pixels: int, config: Any) -> np.ndarray:
    """The scene noise-free in every band on the common grid, centred on a pixel corner of an
    even ``pixels`` stamp: ``(bands, pixels, pixels)`` float32, e-/s per pixel. ``config``: the
    population's ``SimulateConfig`` (supersampling)."""
    bands = grid_bands(pixel_scale, pixels)
    survey = Survey(EUCLID.name, bands, EUCLID.reference_band)
    renderer = SceneRenderer(
        scene, survey, config.supersampling, config.supersampling_tolerance, NOMINAL
    )
    return np.stack([renderer.render(band).model for band in bands]).astype(np.float32)


def _render_part(task: tuple[TileSimulateConfig, list[TileObject], str]) -> str:
    """Worker: render a part's objects and save their stamps and truth atomically."""
    config, objects, path = task
    stamps, rows, cols, sizes, truths = [], [], [], [], []
    for obj in objects:
        scene, truth = _scene(config, obj)
        pixels = _stamp_pixels(scene, config.pixel_scale, config.max_stamp)
        stamps.append(render_scene(scene, config.pixel_scale, pixels, config.population).ravel())
        # the stamp's central corner (pixels/2 - 0.5) on the object's corner
        rows.append(round(obj.y + 0.5) - pixels // 2)
        cols.append(round(obj.x + 0.5) - pixels // 2)
        sizes.append(pixels)
        mags = {b.name: scenes.total_magnitude(scene.central, b.name) for b in EUCLID.bands}
        truths.append({**truth, "object_id": obj.object_id, "mags": mags})
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as handle:
        np.savez(
            handle,
            stamps=np.concatenate(stamps) if stamps else np.zeros(0, np.float32),
            rows=np.asarray(rows, np.int64),
            cols=np.asarray(cols, np.int64),
            sizes=np.asarray(sizes, np.int64),
            truth=np.asarray(json.dumps(truths)),
        )
    return path


def _parts(objects: list[TileObject]) -> list[list[TileObject]]:
    rendered = [o for o in objects if o.kind != "star"]
    return [rendered[i : i + PART_OBJECTS] for i in range(0, len(rendered), PART_OBJECTS)]


def _part_path(out: Path, number: int) -> Path:
    return out / PARTS_DIR / f"part-{number:05d}.npz"


def _render_parts(
    config: TileSimulateConfig, out: Path, parts: list[list[TileObject]], show: bool
) -> None:
    """Render the parts not yet saved, in ``config.workers`` processes."""
    tasks = [
        (config, part, str(_part_path(out, k)))
        for k, part in enumerate(parts)
        if not _part_path(out, k).is_file()
    ]
    if not tasks:
        return
    workers = max(1, min(config.workers, len(tasks)))
    finished: Iterator[str]
    if workers == 1:
        with _single_threaded_blas():
            finished = map(_render_part, tasks)
            for _ in (
                progress_bar(finished, total=len(tasks), desc="rendering") if show else finished
            ):
                pass
        return
    context = _pool_context()
    if context.get_start_method() == "fork":
        preload()
    with context.Pool(workers, initializer=_single_threaded_blas) as pool:
        finished = pool.imap_unordered(_render_part, tasks, chunksize=1)
        for _ in progress_bar(finished, total=len(tasks), desc="rendering") if show else finished:
            pass


def _load_parts(out: Path, count: int) -> Iterator[dict[str, Any]]:
    for k in range(count):
        with np.load(_part_path(out, k)) as part:
            yield {name: part[name] for name in part.files}


def _add(image: np.ndarray, stamp: np.ndarray, row: int, col: int) -> None:
    """``image[row:, col:] += stamp``, clipped at the image's edges."""
    ny, nx = image.shape
    sy, sx = stamp.shape
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + sy, ny), min(col + sx, nx)
    if r0 < r1 and c0 < c1:
        image[r0:r1, c0:c1] += stamp[r0 - row : r1 - row, c0 - col : c1 - col]


def _add_star(image: np.ndarray, kernel: np.ndarray, flux: float, x: float, y: float) -> None:
    """A point source at sub-pixel (x, y): the PSF kernel shifted by linear interpolation."""
    from scipy import ndimage

    ix, iy = round(x), round(y)
    shifted = ndimage.shift(kernel, (y - iy, x - ix), order=1) * flux
    half = kernel.shape[0] // 2
    _add(image, shifted.astype(np.float32), iy - half, ix - half)


def _star_mags(config: TileSimulateConfig, obj: TileObject) -> dict[str, float]:
    return scenes.star_mags(_object_rng(config, obj), EUCLID.bands)


def _band_model(
    config: TileSimulateConfig, out: Path, band_index: int, n_parts: int, stars: list[TileObject]
) -> np.ndarray:
    """The noise-free mosaic of one band: every part's stamps, then the stars."""
    size = config.size
    model = np.zeros((size, size), np.float32)
    for part in _load_parts(out, n_parts):
        offset = 0
        for row, col, pixels in zip(part["rows"], part["cols"], part["sizes"], strict=True):
            n = int(pixels)
            cube = part["stamps"][offset : offset + 4 * n * n].reshape(4, n, n)
            _add(model, cube[band_index], int(row), int(col))
            offset += 4 * n * n
    band = grid_bands(config.pixel_scale, size)[band_index]
    kernel = NOMINAL.psf_kernel(band)
    for star in stars:
        flux = float(counts_per_second(band, _star_mags(config, star)[band.name]))
        _add_star(model, kernel, flux, star.x, star.y)
    return model


def _write_band(
    config: TileSimulateConfig,
    out: Path,
    tag: str,
    band_index: int,
    n_parts: int,
    stars: list[TileObject],
) -> list[Path]:
    """Science, RMS and FLAG mosaics of one band (the FLAG file last: it marks the band done)."""
    native = EUCLID.bands[band_index]
    band = grid_bands(config.pixel_scale, config.size)[band_index]
    model = _band_model(config, out, band_index, n_parts, stars)
    sigma = noise_sigma(native, config.pixel_scale)
    rms = np.sqrt(sigma**2 + _exposure(band).flux_noise(np.maximum(model, 0.0)) ** 2)
    rng = np.random.default_rng([config.seed, config.tile_index, band_index])
    science = (model + rng.standard_normal(model.shape, dtype=np.float32) * rms).astype(np.float32)
    wcs = tile_wcs(config.size, config.pixel_scale, config.ra, config.dec)
    paths = []
    for product, data in (
        ("science", science),
        ("rms", rms.astype(np.float32)),
        ("flag", np.zeros(model.shape, np.int32)),
    ):
        path = out / mer.image_name(product, native.name, config.tile_index, tag)
        paths.append(write_image(path, data, image_header(wcs, native, product)))
    return paths


def _band_done(out: Path, band: str, index: int, tag: str) -> bool:
    return all((out / mer.image_name(p, band, index, tag)).is_file() for p in mer.PRODUCTS)


# ----------------------------------------------------------------------------- catalogue


def _catalogue(
    config: TileSimulateConfig, out: Path, tag: str, objects: list[TileObject], n_parts: int
) -> tuple[Path, Path, int, int]:
    """The MER-style catalogue of detected objects (no labels) and the truth file."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    from astropy.table import Table

    truths: dict[int, dict[str, Any]] = {}
    for part in _load_parts(out, n_parts):
        for record in json.loads(str(part["truth"])):
            truths[int(record["object_id"])] = record
    wcs = tile_wcs(config.size, config.pixel_scale, config.ra, config.dec)
    rng = np.random.default_rng([config.seed, config.tile_index, _PLAN_TAG, 1])
    rows = []
    for obj in objects:
        if obj.kind == "star":
            record = {"kind": "star", "mags": _star_mags(config, obj)}
        else:
            record = truths[obj.object_id]
        ra, dec = wcs.pixel_to_world_values(obj.x, obj.y)
        rows.append((obj, float(ra), float(dec), record))
    catalog: dict[str, list[float]] = {mer.ID_COLUMN: [], mer.RA_COLUMN: [], mer.DEC_COLUMN: []}
    for band in EUCLID.bands:
        catalog[mer.FLUX_COLUMNS[band.name]] = []
        catalog["FLUXERR" + mer.FLUX_COLUMNS[band.name][4:]] = []
    catalog[mer.POINT_LIKE_COLUMN] = []
    aperture = math.pi * (APERTURE_ARCSEC / config.pixel_scale) ** 2
    for obj, ra, dec, record in rows:
        if not record["mags"]["VIS"] <= config.detection_mag_limit:
            continue
        catalog[mer.ID_COLUMN].append(obj.object_id)
        catalog[mer.RA_COLUMN].append(ra)
        catalog[mer.DEC_COLUMN].append(dec)
        for band in EUCLID.bands:
            to_ujy = 10 ** (0.4 * (mer.AB_ZERO_POINT_UJY - band.zero_point))
            error = noise_sigma(band, config.pixel_scale) * math.sqrt(aperture) * to_ujy
            flux = float(counts_per_second(band, record["mags"][band.name])) * to_ujy
            catalog[mer.FLUX_COLUMNS[band.name]].append(flux + error * rng.standard_normal())
            catalog["FLUXERR" + mer.FLUX_COLUMNS[band.name][4:]].append(error)
        catalog[mer.POINT_LIKE_COLUMN].append(1.0 if obj.kind == "star" else 0.0)
    table = Table({k: np.asarray(v, dtype=np.int64 if k == mer.ID_COLUMN else float)
                   for k, v in catalog.items()})  # fmt: skip
    table.meta["TILEID"] = config.tile_index
    catalog_path = out / mer.catalog_name(config.tile_index, tag)
    with atomic_path(catalog_path) as tmp:
        table.write(tmp, format="fits", overwrite=True)
    truth_columns: dict[str, list[Any]] = {
        "OBJECT_ID": [o.object_id for o, *_ in rows],
        "ra": [ra for _, ra, _, _ in rows],
        "dec": [dec for _, _, dec, _ in rows],
        "x": [o.x for o, *_ in rows],
        "y": [o.y for o, *_ in rows],
        "kind": [r["kind"] for *_, r in rows],
        "is_lens": [int(o.kind == "lens") for o, *_ in rows],
        "catalogued": [int(r["mags"]["VIS"] <= config.detection_mag_limit) for *_, r in rows],
    }
    for key in ("theta_E", "z_lens", "z_source", "n_source_im", "mag_eff", "n_pix_source"):
        truth_columns[key] = [float(r.get(key, math.nan)) for *_, r in rows]
    for band in EUCLID.bands:
        truth_columns[f"mag_{band.name}"] = [float(r["mags"][band.name]) for *_, r in rows]
    truth_path = out / TRUTH_NAME
    with atomic_path(truth_path) as tmp:
        pacsv.write_csv(pa.table(truth_columns), tmp)
    lenses = sum(truth_columns["is_lens"])
    return catalog_path, truth_path, len(table), lenses


# ----------------------------------------------------------------------------- the verb


def validate(config: TileSimulateConfig) -> None:
    """Refuse settings that cannot work, with one clear line each."""
    if not isinstance(config.size, int) or config.size < 64:
        raise ConfigError(f"simulate-tile: size must be at least 64 pixels, got {config.size!r}")
    if not config.pixel_scale > 0:
        raise ConfigError(f"simulate-tile: pixel_scale must be > 0, got {config.pixel_scale}")
    if not 0.0 <= config.lens_fraction <= 1.0:
        raise ConfigError(
            f"simulate-tile: lens_fraction must be in [0, 1], got {config.lens_fraction}"
        )
    if config.workers < 1 or config.seed < 0 or config.tile_index < 0:
        raise ConfigError("simulate-tile: workers must be >= 1, seed and tile_index >= 0")
    if config.star_density < 0 or config.max_stamp < MIN_STAMP or config.max_stamp % 2:
        raise ConfigError(
            f"simulate-tile: star_density must be >= 0 and max_stamp an even number >= {MIN_STAMP}"
        )
    if not -90.0 <= config.dec <= 90.0:
        raise ConfigError(f"simulate-tile: dec must be in [-90, 90], got {config.dec}")


def _run_tag(out: Path, config: TileSimulateConfig) -> str:
    """The file-name tag (``<id>_<timestamp>_00.00``), fixed at the first run; settings that
    differ from that run's are refused (a resumed tile must not mix two skies)."""
    settings = {k: v for k, v in to_dict(config).items() if k != "workers"}
    path = out / PARTS_DIR / RUN_FILE
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored["settings"] != settings:
            changed = sorted(k for k in settings if stored["settings"].get(k) != settings[k])
            raise ConfigError(
                f"{out}: already holds a tile simulated with other settings "
                f"({', '.join(changed)}); re-run with the same settings or choose another --out"
            )
        return str(stored["tag"])
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:6]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    tag = f"{digest.upper()}_{stamp}_00.00"
    atomic_write_text(path, json.dumps({"settings": settings, "tag": tag}, indent=1) + "\n")
    return tag


def simulate_tile(
    config: TileSimulateConfig, out: str | Path, progress: bool = True
) -> TileSimulateResult:
    """Render one tile into ``out`` (a new directory or an unfinished tile of the same
    settings, which is resumed)."""
    validate(config)
    with run_stage("simulate-tile", TILES, out, progress=progress) as stage:
        return stage.finish(_simulate_locked(config, stage.out, stage.progress))


def _simulate_locked(config: TileSimulateConfig, out: Path, progress: bool) -> TileSimulateResult:
    started = time.perf_counter()
    done_file = out / "tile.json"
    if done_file.is_file():  # finished earlier: nothing to redo
        record = json.loads(done_file.read_text())
        return TileSimulateResult(
            out,
            [out / p for p in record["files"]],
            out / record["catalog"],
            out / TRUTH_NAME,
            record["n_objects"],
            record["n_catalogued"],
            record["n_lenses"],
            0,
            time.perf_counter() - started,
        )
    (out / PARTS_DIR).mkdir(parents=True, exist_ok=True)
    tag = _run_tag(out, config)
    objects = plan_objects(config)
    parts = _parts(objects)
    stars = [o for o in objects if o.kind == "star"]
    _render_parts(config, out, parts, progress)
    written = 0
    files: list[Path] = []
    for index, band in enumerate(EUCLID.bands):
        if not _band_done(out, band.name, config.tile_index, tag):
            _write_band(config, out, tag, index, len(parts), stars)
            written += 1
        files += [out / mer.image_name(p, band.name, config.tile_index, tag) for p in mer.PRODUCTS]
    catalog, truth, catalogued, lenses = _catalogue(config, out, tag, objects, len(parts))
    record = {
        "files": [f.name for f in files],
        "catalog": catalog.name,
        "n_objects": len(objects),
        "n_catalogued": catalogued,
        "n_lenses": lenses,
        "settings": to_dict(config),
    }
    atomic_write_text(done_file, json.dumps(record, indent=1) + "\n")
    for part in (out / PARTS_DIR).glob("part-*.npz"):  # the tile is complete: free the space
        part.unlink()
    return TileSimulateResult(
        out, files, catalog, truth, len(objects), catalogued, lenses, written,
        time.perf_counter() - started,
    )  # fmt: skip
