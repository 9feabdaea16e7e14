"""Missing pixels as survey pipelines write them, NaN or regions of exact zeros, go through one
policy (``data.nonfinite``): a few are repaired, more make the object skipped with the reason."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from lensfinder.data.challenge import BadImage, read_band
from lensfinder.data.nonfinite import may_hold_zero_blocks, repair_missing, zero_filled
from lensfinder.surveys import EUCLID


def _noisy(seed: int = 0, shape: tuple[int, int] = (200, 200)) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 1.0, shape).astype(np.float32)


def test_a_zero_filled_strip_is_found_to_its_edge_and_noise_is_not():
    image = _noisy()
    image[:, :37] = 0.0  # off the footprint along one side
    image[120:124, 80:83] = 0.0  # a small masked patch
    filled = zero_filled(image)
    assert filled is not None
    expected = np.zeros(image.shape, bool)
    expected[:, :37] = True
    expected[120:124, 80:83] = True
    assert np.array_equal(filled, expected)
    # Scattered exact zeros and a 2x2 zero block are noise's business, not missing data.
    sparse = _noisy(1)
    sparse[np.random.default_rng(2).random(sparse.shape) < 0.05] = 0.0
    sparse[10:12, 10:12] = 0.0
    assert zero_filled(sparse) is None or not zero_filled(sparse).any()


def test_the_lattice_check_never_misses_a_zero_block():
    """Every 3x3 square holds one pixel of the every-3rd-row-and-column lattice."""
    for top in range(3):
        for left in range(3):
            image = _noisy(3, (20, 20))
            image[5 + top : 8 + top, 5 + left : 8 + left] = 0.0
            assert may_hold_zero_blocks(image[None])
            assert zero_filled(image) is not None
    assert not may_hold_zero_blocks(_noisy(4)[None])


def test_a_wide_strip_is_refused_a_small_patch_repaired_an_all_zero_image_left_to_the_blank_check():
    image = _noisy()
    image[:, :40] = 0.0
    count, reason = repair_missing(image)
    assert count == 8000 and reason is not None
    assert reason.startswith("zero-filled pixels: 8000 of 40000")
    patch = _noisy(5)
    patch[100:103, 50:60] = 0.0
    median = np.median(patch[patch != 0])
    count, reason = repair_missing(patch)
    assert (count, reason) == (30, None)
    assert np.all(patch[100:103, 50:60] == median)
    blank = np.zeros((66, 66), np.float32)
    assert repair_missing(blank) == (0, None)


def test_integer_images_with_little_noise_keep_their_statistics():
    """Counts with a sigma of ~1 have many exact zeros; the few 3x3 zero blocks noise makes
    are repaired to the median (0), so nothing is refused and the image barely changes."""
    rng = np.random.default_rng(6)
    image = np.round(rng.normal(0.0, 1.0, (200, 200))).astype(np.float32)
    before = image.copy()
    count, reason = repair_missing(image)
    assert reason is None and count < 0.005 * image.size  # ~0.3% here, under the 1% limit
    assert np.array_equal(image, before)  # the median of the rest is 0 itself


def test_the_fits_reader_refuses_a_zero_filled_band_naming_the_file(tmp_path):
    band = EUCLID.band("VIS")
    image = _noisy(7, (band.cutout_pixels, band.cutout_pixels))
    image[-30:, :] = 0.0
    path = tmp_path / "imageEUC_VIS-200001.fits"
    fits.PrimaryHDU(image).writeto(path)
    with pytest.raises(BadImage, match="zero-filled pixels: 6000 of 40000") as caught:
        read_band(path, band)
    assert caught.value.path == str(path)
