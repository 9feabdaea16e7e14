"""Normalisation (unit-free, never NaN) and geometry (NISP on the VIS field) of model input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lensfinder.config import InputConfig
from lensfinder.data.store import open_store
from lensfinder.data.transforms import (
    background_and_noise,
    crop_centre,
    normalize,
    resize_vis,
    to_model_input,
)
from lensfinder.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")
NORMALIZATIONS = ["asinh_noise", "asinh_percentile", "instance"]


@pytest.fixture(scope="module")
def cutouts(tiny_store):
    return open_store(tiny_store).read(range(8))


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_output_does_not_depend_on_flux_units(cutouts, normalization: str) -> None:
    cfg = InputConfig(normalization=normalization)
    base = to_model_input(cutouts.vis, cutouts.nisp, cfg)
    for factor in (1e-11, 1e3):
        scaled = to_model_input(cutouts.vis * factor, cutouts.nisp * factor, cfg)
        assert torch.allclose(base, scaled, atol=1e-5, rtol=0), factor
    if normalization != "instance":  # a sky pedestal is removed as well
        offset = to_model_input(cutouts.vis + 5e-11, cutouts.nisp + 5e-10, cfg)
        assert (base - offset).abs().max() < 2e-3


def test_noise_is_measured_in_every_band(cutouts) -> None:
    """The fixture's noise is 1e-11 in VIS and 2e-10 in NISP (per-band units differ by 20x)."""
    nisp = torch.from_numpy(cutouts.nisp)
    vis = torch.from_numpy(cutouts.vis)[:, None]
    _, sigma_vis = background_and_noise(vis)
    _, sigma_nisp = background_and_noise(nisp)
    assert torch.allclose(sigma_vis, torch.full_like(sigma_vis, 1e-11), rtol=0.1)
    assert torch.allclose(sigma_nisp, torch.full_like(sigma_nisp, 2e-10), rtol=0.1)
    vis_x, nisp_x = to_model_input(
        cutouts.vis, cutouts.nisp, InputConfig(size=200, layout="two_branch")
    )
    # pure noise of sigma 1 through asinh(x / 3) has a standard deviation of ~0.32 in any band
    for x, edge in ((vis_x, 20), (nisp_x, 7)):
        border = torch.cat([x[..., :edge, :].flatten(2), x[..., -edge:, :].flatten(2)], dim=-1)
        assert torch.allclose(border.std(dim=-1), torch.full((8, x.shape[1]), 0.32), atol=0.03)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_constant_zero_and_nan_images_give_finite_output(normalization: str) -> None:
    cfg = InputConfig(normalization=normalization)
    vis = np.stack([np.zeros((200, 200)), np.full((200, 200), 7e-11), np.zeros((200, 200))])
    vis[2, 100, 100] = 1.0  # a noiseless point source: sigma 0, fallback scale
    nisp = np.ones((3, 3, 66, 66))
    nisp[0, 0, :10] = np.nan
    nisp[1, 2, 5, 5] = np.inf
    x = to_model_input(vis.astype(np.float32), nisp.astype(np.float32), cfg)
    assert torch.isfinite(x).all()
    assert x.abs().max() <= cfg.clip
    assert x[0].abs().max() == 0 and x[1, 0].abs().max() == 0
    assert x[2, 0].max() > 0  # the point source survives the fallback


def test_big_endian_input_is_accepted(cutouts) -> None:
    cfg = InputConfig()
    native = to_model_input(cutouts.vis, cutouts.nisp, cfg)
    swapped = to_model_input(cutouts.vis.astype(">f4"), cutouts.nisp.astype(">f4"), cfg)
    assert torch.equal(native, swapped)


@pytest.mark.parametrize(
    ("cfg", "shape"),
    [
        (InputConfig(size=100), (2, 4, 100, 100)),
        (InputConfig(size=200), (2, 4, 200, 200)),
        (InputConfig(size=64), (2, 4, 64, 64)),
        (InputConfig(size=100, bands=("H", "VIS")), (2, 2, 100, 100)),
        (InputConfig(size=100, bands=("VIS",)), (2, 1, 100, 100)),
    ],
)
def test_stacked_shapes(cutouts, cfg: InputConfig, shape) -> None:
    x = to_model_input(cutouts.vis[:2], cutouts.nisp[:2], cfg)
    assert x.shape == shape and x.dtype == torch.float32


def test_band_order_follows_config(cutouts) -> None:
    full = to_model_input(cutouts.vis[:2], cutouts.nisp[:2], InputConfig())
    picked = to_model_input(cutouts.vis[:2], cutouts.nisp[:2], InputConfig(bands=("H", "VIS")))
    assert torch.equal(picked[:, 0], full[:, 3]) and torch.equal(picked[:, 1], full[:, 0])


def test_two_branch_shapes(cutouts) -> None:
    binned = InputConfig(layout="two_branch", vis_sampling="bin", size=100)
    vis, nisp = to_model_input(cutouts.vis[:3], cutouts.nisp[:3], binned)
    assert vis.shape == (3, 1, 100, 100) and nisp.shape == (3, 3, 66, 66)
    stacked_cfg = InputConfig(vis_sampling="bin", size=100)
    stacked = to_model_input(cutouts.vis[:3], cutouts.nisp[:3], stacked_cfg)
    assert torch.equal(vis, stacked[:, :1])


def test_bad_band_config_is_a_config_error(cutouts) -> None:
    with pytest.raises(ConfigError, match="bands"):
        to_model_input(cutouts.vis, cutouts.nisp, InputConfig(bands=("VIS", "K")))
    with pytest.raises(ConfigError, match="two_branch"):
        to_model_input(cutouts.vis, cutouts.nisp, InputConfig(layout="two_branch", bands=("J",)))


def test_vis_downsampling_averages_pixel_blocks() -> None:
    vis = torch.arange(16.0).reshape(1, 1, 4, 4)
    down = resize_vis(vis, 2)
    assert torch.equal(down[0, 0], torch.tensor([[2.5, 4.5], [10.5, 12.5]]))


def _gaussian(pixels: int, scale: float, x0: float, y0: float, sigma: float) -> np.ndarray:
    axis = (np.arange(pixels) - (pixels - 1) / 2) * scale
    x, y = np.meshgrid(axis, axis, indexing="xy")
    return np.exp(-0.5 * ((x - x0) ** 2 + (y - y0) ** 2) / sigma**2)


def _centroid(image: torch.Tensor) -> tuple[float, float]:
    weights = image.clamp(min=0).double()
    weights = torch.where(weights > 0.2 * weights.max(), weights, 0)
    rows, cols = torch.meshgrid(
        torch.arange(image.shape[0], dtype=torch.float64),
        torch.arange(image.shape[1], dtype=torch.float64),
        indexing="ij",
    )
    return float((weights * cols).sum() / weights.sum()), float(
        (weights * rows).sum() / weights.sum()
    )


@pytest.mark.parametrize("size", [100, 200])
def test_point_source_lands_at_the_same_sky_position_in_all_bands(size: int) -> None:
    """A source 8" off-centre: stretching NISP's 19.8" to 20" would move it by 0.08" (0.4 px
    at size 200), a half-pixel error by 0.5 px; both fail the 0.1 px tolerance."""
    x0, y0, sigma = 7.3, -5.6, 0.35  # arcsec from the centre, x right, y up
    rng = np.random.default_rng(0)
    vis = _gaussian(200, 0.1, x0, y0, sigma) + rng.normal(0, 1e-3, (200, 200))
    nisp = np.stack([_gaussian(66, 0.3, x0, y0, sigma)] * 3) + rng.normal(0, 1e-3, (3, 66, 66))
    x = to_model_input(vis[None].astype(np.float32), nisp[None].astype(np.float32),
                       InputConfig(size=size, vis_sampling="bin"))  # fmt: skip
    pixel = 20.0 / size  # arcsec per output pixel
    expected = ((size - 1) / 2 + x0 / pixel, (size - 1) / 2 + y0 / pixel)
    for channel in range(4):
        cx, cy = _centroid(x[0, channel])
        assert cx == pytest.approx(expected[0], abs=0.1), channel
        assert cy == pytest.approx(expected[1], abs=0.1), channel


@pytest.mark.parametrize("size", [64, 100])
def test_native_mode_keeps_vis_pixels_and_aligns_nisp(size: int) -> None:
    """Native sampling: VIS keeps its 0.1" pixels (the centre cut out, not averaged) and a
    source 2.1" off-centre sits at the same sky position in every channel of the cut-out field."""
    x0, y0, sigma = 2.1, -1.4, 0.25
    rng = np.random.default_rng(1)
    vis = _gaussian(200, 0.1, x0, y0, sigma) + rng.normal(0, 1e-3, (200, 200))
    nisp = np.stack([_gaussian(66, 0.3, x0, y0, sigma)] * 3) + rng.normal(0, 1e-3, (3, 66, 66))
    cfg = InputConfig(size=size, vis_sampling="native")
    x = to_model_input(vis[None].astype(np.float32), nisp[None].astype(np.float32), cfg)
    assert x.shape == (1, 4, size, size)
    whole = to_model_input(
        vis[None].astype(np.float32), None, InputConfig(size=200, bands=("VIS",))
    )
    top = (200 - size) // 2
    assert torch.equal(x[0, 0], whole[0, 0, top : top + size, top : top + size])
    expected = ((size - 1) / 2 + x0 / 0.1, (size - 1) / 2 + y0 / 0.1)
    for channel in range(4):
        cx, cy = _centroid(x[0, channel])
        assert cx == pytest.approx(expected[0], abs=0.15), channel
        assert cy == pytest.approx(expected[1], abs=0.15), channel


def test_native_two_branch_cuts_nisp_to_the_same_field(cutouts) -> None:
    cfg = InputConfig(layout="two_branch", vis_sampling="native", size=100)
    vis, nisp = to_model_input(cutouts.vis[:2], cutouts.nisp[:2], cfg)
    assert vis.shape == (2, 1, 100, 100)
    assert nisp.shape == (2, 3, 34, 34)  # 10" needs 33.3 NISP pixels; 34 keeps the centre
    whole = InputConfig(layout="two_branch", vis_sampling="bin")
    full = to_model_input(cutouts.vis[:2], cutouts.nisp[:2], whole)[1]
    assert torch.equal(nisp, full[..., 16:50, 16:50])


def test_native_size_larger_than_the_cutout_is_refused(cutouts) -> None:
    with pytest.raises(ConfigError, match="input size 400: expected 8 to 200"):
        to_model_input(
            cutouts.vis[:1], cutouts.nisp[:1], InputConfig(vis_sampling="native", size=400)
        )


def _clipped_reference(frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipped median and MAD sigma as first written: torch.nanmedian, one mask per round."""
    frame = torch.where(torch.isfinite(frame), frame, torch.nan)
    median = torch.nanmedian(frame, dim=-1, keepdim=True).values
    sigma = 1.4826 * torch.nanmedian((frame - median).abs(), dim=-1, keepdim=True).values
    for _ in range(2):
        kept = torch.where((frame - median).abs() <= 3.0 * sigma, frame, torch.nan)
        median = torch.nanmedian(kept, dim=-1, keepdim=True).values
        sigma = 1.4826 * torch.nanmedian((kept - median).abs(), dim=-1, keepdim=True).values
    return median, sigma


def test_background_and_noise_equal_the_plain_clipped_statistics() -> None:
    """The one-sort implementation gives exactly the plain clipped median and MAD, also with
    NaN and infinite pixels, ties, constant and all-NaN bands, and bright companions."""
    from lensfinder.data.pixels import border_index

    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 3, 66, 66, generator=g) * 2 + 5
    x[0] = 7.0
    x[1, 0, :5] = torch.nan
    x[2, 1] = torch.nan
    x[3, 2, 0, :30] = 1e4
    x[4, 0, :, :3] = torch.inf
    x[4, 1, :, :3] = -torch.inf
    x[5] = torch.randint(0, 3, (3, 66, 66), generator=g).float()
    x[6] = 0.0
    x[6, 0, 0, 0] = 1.0
    median, sigma = background_and_noise(x)
    frame = x.flatten(2)[..., torch.from_numpy(border_index(66, 66))]
    ref_median, ref_sigma = _clipped_reference(frame)
    assert torch.equal(median.flatten().isnan(), ref_median.flatten().isnan())
    np.testing.assert_array_equal(median.flatten().numpy(), ref_median.flatten().numpy())
    np.testing.assert_array_equal(sigma.flatten().numpy(), ref_sigma.flatten().numpy())


def test_stacked_nisp_is_resampled_as_from_the_whole_image(cutouts) -> None:
    """Only the NISP pixels under the field are stretched; the resampled bands equal those of
    the whole stretched image (float rounding of the sampling positions aside)."""
    from lensfinder.data.transforms import field_arcsec, resample_nisp

    for size in (100, 64):
        cfg = InputConfig(vis_sampling="native", size=size)
        x = to_model_input(cutouts.vis, cutouts.nisp, cfg)
        whole = normalize(torch.from_numpy(cutouts.nisp), cfg)
        expected = resample_nisp(whole, size, field_arcsec(200, cfg))
        np.testing.assert_allclose(x[:, 1:].numpy(), expected.numpy(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_normalising_a_central_crop_equals_cropping_the_normalised_image(
    cutouts, normalization: str
) -> None:
    """``normalize(crop=)`` stretches only the pixels it returns (native VIS, native two-branch
    NISP), with sky and noise still measured on the whole image, including the fallbacks."""
    cfg = InputConfig(normalization=normalization)
    vis = torch.from_numpy(cutouts.vis[:3])[:, None].clone()
    vis[1] = 0.0  # constant: no noise, no spread
    vis[2, 0, 100, 100] = torch.nan
    for x, crop in ((vis, 100), (vis, 64), (torch.from_numpy(cutouts.nisp[:3]), 34)):
        expected = crop_centre(normalize(x, cfg), crop)
        assert torch.equal(normalize(x, cfg, crop), expected)
