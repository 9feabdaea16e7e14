"""A tilted sky (``input.sky: plane``): cutouts on a gradient give the model the input they
would give on a flat sky, where the constant sky leaves the gradient in and measures twice the
noise."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lensfinder.config import InputConfig
from lensfinder.data import pixels
from lensfinder.data.store import open_store
from lensfinder.data.transforms import to_model_input
from lensfinder.errors import ModelFileError
from lensfinder.models.meta import input_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _plane(shape: tuple[int, ...], rise: np.ndarray) -> np.ndarray:
    """(n, ..., h, w) planes rising ``rise[i]`` (per image) from the centre to the right edge
    and half that towards the bottom edge."""
    height, width = shape[-2:]
    y, x = np.mgrid[:height, :width]
    unit = (x - (width - 1) / 2) / (width / 2) + 0.5 * (y - (height - 1) / 2) / (height / 2)
    return (rise.reshape(-1, *[1] * (len(shape) - 1)) * unit).astype(np.float32)


def test_the_plane_is_measured_through_companions_and_holes() -> None:
    rng = np.random.default_rng(3)
    n, sigma = 12, 2.0
    images = rng.normal(7.0, sigma, (n, 120, 120)).astype(np.float32)
    rise = rng.choice([-1, 1], n) * rng.uniform(0.5, 2, n) * sigma  # at the right edge
    tilted = images + _plane(images.shape, rise)
    tilted[:, 2:10, 100:112] += 50 * sigma  # a bright companion in the frame
    tilted[:4, :, :20] = np.nan  # a masked edge strip on some
    sky, slope_x, slope_y, noise = pixels.sky_plane_and_noise(tilted)
    # the rise from the centre to the right edge within 0.25 sigma (fit noise, clipping)
    assert np.allclose(slope_x[:, 0] * 60, rise, atol=0.25 * sigma)
    assert np.allclose(slope_y[:, 0] * 60, 0.5 * rise, atol=0.25 * sigma)
    assert np.allclose(sky, 7.0, atol=0.1 * sigma)
    assert np.allclose(noise, sigma, rtol=0.08)
    # what a constant sky makes of the same frames: the gradient read as noise
    _, constant_noise = pixels.background_and_noise(tilted)
    steep = np.abs(rise) > 1.5 * sigma
    assert steep.any() and (constant_noise[steep, 0] > 1.3 * sigma).all()


def test_a_flat_sky_keeps_the_constant_estimate_exactly() -> None:
    """Without a gradient (the fit's noise, or a tilt under 0.3 sigma) the plane changes no
    float, so a model gives the same scores to flat-sky cutouts either way."""
    rng = np.random.default_rng(4)
    images = rng.normal(-3.0, 0.5, (64, 3, 66, 66)).astype(np.float32)
    images[:8] += _plane(images[:8].shape, np.full(8, 0.05 * 0.5))  # a tilt too small to count
    sky, slope_x, slope_y, noise = pixels.sky_plane_and_noise(images)
    level, constant_noise = pixels.background_and_noise(images)
    assert sky.shape == slope_x.shape == noise.shape == (64, 3, 1)
    assert (slope_x == 0).all() and (slope_y == 0).all()
    np.testing.assert_array_equal(sky, level)
    np.testing.assert_array_equal(noise, constant_noise)


def test_undetermined_planes_fall_back_to_the_constant_sky() -> None:
    rng = np.random.default_rng(5)
    images = rng.normal(1.0, 1.0, (3, 64, 64)).astype(np.float32)
    images[0, :, :40] = np.nan  # most of the frame masked
    images[1] = 4.0  # no noise to clip by
    images[2] = np.nan
    sky, slope_x, slope_y, noise = pixels.sky_plane_and_noise(images)
    level, constant_noise = pixels.background_and_noise(images)
    assert (slope_x == 0).all() and (slope_y == 0).all()
    np.testing.assert_array_equal(sky[:2], level[:2])
    np.testing.assert_array_equal(noise[:2], constant_noise[:2])
    assert np.isnan(sky[2]).all() and np.isnan(noise[2]).all()


@pytest.mark.parametrize(
    "input_cfg",
    [
        InputConfig(sky="plane"),  # native: VIS cut to 80 px, NISP cut and resampled
        InputConfig(sky="plane", layout="two_branch", size=64),  # NISP on its own grid
        InputConfig(sky="plane", vis_sampling="bin", size=100),  # the whole field binned
    ],
    ids=["native", "two-branch", "binned"],
)
def test_a_gradient_leaves_the_model_input_as_on_a_flat_sky(tiny_store, input_cfg) -> None:
    cutouts = open_store(tiny_store).read(range(6))  # noise 1e-11 (VIS), 2e-10 (NISP)
    rise = np.linspace(-2, 2, 6)
    vis = cutouts.vis + 1e-11 * _plane(cutouts.vis.shape, rise)
    nisp = cutouts.nisp + 2e-10 * _plane(cutouts.nisp.shape, rise)
    flat = to_model_input(cutouts.vis, cutouts.nisp, input_cfg)
    tilted = to_model_input(vis, nisp, input_cfg)
    constant = dataclasses.replace(input_cfg, sky="constant")
    before = to_model_input(vis, nisp, constant)
    for got, want, old in zip(
        *(x if isinstance(x, tuple) else (x,) for x in (tilted, flat, before)), strict=True
    ):
        # asinh units: pure noise of sigma 1 has a spread of ~0.32
        assert (got - want).abs().mean() < 0.02 and (got - want).abs().max() < 0.1
        # a constant sky keeps the gradient: 0.10-0.14 here
        assert (old - want).abs().mean() > 5 * (got - want).abs().mean()


def test_the_percentile_stretch_takes_the_plane_too(tiny_store) -> None:
    cutouts = open_store(tiny_store).read(range(4))
    vis = cutouts.vis + 1e-11 * _plane(cutouts.vis.shape, np.full(4, 2.0))
    for sky, most in (("plane", 0.02), ("constant", None)):
        cfg = InputConfig(normalization="asinh_percentile", sky=sky, bands=("VIS",))
        moved = (to_model_input(vis, None, cfg) - to_model_input(cutouts.vis, None, cfg)).abs()
        if most is None:
            assert moved.mean() > 0.05
        else:
            assert moved.mean() < most


def test_model_files_without_the_field_keep_the_constant_sky() -> None:
    """A model.json written before ``input.sky`` existed is read with the sky it was trained
    with; one that names the plane keeps it."""
    old = {"bands": ["VIS", "Y", "J", "H"], "size": 80, "normalization": "asinh_noise"}
    assert InputConfig().sky == "plane"  # new models
    assert input_config({"input": old}).sky == "constant"
    assert input_config({"input": {**old, "sky": "plane"}}).sky == "plane"
    with pytest.raises(ModelFileError, match=r"model\.json: bad .input. section .*sky"):
        input_config({"input": {**old, "sky": "tilted"}})
