"""Every default of lensfinder, in one place, as typed dataclasses; YAML in, YAML out.

A config file holds any subset of the fields below, nested as here; unknown keys are an error
(a typo must not silently fall back to a default). Shipped configs live in
``lensfinder/configs/*.yaml`` and are found by name (``--config cpu-small``).

Every config checks its own values when it is made (``Checked``): ranges, choices and
combinations of fields, in one line naming them, wherever the config comes from (YAML, the
command line, Python). Checks that need data, files or the machine stay with the stage.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

from lensfinder.errors import ConfigError
from lensfinder.files import atomic_write_text
from lensfinder.labels import DEFAULT_LABEL_RULE, LabelRule

SHIPPED_CONFIGS = Path(__file__).parent / "configs"
BANDS_ALL: tuple[str, ...] = ("VIS", "Y", "J", "H")
BANDS_NISP: tuple[str, ...] = ("Y", "J", "H")
NONLENS_MIX: dict[str, float] = {
    "elliptical": 0.26,
    "spiral": 0.24,  # discs at any inclination, most with clumpy arms
    "irregular": 0.08,  # clumpy / multi-lobed star-forming galaxies, the sources' morphologies
    "elliptical+source": 0.10,  # a background galaxy that is NOT strongly lensed
    "subthreshold": 0.10,  # lensed, but below the label rule's thresholds
    "merger": 0.08,
    "satellites": 0.08,  # blue compact companions around a red galaxy
    "ring": 0.06,
}
SOURCE_MIX: dict[str, float] = {
    "sersic_clumps": 0.4,  # a Sersic with star-forming knots
    "multi": 0.2,  # two to four offset components: irregular or merging
    "edge_on": 0.1,  # a thin disc seen edge-on, with a small bulge
    "shapelets": 0.3,  # random shapelet coefficients: irregular, multi-lobed
}
D4_ELEMENTS = 8  # rotations and flips of a square cutout


class Checked:
    """A config that checks its values when made (``__post_init__``) and on ``validate()``
    after an edit: one ``ConfigError`` line listing every problem, before any work is done.

    ``problems()`` holds the section's own checks; nested sections check themselves when made.
    Literal-typed fields are checked against their choices here, for configs made in Python too.
    """

    WHAT = ""  # how the error names the section ("train config"); "" when messages say it

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        problems = [*_choice_problems(self), *self.problems()]
        if problems:
            raise ConfigError((f"{self.WHAT}: " if self.WHAT else "") + "; ".join(problems))

    def problems(self) -> list[str]:
        return []


@functools.cache
def _choices(cls: type) -> dict[str, tuple[Any, ...]]:
    """``{field: allowed values}`` for the Literal-typed fields of a config class."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: typing.get_args(hints[f.name])
        for f in fields(cls)
        if typing.get_origin(hints[f.name]) is Literal
    }


def _choice_problems(config: Any) -> list[str]:
    config_class: type = type(config)
    return [
        f"{name} {getattr(config, name)!r} is not one of {', '.join(map(str, allowed))}"
        for name, allowed in _choices(config_class).items()
        if getattr(config, name) not in allowed
    ]


def _outside(config: Any, names: tuple[str, ...], low: float, high: float = math.inf) -> list[str]:
    """``name must be in [low, high], got value`` for each of ``names`` outside that range
    (None, an unset optional, is never outside)."""
    problems = []
    for name in names:
        value = getattr(config, name)
        if value is not None and not low <= value <= high:
            span = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
            problems.append(f"{name} must be {span}, got {value}")
    return problems


def _mix_problems(config: Any, names: tuple[str, ...]) -> list[str]:
    """Each of ``names`` (a mapping of kind -> share) must have shares to draw from."""
    return [
        f"{name} shares must be >= 0 with a positive sum"
        for name in names
        if any(w < 0 for w in getattr(config, name).values())
        or sum(getattr(config, name).values()) <= 0
    ]


@dataclass
class SimulateConfig(Checked):
    """What the simulator draws; see ``lensfinder.simulate``."""

    n: int = 1000
    seed: int = 0
    lens_fraction: float = 0.5
    workers: int = 1
    first_id: int = 200000  # the challenge's training IDs are 2xxxxx
    # Pixels are split into supersampling x supersampling sub-pixels where centre sampling would
    # be off by more than supersampling_tolerance x the background noise (simulate/render.py).
    supersampling: int = 3
    supersampling_tolerance: float = 0.02
    label_rule: str = DEFAULT_LABEL_RULE
    survey: str = "euclid"
    # --- the population (simulate/scene.py cites the numbers) ---
    # Einstein radii: lognormal; Collett (2015) forecasts most Euclid lenses below 1".
    theta_e_median: float = 0.8  # arcsec
    theta_e_sigma: float = 0.5  # natural-log width
    theta_e_range: tuple[float, float] = (0.3, 3.0)  # arcsec, hard limits of the draw
    # This share of lenses draws theta_E log-uniformly over theta_e_range instead (the lognormal
    # puts 3% above 2"). Ring galaxies can take their radii from the same draw, so a ring's size
    # says nothing about its label. Both off: measured with cpu-best on the shifted set (README,
    # "wide lenses"), they found more wide lenses (>= 2": 0.18 -> 0.29 at FPR 1e-2) and halved
    # the rings among the top false positives, but lost small lenses and overall AUROC.
    theta_e_broad_fraction: float = 0.0
    ring_radius_like_lenses: bool = False  # False: rings uniform in 0.6-3" radius
    # Unlensed source magnitude (reference band), uniform; the label rule then decides, so the
    # faint end gives lenses whose arcs barely pass it.
    source_mag_range: tuple[float, float] = (22.5, 27.0)
    # Non-lens kinds and their shares: mostly ordinary galaxies, as in the sky, with look-alikes
    # (rings, mergers, blue companions) about twice as common as in a real lens search.
    # "subthreshold": multiply imaged sources that fail the label rule (a non-lens by the rule).
    nonlens_mix: dict[str, float] = field(default_factory=lambda: dict(NONLENS_MIX))
    # This share of the non-lenses are lens twins (kind "lens_twin"): a lens's own scene drawn
    # again without its source (the same deflector, environment, observing and noise), so that
    # the pair differs only by the arc and nothing else in the data tells a lens from a non-lens.
    # Off: at 0.25, cpu-small on the shifted set gained AUROC on two seeds of three (+0.011,
    # -0.006, +0.014) but not at FPR 1e-3, lost on the real-morphology HDF discs (the twins
    # displace a quarter of the other non-lenses), and cpu-best did not move (README, "Session 17").
    lens_twin_fraction: float = 0.0
    # Source morphologies and their shares (all colours, sizes and clumps drawn per source).
    source_mix: dict[str, float] = field(default_factory=lambda: dict(SOURCE_MIX))
    # --- environments: the same around lenses and non-lenses (simulate/sky.py cites them) ---
    # Unrelated field galaxies, Poisson and uniform: VIS counts dN/dm ~ 10^(slope m), normalised
    # to field_count_density per arcmin^2 brighter than field_count_mag (Euclid's weak-lensing
    # density; slope from HST/ground deep counts); drawn, and counted in n_gal_*, within
    # field_mag_range. 64/arcmin^2 to VIS 25.5: 5.6 within 10", 0.5 within 3".
    field_count_density: float = 30.0  # per arcmin^2 brighter than field_count_mag
    field_count_mag: float = 24.5
    field_count_slope: float = 0.33  # dlog10 N / dm
    field_mag_range: tuple[float, float] = (18.0, 25.5)  # VIS; also the faintest companion drawn
    field_exclusion_radius: float = 0.3  # arcsec: closer than this, a blend with the nucleus
    field_blue_fraction: float = 0.75  # star-forming share of field galaxies
    # This share of the blue neighbours (field galaxies, satellites, companions) take the lensed
    # sources' own morphologies (source_mix: clumps, lobes, edge-on, shapelets; stamps where
    # given): irregular and peculiar galaxies are a third to a half of faint field galaxies, so
    # a source's look beside a galaxy must not mean "arc". Off: at 0.5, cpu-small over three
    # seeds moved neither the shifted set (AUROC +0.007/-0.015/+0.010) nor its variant with
    # real-galaxy neighbours (+0.016/-0.015/-0.001); README, "Session 18".
    irregular_neighbour_fraction: float = 0.0
    # Satellites of the central galaxy: Poisson mean within satellite_max_gap mag of it,
    # projected density ~ 1/R (uniform in R) between the radii, aligned with its major axis;
    # dN/d(gap) ~ 10^(satellite_gap_slope gap): ~9% within 1.5 mag (major pairs).
    satellites_per_host: float = 1.7
    satellite_max_gap: float = 5.5  # mag fainter than the host
    satellite_gap_slope: float = 0.2
    satellite_radius_range: tuple[float, float] = (0.5, 6.0)  # arcsec
    satellite_blue_fraction: float = 0.5  # blue star-forming satellites (the rest red)
    # Groups: this share of central galaxies has 1-4 other bright members (2-5 in all), within
    # -0.75..+2.5 mag of it, uniform on the sky between the radii (arcsec).
    group_fraction: float = 0.25
    group_members: tuple[int, int] = (2, 5)  # bright members including the central galaxy
    group_radius_range: tuple[float, float] = (1.5, 10.0)
    group_red_fraction: float = 0.7  # early-type share of the other members (the rest discs)
    tidal_fraction: float = 0.2  # centrals with faint tidal streams or shells
    # elliptical+source non-lenses: this share of the unlensed background galaxies sits just
    # outside the caustic (beta 1-2.2 theta_E: singly imaged, weakly distorted, beside the
    # deflector); the rest further out (2.2-4 theta_E)
    near_caustic_fraction: float = 0.7
    # --- observing conditions, drawn per object (simulate/observing.py) ---
    psf_family: Literal["gaussian", "moffat", "mixed"] = "mixed"  # mixed: half each
    psf_fwhm_scatter: float = 0.1  # fractional spread of the FWHM around the band's value
    depth_scatter_mag: float = 0.3  # depth drawn uniformly within +- this (exposure time)
    correlated_noise_fraction: float = 0.5  # objects whose noise is correlated by resampling
    # NISP bands' own depth (uniform within +- this, mag) and FWHM factor (fractional spread) on
    # top of the shared ones: another depth or PSF ratio between VIS and NISP, as bands observed
    # apart or another pipeline's noise model give, shows the per-band normalised input other
    # colours. VIS (the label rule's band) keeps the shared draws. 0 and 0: files as before
    # session 21. On the shifted set with NISP at +-0.75 mag and 25% apart, cpu-small trained
    # without them lost 0.037-0.052 AUROC, with them 0.004-0.007 (README, "Session 21").
    band_depth_scatter_mag: float = 0.5
    band_psf_scatter: float = 0.15
    # NISP's images shifted together against VIS by up to this many NISP pixels per axis
    # (uniform): survey cutouts of two instruments' mosaics, each cut at whole pixels or
    # registered by its own pipeline, are centred up to half a pixel apart. 0: aligned, as
    # before session 22.
    band_shift_pixels: float = 0.0
    # --- real galaxy stamps (optional): FITS images with a PIXSCALE header (arcsec) ---
    source_stamps: str | None = None  # a folder; used as sources and as non-lens galaxies
    stamp_fraction: float = 0.5  # share of sources and of non-lens galaxies taken from stamps
    # Each object's arc map too (``layout.arc_map_path``): the VIS pixels where its noise-free
    # lensed source is above 1 sigma of the noise, the very pixels the label rule counts as
    # n_pix_source. Packed with the pixels, they let training say where an arc is
    # (``TrainConfig.arc_map_weight``), not only whether there is one. 43 kB per object.
    arc_maps: bool = False

    WHAT = "simulate"

    def problems(self) -> list[str]:
        problems = _outside(self, ("n", "workers", "supersampling"), 1)
        problems += _outside(
            self,
            (
                "first_id",
                "seed",
                "psf_fwhm_scatter",
                "depth_scatter_mag",
                "band_depth_scatter_mag",
                "band_psf_scatter",
            ),
            0,
        )
        problems += _outside(self, ("band_shift_pixels",), 0, 2)
        problems += _outside(
            self,
            ("lens_fraction", "correlated_noise_fraction", "stamp_fraction", "lens_twin_fraction"),
            0,
            1,
        )
        lo, hi = self.theta_e_range
        if not 0 < lo <= hi or self.theta_e_median <= 0 or self.theta_e_sigma < 0:
            problems.append("theta_e_range/median/sigma must be positive, range low <= high")
        if not 0 <= self.theta_e_broad_fraction <= 1:
            problems.append(f"theta_e_broad_fraction {self.theta_e_broad_fraction}: need 0..1")
        if self.source_mag_range[0] > self.source_mag_range[1]:
            problems.append(f"source_mag_range {self.source_mag_range} is reversed")
        return problems + _mix_problems(self, ("nonlens_mix", "source_mix")) + self._sky_problems()

    def _sky_problems(self) -> list[str]:
        """The environments (simulate/sky.py) that could not be drawn."""
        problems = _outside(
            self,
            (
                "field_blue_fraction", "satellite_blue_fraction", "group_fraction",
                "group_red_fraction", "tidal_fraction", "near_caustic_fraction",
                "irregular_neighbour_fraction",
            ),
            0,
            1,
        )  # fmt: skip
        problems += _outside(
            self, ("field_count_density", "satellites_per_host", "field_exclusion_radius"), 0
        )
        for name in ("field_count_slope", "satellite_gap_slope", "satellite_max_gap"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("field_mag_range", "satellite_radius_range", "group_radius_range"):
            lo, hi = getattr(self, name)
            if not lo < hi:
                problems.append(f"{name} must be (low, high) with low < high, got {(lo, hi)}")
        lo, hi = self.group_members
        if not 1 <= lo <= hi:
            problems.append(f"group_members must be (low, high), 1 <= low <= high, got {(lo, hi)}")
        if self.satellite_radius_range[0] < 0 or self.group_radius_range[0] < 0:
            problems.append("satellite_radius_range and group_radius_range must be >= 0")
        return problems


@dataclass
class InjectConfig(Checked):
    """``lensfinder inject``: simulated lensed sources painted onto a survey's own galaxies
    (``simulate/inject.py``; the measurements and the mass-light relation are in
    ``simulate/deflectors.py``, which cites them)."""

    seed: int = 0
    # Share of the field's cutouts to paint (taken from the plausible deflectors, reddest
    # first); the rest are written untouched as non-lenses.
    paint_fraction: float = 0.5
    workers: int = 1
    first_id: int | None = None  # None: each output keeps its field object's ID
    label_rule: str = DEFAULT_LABEL_RULE
    survey: str = "euclid"
    # --- which galaxies may deflect, measured on the cutout (never from a catalogue) ---
    min_snr: float = 30.0  # S/N of the central object in VIS, over its detection segment
    half_light_range: tuple[float, float] = (0.15, 3.0)  # arcsec: no stars, no huge discs
    red_colour: float = 1.0  # VIS - H (AB): galaxies at least this red are painted first
    # --- the mass model from the light ---
    theta_e_range: tuple[float, float] = (0.5, 2.5)  # arcsec: the Einstein radius is clipped
    sigma_scatter_dex: float = 0.1  # scatter of log10(velocity dispersion) at fixed luminosity
    shear_sigma: float = 0.035  # external shear: Rayleigh, capped at 0.15
    # --- the source, drawn as the simulator draws it (simulate/scene.draw_source) ---
    source_mag_range: tuple[float, float] = (22.5, 26.5)  # unlensed, VIS AB
    source_mix: dict[str, float] = field(default_factory=lambda: dict(SOURCE_MIX))
    source_stamps: str | None = None  # a folder of FITS stamps (``simulate --source-stamps``)
    # Source looks also cut from the field's own galaxies: the central galaxy of every cutout
    # that is blue (VIS - H below ``red_colour``), plausible by ``min_snr`` and
    # ``half_light_range``, its sky-subtracted VIS light on its segment, shrunk to the source's
    # drawn size. Real survey galaxies have morphologies no parametric family has (HOLISMOKES
    # paints real HUDF galaxies as sources; Cañameras et al. 2020); lensed sources are mostly
    # blue star-forming galaxies. They join ``source_stamps`` (drawn ``stamp_fraction`` of the
    # time) and are never painted behind their own galaxy's cutout.
    field_stamps: bool = False
    stamp_fraction: float = 0.5
    source_tries: int = 10  # sources drawn per galaxy until one passes the label rule
    supersampling: int = 3
    supersampling_tolerance: float = 0.02
    arc_noise: bool = True  # the arc's photon noise; False paints noise-free arcs (checks)
    # Each painted galaxy is also written untouched, under an ID after the others, as a
    # non-lens (kind ``unpainted_twin``): the same galaxy with and without its arc, so a network
    # trained on the output learns the arc, not which galaxies were chosen to be painted (the
    # reddest plausible deflectors first: without twins, on our shifted field copy, every
    # painted galaxy was red and half of the unpainted ones blue). cpu-best with --adapt, paired
    # on the shifted set: AUROC +0.008 [+0.002, +0.013], tail within the noise (README).
    unpainted_twins: bool = True

    WHAT = "inject"

    def problems(self) -> list[str]:
        problems = _outside(self, ("paint_fraction", "stamp_fraction"), 0, 1)
        problems += _outside(self, ("workers", "source_tries", "supersampling"), 1)
        problems += _outside(self, ("sigma_scatter_dex", "shear_sigma", "first_id", "seed"), 0)
        low, high = self.theta_e_range
        if not 0 < low <= high:
            problems.append(f"theta_e_range {self.theta_e_range}: need 0 < low <= high")
        low, high = self.half_light_range
        if not 0 <= low <= high:
            problems.append(f"half_light_range {self.half_light_range} is reversed")
        if self.source_mag_range[0] > self.source_mag_range[1]:
            problems.append(f"source_mag_range {self.source_mag_range} is reversed")
        return problems + _mix_problems(self, ("source_mix",))


@dataclass
class TileSimulateConfig(Checked):
    """``lensfinder simulate-tile``: one MER-like mosaic tile in VIS, Y, J, H on one common grid
    (``simulate/tile.py`` cites the numbers)."""

    size: int = 4096  # pixels per side (a Euclid MER tile is ~19,200)
    pixel_scale: float = 0.1  # arcsec per pixel, every band (the MER common grid)
    seed: int = 0
    tile_index: int = 102018211  # the TILE number in the file names
    ra: float = 150.0  # tile centre, deg
    dec: float = 2.0
    # Share of galaxies drawn as lenses by the scene generator (~1e-3 in the sky: ~1e5 lenses
    # among ~1.5e9 Euclid galaxies); tests ask for more.
    lens_fraction: float = 1e-3
    # Galaxies brighter than this VIS magnitude are the scene generator's central galaxies
    # (ellipticals, spirals, rings, mergers, with companions); fainter ones simple field galaxies.
    scene_mag_limit: float = 22.0
    star_density: float = 2.0  # stars per arcmin^2, VIS 17-24.5 (high galactic latitude)
    detection_mag_limit: float = 25.5  # VIS: objects fainter than this are not catalogued
    max_stamp: int = 320  # pixels: the largest stamp one object is rendered in
    workers: int = 1
    # The population (magnitudes, sizes, lens and source properties): the cutout simulator's.
    population: SimulateConfig = field(default_factory=SimulateConfig)


@dataclass
class CutoutsConfig(Checked):
    """``lensfinder cutouts``: objects of a catalogue cut from mosaic tiles into a store
    (``data/tiles.py``)."""

    # The side of every cutout; the packed store holds the challenge's 20" (VIS 200 px at
    # 0.1"/px, NISP 66 px at 0.3"/px), which every model reads.
    cutout_arcsec: float = 20.0
    id_column: str = "OBJECT_ID"  # Euclid MER final catalogue names
    ra_column: str = "RIGHT_ASCENSION"
    dec_column: str = "DECLINATION"
    # Catalogue columns carried into the store beside the ID, position and tile.
    keep_columns: tuple[str, ...] = ()
    # Only objects passing this, e.g. "FLUX_VIS_PSF > 10 and POINT_LIKE_PROB < 0.5"; None: all.
    select: str | None = None
    # Pixels whose FLAG map value has any of these bits set are treated as missing (the
    # non-finite policy of data/nonfinite.py: masked regions are missing data, a few scattered
    # pixels are repaired, more skip the object); 0: ignore.
    flag_mask: int = -1
    chunk: int = 8  # objects per store chunk, as pack
    workers: int = 1  # Dask worker processes, one tile per task


@dataclass
class PackConfig(Checked):
    """How ``pack`` writes a store from a challenge layout."""

    chunk: int = 8  # objects per store chunk: random reads cost 8 objects, contiguous stay fast
    workers: int = 1  # FITS reader processes
    label_rule: str | None = None  # None: the rule the layout was simulated with, or the default

    WHAT = "pack"

    def problems(self) -> list[str]:
        return _outside(self, ("chunk", "workers"), 1)


@dataclass
class InputConfig(Checked):
    """How cutouts become model input; recorded in every model file and checked on load."""

    bands: tuple[str, ...] = BANDS_ALL
    # "native": keep VIS at its 0.1"/px and cut the central ``size`` pixels (80 px = 8", arcs
    # out to 4" radius; small Einstein radii stay resolved); "bin": the whole 20" VIS field
    # block-averaged to ``size`` pixels (100 px = 0.2"/px). NISP follows onto the same field.
    vis_sampling: Literal["native", "bin"] = "native"
    # Output side in pixels (VIS pixels in "native", field samples in "bin"). 80 (cpu-small):
    # 1.44x the training images/s of 100 px, so 15 epochs in the time of 10 at 100 px, which
    # measured +0.023 AUROC on the shifted set over three seeds (README, issue 25); cpu-best
    # keeps 100 px.
    size: int = 80
    layout: Literal["stacked", "two_branch"] = "stacked"
    normalization: Literal["asinh_noise", "asinh_percentile", "instance"] = "asinh_noise"
    asinh_softening: float = 3.0  # in units of the per-band noise sigma
    # The sky subtracted before the stretch, measured on the border frame: "plane" (a tilted
    # plane fitted to it where one is significant, for cutouts on gradients: a neighbour's or a
    # group's halo, scattered light; ``data.pixels.sky_plane_and_noise``; flat-sky images get
    # the constant sky's floats) or "constant" (its clipped median; model files written before
    # this field). cpu-small on the shifted set: a 2-sigma gradient costs 0.077 AUROC with a
    # constant sky, nothing with the plane (README, "Session 24"). The asinh stretches use it;
    # "instance" normalisation subtracts the mean and has no sky.
    sky: Literal["constant", "plane"] = "plane"
    clip: float = 10.0  # clip of the stretched values (asinh units)

    def problems(self) -> list[str]:
        return input_problems(self)


@dataclass
class ModelConfig(Checked):
    arch: str = "tf_efficientnet_lite0"
    # "imagenet" (offline, for tf_efficientnet_lite0/1/2; lite2 needs the larger-backbones
    # extra), a local .safetensors/.pth state dict, or None (random init)
    pretrained: str | None = "imagenet"
    norm: Literal["batch", "instance"] = "batch"
    # The paper's BN "method 1": discard the ImageNet running mean, variance and count of every BN
    # layer before training; the learnt scale and shift (gamma, beta) are reset only if asked too.
    bn_reinit: bool = False
    bn_reinit_affine: bool = False
    bn_inference: Literal["eval", "batch"] = "eval"  # "batch" is the paper's method 2
    bn_inference_batch: int = 8  # method 2's batch size at inference
    freeze_backbone: bool = False  # the frozen-backbone baseline: only the head trains
    drop_rate: float = 0.2
    # Stochastic depth: the chance that a residual block is skipped for a sample in training
    # (timm's drop_path_rate, the largest at the last block); no effect at inference.
    drop_path_rate: float = 0.0
    # An Einstein-radius head beside the lens logit: theta_E (arcsec) and its 1-sigma, trained on
    # lenses only (``TrainConfig.theta_e_weight``); off in every shipped config until measured.
    theta_e_head: bool = False

    # Hidden width of each branch head of the two-branch layout (model files written before this
    # field: 128); the stacked layout's head is the backbone's own classifier.
    head_hidden: int = 128

    def problems(self) -> list[str]:
        problems = []
        for name in ("drop_rate", "drop_path_rate"):
            if not 0 <= getattr(self, name) < 1:
                problems.append(f"model.{name} {getattr(self, name)} not in [0, 1)")
        if self.bn_reinit and self.freeze_backbone:
            problems.append(
                "model.bn_reinit with model.freeze_backbone: the reset BN layers would stay "
                "frozen at mean 0, variance 1 and never learn; choose one"
            )
        if self.bn_reinit_affine and not self.bn_reinit:
            problems.append("model.bn_reinit_affine needs model.bn_reinit (method 1)")
        if self.bn_inference_batch < 1 or self.head_hidden < 1:
            problems.append(
                f"model.bn_inference_batch {self.bn_inference_batch} and model.head_hidden "
                f"{self.head_hidden} must be >= 1"
            )
        return problems


@dataclass
class SplitConfig(Checked):
    """Split by object ID with a fixed seed, so evaluation finds the same test set."""

    seed: int = 0
    test_fraction: float = 0.2
    val_fraction: float = 0.1  # of all objects, carved out of train

    def problems(self) -> list[str]:
        test, val = self.test_fraction, self.val_fraction
        if not (0 <= test < 1 and 0 <= val < 1 and test + val < 1):
            return [
                f"split fractions test={test}, val={val}: each must be in [0, 1) and their sum < 1"
            ]
        return []


# --- learning from a survey's unlabelled cutouts (``train --adapt FIELD``, train/adapt.py) ---
ADAPT_METHODS: tuple[str, ...] = ("adabn", "dann", "consistency")
ADABN_KEEP: tuple[str, ...] = ("always", "if_better")  # adapt.adabn_keep
SHORT_BUDGET: tuple[str, ...] = ("mine", "epochs")  # hard_negatives.short_budget


@dataclass
class AdaptConfig(Checked):
    """What ``train --adapt FIELD`` does with the field's cutouts; their labels are never read.

    ``method`` joins any of ``ADAPT_METHODS`` with "+" ("dann+adabn"); AdaBN always runs last,
    after training. ``dann`` and ``consistency`` train jointly with the labelled data: every
    training step also draws a batch of field cutouts. "none" (or "") trains without the field.
    """

    WHAT = "train config"

    field: str | None = None  # a store or a layout of the survey's cutouts (--adapt FIELD)
    # "adabn" (judged, ``adabn_keep``): after training, the batch-norm statistics recomputed on
    # the field, kept only where the painted field's validation cutouts say they help; the
    # field's galaxies also carry painted lenses (``paint_lenses``). "none": painting only.
    method: str = "adabn"
    # Lenses painted on the field's own galaxies (``inject``; ``paint`` its settings), packed
    # into the run directory and trained on beside the labelled data: real deflectors, real
    # neighbours, real noise; the field's unpainted cutouts join as non-lenses (at a survey's
    # prevalence almost all are). Their labels come from the painting, never from the field.
    paint_lenses: bool = True
    paint: InjectConfig = dataclasses.field(default_factory=InjectConfig)  # ``field`` is taken
    # The field's unpainted cutouts are non-lenses only by prevalence: the real lenses among them
    # (2% of our benchmark's field; 11 of 30 in the demo's) would be taught as non-lenses. From
    # the second epoch on, the model scores them at the start of every epoch and this share of
    # the highest-scoring is held back from that epoch's non-lenses (the "small-loss" rule for
    # noisy labels, Han et al. 2018); model.json lists the last epoch's held-back IDs.
    unpainted_holdback: float = 0.05
    # With ``init`` and method "adabn": no labelled training, only the init model's batch-norm
    # statistics recomputed on the field (minutes); an --init ensemble is adapted member by member.
    only: bool = False
    max_cutouts: int | None = 2000  # a seeded random subset of a larger field (None: all of it)
    seed: int = 0  # which subset, and the field batches' draws
    # AdaBN: every BN layer's running mean/var recomputed as a plain average over the field.
    # D4 elements per cutout (8: all; fewer: random ones). Measured on 2 busy shared cores,
    # cpu-small input: ~36 forward passes/s, so 2,000 cutouts x 2 views take ~2 min.
    adabn_views: int = 2
    adabn_batch: int = 64  # cutouts per forward pass (each pass gives one batch statistic)
    # The leading share of the batch-norm layers (of each backbone, in forward order) that
    # AdaBN recomputes; the rest keep the statistics of training. 1.0: all (Li et al. 2016).
    # Early layers see noise texture, PSF and flux scale, what differs between simulations and
    # a survey; deep ones see lens-or-not features, whose field statistics follow the field's
    # few lenses (~1e-3), not the balanced batches the classifier learnt on.
    adabn_depth: float = 1.0
    # "always" keeps AdaBN's statistics; "if_better" keeps them only where the model's AUROC on
    # the painted field's validation cutouts (the survey's own galaxies and noise, labels from
    # the painting, never from the field; all 8 D4 views) rises with them, and else puts
    # training's back: our shifted sets (AUROC -0.022 with AdaBN) and the maintainers'
    # independent data (+0.029) disagree on AdaBN, so the field decides (the painted cutouts
    # agreed with our shifted set: -0.026; README, "Session 19"). Needs ``paint_lenses``.
    adabn_keep: str = "if_better"
    # Joint methods: the field batch per step is this share of the labelled batch (cheap on CPU).
    field_batch_fraction: float = 0.5
    # Joint methods: the labelled and the field batch go through the network as one batch, so
    # batch norm normalises both with the same statistics (as DANN and FixMatch do). Apart
    # (false), each batch is normalised by its own, which hides their first and second moments
    # from every later layer: the domain head then cannot tell the domains apart (its loss
    # stayed at log 2 on cpu-small; README, "Session 23").
    joint_batch_norm: bool = True
    # Both joint losses ramp from 0 to their weight as 2 / (1 + exp(-10 p)) - 1 over the
    # training progress p (Ganin et al. 2016), so early, still-random features are left alone.
    dann_weight: float = 0.1  # gradient-reversal strength into the features at the end of ramp
    dann_hidden: int = 64  # width of the domain head's hidden layer
    consistency_weight: float = 1.0
    # A field cutout gets a pseudo-label only where the teacher (the model itself, no dropout,
    # the field batch's own BN statistics) averaged over ``teacher_views`` D4 views is confident:
    # p >= threshold (lens) or p <= 1 - threshold (non-lens).
    consistency_threshold: float = 0.95
    teacher_views: int = D4_ELEMENTS

    def problems(self) -> list[str]:
        problems = []
        try:
            methods = adapt_method_names(self.method)
        except ValueError as exc:
            problems.append(str(exc))
            methods = ()
        if self.max_cutouts is not None and self.max_cutouts < 1:
            problems.append(f"adapt.max_cutouts {self.max_cutouts} < 1")
        for name in ("adabn_views", "teacher_views"):
            if not 1 <= getattr(self, name) <= D4_ELEMENTS:
                problems.append(f"adapt.{name} {getattr(self, name)} not in 1..{D4_ELEMENTS}")
        if not 0 < self.adabn_depth <= 1:
            problems.append(f"adapt.adabn_depth {self.adabn_depth} not in (0, 1]")
        if self.adabn_keep not in ADABN_KEEP:
            problems.append(
                f"adapt.adabn_keep {self.adabn_keep!r}: expected one of {', '.join(ADABN_KEEP)}"
            )
        elif self.adabn_keep == "if_better" and "adabn" in methods and not self.paint_lenses:
            problems.append(
                "adapt.adabn_keep 'if_better' judges AdaBN on the painted field's validation "
                "cutouts: it needs adapt.paint_lenses"
            )
        if self.adabn_batch < 2:
            problems.append(f"adapt.adabn_batch {self.adabn_batch} < 2 (a batch statistic)")
        if not 0 < self.field_batch_fraction <= 4:
            problems.append(f"adapt.field_batch_fraction {self.field_batch_fraction} not in (0, 4]")
        if not 0.5 < self.consistency_threshold <= 1:
            problems.append(
                f"adapt.consistency_threshold {self.consistency_threshold} not in (0.5, 1]"
            )
        for name in ("dann_weight", "consistency_weight"):
            if getattr(self, name) < 0:
                problems.append(f"adapt.{name} {getattr(self, name)} < 0")
        if self.dann_hidden < 1:
            problems.append(f"adapt.dann_hidden {self.dann_hidden} < 1")
        if not 0 <= self.unpainted_holdback < 1:
            problems.append(f"adapt.unpainted_holdback {self.unpainted_holdback} not in [0, 1)")
        return problems


def adapt_method_names(method: str) -> tuple[str, ...]:
    """The methods ``adapt.method`` joins with "+" (() for "none" or ""); ValueError naming the
    choices when one is unknown or repeated."""
    names = [m.strip() for m in method.split("+") if m.strip()]
    if names in ([], ["none"]):
        return ()
    if any(m not in ADAPT_METHODS for m in names) or len(set(names)) != len(names):
        raise ValueError(
            f"adapt.method {method!r}: expected distinct methods out of "
            f"{', '.join(ADAPT_METHODS)} joined by '+' (e.g. dann+adabn), or none"
        )
    return tuple(names)


@dataclass
class HardNegativeConfig(Checked):
    """Hard-negative mining (``train/hard_negatives.py``): after a first training pass, score a
    labelled pool the model never trained on, then fine-tune in a second, shorter pass with the
    pool's highest-scoring non-lenses (and lowest-scoring lenses) replayed into training.

    The first pass is an ordinary run in ``OUT/first_pass``; the mined IDs go to
    ``OUT/hard_negatives.csv`` and what was mined to model.json; the final model is ``OUT``'s.
    """

    WHAT = "train config"

    enabled: bool = False
    # The pool: a store or layout with labels (the training data itself is allowed: then only
    # its training split is mined); None: simulate ``pool_size`` fresh cutouts into
    # OUT/hard_negative_pool-<settings>, with IDs after the training data's (never a repeat).
    pool: str | None = None
    pool_size: int = 2000
    pool_seed: int = 7
    pool_lens_fraction: float = 0.25  # non-lenses are what is mined: most of the pool
    pool_simulate: str | None = None  # a simulate config (name or YAML) for the pool's population
    pool_workers: int = 1  # simulation processes
    top_nonlenses: int = 200  # the highest-scoring non-lenses replayed as hard negatives
    bottom_lenses: int = 50  # the lowest-scoring lenses replayed too (0: none)
    tta: bool = False  # score the pool averaged over the 8 D4 transforms
    replay_copies: int = 4  # each mined cutout appears this many times in the training set
    epochs: int = 3  # of the second pass, fine-tuned from the first pass's weights
    lr_scale: float = 0.1  # the second pass runs at lr x this (no warm-up)
    # Where a time budget cannot hold all the configured epochs and mining, "mine": fewer
    # epochs, then mining; "epochs": no mining, the epochs that fit. On a 2.8 GHz Xeon cpu-best
    # with --adapt trained 13 epochs + mining or 18 without: AUROC -0.008 [-0.013, -0.003] but
    # TPR at FPR 1e-3 +0.060 [+0.010, +0.086] with mining (README, "Session 19").
    short_budget: str = "mine"

    def problems(self) -> list[str]:
        if not self.enabled:
            return []
        problems = []
        if self.short_budget not in SHORT_BUDGET:
            problems.append(
                f"hard_negatives.short_budget {self.short_budget!r}: expected one of "
                f"{', '.join(SHORT_BUDGET)}"
            )
        for name in ("pool_size", "replay_copies", "epochs", "pool_workers"):
            if getattr(self, name) < 1:
                problems.append(f"hard_negatives.{name} {getattr(self, name)} < 1")
        for name in ("top_nonlenses", "bottom_lenses"):
            if getattr(self, name) < 0:
                problems.append(f"hard_negatives.{name} {getattr(self, name)} < 0")
        if self.top_nonlenses + self.bottom_lenses < 1:
            problems.append("hard_negatives: top_nonlenses and bottom_lenses are both 0")
        if not 0 < self.lr_scale <= 1:
            problems.append(f"hard_negatives.lr_scale {self.lr_scale} not in (0, 1]")
        if not 0 <= self.pool_lens_fraction <= 1:
            problems.append(
                f"hard_negatives.pool_lens_fraction {self.pool_lens_fraction} not in [0, 1]"
            )
        return problems


@dataclass
class TrainConfig(Checked):
    """``lensfinder train``. The defaults are the recommended CPU recipe, the shipped
    ``cpu-small`` config (which states nothing else), so ``train(TrainConfig())`` trains what
    ``lensfinder train`` does: EfficientNet-Lite0 with the offline ImageNet weights, VIS at its
    native 0.1"/px (central 80x80 pixels) with NISP on the same field, D4 augmentation, balanced
    batches of 32, AdamW with a cosine schedule over 15 epochs (one of warm-up), at most 2000
    samples per epoch. The paper's recipe (Adam + L2, batch growth 8 -> 128, lr on plateaus) is
    in the ``table1-model<N>`` configs; ``gpu`` is the challenge-sized run."""

    WHAT = "train config"

    input: InputConfig = field(default_factory=InputConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    max_epochs: int = 15  # at 80 px: the time 10 epochs at 100 px took (~4 min on 2 cores)
    # Minutes the whole ``train`` command may take on this machine (painting and mining
    # included): before the first epoch the run times a few steps here and trains the most
    # epochs, at most ``max_epochs``, that fit (``train/time_budget.py``); everything that
    # follows max_epochs (schedule, resizing, SWA) follows the planned number. The same config
    # thus trains fewer epochs on a slower CPU instead of overrunning. None or 0: no budget.
    time_budget_minutes: float | None = None
    # With a budget, the plan is made again from the epochs' measured wall time: after the
    # first where it is >10% off the probe's estimate (a probe caught by another job's burst
    # planned 9 epochs where 13 fit), after later ones from their mean, both ways in the plan's
    # first half and after it only shrinking (README "Session 20"). Off where progressive
    # resizing, freezing or SWA derive epochs from max_epochs (their epochs are already set).
    time_budget_replan: bool = True
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"  # sgd: Nesterov, momentum 0.9
    lr: float = 1e-3
    # The paper's L2: a penalty (coef/2)|w|^2 on the weights, i.e. coef * w added to the gradient
    # (Adam/SGD ``weight_decay``). With optimizer adamw it must be 0: AdamW decays instead, by
    # ``decoupled_weight_decay`` (lr * coef * w per step, not an L2 penalty; 1e-4 is very weak).
    weight_decay: float = 0.0
    decoupled_weight_decay: float = 1e-4  # AdamW's decoupled decay; only with optimizer adamw
    augment_d4: bool = True
    # Random translations: each training sample's input cut out up to this many input pixels
    # off centre in x and y (independently; 4 = +-0.4" for native VIS), so the network does not
    # learn where exactly the simulator puts the deflector and sees more distinct inputs per
    # simulated object. Native stacked inputs only (the input is prepared this much wider each
    # side, then cut). 0: off; validation and prediction are always centred.
    augment_shift: int = 0
    balanced_sampler: bool = True
    # Focal loss (Lin et al. 2017, arXiv:1708.02002): BCE times (1 - p_t)^focal_gamma, where p_t
    # is the probability given to the true class, so cutouts the network already gets right
    # weigh little and the confusers (rings, companions, sub-threshold lenses) that set the
    # score threshold at low FPR weigh most. 0: plain BCE (the paper's loss).
    focal_gamma: float = 0.0
    # Batch 32 with a cosine schedule reached val AUROC 0.872 on 8,000 simulated cutouts, against
    # 0.830 for the paper-style plateau schedule with batch growth (16 -> 64), same budget.
    batch_size: int = 32  # with batch_growth: the start of the growth schedule
    batch_size_max: int = 32
    batch_growth: bool = False  # on plateau: double the batch (up to max) before lowering the lr
    lr_schedule: Literal["plateau", "cosine", "constant"] = "cosine"
    lr_factor: float = 0.5
    lr_min: float = 0.0  # plateaus never lower the lr below this (the paper ends near 1e-9)
    plateau_patience: int = 1
    warmup_epochs: int = 1
    # Stop when val AUROC falls this far below its best (400 validation objects: epoch-to-epoch
    # AUROC noise is ~0.03, so only a collapse) ...
    stop_auroc_drop: float = 0.1
    stop_patience: int = 6  # ... or after this many epochs without improvement
    # Cap per epoch (samples drawn; None: the whole training split), so epochs stay short and
    # comparable: cpu-small's 15 epochs of 2000 at 80 px take ~4 min on 2 idle cores.
    max_train_samples: int | None = 2000
    # Progressive resizing: the first ``low_res_fraction`` of the epochs (rounded down, at least
    # one full-size epoch left) see every training batch at ``low_res_size`` pixels across, so a
    # step costs a fraction of a full one (64 of 100: 2.3x the images/s of the bare loop here);
    # later epochs and the kept model at full size. ``low_res_method`` "crop": the central
    # low_res_size pixels at the native scale (arcs keep their look; the outer field, with its
    # neighbours, waits for the full-size epochs); "resample": the whole field at coarser pixels
    # (antialiased). A fraction, so --max-epochs keeps the proportion. low_res_size None: off.
    low_res_size: int | None = None
    low_res_fraction: float = 0.0
    low_res_method: Literal["crop", "resample"] = "crop"
    # Freezing the input end: the stem and the first ``frozen_stages - 1`` blocks get no
    # gradient (their large feature maps dominate the backward pass: stem + 3 blocks frozen,
    # 1.4x the images/s of the bare loop here) for the first ``frozen_fraction`` of the epochs
    # (1.0: all of training; rounded down). 0 stages: nothing frozen. Their batch norms still
    # follow each batch.
    frozen_stages: int = 0
    frozen_fraction: float = 1.0
    max_train_objects: int | None = None  # a subset of the training split (learning curves)
    limit_val_samples: int | None = None
    num_workers: int = 0
    accelerator: str = "auto"
    devices: int | str = 1  # "auto": every GPU (DDP); a count, indices "0,1", or -1
    num_nodes: int = 1
    precision: str = "auto"  # "auto": bf16/16-mixed on GPU, 32 on CPU
    channels_last: bool = True
    seed: int = 0
    # > 1: an ensemble, trained into OUT/member-k with seed + k and the same split (split.seed).
    members: int = 1
    # Learning from people's grades (``lensfinder grades export``): added to the training split.
    graded: str | None = None  # a grades export (CSV/Parquet with id, grade)
    graded_data: str | None = None  # where the graded IDs' cutouts are; None: the training data
    graded_lens: tuple[str, ...] = ("A", "B")
    graded_nonlens: tuple[str, ...] = ("X",)  # C (possible) is left out by default
    # "posterior": labels from the export's posterior lens probability instead (a C grade then
    # counts softly through it): a lens at or above graded_posterior_lens, a non-lens at or
    # below graded_posterior_nonlens, the uncertain ones in between left out.
    graded_by: Literal["grade", "posterior"] = "grade"
    graded_posterior_lens: float = 0.9
    graded_posterior_nonlens: float = 0.1
    init: str | None = None  # a run directory whose weights training starts from (fine-tuning)
    # The survey's unlabelled cutouts and what is done with them (``--adapt FIELD``).
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    # --- weight averaging and hard negatives (train/weight_averaging.py, train/hard_negatives.py)
    # "ema": an exponential moving average of the weights (and BN buffers) after every step;
    # "swa": the equal average of the weights at the end of each epoch from ``swa_start``, BN
    # statistics recomputed for them. Either way the averaged weights are what is validated,
    # early-stopped on and saved.
    weight_averaging: Literal["none", "ema", "swa"] = "none"
    # Per step, warmed up as min(decay, (1 + n) / (10 + n)) after n updates (as TensorFlow's
    # ExponentialMovingAverage with num_updates), so early epochs are not the initial weights'.
    ema_decay: float = 0.999
    swa_start: float = 0.5  # SWA averages from this fraction of max_epochs on
    swa_bn_samples: int | None = 1024  # training samples for SWA's BN statistics (None: an epoch)
    hard_negatives: HardNegativeConfig = field(default_factory=HardNegativeConfig)
    # With ``model.theta_e_head``: loss = BCE + theta_e_weight x the Gaussian NLL of theta_E
    # (arcsec) averaged over the batch's lenses with a known Einstein radius.
    theta_e_weight: float = 1.0
    # Where the arc is, as well as whether there is one (``train.arc_maps``): a small head on the
    # backbone's feature map of stride ``arc_map_stride`` predicts, per cell, the share of its
    # pixels that belong to a lens's arc (the simulator's arc maps, ``SimulateConfig.arc_maps``;
    # 0 everywhere for a non-lens, whatever unlensed or sub-threshold source it shows), and
    # loss = BCE + arc_map_weight x that per-cell BCE. Training only: the saved model is the
    # same classifier. Objects without an arc map (other data, painted lenses) add nothing to it.
    # Off: at 1.0, cpu-best on three seeds gained AUROC +0.002 and TPR at FPR 1e-2 +0.018 on the
    # shifted set on average, but not at 1e-3 (+0.037, -0.046, +0.014; README, "Session 29").
    arc_map_weight: float = 0.0
    arc_map_stride: int = 8
    # Which lenses of the training split are learnt from: None, every lens the label rule makes;
    # else a rule in the label rule's syntax (``labels.py``) that a lens must also meet, as
    # "sb_contrast >= 0.2" (its arc at least a fifth of the lens galaxy's light where the arc
    # is). The challenge's rule calls a source a lens once 20 pixels of it pass 1 sigma, however
    # deep under the lens galaxy's light, and a network taught that such a galaxy is a lens
    # learns to hedge on every plain galaxy; lens-finder training sets keep only mocks whose
    # arcs stand out (Canameras et al. 2020, HOLISMOKES I). The lenses left out are not made
    # non-lenses, they are not trained on (nor mined as hard lenses); validation and test keep
    # every lens, so what is measured is still the challenge's rule. Needs the catalogue
    # column(s) in the training data; counted in model.json ``dropped``. Off: "sb_contrast >=
    # 0.2" on two seeds of cpu-best cost shifted-set AUROC -0.019 and -0.008 (paired CIs below
    # zero) and moved TPR at FPR 1e-3 +0.042 and -0.026, within the seed noise (README,
    # "Session 31").
    train_lens_rule: str | None = None

    def problems(self) -> list[str]:
        problems = []
        if self.train_lens_rule is not None:
            try:
                LabelRule.parse(self.train_lens_rule)
            except ValueError as error:
                problems.append(f"train_lens_rule: {error}")
        if not self.arc_map_weight >= 0:
            problems.append(f"arc_map_weight {self.arc_map_weight} < 0")
        if self.arc_map_stride not in (4, 8, 16):
            problems.append(f"arc_map_stride {self.arc_map_stride}: one of 4, 8, 16")
        if self.batch_size < 1:
            problems.append(f"batch_size {self.batch_size} < 1")
        if self.batch_size_max < self.batch_size:
            problems.append(f"batch_size_max {self.batch_size_max} < batch_size {self.batch_size}")
        if not self.focal_gamma >= 0:
            problems.append(f"focal_gamma {self.focal_gamma} < 0")
        if not self.theta_e_weight >= 0:
            problems.append(f"theta_e_weight {self.theta_e_weight} < 0")
        if not 0 <= self.graded_posterior_nonlens < self.graded_posterior_lens <= 1:
            problems.append(
                f"need 0 <= graded_posterior_nonlens ({self.graded_posterior_nonlens}) < "
                f"graded_posterior_lens ({self.graded_posterior_lens}) <= 1"
            )
        if not 0 < self.lr_factor <= 1:
            problems.append(f"lr_factor {self.lr_factor} not in (0, 1]")
        if self.plateau_patience < 1 or self.stop_patience < 1:
            problems.append("plateau_patience and stop_patience must be >= 1")
        if self.optimizer == "adamw" and self.weight_decay:
            problems.append(
                f"weight_decay {self.weight_decay:g} (an L2 penalty) with optimizer adamw, which "
                "decays weights instead: use optimizer adam, or decoupled_weight_decay for AdamW's"
            )
        if self.optimizer != "adamw" and self.decoupled_weight_decay:
            problems.append(
                f"decoupled_weight_decay {self.decoupled_weight_decay:g} needs optimizer adamw "
                f"(not {self.optimizer}); the L2 penalty is weight_decay"
            )
        if not self.lr > 0:
            problems.append(f"lr {self.lr} must be > 0")
        for name in ("max_epochs", "num_nodes", "members"):
            if getattr(self, name) < 1:
                problems.append(f"{name} {getattr(self, name)} < 1")
        for name in ("max_train_samples", "max_train_objects", "limit_val_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                problems.append(f"{name} {getattr(self, name)} < 1")
        if self.time_budget_minutes is not None and not self.time_budget_minutes >= 0:
            problems.append(f"time_budget_minutes {self.time_budget_minutes} < 0")
        for name in ("lr_min", "weight_decay", "decoupled_weight_decay", "num_workers"):
            if getattr(self, name) < 0:
                problems.append(f"{name} {getattr(self, name)} < 0")
        if self.warmup_epochs < 0:
            problems.append(f"warmup_epochs {self.warmup_epochs} < 0")
        if self.augment_shift < 0:
            problems.append(f"augment_shift {self.augment_shift} < 0")
        elif self.augment_shift and not self.augment_d4:
            problems.append("augment_shift needs augment_d4 (the translations are augmentation)")
        elif self.augment_shift and (
            self.input.vis_sampling != "native" or self.input.layout != "stacked"
        ):
            problems.append(
                "augment_shift needs input.vis_sampling native and layout stacked (a shift in "
                "VIS pixels is not a whole pixel of binned VIS or of native NISP)"
            )
        elif self.input.size + 2 * self.augment_shift > MAX_INPUT_SIZE:
            problems.append(
                f"augment_shift {self.augment_shift}: input.size {self.input.size} + 2 x shift "
                f"exceeds the {MAX_INPUT_SIZE} px VIS cutout"
            )
        if self.split.val_fraction <= 0:
            problems.append("split.val_fraction must be > 0: training selects on val AUROC")
        return (
            problems
            + self._low_res_problems()
            + self._averaging_problems()
            + self._adapt_problems()
        )

    def low_res_epochs(self) -> int:
        """Epochs at ``low_res_size`` (progressive resizing): the fraction, rounded down, leaving
        at least one full-size epoch."""
        if self.low_res_size is None:
            return 0
        return min(math.floor(self.low_res_fraction * self.max_epochs), self.max_epochs - 1)

    def frozen_epochs(self) -> int:
        """Epochs with ``frozen_stages`` frozen: the fraction of max_epochs, rounded down."""
        if not self.frozen_stages:
            return 0
        return math.floor(self.frozen_fraction * self.max_epochs)

    def _low_res_problems(self) -> list[str]:
        """Progressive resizing and freezing against the input size and joint adaptation."""
        problems = _outside(self, ("frozen_stages",), 0)
        problems += _outside(self, ("low_res_fraction", "frozen_fraction"), 0, 1)
        if self.frozen_stages and self.model.freeze_backbone:
            problems.append("frozen_stages with model.freeze_backbone: the backbone is frozen")
        if self.frozen_stages and (str(self.devices) != "1" or self.num_nodes != 1):
            # DDP fixes the parameters it reduces when it wraps the model, before epoch 0
            problems.append("frozen_stages trains on one process only: set devices: 1")
        if self.low_res_size is None:
            return problems
        if not 8 <= self.low_res_size < self.input.size:
            problems.append(
                f"low_res_size {self.low_res_size}: expected 8 <= size < input.size "
                f"({self.input.size})"
            )
        methods = () if self.adapt.field is None else adapt_method_names(self.adapt.method)
        if {"dann", "consistency"} & set(methods):
            problems.append(
                "low_res_size with adapt.method dann/consistency: the field's batches stay at "
                "full size; use one or the other"
            )
        return problems

    def _averaging_problems(self) -> list[str]:
        problems = []
        if not 0.0 < self.ema_decay < 1.0:
            problems.append(f"ema_decay {self.ema_decay} not in (0, 1)")
        if not 0.0 <= self.swa_start <= 1.0:
            problems.append(f"swa_start {self.swa_start} not in [0, 1]")
        if self.swa_bn_samples is not None and self.swa_bn_samples < 1:
            problems.append(f"swa_bn_samples {self.swa_bn_samples} < 1")
        return problems

    def _adapt_problems(self) -> list[str]:
        """The adapt section against the rest (its own values it checks itself)."""
        adapt = self.adapt
        methods = () if adapt.field is None else adapt_method_names(adapt.method)
        problems = []
        if adapt.only:  # its --init and --adapt are checked when it runs (adapt_only)
            if adapt.field is not None and methods != ("adabn",):
                problems.append(
                    f"adapt.only runs AdaBN alone (method adabn), not {adapt.method!r}: dann and "
                    "consistency learn jointly with labelled training"
                )
            if self.members > 1:
                problems.append("adapt.only adapts the --init model (an ensemble: each member)")
        if self.model.norm != "batch" and "adabn" in methods:
            problems.append("adapt.method adabn needs batch norm (model.norm batch)")
        return problems


@dataclass
class PredictConfig(Checked):
    batch_size: int = 64
    tta: bool = False  # average over the 8 D4 transforms
    # "onnx-int8": the ONNX model statically quantised to int8 (QDQ), calibrated on cutouts of
    # the data (a scan: its own data; else synthetic ones). About 2x faster on CPUs with VNNI;
    # scores move a little (see predict/quantize.py), so a scan never mixes it with float.
    backend: Literal["torch", "onnx", "onnx-int8"] = "torch"
    ensemble_average: Literal["probability", "logit"] = "probability"
    onnx_threads: int | None = None  # ONNX Runtime intra-op threads per session (None: its default)
    # Read and prepare the next chunk of cutouts in a background thread while the model runs on
    # this one (same chunks, same scores). None: when it pays, i.e. the model runs on a GPU or
    # its CPU threads leave a core free; on busy cores the thread only competes with inference
    # (measured: a 2-worker scan on 2 cores ran 5-15% slower with it).
    prefetch: bool | None = None
    # Torch backend: "auto" runs bf16 autocast on a CUDA GPU that has bf16 (with pinned-memory
    # transfers), float32 elsewhere; "bfloat16" forces it (also on CPU, e.g. to check scores).
    torch_precision: Literal["auto", "float32", "bfloat16"] = "auto"

    WHAT = "predict"

    def problems(self) -> list[str]:
        problems = _outside(self, ("batch_size", "onnx_threads"), 1)
        if self.backend != "torch" and self.torch_precision == "bfloat16":
            problems.append(
                f"torch_precision bfloat16 is for the torch backend, not {self.backend} "
                "(onnx-int8 is its reduced precision)"
            )
        return problems


@dataclass
class EvaluateConfig(Checked):
    predict: PredictConfig = field(default_factory=PredictConfig)
    bootstrap: int = 1000
    purity_top_n: tuple[int, ...] = (10, 50, 100, 1000)
    # Survey terms: expected purity and candidates per million galaxies at these lens
    # prevalences (lenses per galaxy) and completeness levels.
    prevalences: tuple[float, ...] = (1e-3, 1e-4)
    completeness_levels: tuple[float, ...] = (0.5, 0.8, 0.9)
    tpr_at_fpr: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
    # "auto": the test split on the models' own training data, every object on other data.
    split: Literal["auto", "test", "val", "train", "all"] = "auto"
    # Where per-kind false positives and per-bin completeness are measured (overall FPR).
    operating_fprs: tuple[float, ...] = (1e-2, 1e-3)
    einstein_radius_bins: tuple[float, ...] = (0.5, 0.8, 1.2, 2.0)  # bin edges, arcsec
    # theta_E estimates (models with the head) are also summed up over this range of true
    # theta_E, where issue 23 set its goal (RMS error <= 0.15", 68% coverage 0.6-0.76).
    theta_e_goal_range: tuple[float, float] = (0.5, 2.0)  # arcsec
    source_mag_bins: tuple[float, ...] = (23.0, 24.0, 25.0, 26.0)  # bin edges, AB mag
    # A temperature fitted on the model's val split (on the evaluated set when that is unknown)
    # makes scores probabilities; its ECE before/after uses this many equal-width bins.
    calibrate: bool = True
    calibration_bins: int = 10
    failures: int = 12  # worst false positives and missed lenses drawn in the report (0: none)

    WHAT = "evaluate"

    def problems(self) -> list[str]:
        return _outside(self, ("calibration_bins",), 2) + _outside(
            self, ("failures", "bootstrap"), 0
        )


@dataclass
class ScanConfig(Checked):
    predict: PredictConfig = field(default_factory=PredictConfig)
    # ``scan --tiles --catalog``: the catalogue's columns, selection and flag mask, as for
    # ``lensfinder cutouts`` (its chunk and workers are not used: the scan's workers cut).
    cutouts: CutoutsConfig = field(default_factory=CutoutsConfig)
    # Cutouts per shard; None: from the data size and the worker threads (about 4 shards per
    # thread, 64 to 2048 each), so small scans keep every worker busy too. The size used is
    # recorded in scan.json, and a resumed scan keeps it.
    shard_size: int | None = None
    workers: int = 1
    threads_per_worker: int = 1
    memory_limit: str = "4GiB"
    # Without --scheduler, a scan of fewer cutouts than this scores its shards in this process
    # (the same shards, files and catalogue; workers x threads_per_worker shards at once in
    # threads) instead of starting a LocalCluster: measured on 2 cores with 2 workers, the same
    # steady rate as the cluster's, scoring from 2.4 s instead of 7.1 s, and the whole command
    # shorter at 2,000 (10.5 vs 15.5 s) and 8,000 cutouts (35 vs 43 s); the cluster is for
    # larger scans (a memory limit per worker, a crashed worker's shard redone) and for other
    # machines (README, "Measured results"). 0: always a cluster.
    local_below: int = 10_000

    WHAT = "scan"

    def problems(self) -> list[str]:
        return _outside(self, ("shard_size", "workers", "threads_per_worker"), 1) + _outside(
            self, ("local_below",), 0
        )


@dataclass
class ColourViewConfig(Checked):
    """How a cutout is drawn in colour, as in the Euclid Q1 lens searches
    (``presentation.composite.draw_view``)."""

    # vis-nisp: VIS luminance with NISP colour; asinh: H, Y, VIS as red, green, blue, each with
    # its own arcsinh softening; mtf: the same with a midtones transfer function; vis: VIS only.
    view: Literal["vis-nisp", "asinh", "mtf", "vis"] = "vis-nisp"
    asinh_band_softening: tuple[float, ...] = (3.0, 2.0, 2.0, 2.0)  # VIS, Y, J, H, noise sigmas
    mtf_background: float = 0.25  # the MTF view maps the sky level to this grey

    WHAT = "colour view"

    def problems(self) -> list[str]:
        problems = []
        if not 0 < self.mtf_background < 1:
            problems.append(f"mtf_background must be in (0, 1), got {self.mtf_background}")
        if len(self.asinh_band_softening) != len(BANDS_ALL) or not all(
            s > 0 for s in self.asinh_band_softening
        ):
            problems.append(
                f"asinh_band_softening needs {len(BANDS_ALL)} values > 0 (VIS, Y, J, H), got "
                f"{list(self.asinh_band_softening)}"
            )
        return problems


@dataclass
class GalleryConfig(Checked):
    top: int = 100
    columns: int = 10
    stamp_pixels: int = 128
    asinh_softening: float = 3.0
    # Show only candidates scored in [score_min, score_max] (either alone: the other end open).
    score_min: float | None = None
    score_max: float | None = None
    known_lenses: str | None = None  # a catalogue file, or "lenscat"; None: no badges
    radius_arcsec: float = 2.0  # match radius for known lenses
    colour: ColourViewConfig = field(default_factory=ColourViewConfig)

    WHAT = "gallery"

    def problems(self) -> list[str]:
        problems = _outside(self, ("top", "columns", "stamp_pixels"), 1)
        problems += _outside(self, ("score_min", "score_max"), 0, 1)
        if self.score_range is not None and not self.score_range[0] <= self.score_range[1]:
            problems.append(f"score range [{self.score_range[0]}, {self.score_range[1]}] is empty")
        if not self.radius_arcsec > 0 or not self.asinh_softening > 0:
            problems.append(
                f"radius_arcsec {self.radius_arcsec} and asinh_softening {self.asinh_softening} "
                "must be > 0"
            )
        return problems

    @property
    def score_range(self) -> tuple[float, float] | None:
        """The chosen score interval, or None when the top candidates are wanted."""
        if self.score_min is None and self.score_max is None:
            return None
        low = 0.0 if self.score_min is None else self.score_min
        return (low, 1.0 if self.score_max is None else self.score_max)


@dataclass
class GradingConfig(Checked):
    """Hidden sentinels, graders' skill, a posterior per candidate, retirement (``data.swap``)."""

    sentinel_rate: float = 0.05  # the share of the grading queue that is sentinels
    skill_prior_mean: float = 0.75  # Beta prior of P("lens"|lens) and P("not"|non-lens)...
    skill_prior_strength: float = 4.0  # ...worth this many sentinels
    c_weight: float = 0.5  # a C grade is this much of a "lens" vote (the rest "not")
    # prior = logistic(logit(prior_base_rate) + prior_weight x logit(network score))
    prior_base_rate: float = 0.1  # lenses among the candidates before the score is seen
    prior_weight: float = 0.5
    retire_below: float = 0.005  # posterior under this: retired as not a lens
    retire_above: float = 0.95  # posterior over this: retired as a lens
    retire_min_grades: int = 1
    skill_block: int = 25  # a grader sees their own skill as of whole blocks of this many grades

    WHAT = "grading"

    def problems(self) -> list[str]:
        problems = _outside(self, ("sentinel_rate", "c_weight"), 0, 1)
        problems += _outside(self, ("retire_min_grades",), 0) + _outside(self, ("skill_block",), 1)
        for name in ("skill_prior_mean", "prior_base_rate"):
            if not 0 < getattr(self, name) < 1:
                problems.append(f"{name} must be in (0, 1), got {getattr(self, name)}")
        if not self.skill_prior_strength > 0 or not self.prior_weight >= 0:
            problems.append(
                f"skill_prior_strength {self.skill_prior_strength} must be > 0 and prior_weight "
                f"{self.prior_weight} >= 0"
            )
        if not 0 <= self.retire_below < self.retire_above <= 1:
            problems.append(
                f"need 0 <= retire_below ({self.retire_below}) < retire_above "
                f"({self.retire_above}) <= 1"
            )
        return problems


@dataclass
class InspectConfig(Checked):
    """``lensfinder inspect``: the grading web app."""

    host: str = "127.0.0.1"  # any other address needs a token
    port: int = 8765
    grader: str = "grader"  # the default name; each page can set its own
    db: str | None = None  # a SQLAlchemy URL or a file; None: grades.sqlite in the scan dir
    stamp_pixels: int = 320  # side of every picture on the page
    asinh_softening: float = 3.0  # the "asinh" stretch, in noise sigmas
    linear_softening: float = 50.0  # the "linear" stretch: nearly linear up to bright cores
    zoom: float = 2.0  # the zoom toggle shows the central 1/zoom of the cutout
    cache_images: int = 512  # rendered PNGs kept in memory
    # Known lenses and non-lenses (a labelled layout or store, e.g. one 'lensfinder inject'
    # painted onto the field's own galaxies) mixed hidden into the grading queue.
    sentinels: str | None = None
    grading: GradingConfig = field(default_factory=GradingConfig)
    colour: ColourViewConfig = field(default_factory=ColourViewConfig)

    WHAT = "inspect"

    def problems(self) -> list[str]:
        problems = _outside(self, ("port",), 1, 65535) + _outside(self, ("cache_images",), 0)
        if not self.zoom >= 1 or self.stamp_pixels < 16:
            problems.append(f"zoom {self.zoom} must be >= 1, stamp_pixels >= 16")
        return problems


@dataclass
class DemoConfig(Checked):
    """The ``make demo`` run: small enough for 10 minutes on 2 CPU cores, install included."""

    n_train: int = 3000  # more simulated cutouts is what buys quality on a CPU
    n_field: int = 600
    field_lens_fraction: float = 0.05  # lenses are rare in a survey field
    train_config: str = "cpu-small"  # native VIS resolution: the best quality in the time
    max_epochs: int | None = None  # None: the training config's own (cpu-small: 15)
    # Minutes training may take (``time_budget_minutes``): fewer epochs on a slower CPU, so the
    # demo keeps its 10 minutes anywhere. Cpu-small's 15 epochs take 223 s of the demo on 2 cores
    # of an AMD EPYC but 373 s on a 2.8 GHz Intel Xeon, where the clean-clone `make demo` then took
    # 10.7 min (12 epochs: 9.7 min; test AUROC 0.769 against 0.782, CIs +-0.04). 5 minutes kept
    # the Xeon at 9.1 min, and at 10.1 min on a day it ran ~20% slower (README): 4.5 leaves room.
    # None: no budget.
    train_minutes: float | None = 4.5
    workers: int = 2
    gallery_top: int = 48
    seed: int = 0

    WHAT = "demo"

    def problems(self) -> list[str]:
        problems = _outside(self, ("n_train", "n_field", "workers", "gallery_top", "max_epochs"), 1)
        problems += _outside(self, ("train_minutes",), 0)
        return (
            problems + _outside(self, ("field_lens_fraction",), 0, 1) + _outside(self, ("seed",), 0)
        )


@dataclass
class BnStudyConfig(Checked):
    """``lensfinder bn-study``: AUROC against test batch size with BN in training mode."""

    sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)  # test batch sizes
    split: Literal["test", "val", "train", "all"] = "test"
    seed: int = 0  # of the random batch orders and of the subset
    max_objects: int | None = 4000  # cutouts held in memory for the ~35 passes per model
    bootstrap: int = EvaluateConfig.bootstrap  # AUROC CI resamples

    WHAT = "bn-study"

    def problems(self) -> list[str]:
        problems = _outside(self, ("max_objects",), 1) + _outside(self, ("seed", "bootstrap"), 0)
        if not self.sizes or min(self.sizes) < 1:
            problems.append(f"batch sizes must be >= 1, got {list(self.sizes)}")
        return problems


@dataclass(frozen=True)
class Table1Budget(Checked):
    """How ``reproduce table1`` scales the eight ``table1-model<N>`` configs: ``train`` holds
    TrainConfig fields (nested like the YAML) applied to every row alike; ``why`` is said in
    the table header."""

    name: str
    why: str
    train: Mapping[str, Any] = field(default_factory=dict)
    bootstrap: int = EvaluateConfig.bootstrap  # AUROC CI resamples
    eval_batch_size: int = PredictConfig.batch_size
    simulate_n: int | None = None  # objects to simulate when no data is given (None: data needed)
    simulate_workers: int = 2

    WHAT = "table1 budget"

    def problems(self) -> list[str]:
        problems = _outside(self, ("eval_batch_size", "simulate_n", "simulate_workers"), 1)
        return problems + _outside(self, ("bootstrap",), 0)

    def apply(self, config: TrainConfig, where: str = "") -> TrainConfig:
        return from_dict(TrainConfig, merge(to_dict(config), dict(self.train)), where or self.name)


TABLE1_BUDGETS: dict[str, Table1Budget] = {
    "gpu": Table1Budget(
        name="gpu",
        why="the configs as shipped (the paper's settings: full 200x200 grid, up to 50 epochs, "
        "whole training split per epoch, batch growth up to 128), on one device per row (a "
        "multi-GPU launch would re-run this whole command in every process)",
        train={"devices": 1},
    ),
    "cpu": Table1Budget(
        name="cpu",
        why="every row's recipe kept (augmentation, sampling, starting batch, epochs, L2, BN "
        "method, schedule) and what costs time scaled alike in every row, to fit ~15 minutes on "
        "2 CPU cores with its own simulated set of 1,200 objects: rows compare with each other, "
        "not with the paper's numbers (other data, ~1% of its training objects and steps)",
        train={
            "input": {"size": 64},
            "max_train_samples": 768,  # samples drawn per epoch
            "limit_val_samples": 256,
            # A validation AUROC on ~100 objects scatters by ~0.05: stop on real drops only.
            "stop_auroc_drop": 0.1,
            "num_workers": 0,
            "devices": 1,
        },
        simulate_n=1200,
    ),
}


# Model files (model.json) written before a field existed were made with the value it then had
# by default; a section that lacks the field is read with this value, not today's default.
MODEL_FILE_LEGACY: dict[str, dict[str, Any]] = {
    "input": {"vis_sampling": "bin", "sky": "constant"},
    "model": {"head_hidden": 128},
}
MIN_INPUT_SIZE = 8
MAX_INPUT_SIZE = 200  # the VIS cutout's side: "native" cannot crop more, "bin" only upsamples


def input_problems(input_cfg: InputConfig) -> list[str]:
    """The input's bands known, distinct and non-empty (stems are built for exactly these) and fit
    for the layout, its size and stretch in range; one check for the model and its input alike."""
    problems = []
    bands = tuple(input_cfg.bands)
    unknown = [b for b in bands if b not in BANDS_ALL]
    if not bands or unknown or len(set(bands)) != len(bands):
        problems.append(
            f"input.bands {list(bands)}: need one or more distinct bands out of {list(BANDS_ALL)}"
        )
    if input_cfg.layout == "two_branch" and ("VIS" not in bands or len(bands) < 2):
        problems.append("input layout two_branch needs VIS and at least one NISP band")
    if not MIN_INPUT_SIZE <= input_cfg.size <= MAX_INPUT_SIZE:
        problems.append(
            f"input size {input_cfg.size}: expected {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE} pixels "
            f"(a VIS cutout is {MAX_INPUT_SIZE} pixels across; more only interpolates)"
        )
    if not (input_cfg.asinh_softening > 0 and input_cfg.clip > 0):
        problems.append(
            f"input asinh_softening {input_cfg.asinh_softening} and clip {input_cfg.clip} must "
            "be > 0 (they divide and bound every pixel)"
        )
    return problems


def check_bands(input_cfg: InputConfig) -> tuple[str, ...]:
    """The input's bands, checked again (a config may have been edited after it was made)."""
    input_cfg.validate()
    return tuple(input_cfg.bands)


C = TypeVar("C")
# Integer fields with a floor wherever they appear (numpy's seed sequences refuse negatives).
AT_LEAST: dict[str, int] = {"seed": 0}


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Coerce a YAML value to the annotated type (nested dataclasses, tuples, optionals)."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ConfigError(f"config {where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        if len(errors) == 1:  # ``X | None``: X's own reason says more
            raise ConfigError(errors[0])
        raise ConfigError(f"config {where}: {value!r} fits none of {tp}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config {where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)[:1]
        return tuple(_convert(item, v, where) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config {where}: expected a mapping, got {value!r}")
        key_type, value_type = typing.get_args(tp)
        return {
            _convert(key_type, k, where): _convert(value_type, v, f"{where}.{k}")
            for k, v in value.items()
        }
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"config {where}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):  # YAML's .nan/.inf: no setting means "not a number"
            raise ConfigError(f"config {where}: {value!r} is not a finite number")
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        leaf = where.rpartition(".")[2]
        if leaf in AT_LEAST and value < AT_LEAST[leaf]:
            raise ConfigError(f"config {where}: {value} is below {AT_LEAST[leaf]}")
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    if tp is Any:
        return value
    raise ConfigError(f"config {where}: {value!r} is not a {getattr(tp, '__name__', tp)}")


def from_dict(cls: type[C], data: dict[str, Any], where: str = "") -> C:
    """Build ``cls`` from a nested dict, refusing unknown keys."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"config {where or cls.__name__}: unknown key(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)  # a Checked config checks its values as it is made


def to_dict(config: Any) -> dict[str, Any]:
    """A plain, JSON/YAML-safe dict (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        return v

    return plain(asdict(config))


def flat_settings(config: Any) -> dict[str, Any]:
    """Every setting as ``{"section.key": value}``, for listing what two configs change."""

    def walk(data: dict[str, Any], prefix: str) -> dict[str, Any]:
        flat: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(value, dict):
                flat |= walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value
        return flat

    return walk(to_dict(config), "")


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A config file path, or the name of a shipped config (``cpu-small``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = SHIPPED_CONFIGS / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    names = sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml"))
    raise ConfigError(
        f"config {str(name_or_path)!r}: no such file, and not a shipped config ({', '.join(names)})"
    )


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` applied; nested mappings are merged key by key."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(cls: type[C], name_or_path: str | Path | None = None, **overrides: Any) -> C:
    """Load a YAML config (file or shipped name) into ``cls``; ``overrides`` win over the file.

    Nested overrides merge: ``input={"size": 64}`` changes the size and keeps the file's bands.
    """
    import yaml

    data: dict[str, Any] = {}
    if name_or_path is not None:
        path = resolve_config_path(name_or_path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(yaml_error_line(path, exc)) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read config ({exc})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at top level")
        data = loaded or {}
        try:
            return from_dict(cls, merge(data, overrides))
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return from_dict(cls, overrides)


def yaml_error_line(path: Path, exc: Exception) -> str:
    """PyYAML's several-line message as one: ``file:line:column: problem (context)``."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    text = f"{problem} ({context})" if context else str(problem)
    return f"{where}: not valid YAML: {' '.join(text.split())}"


def save_config(config: Any, path: str | Path) -> None:
    import yaml

    atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))
