"""Lenses painted onto a survey's own galaxies: ``inject(field, out, config)``.

Networks trained on simulations meet real survey cutouts with real neighbours, noise and PSF,
and take neighbours and companions for arcs. Painting simulated lensed sources onto the survey's
own galaxies (HOLISMOKES: Cañameras et al. 2020, A&A 644, A163; and how SLSim injects lenses
into Rubin images) gives lenses with real deflectors, real environments and real noise, while
the untouched galaxies of the same field serve as non-lenses (at a survey's lens prevalence
almost all of them are). The steps, per field cutout:

1. measure it (``deflectors.measure``): noise per band, the central galaxy's S/N, size, colour
   and light moments, its neighbours; never a catalogue column, so the field needs no labels
   (its labels and catalogue are never read);
2. pick ``paint_fraction`` of the cutouts among plausible deflectors (``deflectors.choose``);
3. give each an SIE + shear matched to its light (``deflectors.mass_model``: Faber-Jackson
   velocity dispersion -> SIS Einstein radius), draw a source as the simulator does
   (``scene.draw_source``), ray-trace and convolve it with each band's PSF (the survey's PSF
   model) with the simulator's renderer, VIS and NISP at their own pixel scales;
4. convert the arc from e-/s to the field's units with the band's noise scale (the cutout's
   measured noise over the survey's), so painted arcs have the S/N they would have in the survey
   whatever the field's units; add the arc's photon noise, with the electrons per field unit
   that the same scale and the survey's exposure time give (an effective gain);
5. write it in the challenge layout with the simulate writer: the catalogue holds the injected
   truth (ein_area = pi theta_E^2 in arcsec^2, as ``simulate`` writes it: the Einstein-radius
   head's target; mag_source, mag_eff, n_pix_source, n_source_im, ...), the label comes from
   the same rule (``lensfinder.labels``), and ``field_id`` names the field object. An injection
   that fails the rule after ``source_tries`` sources, and every untouched cutout, is a non-lens
   by the rule. Resumable and atomic per object, like ``simulate``.

Pixels the lensed source does not reach (below 1e-3 of the noise after the PSF) are copied
unchanged, bit for bit: the galaxy and its surroundings stay exactly as the survey saw them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lensfinder import __version__, layout
from lensfinder.config import InjectConfig, SimulateConfig, to_dict
from lensfinder.data.challenge import Problem
from lensfinder.data.cutouts import CutoutSource
from lensfinder.data.pixels import missing_pixels
from lensfinder.data.source import open_unlabelled
from lensfinder.errors import ConfigError, DataError
from lensfinder.files import atomic_path
from lensfinder.labels import LabelRule, label_rule
from lensfinder.safety import INJECTION
from lensfinder.simulate import scene as scenes
from lensfinder.simulate import writer
from lensfinder.simulate.deflectors import (
    MassModel,
    Measurement,
    choose,
    mass_model,
    measure,
    plausible,
)
from lensfinder.simulate.deflectors import survey_noise as survey_background_noise
from lensfinder.simulate.quantities import catalogue_row
from lensfinder.simulate.render import SceneRenderer, counts_per_second, preload
from lensfinder.simulate.simulation import _pool_context, _single_threaded_blas
from lensfinder.simulate.simulation import validate as validate_simulation
from lensfinder.simulate.stamps import Stamp, StampLibrary, cut_stamp
from lensfinder.simulate.writer import finish_layout
from lensfinder.stages import Stage, progress_bar, run_stage
from lensfinder.surveys import Band, Survey, get_survey

PAINT_FLOOR = 1e-3  # arc pixels below this many noise sigmas are left out: the field is kept
MEASURE_CHUNK = 64  # field cutouts read at once while measuring
_OBJECT_TAG = 0x1E7  # keeps each object's generator apart from the choice's
# The catalogue's ``kind`` of an untouched cutout, and of a painted galaxy's untouched twin.
FIELD, TWIN = "field", "unpainted_twin"
# (field position, output ID, paint it, pixel hash, the twin's ID or None): a painted galaxy's
# twin is written by the same task, from the same read and measurement.
Task = tuple[int, int, bool, str, int | None]


@dataclass
class InjectResult:
    out: Path
    catalog: Path
    preview: Path | None
    field: Path
    field_fingerprint: str
    n: int  # usable field cutouts, one output each (and one more per twin)
    twins: int  # painted galaxies also written untouched (``unpainted_twins``)
    written: int
    skipped: int  # already finished in an earlier run
    painted: int  # cutouts with a painted source
    candidates: int  # plausible deflectors in the field
    lenses: int  # outputs that are lenses by the rule
    unusable: list[Problem]  # field cutouts that could not be read or measured (not written)
    seconds: float
    label_rule: str
    field_stamps: int = 0  # field galaxies cut as source looks (``field_stamps``)

    def summary(self) -> str:
        done = f" ({self.skipped} already done)" if self.skipped else ""
        bad = f"; {len(self.unusable)} unusable field cutouts left out" if self.unusable else ""
        preview = f"; preview {self.preview}" if self.preview else ""
        twins = f" (and each untouched: {self.twins} twins)" if self.twins else ""
        looks = f", {self.field_stamps} blue galaxies as source looks" if self.field_stamps else ""
        return (
            f"painted {self.painted} of {self.n} cutouts of {self.field}{twins} ({self.candidates} "
            f"plausible deflectors{looks}) into {self.out}: wrote {self.written}{done} in "
            f"{self.seconds:.1f} s; {self.lenses} lenses by '{self.label_rule}'{bad}; "
            f"catalogue {self.catalog}{preview}"
        )


# ------------------------------------------------------------------------------ the field


def pixel_hash(vis: np.ndarray, nisp: np.ndarray) -> str:
    """A field cutout's fingerprint: SHA-256 (16 hex digits) of its float32 pixels."""
    digest = hashlib.sha256(np.ascontiguousarray(vis, dtype="<f4").tobytes())
    digest.update(np.ascontiguousarray(nisp, dtype="<f4").tobytes())
    return digest.hexdigest()[:16]


@dataclass
class FieldSurvey:
    """Pass 1 over the field: which cutouts are usable, which could lens, their fingerprints."""

    usable: np.ndarray  # positions in the source
    plausible: np.ndarray  # bool, per usable cutout
    colour: np.ndarray  # VIS - H (AB), per usable cutout
    hashes: list[str]  # per usable cutout
    unusable: list[Problem]
    fingerprint: str  # of the whole field: IDs and pixels, never labels
    stamps: list[Stamp]  # source looks cut from its blue galaxies (``field_stamps``)


def survey_field(
    source: CutoutSource, survey: Survey, config: InjectConfig, progress: bool
) -> FieldSurvey:
    """Read and measure every field cutout once (cheap next to painting)."""
    digest = hashlib.sha256()
    usable: list[int] = []
    flags: list[bool] = []
    colours: list[float] = []
    hashes: list[str] = []
    stamps: list[Stamp] = []
    unusable = list(source.problems)
    starts: Iterable[int] = range(0, len(source), MEASURE_CHUNK)
    if progress:
        starts = progress_bar(
            starts, total=-(-len(source) // MEASURE_CHUNK), desc="measuring field"
        )
    for start in starts:
        positions = np.arange(start, min(start + MEASURE_CHUNK, len(source)))
        cutouts = source.read(positions)
        for row, position in enumerate(positions.tolist()):
            object_id = int(source.ids[position])
            if not cutouts.valid[row]:
                unusable.append(Problem(object_id, str(source.path), str(cutouts.reasons[row])))
                continue
            vis, nisp = cutouts.vis[row], cutouts.nisp[row]
            measured = measure(vis, nisp, survey)
            if measured.problem is not None:
                unusable.append(Problem(object_id, str(source.path), measured.problem))
                continue
            usable.append(position)
            flags.append(plausible(measured, config))
            colours.append(measured.galaxy.colour if measured.galaxy else math.nan)
            hashes.append(pixel_hash(vis, nisp))
            if config.field_stamps and flags[-1] and colours[-1] < config.red_colour:
                stamps.extend(_field_stamp(vis, measured, object_id))
            digest.update(f"{object_id}:{hashes[-1]}\n".encode())
    return FieldSurvey(
        np.asarray(usable, dtype=np.int64),
        np.asarray(flags, dtype=bool),
        np.asarray(colours, dtype=float),
        hashes,
        unusable,
        digest.hexdigest()[:16],
        stamps,
    )


def field_stamp_name(object_id: int) -> str:
    return f"field:{object_id}"


def _field_stamp(vis: np.ndarray, measured: Measurement, object_id: int) -> list[Stamp]:
    """The central galaxy of a field cutout as a source look (``InjectConfig.field_stamps``):
    its sky-subtracted VIS light on its segment; none when that has no positive flux."""
    assert measured.galaxy is not None  # a plausible deflector was measured
    sky = np.asarray(vis, np.float64) - measured.noise["VIS"].background
    try:
        return [cut_stamp(sky, measured.galaxy.segment, field_stamp_name(object_id))]
    except DataError:
        return []


# ------------------------------------------------------------------------------ painting


@dataclass
class Painted:
    """One output: its images (field units), catalogue row, truth, and the noise-free arc."""

    images: dict[str, np.ndarray]  # float32, per band
    row: dict[str, Any]
    meta: dict[str, Any]
    arc: dict[str, np.ndarray]  # noise-free, PSF-convolved arc in field units (zeros: none)
    scene: scenes.Scene | None = None  # the lens and source painted (None: untouched)


def source_config(config: InjectConfig) -> SimulateConfig:
    """The simulator settings ``scene.draw_source`` reads, from the inject settings."""
    return SimulateConfig(
        source_mag_range=config.source_mag_range,
        source_mix=dict(config.source_mix),
        source_stamps=config.source_stamps,
        stamp_fraction=config.stamp_fraction,
        supersampling=config.supersampling,
        supersampling_tolerance=config.supersampling_tolerance,
        survey=config.survey,
        label_rule=config.label_rule,
    )


def _centred_on(lights: list[scenes.Light], x: float, y: float) -> list[scenes.Light]:
    """The source moved by (x, y): ``draw_source`` places it around the origin, the lens sits
    at the galaxy's measured centroid."""
    moved = []
    for light in lights:
        shape = dict(light.shape)
        shape["center_x"] = float(shape["center_x"]) + x
        shape["center_y"] = float(shape["center_y"]) + y
        moved.append(dataclasses.replace(light, shape=shape))
    return moved


def _row(
    object_id: int,
    scene: scenes.Scene,
    measured: Measurement,
    source_eps: np.ndarray,
    vis: np.ndarray,
    survey: Survey,
) -> dict[str, Any]:
    """The catalogue row: the simulator's quantities of the painted source (reference band, in
    e-/s against the survey's noise, i.e. the field's noise), with the deflector's columns
    measured on the cutout and fluxes in the field's units."""
    reference = survey.band(survey.reference_band)
    reddest = max(survey.bands, key=lambda b: b.wavelength_um)
    noise = measured.noise[reference.name]
    galaxy = measured.galaxy
    central = np.zeros_like(source_eps)
    if galaxy is not None:
        central = np.where(galaxy.segment, vis - noise.background, 0.0) / noise.scale
    unlensed = 1.0
    if scene.has_source:
        unlensed = float(
            counts_per_second(reference, scenes.total_magnitude(scene.source, reference.name))
        )
    row: dict[str, Any] = catalogue_row(
        object_id,
        scene,
        central,
        source_eps,
        survey_background_noise(reference),
        unlensed,
        (reference.name, reddest.name),
    )
    row["source_flux"] *= noise.scale  # field units, as the pixels
    row["lens_flux"] *= noise.scale
    row.update(measured.neighbours())
    if galaxy is not None:
        row["mag_lens"] = galaxy.mag[reference.name]
        if scene.has_source:
            source_colour = scenes.total_magnitude(
                scene.source, reference.name
            ) - scenes.total_magnitude(scene.source, reddest.name)
            row["color_diff"] = galaxy.colour - source_colour
    return row


def _passes(rule: LabelRule, row: dict[str, Any]) -> bool:
    return bool(rule.apply({c: np.array([row[c]], dtype=float) for c in rule.columns})[0])


def paint(
    vis: np.ndarray,
    nisp: np.ndarray,
    object_id: int,
    rng: np.random.Generator,
    config: InjectConfig,
    *,
    survey: Survey,
    rule: LabelRule,
    stamps: StampLibrary | None = None,
    measured: Measurement | None = None,
) -> Painted:
    """Paint a lensed source onto one field cutout (VIS (200, 200), NISP (3, 66, 66), any
    units). Sources are redrawn behind the same mass up to ``config.source_tries`` times until
    one passes the label rule; the last is kept either way (the row's label says which)."""
    measured = measured or measure(vis, nisp, survey)
    galaxy = measured.galaxy
    if galaxy is None or measured.problem is not None:
        raise ValueError(f"object {object_id}: no central galaxy to paint on")
    mass = mass_model(galaxy, config, rng)
    scene = scenes.Scene(kind="lens", central_type="field", central=[])
    scene.lens_models, scene.lens_kwargs = mass.models, mass.kwargs
    scene.theta_e, scene.z_lens = mass.theta_e, mass.z_lens
    renderer = SceneRenderer(scene, survey, config.supersampling, config.supersampling_tolerance)
    drawing = source_config(config)
    reference = survey.band(survey.reference_band)
    attempts = 0
    row: dict[str, Any] = {}
    while attempts < max(1, config.source_tries):
        attempts += 1
        scenes.draw_source(rng, survey.bands, scene, "lensed", drawing, stamps)
        scene.source = _centred_on(scene.source, galaxy.x, galaxy.y)
        xs, ys = scene.source_centre
        scene.source_centre = (xs + galaxy.x, ys + galaxy.y)
        scene.z_source = mass.z_source
        row = _row(object_id, scene, measured, renderer.source(reference), vis, survey)
        if _passes(rule, row):
            break
    images, arcs = _add_arcs(vis, nisp, renderer, measured, rng, config, survey)
    kind = "lens" if _passes(rule, row) else "painted_subthreshold"
    meta = _painted_meta(kind, mass, scene, attempts, measured, config)
    row["kind"] = meta["kind"]
    return Painted(images, row, meta, arcs, scene)


def _painted_meta(
    kind: str,
    mass: MassModel,
    scene: scenes.Scene,
    attempts: int,
    measured: Measurement,
    config: InjectConfig,
) -> dict[str, Any]:
    """The painted cutout's record: the mass model, the source, the deflector as measured."""
    galaxy = measured.galaxy
    assert galaxy is not None
    return {
        "kind": kind,
        "central_type": "field",
        "theta_e": mass.theta_e,
        "theta_e_unclipped": mass.theta_e_unclipped,
        "velocity_dispersion": mass.sigma,
        "lens_model": mass.models[0],
        "lens_kwargs": mass.kwargs,
        "source_family": scene.source_family,
        "source_tries": attempts,
        "deflector": {
            "snr": galaxy.snr,
            "half_light_radius": galaxy.half_light_radius,
            "colour_vis_h": galaxy.colour,
            "q": galaxy.q,
            "phi": galaxy.phi,
            "x": galaxy.x,
            "y": galaxy.y,
        },
        "flux_scale": {name: n.scale for name, n in measured.noise.items()},
        "arc_noise": config.arc_noise,
    }


def _add_arcs(
    vis: np.ndarray,
    nisp: np.ndarray,
    renderer: SceneRenderer,
    measured: Measurement,
    rng: np.random.Generator,
    config: InjectConfig,
    survey: Survey,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Each band's field cutout with the rendered arc added (in the field's units, with its
    photon noise when ``config.arc_noise``), and the arcs; pixels the arc does not reach are
    the field's, bit for bit. Zero-filled regions (``pixels.missing_pixels``: no data, e.g.
    off the footprint) stay zeros: the survey would not have seen the arc there either."""
    reference = survey.band(survey.reference_band)
    fields = {reference.name: vis, **{b.name: nisp[i] for i, b in enumerate(_nisp(survey))}}
    images, arcs = {}, {}
    for band in survey.bands:
        noise = measured.noise[band.name]
        arc = renderer.source(band) * noise.scale  # e-/s -> field units
        arc[arc < PAINT_FLOOR * noise.sigma] = 0.0
        field = np.asarray(fields[band.name], dtype=np.float32)
        missing = missing_pixels(field)
        if missing is not None:
            arc[missing] = 0.0
        painted = field.copy()
        where = arc > 0
        added = arc[where]
        if config.arc_noise:
            # photon noise: electrons = field units * exposure / scale (an effective gain)
            electrons_per_unit = band.total_exposure / noise.scale
            added = added + rng.standard_normal(added.shape) * np.sqrt(added / electrons_per_unit)
        painted[where] = (field[where].astype(np.float64) + added).astype(np.float32)
        images[band.name], arcs[band.name] = painted, arc
    return images, arcs


def untouched(
    vis: np.ndarray,
    nisp: np.ndarray,
    object_id: int,
    survey: Survey,
    measured: Measurement,
    kind: str = FIELD,
) -> Painted:
    """A field cutout written as it is: a non-lens, with the deflector columns measured
    (``kind``: ``field``, or ``unpainted_twin`` for a painted galaxy's untouched copy)."""
    reference = survey.band(survey.reference_band)
    scene = scenes.Scene(kind="field", central_type="field", central=[])
    no_source = np.zeros((reference.cutout_pixels,) * 2)
    row = _row(object_id, scene, measured, no_source, vis, survey)
    row["kind"] = kind
    images = {reference.name: np.asarray(vis, np.float32)}
    images.update({b.name: np.asarray(nisp[i], np.float32) for i, b in enumerate(_nisp(survey))})
    arcs = {name: np.zeros_like(image) for name, image in images.items()}
    return Painted(images, row, {"kind": kind, "central_type": "field"}, arcs)


def _nisp(survey: Survey) -> list[Band]:
    return [b for b in survey.bands if b.name != survey.reference_band]


# ------------------------------------------------------------------------------ writing


def write_band(
    root: Path, band: Band, object_id: int, image: np.ndarray, ra: float, dec: float, field: str
) -> Path:
    """One cutout with the simulate writer's header, its units those of the field (the
    survey's e-/s zero point and exposure do not apply) and no WCS where the field had none."""
    from astropy.io import fits

    header = writer.band_header(band, object_id, ra if math.isfinite(ra) else 0.0, dec)
    if not (math.isfinite(ra) and math.isfinite(dec)):
        for key in ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CDELT1",
                    "CDELT2", "CUNIT1", "CUNIT2"):  # fmt: skip
            header.remove(key, ignore_missing=True)
    header["BUNIT"] = ("field", "pixel units of the field the cutout came from")
    for key in ("MAGZP", "EXPTIME"):
        header.remove(key, ignore_missing=True)
    header["ORIGIN"] = ("lensfinder.inject", "lensed source painted with lenstronomy")
    header["FIELD"] = (Path(field).name[-40:], "the field it came from (path: its row file)")
    path = layout.image_path(root, band, object_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fits.PrimaryHDU(np.asarray(image, dtype=">f4"), header).writeto(tmp)
    return path


class _Painter:
    """Paints or copies one field cutout into the output, as a pool task."""

    def __init__(
        self,
        source: CutoutSource,
        config: InjectConfig,
        out: Path,
        field_fingerprint: str,
        field_stamps: list[Stamp],
    ) -> None:
        self.source = source
        self.config = config
        self.out = out
        self.survey = get_survey(config.survey)
        self.rule = label_rule(config.label_rule)
        folder = StampLibrary.from_folder(config.source_stamps) if config.source_stamps else None
        stamps = (folder.stamps if folder else []) + field_stamps
        self.stamps = StampLibrary(stamps) if stamps else None
        self.field = str(Path(source.path).resolve())
        self.fingerprint = field_fingerprint
        self.ra, self.dec = np.asarray(source.ra, float), np.asarray(source.dec, float)

    def __call__(self, task: Task) -> int:
        position, object_id, paint_it, expected_hash, twin_id = task
        cutouts = self.source.read([position])
        field_id = int(self.source.ids[position])
        if not cutouts.valid[0]:
            raise DataError(f"{self.field}: object {field_id} became unreadable: "
                            f"{cutouts.reasons[0]}")  # fmt: skip
        vis, nisp = cutouts.vis[0], cutouts.nisp[0]
        if pixel_hash(vis, nisp) != expected_hash:
            raise DataError(f"{self.field}: object {field_id} changed while injecting; re-run")
        measured = measure(vis, nisp, self.survey)
        if twin_id is not None:
            twin = untouched(vis, nisp, twin_id, self.survey, measured, kind=TWIN)
            self._write(twin_id, twin, position, field_id, expected_hash)
        if paint_it:
            rng = np.random.default_rng([self.config.seed, _OBJECT_TAG, field_id])
            own = field_stamp_name(field_id)  # never a galaxy's own light behind it
            stamps = self.stamps.without(own) if self.stamps is not None else None
            result = paint(
                vis, nisp, object_id, rng, self.config,
                survey=self.survey, rule=self.rule, stamps=stamps, measured=measured,
            )  # fmt: skip
        else:
            result = untouched(vis, nisp, object_id, self.survey, measured)
        self._write(object_id, result, position, field_id, expected_hash)
        return object_id

    def _write(
        self, object_id: int, result: Painted, position: int, field_id: int, pixels: str
    ) -> None:
        """One output's FITS per band and its row (written last: the mark of a finished one)."""
        ra, dec = float(self.ra[position]), float(self.dec[position])
        for band in self.survey.bands:
            write_band(self.out, band, object_id, result.images[band.name], ra, dec, self.field)
        result.row["field_id"] = float(field_id)
        meta = result.meta | {
            "field": self.field,
            "field_id": field_id,
            "field_fingerprint": self.fingerprint,
            "field_pixels": pixels,
            "ra": ra,
            "dec": dec,
        }
        writer.write_row(self.out, object_id, result.row, meta)


_WORKER: _Painter | None = None


def _init_worker(painter: _Painter) -> None:
    global _WORKER
    _WORKER = painter
    _single_threaded_blas()


def _work(task: Task) -> int:
    assert _WORKER is not None
    return _WORKER(task)


def _run(painter: _Painter, tasks: list[Task], workers: int, show: bool) -> Iterator[int]:
    def shown(results: Iterable[int]) -> Iterable[int]:
        if not show:
            return results
        return progress_bar(results, total=len(tasks), desc="inject", unit="cutout")

    if workers == 1:
        with _single_threaded_blas():
            yield from shown(map(painter, tasks))
        return
    context = _pool_context()
    if context.get_start_method() == "fork":
        preload()
    with context.Pool(workers, initializer=_init_worker, initargs=(painter,)) as pool:
        yield from shown(pool.imap_unordered(_work, tasks, chunksize=1))


# ------------------------------------------------------------------------------ the run


def validate(config: InjectConfig) -> tuple[Survey, LabelRule]:
    """The settings, checked before any work: one line per problem."""
    try:
        survey = get_survey(config.survey)
        rule = label_rule(config.label_rule)
    except ValueError as exc:
        raise ConfigError(f"inject: {exc}") from None

    # the source settings and the rule's columns, as simulate checks them
    validate_simulation(source_config(config))
    return survey, rule


def inject(
    field: str | Path, out: str | Path, config: InjectConfig, progress: bool = True
) -> InjectResult:
    """Paint simulated lensed sources onto ``config.paint_fraction`` of the galaxies of
    ``field`` (a challenge layout or a packed store, any flux units; its labels are never
    read) and write every usable cutout, painted or not, into the challenge layout at ``out``.

    Re-running into the same directory skips finished objects; a different field or other
    settings are refused. Holds the output's lock throughout.
    """
    validate(config)
    field = Path(field)
    source = open_unlabelled(field)
    with run_stage("inject", INJECTION, out, [field], progress=progress) as stage:
        return stage.finish(_inject_locked(source, field, config, stage))


@dataclass
class _InjectionPlan:
    """Which field cutouts are painted, the IDs they get, the tasks not done yet."""

    measured: FieldSurvey
    n_paint: int
    chosen: np.ndarray  # usable cutouts chosen to paint
    ids: np.ndarray  # output IDs: one per usable cutout, then one per twin
    tasks: list[Task]  # not written yet


def _inject_locked(
    source: CutoutSource, field: Path, config: InjectConfig, stage: Stage
) -> InjectResult:
    """``inject`` once it holds the lock of ``stage.out``: plan, paint, finish the layout."""
    survey, rule = validate(config)
    plan = _plan_injection(source, field, stage.out, config, survey, rule, stage.progress)
    painter = _Painter(source, config, stage.out, plan.measured.fingerprint, plan.measured.stamps)
    start = time.perf_counter()
    workers = max(1, min(config.workers, len(plan.tasks)))
    for _ in _run(painter, plan.tasks, workers, stage.progress):
        pass
    seconds = time.perf_counter() - start
    measured, n = plan.measured, len(plan.measured.usable)
    twins = len(plan.ids) - n
    written = sum(1 if task[4] is None else 2 for task in plan.tasks)  # a twin rides along
    looks = len(measured.stamps)
    comments = [
        f"Lensed sources painted onto the galaxies of {painter.field} (pixel fingerprint "
        f"{measured.fingerprint}), lensfinder {__version__} (lenstronomy), survey {survey.name}",
        f"seed={config.seed} paint_fraction={config.paint_fraction} painted={plan.n_paint} "
        f"of {n}; plausible deflectors={int(measured.plausible.sum())}"
        + (f"; unpainted twins={twins} (kind {TWIN}, IDs after the others)" if twins else "")
        + (f"; source looks cut from {looks} field galaxies" if looks else ""),
        f"label rule: {rule}",
        "pixel units: those of the field; fluxes (lens_flux, source_flux) too; "
        "field_id: the field object each cutout came from; empty fields are not measured",
    ]
    catalog, preview, lenses = finish_layout(stage.out, plan.ids.tolist(), rule, comments)
    return InjectResult(
        out=stage.out,
        catalog=catalog,
        preview=preview,
        field=field,
        field_fingerprint=measured.fingerprint,
        n=n,
        twins=twins,
        written=written,
        skipped=len(plan.ids) - written,
        painted=len(plan.chosen),
        candidates=int(measured.plausible.sum()),
        lenses=lenses,
        unusable=measured.unusable,
        seconds=seconds,
        label_rule=str(rule),
        field_stamps=looks,
    )


def _plan_injection(
    source: CutoutSource,
    field: Path,
    out: Path,
    config: InjectConfig,
    survey: Survey,
    rule: LabelRule,
    progress: bool,
) -> _InjectionPlan:
    """Measure the field, choose the deflectors to paint, check a resumed output was made
    with these settings from this field, and list the objects not written yet."""
    measured = survey_field(source, survey, config, progress)
    n = len(measured.usable)
    if n == 0:
        raise DataError(f"{field}: no usable cutouts ({len(measured.unusable)} unusable)")
    n_paint = round(config.paint_fraction * n)
    chosen = choose(measured.plausible, measured.colour, config, n_paint)
    to_paint = np.zeros(n, dtype=bool)
    to_paint[chosen] = True
    writer.check_run_settings(
        out,
        {k: v for k, v in to_dict(config).items() if k != "workers"}
        | {"label_rule": str(rule), "field_fingerprint": measured.fingerprint},
        # outputs made before twins and field stamps existed resume
        added={"unpainted_twins": False, "field_stamps": False},
    )
    if config.first_id is None:
        ids = source.ids[measured.usable].astype(np.int64)
    else:
        ids = config.first_id + np.arange(n, dtype=np.int64)
    twin_ids: list[int | None] = [None] * n
    if config.unpainted_twins:  # after all the others, in the order of the painted ones
        first = int(ids.max()) + 1 if config.first_id is None else config.first_id + n
        for k, index in enumerate(np.flatnonzero(to_paint)):
            twin_ids[index] = first + k
    outputs: list[Task] = [
        (int(position), int(object_id), bool(paint_it), hashed, twin)
        for position, object_id, paint_it, hashed, twin in zip(
            measured.usable, ids, to_paint, measured.hashes, twin_ids, strict=True
        )
    ]
    tasks = [
        task
        for task in outputs
        if not all(
            writer.is_done(out, i, survey.bands) for i in (task[1], task[4]) if i is not None
        )
    ]
    all_ids = np.concatenate([ids, [i for i in twin_ids if i is not None]]).astype(np.int64)
    return _InjectionPlan(measured, int(n_paint), np.asarray(chosen), all_ids, tasks)
