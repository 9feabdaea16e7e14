"""The noise estimator and the NISP->VIS resampler in numpy, for pictures (no torch).

``data.transforms`` does the same on torch tensors for the model input; both read the
estimator's constants from here, and ``tests/test_visual.py`` checks that the two give the same
floats, so a picture's stretch and the model see one noise level. The gallery and the grading
server draw with these and so start without torch.
"""

from __future__ import annotations

import numpy as np

from lensfinder.config import BANDS_NISP
from lensfinder.surveys import EUCLID

MAD_TO_SIGMA = 1.4826  # sigma of a Gaussian per unit median absolute deviation
CLIP_SIGMAS = 3.0
CLIP_ITERATIONS = 2
BORDER_FRACTION = 1 / 8  # noise is measured in a frame this wide: sky, away from the lens
MAX_FRAME_PIXELS = 2048  # enough for a ~3% sigma; more only costs time (medians sort)


def border_index(height: int, width: int) -> np.ndarray:
    """Flat positions of the border frame's pixels, thinned to at most ~``MAX_FRAME_PIXELS``."""
    width_px = max(2, round(min(height, width) * BORDER_FRACTION))
    mask = np.ones((height, width), dtype=bool)
    mask[width_px:-width_px, width_px:-width_px] = False
    index = np.flatnonzero(mask)
    stride = max(1, -(-len(index) // MAX_FRAME_PIXELS))
    return index[::stride]


def _kth_deviation(
    ordered: np.ndarray, first: np.ndarray, count: np.ndarray, centre: np.ndarray, k: np.ndarray
) -> np.ndarray:
    """Per row of the sorted (rows, m) ``ordered``: the ``k``-th smallest (0-based) of
    ``|v - centre|`` (float32, as written) over the run ``ordered[first:first + count]``, where
    ``centre`` lies within the run. Exactly the value that sorting the deviations gives.

    No sort: the run splits where ``v >= centre`` begins; the deviations fall towards the split
    before it (run A, read backwards) and rise after it (run B), two sorted runs, so the k-th
    smallest of both is found by bisecting how many of the k + 1 smallest come from A
    (vectorised over rows, ~11 steps for 2,000 values). Rows with ``count`` 0 give garbage,
    which callers mask.
    """
    rows = np.arange(ordered.shape[0])
    last = ordered.shape[1] - 1

    def deviation(index: np.ndarray) -> np.ndarray:
        return np.abs(ordered[rows, np.minimum(np.maximum(index, 0), last)] - centre)

    end = first + count
    with np.errstate(invalid="ignore"):
        below = np.count_nonzero(ordered < centre[:, None], axis=-1)
    split = np.clip(below, first, end)
    length_a, length_b = split - first, end - split
    low = np.maximum(0, k + 1 - length_b)  # taken from A: low <= answer <= high
    high = np.minimum(k + 1, length_a)
    for _ in range(int(ordered.shape[1] + 1).bit_length()):
        mid = (low + high) // 2
        # Too few from A while B's last taken one exceeds A's next one.
        more = (low < high) & (mid < length_a) & (k - mid >= 0)
        more &= deviation(split + k - mid) > deviation(split - 1 - mid)
        low = np.where(more, mid + 1, low)
        high = np.where(more, high, mid)
    from_a = np.where(low > 0, deviation(split - low), -np.inf)  # A[low - 1]
    from_b = np.where(k - low >= 0, deviation(split + k - low), -np.inf)  # B[k - low]
    return np.maximum(from_a, from_b).astype(np.float32)


def _median_and_sigma(
    ordered: np.ndarray, first: np.ndarray, count: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Median and 1.4826 x MAD of the runs ``ordered[first:first + count]`` (rows, m) of a
    row-sorted array; (rows,) each, NaN where ``count`` is 0."""
    half = np.maximum(count - 1, 0) // 2
    median = np.take_along_axis(ordered, (first + half)[:, None], axis=-1)[:, 0]
    median = np.where(count > 0, median, np.float32(np.nan))
    mad = _kth_deviation(ordered, first, count, median, half)
    return median, np.where(count > 0, MAD_TO_SIGMA * mad, np.float32(np.nan))


def background_and_noise(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sky level and noise sigma per image of ``images`` (..., h, w), float32, shaped (..., 1):
    the border frame's median and 1.4826 x MAD, then ``CLIP_ITERATIONS`` rounds of 3-sigma
    clipping. NaN or 0 where the noise cannot be measured (callers fall back).

    One sort per frame: the pixels a clipping round keeps (``|v - median| <= 3 sigma``,
    computed as written) are one run of the sorted frame, so each median is read off it and
    each MAD is selected from the two sorted runs of deviations (``_kth_deviation``): the same
    floats as sorting the deviations, at a quarter of the sorting.
    """
    images = np.asarray(images, dtype=np.float32)
    batch, (height, width) = images.shape[:-2], images.shape[-2:]
    flat = images.reshape(-1, height * width)
    frame = np.take(flat, border_index(height, width), axis=-1)
    with np.errstate(over="ignore", invalid="ignore"):
        all_finite = bool(np.isfinite(frame.sum()))  # a finite sum: every pixel finite
    if not all_finite:
        frame = np.where(np.isfinite(frame), frame, np.float32(np.nan))
    frame.sort(axis=-1)  # in place (``take`` made a copy): NaN last
    ordered = frame
    count = np.full(len(ordered), ordered.shape[1])
    if not all_finite:
        count = np.count_nonzero(~np.isnan(ordered), axis=-1)
    median, sigma = _median_and_sigma(ordered, np.zeros_like(count), count)
    for _ in range(CLIP_ITERATIONS):
        with np.errstate(invalid="ignore"):
            kept = np.abs(ordered - median[:, None]) <= CLIP_SIGMAS * sigma[:, None]
        count = np.count_nonzero(kept, axis=-1)
        median, sigma = _median_and_sigma(ordered, np.argmax(kept, axis=-1), count)
    return median.reshape(*batch, 1), sigma.reshape(*batch, 1)


def _bilinear_weights(size: int, pixels: int, ratio: float) -> np.ndarray:
    """(size, pixels) weights of bilinear sampling, as ``F.grid_sample`` with a centred scaling
    by ``ratio``, ``align_corners=False`` and border padding."""
    normalised = ratio * ((2 * np.arange(size) + 1) / size - 1)
    position = np.clip(((normalised + 1) * pixels - 1) / 2, 0, pixels - 1)
    left = np.floor(position).astype(np.int64)
    right = np.minimum(left + 1, pixels - 1)
    fraction = position - left
    weights = np.zeros((size, pixels))
    np.add.at(weights, (np.arange(size), left), 1 - fraction)
    np.add.at(weights, (np.arange(size), right), fraction)
    return weights


def resample_nisp(nisp: np.ndarray, size: int, field_arcsec: float) -> np.ndarray:
    """NISP (..., h, w) onto a ``size`` x ``size`` grid covering ``field_arcsec`` (float64):
    ``data.transforms.resample_nisp`` without torch (true pixel scales, centres aligned)."""
    nisp = np.asarray(nisp, dtype=np.float64)
    scale = EUCLID.band(BANDS_NISP[0]).pixel_scale
    rows = _bilinear_weights(size, nisp.shape[-2], field_arcsec / (nisp.shape[-1] * scale))
    columns = _bilinear_weights(size, nisp.shape[-1], field_arcsec / (nisp.shape[-1] * scale))
    return rows @ nisp @ columns.T
