"""``simulate()``: many objects, in worker processes, into the challenge layout; resumable.

Each object is a pure function of (seed, ID, lens or not): its generator is
``np.random.default_rng([seed, ID])``, so the files are the same whatever the worker count or the
order objects finish in. Which IDs are lenses is fixed up front (a seeded permutation), so the
lens fraction is exact; so is which non-lenses are lens twins, and of which lens: a twin is drawn
from its lens's generator and rendered without the source. An intended lens whose measured
quantities fail the label rule is redrawn (new source, then new lens galaxy, a bounded number of
times); an intended non-lens with a background source that passes the rule is redrawn too.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lensfinder import __version__
from lensfinder.config import NONLENS_MIX, SimulateConfig, to_dict
from lensfinder.errors import ConfigError
from lensfinder.labels import LabelRule, label_rule
from lensfinder.safety import SIMULATION
from lensfinder.simulate import scene as scenes
from lensfinder.simulate import writer
from lensfinder.simulate.observing import NOMINAL, Observing, draw_observing, with_band_offsets
from lensfinder.simulate.quantities import SIMULATED_COLUMNS, catalogue_row
from lensfinder.simulate.render import BandImages, SceneRenderer, preload
from lensfinder.simulate.stamps import StampLibrary
from lensfinder.simulate.writer import finish_layout
from lensfinder.stages import progress_bar, run_stage
from lensfinder.surveys import Survey, get_survey

GALAXY_TRIES = 20  # lens galaxies tried per intended lens ...
SOURCE_TRIES = 25  # ... and sources behind each
NONLENS_TRIES = 50
_PLAN_TAG = 0x51D  # keeps the plan's generator apart from the per-object ones
_TWIN_TAG = 0x7A1  # ... and the twins' plan apart from both
_BAND_OFFSETS_TAG = 0xBA4D  # each band's own depth, PSF, shift: apart from the object's other draws
LENS_TWIN = "lens_twin"  # the kind of a lens's scene drawn again without its source


@dataclass
class SimulatedObject:
    object_id: int
    intended_lens: bool
    scene: scenes.Scene
    ra: float
    dec: float
    row: dict[str, Any]  # catalogue columns: numbers, and the scene's kind
    observing: Observing = NOMINAL
    bands: dict[str, BandImages] = field(default_factory=dict)  # components + observed image
    twin_of: int | None = None  # a lens twin's lens (its ID)
    arc_map: np.ndarray | None = None  # (VIS grid) uint8, with ``SimulateConfig.arc_maps``

    @property
    def meta(self) -> dict[str, Any]:
        return {
            "kind": self.scene.kind,
            "central_type": self.scene.central_type,
            "intended_lens": self.intended_lens,
            "theta_e": self.scene.theta_e,
            "lens_model": self.scene.lens_models[0] if self.scene.lens_models else None,
            "source_family": self.scene.source_family or None,
            "psf_family": self.observing.psf_family,
            "fwhm_factor": self.observing.fwhm_factor,
            "depth_offset_mag": self.observing.depth_offset_mag,
            "correlated_noise": self.observing.noise_shift is not None,
            **(
                {"band_offsets": [list(offset) for offset in self.observing.band_offsets]}
                if self.observing.band_offsets
                else {}
            ),
            **(
                {"band_shifts": [list(shift) for shift in self.observing.band_shifts]}
                if self.observing.band_shifts
                else {}
            ),
            "ra": self.ra,
            "dec": self.dec,
            "twin_of": self.twin_of,
        }


@dataclass
class SimulateResult:
    out: Path
    catalog: Path
    preview: Path | None
    n: int
    written: int
    skipped: int  # already finished in an earlier run
    lenses: int  # in the whole catalogue, by the label rule
    seconds: float
    workers: int
    label_rule: str
    twins: int = 0  # non-lenses that are a lens's scene without its source (lens_twin_fraction)

    @property
    def rate(self) -> float:
        """Cutouts simulated per second in this run."""
        return self.written / self.seconds if self.seconds > 0 else math.nan

    def summary(self) -> str:
        done = f" ({self.skipped} already done)" if self.skipped else ""
        preview = f"; preview {self.preview}" if self.preview else ""
        twins = f" ({self.twins} non-lenses are lens twins)" if self.twins else ""
        return (
            f"simulated {self.written} cutouts{done} into {self.out} in {self.seconds:.1f} s "
            f"({self.rate:.2f}/s, {self.workers} worker(s)); {self.lenses}/{self.n} lenses by "
            f"'{self.label_rule}'{twins}; catalogue {self.catalog}{preview}"
        )


# ------------------------------------------------------------------------------ one object


class _Context:
    """What drawing one object needs beside its generator: settings, survey, rule, stamps."""

    def __init__(self, config: SimulateConfig, observing: Observing) -> None:
        self.config = config
        self.survey = get_survey(config.survey)
        self.rule = label_rule(config.label_rule)
        self.observing = observing
        self.stamps = (
            StampLibrary.from_folder(config.source_stamps) if config.source_stamps else None
        )

    def renderer(self, scene: scenes.Scene) -> SceneRenderer:
        c = self.config
        return SceneRenderer(
            scene, self.survey, c.supersampling, c.supersampling_tolerance, self.observing
        )

    def source(self, rng: np.random.Generator, scene: scenes.Scene, placement: str) -> None:
        scenes.draw_source(rng, self.survey.bands, scene, placement, self.config, self.stamps)


def _colour_bands(survey: Survey) -> tuple[str, str]:
    reddest = max(survey.bands, key=lambda b: b.wavelength_um)
    return survey.reference_band, reddest.name


def _measure(object_id: int, renderer: SceneRenderer, ctx: _Context) -> dict[str, float]:
    """The catalogue row of the renderer's scene with its current source (reference band)."""
    scene, ref = renderer.scene, renderer.reference
    unlensed = renderer.flux(scenes.total_magnitude(scene.source, ref.name)) if scene.source else 1
    return catalogue_row(
        object_id,
        scene,
        renderer.central(),
        renderer.source(),
        renderer.background_noise(),
        unlensed,
        _colour_bands(ctx.survey),
    )


def _passes(rule: LabelRule, row: dict[str, float]) -> bool:
    return bool(rule.apply({k: np.array([v]) for k, v in row.items()})[0])


def _near_boundary(row: dict[str, float]) -> bool:
    """Multiply imaged with a visible, magnified source: what the label rule sees just below
    its thresholds (mag_eff 1.0-1.6 or n_pix_source 5-20 under the default rule)."""
    return row["n_source_im"] >= 2 and row["mag_eff"] >= 1.0 and row["n_pix_source"] >= 5


_Drawn = tuple[scenes.Scene, dict[str, float], SceneRenderer]


def _draw_lens(object_id: int, rng: np.random.Generator, ctx: _Context) -> _Drawn:
    for _ in range(GALAXY_TRIES):
        scene = scenes.draw_lens_galaxy(rng, ctx.survey.bands, "lens", ctx.config)
        scenes.add_field(rng, ctx.survey.bands, scene, ctx.config, ctx.stamps)
        renderer = ctx.renderer(scene)
        for _ in range(SOURCE_TRIES):
            ctx.source(rng, scene, "lensed")
            row = _measure(object_id, renderer, ctx)
            if _passes(ctx.rule, row):
                return scene, row, renderer
    raise ConfigError(
        f"label rule '{ctx.rule}': no simulated lens passed it after "
        f"{GALAXY_TRIES * SOURCE_TRIES} draws (object {object_id}); is the rule satisfiable?"
    )


def _draw_nonlens(object_id: int, rng: np.random.Generator, ctx: _Context) -> _Drawn:
    """A non-lens by the rule. "subthreshold" redraws its source behind one galaxy until the
    source is multiply imaged yet fails the rule (else keeps the last draw that fails it)."""
    kind = scenes.draw_nonlens_kind(rng, ctx.config)
    fallback: _Drawn | None = None
    for _ in range(NONLENS_TRIES):
        scene = scenes.draw_nonlens(rng, ctx.survey.bands, kind, ctx.config, ctx.stamps)
        scenes.add_field(rng, ctx.survey.bands, scene, ctx.config, ctx.stamps)
        renderer = ctx.renderer(scene)
        if kind not in ("elliptical+source", "subthreshold"):
            row = _measure(object_id, renderer, ctx)
            if not _passes(ctx.rule, row):
                return scene, row, renderer
            continue
        placement = "unlensed" if kind == "elliptical+source" else "boundary"
        for _ in range(1 if kind == "elliptical+source" else SOURCE_TRIES):
            ctx.source(rng, scene, placement)
            row = _measure(object_id, renderer, ctx)
            if _passes(ctx.rule, row):
                continue
            if kind == "elliptical+source" or _near_boundary(row):
                return scene, row, renderer
            if fallback is None:  # the scene itself gets the next source: keep this one's copy
                kept = dataclasses.replace(scene)
                fallback = (kept, row, ctx.renderer(kept))
    if fallback is not None:
        return fallback
    raise ConfigError(
        f"label rule '{ctx.rule}': simulated non-lenses ({kind}) keep passing it "
        f"(object {object_id}); a rule must reject galaxies without a lensed source"
    )


def _without_source(object_id: int, drawn: _Drawn, ctx: _Context) -> _Drawn:
    """A lens's scene without its source (kind ``lens_twin``): the deflector keeps its mass, so
    the twin is what the sky would show had nothing been behind it."""
    scene = dataclasses.replace(
        drawn[0], kind=LENS_TWIN, source=[], source_family="", source_centre=(math.nan, math.nan)
    )
    renderer = ctx.renderer(scene)
    row = _measure(object_id, renderer, ctx)
    if _passes(ctx.rule, row):
        raise ConfigError(f"label rule '{ctx.rule}': a lens without its source passes it")
    return scene, row, renderer


def simulate_object(
    config: SimulateConfig,
    object_id: int,
    intended_lens: bool,
    observe: bool = True,
    twin_of: int | None = None,
) -> SimulatedObject:
    """Draw, measure and render one object in every band (with noise when ``observe``).
    ``twin_of``: a lens's ID; the object is then that lens drawn from its own generator (same
    scene, observing and noise seeds) and rendered without its source, a non-lens at its own
    sky position (a catalogue holds no two objects at one place)."""
    drawn_id = object_id if twin_of is None else twin_of
    rng = np.random.default_rng([config.seed, drawn_id])
    ra, dec = scenes.sky_position(rng)
    observing = with_band_offsets(
        draw_observing(rng, config),
        np.random.default_rng([config.seed, drawn_id, _BAND_OFFSETS_TAG]),
        config,
        get_survey(config.survey),
    )
    ctx = _Context(config, observing)
    draw = _draw_lens if intended_lens or twin_of is not None else _draw_nonlens
    scene, row, renderer = draw(drawn_id, rng, ctx)
    noise_seeds = {band.name: int(rng.integers(2**31 - 1)) for band in ctx.survey.bands}
    if twin_of is not None:
        scene, row, renderer = _without_source(object_id, (scene, row, renderer), ctx)
        intended_lens = False
        ra, dec = scenes.sky_position(np.random.default_rng([config.seed, object_id]))
    obj = SimulatedObject(
        object_id, intended_lens, scene, ra, dec, row, ctx.observing, twin_of=twin_of
    )
    obj.row["kind"] = scene.kind  # an extra catalogue column; readers ignore what they lack
    for band in ctx.survey.bands:
        obj.bands[band.name] = renderer.render(band, noise_seeds[band.name] if observe else None)
    if config.arc_maps:
        obj.arc_map = arc_map(renderer)
    return obj


def arc_map(renderer: SceneRenderer) -> np.ndarray:
    """Where the lensed source shows (reference band, uint8): its noise-free, PSF-convolved
    light above 1 sigma of the background noise, exactly the pixels ``n_pix_source`` counts.
    Set for any source (an unlensed or sub-threshold one too); training keeps it for lenses."""
    return (renderer.source() > renderer.background_noise()).astype(np.uint8)


def draw_scene(
    config: SimulateConfig, object_id: int, intended_lens: bool, rng: np.random.Generator
) -> tuple[scenes.Scene, dict[str, Any]]:
    """One object's scene and catalogue row as ``simulate_object`` draws them (a lens passing
    the label rule, or a non-lens failing it), under nominal observing and without pixels: for
    renderers of other geometries (``simulate.tile`` puts scenes on a mosaic)."""
    ctx = _Context(config, NOMINAL)
    draw = _draw_lens if intended_lens else _draw_nonlens
    scene, row, _ = draw(object_id, rng, ctx)
    return scene, {**row, "kind": scene.kind}


_Task = tuple[SimulateConfig, str, int, bool, int | None]  # config, root, ID, lens, twin of


def _make_and_write(task: _Task) -> tuple[int, bool]:
    """Worker: simulate one object, write its band files, then its row file (last)."""
    config, root, object_id, intended_lens, twin_of = task
    obj = simulate_object(config, object_id, intended_lens, twin_of=twin_of)
    survey = get_survey(config.survey)
    for band in survey.bands:
        image = obj.bands[band.name].image
        assert image is not None
        writer.write_band_fits(root, band, object_id, image, obj.ra, obj.dec)
    if obj.arc_map is not None:
        writer.write_arc_map(root, object_id, obj.arc_map)
    writer.write_row(root, object_id, obj.row, obj.meta)
    return object_id, intended_lens


# ------------------------------------------------------------------------------ many objects


def lens_plan(config: SimulateConfig) -> np.ndarray:
    """Which of the ``n`` objects are drawn as lenses: exactly round(n * lens_fraction)."""
    n_lenses = round(config.n * config.lens_fraction)
    order = np.random.default_rng([config.seed, config.n, _PLAN_TAG]).permutation(config.n)
    plan = np.zeros(config.n, dtype=bool)
    plan[order[:n_lenses]] = True
    return plan


def twin_plan(config: SimulateConfig, plan: np.ndarray) -> np.ndarray:
    """Per object, the position of the lens it is a twin of, or -1: round(non-lenses x
    lens_twin_fraction) non-lenses, each the twin of another lens (as many as there are)."""
    lenses, nonlenses = np.flatnonzero(plan), np.flatnonzero(~plan)
    n_twins = min(round(len(nonlenses) * config.lens_twin_fraction), len(lenses))
    rng = np.random.default_rng([config.seed, config.n, _TWIN_TAG])
    twins = np.full(config.n, -1, dtype=np.int64)
    twins[rng.permutation(nonlenses)[:n_twins]] = rng.permutation(lenses)[:n_twins]
    return twins


def validate(config: SimulateConfig) -> tuple[Survey, LabelRule]:
    """The survey and the label rule the settings name, refused unless the simulator knows them
    (the values themselves are checked when the config is made: ``SimulateConfig.problems``)."""
    try:
        survey = get_survey(config.survey)
        rule = label_rule(config.label_rule)
    except ValueError as exc:
        raise ConfigError(f"simulate: {exc}") from None
    unknown = [c for c in rule.columns if c not in SIMULATED_COLUMNS]
    if unknown:
        raise ConfigError(
            f"simulate: label rule '{rule}' uses {', '.join(unknown)}, which the simulator does "
            f"not compute; it fills {', '.join(SIMULATED_COLUMNS[1:])}"
        )
    _validate_population(config)
    return survey, rule


def _validate_population(config: SimulateConfig) -> None:
    """The non-lens kinds and source families the mixes name must be ones the simulator draws."""
    known = {
        "nonlens_mix": set(NONLENS_MIX),
        "source_mix": {*scenes.SOURCE_FAMILIES, "shapelets"},
    }
    for name, allowed in known.items():
        bad = sorted(set(getattr(config, name)) - allowed)
        if bad:
            raise ConfigError(
                f"simulate: {name} has unknown kind(s) {bad}; known: {sorted(allowed)}"
            )
    if config.source_stamps is not None:
        StampLibrary.from_folder(config.source_stamps)  # one clear line now, not in a worker


def _population_summary(config: SimulateConfig) -> str:
    """One comment line with the population settings (the catalogue records how it was made)."""
    keys = (
        "theta_e_median",
        "theta_e_sigma",
        "theta_e_broad_fraction",
        "ring_radius_like_lenses",
        "source_mag_range",
        "psf_family",
        "nonlens_mix",
        "lens_twin_fraction",
        "irregular_neighbour_fraction",
        "depth_scatter_mag",
        "band_depth_scatter_mag",
        "band_psf_scatter",
        "band_shift_pixels",
    )
    settings = to_dict(config)
    return "; ".join(f"{k}={settings[k]}" for k in keys)


def _pool_context() -> multiprocessing.context.BaseContext:
    """fork where the platform has it (Linux): workers start at once and scripts need no
    ``if __name__ == "__main__"`` guard; spawn elsewhere. Workers touch only numpy, lenstronomy
    and astropy, and the pool starts before any progress bar thread."""
    if "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _single_threaded_blas() -> Any:
    """One BLAS thread in this process from now on (also a context manager that restores the
    old setting): rendering makes many small matrix products, and OpenBLAS's idle threads spin
    between them, which cost 40% of the CPU in one process and oversubscribed the cores with
    several workers (measured: 40 -> 54 cutouts/s on 2 cores)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _run_tasks(tasks: list, workers: int, show: bool) -> Iterator[tuple[int, bool]]:
    """Run the tasks in-process (one worker) or in a pool, yielding as objects finish."""

    def shown(results: Iterable[tuple[int, bool]]) -> Iterable[tuple[int, bool]]:
        if not show:
            return results
        return progress_bar(results, total=len(tasks), desc="simulate", unit="cutout")

    if workers == 1:
        with _single_threaded_blas():  # restored for the caller after
            yield from shown(map(_make_and_write, tasks))
        return
    context = _pool_context()
    if context.get_start_method() == "fork":
        preload()  # inherited by every worker
    with context.Pool(workers, initializer=_single_threaded_blas) as pool:
        yield from shown(pool.imap_unordered(_make_and_write, tasks, chunksize=1))


def _tasks(config: SimulateConfig, out: Path) -> list[_Task]:
    """The objects of ``config`` not yet finished in ``out``, as worker tasks."""
    bands = get_survey(config.survey).bands
    ids = config.first_id + np.arange(config.n)
    plan = lens_plan(config)
    twins = twin_plan(config, plan)
    partners = [int(ids[t]) if t >= 0 else None for t in twins]
    return [
        (config, str(out), int(ids[i]), bool(plan[i]), partners[i])
        for i in range(config.n)
        if not writer.is_done(out, int(ids[i]), bands, config.arc_maps)
    ]


def planned_seconds(config: SimulateConfig, out: Path, timed: int = 12) -> float:
    """Seconds ``simulate(config, out)`` will take on this machine, before it is made (a time
    budget plans with it): ``timed`` of its unfinished objects drawn, rendered and written into
    a scratch folder on one worker, twice, and timed the second time, over the workers the
    cores run at once. The first rendering of each kind of object compiles and caches what it
    uses (lenstronomy's numba profiles): timed once, 8 objects said 0.10 s each where a
    6,000-object pool then took 0.026 s each per worker, a first plan 4x too long (README,
    "Session 26"). Workers fork after this, so they inherit what it compiled."""
    tasks = _tasks(config, Path(out))
    if not tasks:
        return 0.0
    probe = tasks[:timed]

    def make_probe() -> None:
        with tempfile.TemporaryDirectory() as scratch:
            for task in probe:
                _make_and_write((config, scratch, *task[2:]))

    with _single_threaded_blas():
        make_probe()  # warms what the objects use
        began = time.perf_counter()
        make_probe()
        per_object = (time.perf_counter() - began) / len(probe)
    parallel = max(1, min(config.workers, len(tasks), os.cpu_count() or 1))
    return len(tasks) * per_object / parallel


def simulate(config: SimulateConfig, out: Path, progress: bool = True) -> SimulateResult:
    """Simulate ``config.n`` Euclid-like objects into the challenge layout at ``out``.

    Re-running into the same directory skips finished objects and completes partial ones.
    Writes ``out/image_catalog2.0train.csv`` and ``out/preview.png`` at the end. Holds the
    output's lock throughout, so two simulations never write into one directory at once; writes
    only into a new or empty directory or its own simulation (the output rule), never into a
    real layout or another output.
    """
    validate(config)
    with run_stage("simulate", SIMULATION, out, progress=progress) as stage:
        return stage.finish(_simulate_locked(config, stage.out, stage.progress))


def _simulate_locked(config: SimulateConfig, out: Path, progress: bool) -> SimulateResult:
    survey, rule = validate(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    writer.check_run_settings(
        out,
        {k: v for k, v in to_dict(config).items() if k != "workers"} | {"label_rule": str(rule)},
        # simulations made before these settings existed resume
        added={
            "lens_twin_fraction": 0.0,
            "irregular_neighbour_fraction": 0.0,
            "band_depth_scatter_mag": 0.0,
            "band_psf_scatter": 0.0,
            "band_shift_pixels": 0.0,
            "arc_maps": False,
        },
    )
    ids = config.first_id + np.arange(config.n)
    twins = twin_plan(config, lens_plan(config))
    tasks = _tasks(config, out)
    skipped = config.n - len(tasks)
    start = time.perf_counter()
    workers = max(1, min(config.workers, len(tasks)))
    for _ in _run_tasks(tasks, workers, progress):
        pass
    seconds = time.perf_counter() - start

    comments = [
        f"Simulated Euclid-like cutouts, lensfinder {__version__} (lenstronomy), "
        f"survey {survey.name}",
        f"seed={config.seed} n={config.n} first_id={config.first_id} "
        f"lens_fraction={config.lens_fraction} supersampling={config.supersampling}",
        f"population: {_population_summary(config)}",
        f"label rule: {rule}",
        "pixel units: electron/s (see BUNIT, MAGZP in each FITS header); "
        "empty fields are not simulated",
    ]
    catalog, preview, lenses = finish_layout(out, ids.tolist(), rule, comments)
    return SimulateResult(
        out=out,
        catalog=catalog,
        preview=preview,
        n=config.n,
        written=len(tasks),
        skipped=skipped,
        lenses=lenses,
        seconds=seconds,
        workers=workers,
        label_rule=str(rule),
        twins=int((twins >= 0).sum()),
    )
