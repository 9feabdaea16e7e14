"""Per-object observing conditions: PSF families, depth and correlated noise."""

from __future__ import annotations

import numpy as np
import pytest

from lensfinder.config import SimulateConfig
from lensfinder.simulate.observing import NOMINAL, Observing, draw_observing, with_band_offsets
from lensfinder.surveys import EUCLID

VIS = EUCLID.band("VIS")


def _radial_fraction_beyond(kernel: np.ndarray, radius: float) -> float:
    half = kernel.shape[0] // 2
    axis = np.arange(-half, half + 1)
    r = np.hypot(*np.meshgrid(axis, axis))
    return float(kernel[r > radius].sum())


def test_moffat_has_wings_a_gaussian_of_the_same_fwhm_lacks() -> None:
    gaussian = Observing("gaussian", 1.0, 3.0, 0.0, None).psf_kernel(VIS)
    moffat = Observing("moffat", 1.0, 3.0, 0.0, None).psf_kernel(VIS)
    assert gaussian.sum() == pytest.approx(1) and moffat.sum() == pytest.approx(1)
    fwhm_pixels = VIS.psf_fwhm / VIS.pixel_scale
    assert _radial_fraction_beyond(gaussian, 2 * fwhm_pixels) < 1e-4
    assert _radial_fraction_beyond(moffat, 2 * fwhm_pixels) > 0.02
    # same FWHM: half the peak is reached at the same radius
    for kernel in (gaussian, moffat):
        row = kernel[kernel.shape[0] // 2]
        above = np.flatnonzero(row >= row.max() / 2)
        assert above.size == pytest.approx(fwhm_pixels, abs=1.5)


def test_depth_offset_scales_the_exposure_time() -> None:
    deeper = Observing("gaussian", 1.0, 3.0, 0.5, None).band(VIS)
    assert deeper.exposure_time == pytest.approx(VIS.exposure_time * 10**0.4)
    assert NOMINAL.band(VIS) == VIS


def test_resampled_noise_is_correlated_and_lower() -> None:
    noise = np.random.default_rng(0).normal(0, 1, (200, 200))
    white = NOMINAL.texture(noise)
    assert white is noise
    correlated = Observing("gaussian", 1.0, 3.0, 0.0, (0.5, 0.5)).texture(noise)
    neighbour = np.corrcoef(correlated[:, :-1].ravel(), correlated[:, 1:].ravel())[0, 1]
    assert 0.3 < neighbour < 0.7  # 0.5 for a half-pixel bilinear shift
    assert correlated.std() == pytest.approx(0.5, rel=0.05)


def test_draws_follow_the_settings() -> None:
    rng = np.random.default_rng(1)
    fixed = SimulateConfig(psf_family="gaussian", psf_fwhm_scatter=0.0, depth_scatter_mag=0.0,
                           correlated_noise_fraction=0.0)  # fmt: skip
    draws = [draw_observing(rng, fixed) for _ in range(20)]
    assert all(d.psf_family == "gaussian" and d.fwhm_factor == 1.0 for d in draws)
    assert all(d.depth_offset_mag == 0.0 and d.noise_shift is None for d in draws)
    mixed = [draw_observing(rng, SimulateConfig()) for _ in range(200)]
    assert 60 < sum(d.psf_family == "moffat" for d in mixed) < 140
    assert 60 < sum(d.noise_shift is not None for d in mixed) < 140
    assert max(abs(d.depth_offset_mag) for d in mixed) <= SimulateConfig().depth_scatter_mag


def test_band_offsets_move_one_band_on_top_of_the_shared_draws() -> None:
    shared = Observing("gaussian", 1.1, 3.0, 0.2, None)
    own = Observing("gaussian", 1.1, 3.0, 0.2, None, band_offsets=(("Y", 0.5, 1.2),))
    y = EUCLID.band("Y")
    assert own.band(VIS) == shared.band(VIS)
    assert own.band(y).exposure_time == pytest.approx(shared.band(y).exposure_time * 10**0.4)
    assert own.band(y).psf_fwhm == pytest.approx(shared.band(y).psf_fwhm * 1.2)


def test_band_offsets_are_drawn_only_when_asked_and_within_the_settings() -> None:
    rng = np.random.default_rng(3)
    together = SimulateConfig(band_depth_scatter_mag=0.0, band_psf_scatter=0.0)
    assert with_band_offsets(NOMINAL, rng, together, EUCLID) is NOMINAL
    config = SimulateConfig(band_depth_scatter_mag=0.5, band_psf_scatter=0.15)
    drawn = [with_band_offsets(NOMINAL, rng, config, EUCLID) for _ in range(100)]
    assert all([name for name, _, _ in d.band_offsets] == ["Y", "J", "H"] for d in drawn)
    depths = np.array([depth for d in drawn for _, depth, _ in d.band_offsets])
    fwhms = np.array([fwhm for d in drawn for _, _, fwhm in d.band_offsets])
    assert np.abs(depths).max() <= 0.5 and depths.std() > 0.2  # uniform on +-0.5: std 0.29
    assert fwhms.min() >= 0.7 and fwhms.max() <= 1.4 and 0.1 < fwhms.std() < 0.2
    # the bands of one object differ from each other (drawn independently)
    assert all(len({depth for _, depth, _ in d.band_offsets}) == 3 for d in drawn)


def _centroid(kernel: np.ndarray) -> tuple[float, float]:
    half = kernel.shape[0] // 2
    axis = np.arange(-half, half + 1)
    return float((kernel.sum(0) * axis).sum()), float((kernel.sum(1) * axis).sum())


def test_a_band_shift_moves_that_bands_psf_centre_and_nothing_else() -> None:
    """The shift is made in the PSF kernel: its centroid lands at the shift (in the band's own
    pixels, x along columns); unshifted bands keep the kernel exactly as before."""
    y = EUCLID.band("Y")
    shared = Observing("moffat", 1.0, 3.0, 0.0, None)
    shifted = Observing("moffat", 1.0, 3.0, 0.0, None, band_shifts=(("Y", 0.12, -0.06),))
    assert np.array_equal(shifted.psf_kernel(VIS), shared.psf_kernel(VIS))
    x, row = _centroid(shifted.psf_kernel(y))
    # a Moffat's truncated wings pull the centroid in a little; a sampled Gaussian's hardly
    assert x == pytest.approx(0.4, abs=0.03) and row == pytest.approx(-0.2, abs=0.03)
    gaussian = Observing("gaussian", 1.0, 3.0, 0.0, None, band_shifts=(("Y", 0.12, -0.06),))
    x, row = _centroid(gaussian.psf_kernel(y))
    assert x == pytest.approx(0.4, abs=0.002) and row == pytest.approx(-0.2, abs=0.002)
    assert shifted.psf_kernel(y).sum() == pytest.approx(1.0)


def test_band_shifts_are_one_for_all_nisp_bands_within_half_a_pixel() -> None:
    rng = np.random.default_rng(5)
    config = SimulateConfig(band_depth_scatter_mag=0, band_psf_scatter=0, band_shift_pixels=0.5)
    drawn = [with_band_offsets(NOMINAL, rng, config, EUCLID) for _ in range(200)]
    assert all(d.band_offsets == () for d in drawn)  # only what was asked for
    pixel = EUCLID.band("Y").pixel_scale
    for d in drawn:
        assert [name for name, _, _ in d.band_shifts] == ["Y", "J", "H"]
        assert len({(x, y) for _, x, y in d.band_shifts}) == 1  # one grid for NISP
    shifts = np.array([d.band_shifts[0][1:] for d in drawn]) / pixel
    assert np.abs(shifts).max() <= 0.5 and 0.2 < shifts.std() < 0.35  # uniform: std 0.29
    # the offsets' draws come first, so switching the shift on leaves them as they were
    apart = SimulateConfig(band_shift_pixels=0.0)
    both = SimulateConfig(band_shift_pixels=0.5)
    first = with_band_offsets(NOMINAL, np.random.default_rng([1, 2]), apart, EUCLID)
    second = with_band_offsets(NOMINAL, np.random.default_rng([1, 2]), both, EUCLID)
    assert first.band_offsets == second.band_offsets and first.band_shifts == ()
