"""Regions of exact zeros (how pipelines fill ground without data) are missing pixels to the
normaliser, as NaN are: left out of sky and noise, written as sky."""

from __future__ import annotations

import numpy as np
import torch
from astropy.io import fits

from lensfinder.config import InputConfig
from lensfinder.data import open_source
from lensfinder.data.challenge import read_layout, reason_kind
from lensfinder.data.cutouts import Cutouts, mark_blank
from lensfinder.data.nonfinite import repair_nonfinite
from lensfinder.data.pixels import (
    centre_missing,
    may_hold_zero_blocks,
    zero_filled,
    zero_filled_as_nan,
)
from lensfinder.data.store import pack
from lensfinder.data.transforms import to_model_input
from lensfinder.layout import image_path
from lensfinder.surveys import EUCLID
from lensfinder.testing import make_tiny_layout, tiny_cutouts, write_fits


def _noisy(seed: int = 0, shape: tuple[int, int] = (200, 200)) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 1.0, shape).astype(np.float32)


def test_a_zero_filled_strip_is_found_to_its_edge_and_noise_is_not():
    image = _noisy()
    image[:, :37] = 0.0  # off the footprint along one side
    image[120:124, 80:83] = 0.0  # a small masked patch
    filled = zero_filled(image)
    expected = np.zeros(image.shape, bool)
    expected[:, :37] = True
    expected[120:124, 80:83] = True
    assert filled is not None and np.array_equal(filled, expected)
    # Scattered exact zeros and a 2x2 zero block are noise's business, not missing data.
    sparse = _noisy(1)
    sparse[np.random.default_rng(2).random(sparse.shape) < 0.05] = 0.0
    sparse[10:12, 10:12] = 0.0
    assert zero_filled(sparse) is None


def test_the_lattice_check_never_misses_a_zero_block():
    """Every 3x3 square holds one pixel of the every-3rd-row-and-column lattice."""
    for top in range(3):
        for left in range(3):
            image = _noisy(3, (20, 20))
            image[5 + top : 8 + top, 5 + left : 8 + left] = 0.0
            assert may_hold_zero_blocks(image[None])
            assert zero_filled(image) is not None
    assert not may_hold_zero_blocks(_noisy(4)[None])


def test_only_images_with_zero_blocks_are_copied_and_blank_ones_are_left_alone():
    clean = np.stack([_noisy(5), _noisy(6)])
    assert zero_filled_as_nan(clean) is clean  # no copy, the same floats
    blank = np.zeros((2, 66, 66), np.float32)
    assert zero_filled_as_nan(blank) is blank  # the readers refuse blank images
    noiseless = blank.copy()
    noiseless[0, 30:33, 30:33] = 1.0  # zeros around a source: the image, not a cut-off edge
    assert zero_filled_as_nan(noiseless) is noiseless
    mixed = clean.copy()
    mixed[1, -30:] = 0.0
    out = zero_filled_as_nan(mixed)
    assert np.isnan(out[1, -30:]).all() and np.isfinite(out[1, :-30]).all()
    assert np.array_equal(out[0], clean[0]) and (mixed[1, -30:] == 0).all()  # input untouched
    # Integer images with little noise: the few zero squares noise makes are all there is.
    counts = np.round(np.random.default_rng(7).normal(0.0, 1.0, (200, 200))).astype(np.float32)
    assert np.isnan(zero_filled_as_nan(counts)).mean() < 0.005


def test_a_zero_strip_enters_the_model_as_missing_sky_not_as_noiseless_data():
    vis, nisp = tiny_cutouts(4, seed=3)
    cfg = InputConfig()  # cpu-small's input: native VIS 80 px, NISP resampled
    strip_zero, strip_nan, as_data = vis.copy(), vis.copy(), vis.copy()
    strip_zero[:, :, :40] = 0.0  # a fifth of the cutout off the footprint
    strip_nan[:, :, :40] = np.nan
    as_data[:, :, :40] = 1e-30  # not exact zeros: read as (noiseless) data
    nisp_zero, nisp_nan = nisp.copy(), nisp.copy()
    nisp_zero[:, :, :, :13] = 0.0
    nisp_nan[:, :, :, :13] = np.nan
    zero_in = to_model_input(strip_zero, nisp_zero, cfg)
    assert isinstance(zero_in, torch.Tensor)
    torch.testing.assert_close(zero_in, to_model_input(strip_nan, nisp_nan, cfg), rtol=0, atol=0)
    assert (vis[:, :, :40] != 0).all() and (strip_zero[:, :, :40] == 0).all()  # not modified
    # Read as data, the zeros pull the noise estimate down and stretch the rest harder.
    data_in = to_model_input(as_data, nisp_nan, cfg)
    assert (zero_in[:, 0] - data_in[:, 0]).abs().max() > 0.5
    # Torch input (as a GPU batch would come) gives the same.
    torch.testing.assert_close(
        to_model_input(torch.from_numpy(strip_zero), torch.from_numpy(nisp_zero), cfg), zero_in
    )


def test_nonfinite_regions_become_missing_pixels_and_scattered_ones_the_median():
    """NaN regions (masks, ground off the footprint) are no data, as zero-filled ones: they
    become zeros the model input leaves out; a few scattered NaN take the median; many
    scattered ones, or regions over half the image, refuse it and leave it as it was."""
    image = _noisy(8)
    image[:, :60] = np.nan  # 30% of the cutout: a region, kept as missing
    image[150, 150] = np.inf  # one scattered bad pixel
    median = np.median(image[np.isfinite(image)])
    count, reason = repair_nonfinite(image)
    assert reason is None and count == 200 * 60 + 1
    assert (image[:, :60] == 0).all() and np.isfinite(image).all()
    assert image[150, 150] == median
    missing = zero_filled(image)
    assert missing is not None and missing.sum() == 200 * 60

    scattered = _noisy(9)
    scattered[::4, ::4] = np.nan  # 6% of the pixels, none in a region
    before = scattered.copy()
    assert "2500 of 40000" in str(repair_nonfinite(scattered)[1])
    np.testing.assert_array_equal(scattered, before)  # refused: untouched
    half = _noisy(10)
    half[:, :80] = 0.0  # 40% off the footprint already ...
    half[:, 80:110] = np.nan  # ... and 15% masked: more than half without data
    assert repair_nonfinite(half)[1] is not None


def test_a_nan_strip_enters_the_model_as_the_same_strip_of_zeros():
    vis, nisp = tiny_cutouts(2, seed=5)
    nan_strip, zero_strip = vis.copy(), vis.copy()
    nan_strip[:, :, :50] = np.nan
    zero_strip[:, :, :50] = 0.0
    for image in nan_strip:
        assert repair_nonfinite(image)[1] is None
    cfg = InputConfig()
    torch.testing.assert_close(
        to_model_input(nan_strip, nisp, cfg), to_model_input(zero_strip, nisp, cfg), rtol=0, atol=0
    )


def test_cutouts_without_data_at_the_centre_are_skipped_with_the_reason(tmp_path):
    """An object inside a masked or zero-filled region (in any band) would be scored as sky:
    layout and store readers refuse it with the reason; a region beside it is scored."""
    root = make_tiny_layout(tmp_path / "layout", n=4, seed=2)
    ids = read_layout(root).ids.tolist()
    vis_path = image_path(root, EUCLID.band("VIS"), ids[0])
    vis = fits.getdata(vis_path).astype(np.float32)
    vis[90:110, 90:110] = np.nan  # a mask over the object: a NaN region, zeros once read
    write_fits(vis_path, vis)
    h_path = image_path(root, EUCLID.band("H"), ids[1])
    h = fits.getdata(h_path).astype(np.float32)
    h[:, 30:40] = 0.0  # H zero-filled through the centre
    write_fits(h_path, h)
    edge_path = image_path(root, EUCLID.band("VIS"), ids[2])
    edge = fits.getdata(edge_path).astype(np.float32)
    edge[:, :50] = 0.0  # off the footprint beside the object: scored
    write_fits(edge_path, edge)
    cutouts = open_source(root).read(range(4))
    assert cutouts.valid.tolist() == [False, False, True, True]
    assert [reason_kind(r) for r in cutouts.reasons[:2]] == ["no data at the centre"] * 2
    pack(root, tmp_path / "store.zarr", progress=False)  # packs the two it can score
    store = open_source(tmp_path / "store.zarr")
    assert store.ids.tolist() == ids[2:]
    assert {p.id for p in store.problems} == set(ids[:2])

    # rows read from a store (written before this check) are refused the same way
    scorable = [3, 3, 2, 3]  # pixels of the rows that were read (refused rows are zeros)
    rows = Cutouts(cutouts.vis[scorable], cutouts.nisp[scorable], np.ones(4, bool), [None] * 4)
    rows.vis[0, 95:105, 95:105] = 0.0
    rows.nisp[1, 2, 30:36, 30:36] = 0.0
    mark_blank(rows, tmp_path / "store.zarr")
    assert rows.valid.tolist() == [False, False, True, True]
    assert "no data at the centre (H masked or zero-filled)" in str(rows.reasons[1])
    assert centre_missing(np.zeros((2, 66, 66))).all()
    assert not centre_missing(_noisy(12)[None]).any()
