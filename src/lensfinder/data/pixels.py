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


def _middle(ordered: np.ndarray, first: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Median of ``count`` values from ``first`` along the last axis of the sorted ``ordered``
    (the lower middle for even counts, as torch.nanmedian); NaN where ``count`` is 0."""
    at = first + np.clip(count - 1, 0, None) // 2
    middle = np.take_along_axis(ordered, at, axis=-1)
    return np.where(count > 0, middle, np.float32(np.nan))


def background_and_noise(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sky level and noise sigma per image of ``images`` (..., h, w), float32, shaped (..., 1):
    the border frame's median and 1.4826 x MAD, then ``CLIP_ITERATIONS`` rounds of 3-sigma
    clipping. NaN or 0 where the noise cannot be measured (callers fall back)."""
    images = np.asarray(images, dtype=np.float32)
    height, width = images.shape[-2:]
    frame = images.reshape(*images.shape[:-2], height * width)[..., border_index(height, width)]
    frame = np.where(np.isfinite(frame), frame, np.float32(np.nan))
    ordered = np.sort(frame, axis=-1)  # NaN last
    count = np.count_nonzero(~np.isnan(ordered), axis=-1, keepdims=True)
    start = np.zeros_like(count)
    median = _middle(ordered, start, count)
    deviation = np.sort(np.abs(ordered - median), axis=-1)
    sigma = MAD_TO_SIGMA * _middle(deviation, start, count)
    for _ in range(CLIP_ITERATIONS):
        with np.errstate(invalid="ignore"):
            kept = np.abs(ordered - median) <= CLIP_SIGMAS * sigma  # NaN compares False
        count = np.count_nonzero(kept, axis=-1, keepdims=True)
        median = _middle(ordered, np.argmax(kept, axis=-1, keepdims=True), count)
        deviation = np.where(kept, np.abs(ordered - median), np.float32(np.nan))
        sigma = MAD_TO_SIGMA * _middle(np.sort(deviation, axis=-1), start, count)
    return median, sigma


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
