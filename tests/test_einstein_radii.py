"""The simulated lenses' Einstein radii: the cited lognormal, or with ``theta_e_broad_fraction``
a log-uniform share over the whole range (wide lenses trained on more often); ring galaxies'
radii from the same draw with ``ring_radius_like_lenses``.

Mass draws only (no rendering): thousands take a fraction of a second.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from lensfinder.config import SimulateConfig
from lensfinder.errors import ConfigError
from lensfinder.simulate import scene as scenes
from lensfinder.simulate.simulation import validate
from lensfinder.surveys import EUCLID

N = 4000


def einstein_radii(config: SimulateConfig, n: int = N) -> np.ndarray:
    radii = []
    for i in range(n):
        d = scenes._Draw(np.random.default_rng([7, i]), EUCLID.bands)
        radii.append(scenes._lens_mass(d, config)[0])
    return np.array(radii)


def lognormal_share_above(config: SimulateConfig, theta: float) -> float:
    """P(theta_E > theta) of the clipped lognormal alone."""
    z = math.log(theta / config.theta_e_median) / config.theta_e_sigma
    return float(stats.norm.sf(z))


def test_without_the_broad_share_the_draw_is_the_old_lognormal_to_the_bit():
    """Fraction 0 draws no extra random number: populations simulated before reproduce."""
    config = SimulateConfig(theta_e_broad_fraction=0.0)
    for i in range(50):
        d = scenes._Draw(np.random.default_rng(i), EUCLID.bands)
        replay = np.random.default_rng(i)
        expected = np.clip(
            config.theta_e_median * math.exp(replay.normal(0.0, config.theta_e_sigma)),
            *config.theta_e_range,
        )
        assert scenes._lens_mass(d, config)[0] == expected


def test_the_broad_share_is_log_uniform_over_the_whole_range():
    config = SimulateConfig(theta_e_broad_fraction=1.0)
    radii = einstein_radii(config)
    lo, hi = config.theta_e_range
    assert radii.min() >= lo and radii.max() <= hi
    unit = (np.log(radii) - math.log(lo)) / (math.log(hi) - math.log(lo))
    assert stats.kstest(unit, "uniform").pvalue > 1e-3


def test_a_broad_share_puts_wide_lenses_in_training_at_the_mixed_rate():
    """Above 2": 0.7 x the lognormal's 3% + 0.3 x the log-uniform's 18%, about 7.5% (was 3%)."""
    config = SimulateConfig(theta_e_broad_fraction=0.3)
    share = config.theta_e_broad_fraction
    lo, hi = config.theta_e_range
    uniform_above = (math.log(hi) - math.log(2.0)) / (math.log(hi) - math.log(lo))
    expected = (1 - share) * lognormal_share_above(config, 2.0) + share * uniform_above
    observed = float((einstein_radii(config) > 2.0).mean())
    assert abs(observed - expected) < 4 * math.sqrt(expected * (1 - expected) / N)
    assert observed > 2 * lognormal_share_above(config, 2.0)
    # most lenses still follow the forecast population: the median stays below 1"
    assert np.median(einstein_radii(config)) < 1.0


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_an_impossible_broad_share_is_a_one_line_config_error(fraction):
    with pytest.raises(ConfigError, match="theta_e_broad_fraction"):
        validate(SimulateConfig(theta_e_broad_fraction=fraction))


def ring_radii(config: SimulateConfig, n: int = 1500) -> np.ndarray:
    """Each ring non-lens's radius, read back as the median distance of its knots (lights 2+ or
    3+) from the nucleus; projection and the collisional offset shrink it by up to ~50%."""
    radii = []
    for i in range(n):
        scene = scenes.draw_nonlens(np.random.default_rng([11, i]), EUCLID.bands, "ring", config)
        knots = np.array([light.centre for light in scene.central[1:]])
        radii.append(np.median(np.hypot(*knots.T)))
    return np.array(radii)


def test_ring_galaxies_can_be_as_wide_as_einstein_rings_so_size_does_not_give_the_label():
    broad = SimulateConfig(theta_e_broad_fraction=0.3, ring_radius_like_lenses=True)
    like = ring_radii(broad)
    lenses = einstein_radii(broad)
    # the rings' (projected) radii cover the Einstein radii's: as many compact as wide ones
    for theta in (0.6, 1.5):
        share_rings, share_lenses = (like < theta).mean(), (lenses < theta).mean()
        assert share_lenses * 0.5 < share_rings < share_lenses * 1.6 + 0.1
    # the default: uniform 0.6-3", no ring below 0.3", most wider than 1.5"
    before = ring_radii(SimulateConfig())
    assert (before < 0.3).mean() < 0.01 and (before > 1.5).mean() > 0.4
    assert (like > 1.5).mean() < 0.3
