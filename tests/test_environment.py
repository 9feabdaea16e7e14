"""The simulator's environments: neighbour counts from the cited sky, the same around lenses.

Scenes only (no rendering): a few thousand environment draws take seconds. The expected numbers
come from ``lensfinder.simulate.sky``, which cites them; tolerances are four standard errors.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
from scipy import stats

from lensfinder.config import NONLENS_MIX, SimulateConfig
from lensfinder.errors import ConfigError
from lensfinder.simulate import scene as scenes
from lensfinder.simulate import sky
from lensfinder.simulate.quantities import NEIGHBOUR_RADII, neighbour_counts
from lensfinder.simulate.simulation import validate
from lensfinder.surveys import EUCLID

BANDS = EUCLID.bands
DEFAULT = SimulateConfig()
N = 2000


def draw(config: SimulateConfig, lens: bool, n: int = N, seed: int = 0) -> list[scenes.Scene]:
    """Scenes as ``simulate`` draws them (central galaxy, then its environment), no source."""
    drawn = []
    for i in range(n):
        rng = np.random.default_rng([seed, i, int(lens)])
        if lens:
            scene = scenes.draw_lens_galaxy(rng, BANDS, "lens", config)
        else:
            kind = scenes.draw_nonlens_kind(rng, config)
            scene = scenes.draw_nonlens(rng, BANDS, kind, config)
        scenes.add_field(rng, BANDS, scene, config)
        drawn.append(scene)
    return drawn


def counts(drawn: list[scenes.Scene]) -> np.ndarray:
    """n_gal_3/5/10 of each scene, shape (scenes, 3)."""
    return np.array([list(neighbour_counts(s).values()) for s in drawn])


def within(values: np.ndarray, expected: float, sigmas: float = 4.0) -> bool:
    """The sample mean is within ``sigmas`` standard errors of ``expected``."""
    error = max(values.std(ddof=1), 1e-9) / math.sqrt(len(values))
    return abs(values.mean() - expected) < sigmas * error


@pytest.fixture(scope="module")
def default_scenes() -> tuple[list[scenes.Scene], list[scenes.Scene]]:
    """Lens scenes and non-lens scenes (every kind) with the default settings."""
    return draw(DEFAULT, lens=True), draw(DEFAULT, lens=False)


def test_the_cited_counts_give_the_documented_densities():
    """30/arcmin^2 to VIS 24.5 with slope 0.33 (Euclid, Metcalfe et al. 2001): 64/arcmin^2 to
    25.5, i.e. 5.6 unrelated galaxies within 10", 1.4 within 5", 0.5 within 3"."""
    field_only = dataclasses.replace(DEFAULT, satellites_per_host=0.0, group_fraction=0.0)
    assert sky.field_density(DEFAULT) * 3600 == pytest.approx(64, rel=0.02)
    expected = [sky.expected_neighbours(field_only, r, 20.0) for r in NEIGHBOUR_RADII]
    assert expected == pytest.approx([0.50, 1.40, 5.58], abs=0.02)


def test_field_galaxies_follow_the_number_counts():
    """Unrelated neighbours alone: Poisson counts within 3/5/10" at the cited density, and
    magnitudes with the cited slope."""
    config = dataclasses.replace(
        DEFAULT, satellites_per_host=0.0, group_fraction=0.0, nonlens_mix={"elliptical": 1.0}
    )
    drawn = draw(config, lens=False)
    n_gal = counts(drawn)
    for column, radius in enumerate(NEIGHBOUR_RADII):
        expected = sky.expected_neighbours(config, radius, 20.0)
        assert within(n_gal[:, column], expected), (radius, n_gal[:, column].mean(), expected)
        assert n_gal[:, column].var() == pytest.approx(expected, rel=0.2)  # Poisson
    mags = np.array([n.mag for s in drawn for n in s.neighbours])
    lo, hi = config.field_mag_range
    bright = (10 ** (0.33 * (24.5 - lo)) - 1) / (10 ** (0.33 * (hi - lo)) - 1)
    assert np.mean(mags < 24.5) == pytest.approx(bright, abs=0.02)
    assert mags.min() >= lo and mags.max() <= hi


def test_neighbour_counts_match_the_cited_field_satellites_and_groups():
    """The whole environment of non-lens ellipticals against sky.expected_neighbours: field
    galaxies, visible satellites (Nierenberg et al. 2011) and group members."""
    config = dataclasses.replace(DEFAULT, nonlens_mix={"elliptical": 1.0})
    drawn = draw(config, lens=False)
    n_gal = counts(drawn)
    host_mags = [scenes.total_magnitude(s.central, "VIS") for s in drawn]
    for column, radius in enumerate(NEIGHBOUR_RADII):
        expected = np.mean([sky.expected_neighbours(config, radius, m) for m in host_mags])
        assert within(n_gal[:, column], float(expected)), (radius, n_gal[:, column].mean())
    assert n_gal[:, 2].mean() > 6.5  # well above the old simulator's 2.2 within 10"


def test_lenses_and_nonlenses_have_the_same_environment(default_scenes):
    """Neither a neighbour nor its absence may tell the label: n_gal_3/5/10 of lens scenes and
    of non-lens scenes (all kinds, look-alike systems included) are one distribution. (Before,
    non-lenses had 0.58 galaxies within 3" and lenses 0.17: KS p ~ 1e-22.)"""
    lenses, nonlenses = (counts(drawn) for drawn in default_scenes)
    for column, radius in enumerate(NEIGHBOUR_RADII):
        a, b = lenses[:, column], nonlenses[:, column]
        error = math.hypot(a.std(ddof=1), b.std(ddof=1)) / math.sqrt(N)
        assert abs(a.mean() - b.mean()) < 4 * error, (radius, a.mean(), b.mean())
        assert stats.ks_2samp(a, b).pvalue > 0.01, radius


def test_lens_galaxies_get_look_alike_systems_groups_and_debris_as_often_as_nonlenses(
    default_scenes,
):
    lenses, nonlenses = default_scenes
    total = sum(NONLENS_MIX.values())
    for tag, rate in [
        ("satellites", NONLENS_MIX["satellites"] / total),
        ("merger", NONLENS_MIX["merger"] / total),
        ("group", DEFAULT.group_fraction),
        ("tidal", DEFAULT.tidal_fraction),
    ]:
        for drawn in (lenses, nonlenses):
            has = np.array([tag in s.environment for s in drawn], dtype=float)
            assert within(has, rate), (tag, has.mean(), rate)


def test_satellites_of_ellipticals_occur_at_the_cited_rate():
    """Nierenberg et al. 2011: 1.7 satellites within 5.5 mag per host, projected density
    ~ 1/R (uniform in R over 0.5-6"), aligned with the host's major axis; half blue."""
    config = dataclasses.replace(
        DEFAULT,
        field_count_density=0.0,
        field_mag_range=(18.0, 40.0),  # no satellite too faint to draw
        group_fraction=0.0,
        nonlens_mix={"elliptical": 1.0},
    )
    drawn = draw(config, lens=False)
    per_host = np.array([len(s.neighbours) for s in drawn], dtype=float)
    assert within(per_host, config.satellites_per_host)
    satellites = [(n, s) for s in drawn for n in s.neighbours]
    assert {n.origin for n, _ in satellites} == {"satellite"}
    radii = np.array([n.distance for n, _ in satellites])
    assert stats.kstest(radii, stats.uniform(0.5, 5.5).cdf).pvalue > 0.01
    gaps = np.array([n.mag - scenes.total_magnitude(s.central, "VIS") for n, s in satellites])
    major = (10 ** (0.2 * 1.5) - 1) / (10 ** (0.2 * 5.5) - 1)  # within 1.5 mag: 1:4 pairs
    assert np.mean(gaps < 1.5) == pytest.approx(major, abs=0.02)
    assert gaps.min() >= 0 and gaps.max() <= 5.5
    blue = np.array([n.blue for n, _ in satellites], dtype=float)
    assert within(blue, config.satellite_blue_fraction)
    # aligned: the angle to the host's major axis is concentrated near 0 (mod pi)
    offsets = []
    for n, s in satellites:
        shape = s.central[0].shape
        host_phi = 0.5 * math.atan2(shape["e2"], shape["e1"])
        offsets.append(math.cos(2 * (math.atan2(n.y, n.x) - host_phi)))
    assert np.mean(offsets) > 0.25  # isotropic: 0


def test_blue_companions_sit_1_to_3_arcsec_from_ellipticals_at_the_cited_rate():
    """With the default sky: visible blue satellites 1-3" from an elliptical, per host, as the
    satellite numbers imply (0.31 per host when none is too faint)."""
    config = dataclasses.replace(DEFAULT, nonlens_mix={"elliptical": 1.0})
    drawn = draw(config, lens=False)
    near_blue = np.array(
        [sum(n.origin == "satellite" and n.blue and 1 <= n.distance <= 3 for n in s.neighbours)
         for s in drawn],
        dtype=float,
    )  # fmt: skip
    lo, hi = config.satellite_radius_range
    share = config.satellite_blue_fraction * (3 - 1) / (hi - lo)
    expected = np.mean(
        [config.satellites_per_host * share
         * sky.visible_satellite_fraction(config, scenes.total_magnitude(s.central, "VIS"))
         for s in drawn]
    )  # fmt: skip
    assert within(near_blue, float(expected))
    assert near_blue.mean() > 0.2


def test_groups_have_two_to_five_bright_members_within_ten_arcsec():
    config = dataclasses.replace(DEFAULT, group_fraction=1.0, nonlens_mix={"elliptical": 1.0})
    for s in draw(config, lens=False, n=300):
        members = [n for n in s.neighbours if n.origin == "group"]
        assert 1 <= len(members) <= 4  # and the central galaxy
        host = scenes.total_magnitude(s.central, "VIS")
        assert all(n.distance < 10 and n.mag < host + 2.6 for n in members)


def test_unlensed_background_galaxies_sit_mostly_just_outside_the_caustic():
    """elliptical+source: most unlensed sources 1-2.2 theta_E from the deflector (singly
    imaged, weakly distorted, beside it), none inside the Einstein radius."""
    betas = []
    for i in range(500):
        rng = np.random.default_rng([3, i])
        scene = scenes.draw_nonlens(rng, BANDS, "elliptical+source", DEFAULT)
        scenes.draw_source(rng, BANDS, scene, "unlensed", DEFAULT)
        betas.append(math.hypot(*scene.source_centre) / scene.theta_e)
    betas_arr = np.array(betas)
    assert betas_arr.min() >= 0.99
    near = np.mean(betas_arr < 2.2)
    assert near == pytest.approx(DEFAULT.near_caustic_fraction, abs=0.08)


@pytest.mark.filterwarnings("ignore::DeprecationWarning:lenstronomy")
def test_truncated_neighbours_keep_their_flux_and_fade_to_nothing_at_the_edge():
    """A truncated light drops at most TRUNCATION_FLUX of its flux, and its surface brightness
    at the cut is below TRUNCATION_SB."""
    from lenstronomy.LightModel.light_model import LightModel

    rng = np.random.default_rng(0)
    d = scenes._Draw(rng, BANDS)
    for light in [
        d.sersic(d.mags(24.5, 1.0), 0.3, 4.0, 0.5, 0.3, 0.0, 0.0),
        d.sersic(d.mags(19.0, 0.5), 0.8, 1.0, 0.3, 1.0, 0.0, 0.0),
        d.blob(d.mags(25.0, 1.0), 0.4, 0.3, 0.5, 0.0, 0.0),
    ]:
        reach = light.truncated().reach
        assert math.isfinite(reach) and reach > light.size
        model = LightModel([light.profile])
        kwargs = [{**light.shape, "amp": 1.0}]
        # the box the renderer evaluates against one three times wider, on the same grid
        step = reach / 200
        grid = np.arange(-3 * reach, 3 * reach, step) + step / 2
        x, y = np.meshgrid(grid, grid)
        values = model.surface_brightness(x, y, kwargs)
        box = (np.abs(x) < reach) & (np.abs(y) < reach)
        assert values[box].sum() >= values.sum() * (1 - scenes.TRUNCATION_FLUX)
        # surface brightness where the box ends, in mag/arcsec^2 of the brightest band
        total = model.total_flux(kwargs, norm=True)[0]
        edge = model.surface_brightness(np.array([reach]), np.array([0.0]), kwargs)[0]
        sb = min(light.mags.values()) - 2.5 * math.log10(max(edge, 1e-300) / total)
        assert sb > scenes.TRUNCATION_SB - 0.01


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"group_fraction": 1.5}, "group_fraction must be in [0, 1]"),
        ({"satellites_per_host": -1.0}, "satellites_per_host must be >= 0"),
        ({"field_mag_range": (25.5, 18.0)}, "field_mag_range must be (low, high)"),
        ({"group_members": (0, 3)}, "group_members must be"),
        ({"field_count_slope": 0.0}, "field_count_slope must be > 0"),
        ({"irregular_neighbour_fraction": 1.2}, "irregular_neighbour_fraction must be in [0, 1]"),
    ],
)
def test_impossible_environment_settings_are_one_line_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(SimulateConfig(**overrides))


@pytest.mark.parametrize(
    ("family", "profiles"),
    [("shapelets", {"INTERPOL"}), ("multi", {"SERSIC_ELLIPSE"}), ("edge_on", {"SERSIC_ELLIPSE"})],
)
def test_irregular_nonlenses_take_the_lensed_sources_morphologies_unlensed(family, profiles):
    """An 'irregular' non-lens is a galaxy of the source families (config.source_mix) at the
    centre, foreground-bright and with no mass: the look of a source never marks a lens."""
    config = dataclasses.replace(DEFAULT, source_mix={family: 1.0})
    for i in range(40):
        rng = np.random.default_rng([4, i])
        scene = scenes.draw_nonlens(rng, BANDS, "irregular", config)
        assert (scene.kind, scene.central_type) == ("irregular", "irregular")
        assert not scene.lens_models and not scene.source
        assert {light.profile for light in scene.central} <= profiles
        mag = scenes.total_magnitude(scene.central, BANDS[0].name)
        assert 18.0 < mag < 25.5
        centre = np.mean([[li.shape["center_x"], li.shape["center_y"]] for li in scene.central], 0)
        assert np.hypot(*centre) < 3.0  # at the centre of the cutout, as the deflectors are


def test_irregular_nonlenses_are_drawn_at_their_share_of_the_mix():
    rng = np.random.default_rng(5)
    kinds = [scenes.draw_nonlens_kind(rng, DEFAULT) for _ in range(N)]
    share = NONLENS_MIX["irregular"] / sum(NONLENS_MIX.values())
    assert kinds.count("irregular") / N == pytest.approx(share, abs=4 * math.sqrt(share / N))


def _blue_neighbour_looks(config: SimulateConfig) -> tuple[int, int]:
    """(blue field galaxies, satellites and companions; lights drawn as shapelet stamps) over
    non-lens scenes of every kind, sources all shapelets so a source's look is told by profile."""
    config = dataclasses.replace(config, source_mix={"shapelets": 1.0})
    drawn = draw(config, lens=False, n=300, seed=11)
    blue = sum(
        nb.blue and nb.origin in ("field", "satellite", "companion")
        for s in drawn
        for nb in s.neighbours
    )
    return blue, sum(light.profile == "INTERPOL" for s in drawn for light in s.field)


def test_blue_neighbours_take_the_sources_looks_at_their_share():
    """irregular_neighbour_fraction: that share of the blue neighbours (field galaxies,
    satellites, compact companions) is drawn from the lensed sources' families, so a source's
    look beside a galaxy never marks a lens; none at the default share."""
    half = dataclasses.replace(DEFAULT, irregular_neighbour_fraction=0.5)
    blue, looks = _blue_neighbour_looks(half)
    assert blue > 500
    assert looks / blue == pytest.approx(0.5, abs=4 * math.sqrt(0.25 / blue))
    assert _blue_neighbour_looks(DEFAULT)[1] == 0


def test_neighbours_with_the_sources_looks_keep_the_cited_counts_and_magnitudes(default_scenes):
    """The looks change how a blue neighbour is drawn, not where or how bright: n_gal_3/5/10
    keep the default's distribution and each look's flux is its neighbour's magnitude."""
    config = dataclasses.replace(DEFAULT, irregular_neighbour_fraction=1.0)
    before, after = counts(default_scenes[1]), counts(draw(config, lens=False, n=500, seed=1))
    for column in range(before.shape[1]):
        assert stats.mannwhitneyu(before[:, column], after[:, column]).pvalue > 1e-3
    d = scenes._Draw(np.random.default_rng(3), BANDS)
    for _ in range(50):
        mag = d.u(20.0, 25.0)
        lights = scenes._neighbour_galaxy(d, mag, 1.0, 2.0, True, config)
        assert scenes.total_magnitude(lights, BANDS[0].name) == pytest.approx(mag, abs=0.2)
