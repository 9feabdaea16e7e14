"""The noise estimator and the NISP->VIS resampler in numpy, for pictures (no torch).

``data.transforms`` does the same on torch tensors for the model input; both read the
estimator's constants from here, and ``tests/test_visual.py`` checks that the two give the same
floats, so a picture's stretch and the model see one noise level. The gallery and the grading
server draw with these and so start without torch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from lensfinder.config import BANDS_NISP
from lensfinder.surveys import EUCLID

MAD_TO_SIGMA = 1.4826  # sigma of a Gaussian per unit median absolute deviation
CLIP_SIGMAS = 3.0
CLIP_ITERATIONS = 2
BORDER_FRACTION = 1 / 8  # noise is measured in a frame this wide: sky, away from the lens
MAX_FRAME_PIXELS = 2048  # enough for a ~3% sigma; more only costs time (medians sort)
# A tilted sky (``sky_plane_and_noise``) is fitted to every 4th frame pixel (a rise's error ~0.06
# sigma from the centre to the edge, VIS and NISP alike, more where the frame is masked) and
# subtracted where it rises more than 0.3 sigma and 4 times its error.
TILT_FRAME_STRIDE = 4
TILT_SIGMAS = 0.3
TILT_SIGNIFICANCE = 4.0
ZERO_BLOCK = 3  # a pixel in a ZERO_BLOCK x ZERO_BLOCK square of exact zeros holds no data
# ... unless zeros cover more than this share of the image: then the zeros are the image (a
# blank or noiseless one, refused or handled as such), not a cut-off edge beside data
MAX_ZERO_FILLED_FRACTION = 0.5
NO_DATA_AT_CENTRE = "no data at the centre"  # the skip reason of ``centre_missing`` images


def border_index(height: int, width: int) -> np.ndarray:
    """Flat positions of the border frame's pixels, thinned to at most ~``MAX_FRAME_PIXELS``."""
    width_px = max(2, round(min(height, width) * BORDER_FRACTION))
    mask = np.ones((height, width), dtype=bool)
    mask[width_px:-width_px, width_px:-width_px] = False
    index = np.flatnonzero(mask)
    stride = max(1, -(-len(index) // MAX_FRAME_PIXELS))
    return index[::stride]


def may_hold_zero_blocks(images: Any) -> bool:
    """Whether any image of ``images`` (..., h, w; a numpy array or a torch tensor, checked on
    its own device) can hold a ``ZERO_BLOCK`` square of exact zeros: every such square holds
    one pixel of the lattice of every ``ZERO_BLOCK``-th row and column, so only that ninth of
    the pixels is read (~0.01 ms per 200x200 image)."""
    return bool((images[..., ::ZERO_BLOCK, ::ZERO_BLOCK] == 0).any())


def zero_filled(image: np.ndarray) -> np.ndarray | None:
    """The pixels of a 2-D ``image`` that lie in a ``ZERO_BLOCK`` square of exact zeros (a
    boolean mask: the zeros' morphological opening by that square), or None where there are
    none.

    Pipelines fill ground without data (off a mosaic's footprint, chip gaps, masks) with 0 as
    often as with NaN; noise never makes such a square (integer images with a sigma of 1 count
    make one in several thousand pixels, at their sky level anyway)."""
    if image.ndim != 2 or min(image.shape) < ZERO_BLOCK or not may_hold_zero_blocks(image):
        return None
    filled = square_blocks(image == 0)
    return filled if filled.any() else None


def square_blocks(mask: np.ndarray) -> np.ndarray:
    """The pixels of a 2-D boolean ``mask`` that lie in a ``ZERO_BLOCK`` square of it (its
    morphological opening by the square): regions, not scattered pixels."""
    if mask.ndim != 2 or min(mask.shape) < ZERO_BLOCK:
        return np.zeros(mask.shape, bool)
    from scipy.ndimage import binary_opening  # only for images with such pixels: no import cost

    return binary_opening(mask, structure=np.ones((ZERO_BLOCK, ZERO_BLOCK), bool))


def centre_missing(images: np.ndarray) -> np.ndarray:
    """Per image of ``images`` (..., h, w): whether its central ``ZERO_BLOCK`` square is all
    exact zeros, i.e. the object itself lies in a region without data (masked, off the
    footprint; NaN regions are zeros by then, ``data/nonfinite.py``): a score of it would be a
    score of nothing, so readers refuse it. Nine pixels per image."""
    h, w = images.shape[-2:]
    top, left = max(0, h // 2 - 1), max(0, w // 2 - 1)
    block = images[..., top : top + ZERO_BLOCK, left : left + ZERO_BLOCK]
    return np.asarray((block == 0).all(axis=(-2, -1)))


def missing_pixels(image: np.ndarray) -> np.ndarray | None:
    """The zero-filled pixels of a 2-D ``image`` that are missing data (``zero_filled``), or
    None: none, or more than ``MAX_ZERO_FILLED_FRACTION`` of the image (then the zeros are
    the image: blank, or noiseless with a source or two)."""
    filled = zero_filled(image)  # None at once where the image's lattice has no zero
    return None if filled is None or filled.mean() > MAX_ZERO_FILLED_FRACTION else filled


def zero_filled_as_nan(images: np.ndarray) -> np.ndarray:
    """``images`` (..., h, w) with their zero-filled pixels (``zero_filled``) as NaN, so the
    noise statistics leave them out and the stretch writes them as sky, as it does NaN: a copy
    (float32; float64 for float64 input) where any are found, else ``images`` itself. An image
    more than half zero-filled is left as it is (``missing_pixels``).

    A strip of zeros over a fifth of a cutout, read as sky, pulled the noise estimate down and
    cost cpu-best 0.15 AUROC on our shifted set; as missing pixels, nothing (README, "Session
    22")."""
    if images.ndim < 2 or not may_hold_zero_blocks(images):
        return images
    flat = images.reshape(-1, *images.shape[-2:])
    out: np.ndarray | None = None
    dtype = np.float64 if flat.dtype == np.float64 else np.float32
    for i in range(len(flat)):
        filled = missing_pixels(flat[i])
        if filled is None:
            continue
        if out is None:
            out = np.array(flat, dtype=dtype, copy=True)
        out[i][filled] = np.nan
    return images if out is None else out.reshape(images.shape)


def _first_false(
    holds: Callable[[np.ndarray], np.ndarray], low: np.ndarray, high: np.ndarray, length: int
) -> np.ndarray:
    """Per row, the first index in [low, high] where ``holds`` (true, then false along the
    index; false at ``high``) is false: bisection vectorised over rows, for up to ``length``
    indices (as many rounds as the widest bracket needs: none where every row's is empty)."""
    widest = min(int(np.max(high - low, initial=0)), length)
    for _ in range(max(0, widest).bit_length()):
        mid = (low + high) >> 1
        move = (low < high) & holds(mid)
        low = np.where(move, mid + 1, low)
        high = np.where(move, high, mid)
    return low


def _median_and_sigma(
    ordered: np.ndarray, first: np.ndarray, count: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Median and 1.4826 x MAD of the runs ``ordered[first:first + count]`` of the row-sorted
    (rows, m) ``ordered``: (rows,) each, NaN where ``count`` is 0.

    The MAD is the k-th smallest deviation ``|v - median|`` in the run, without sorting
    deviations, or computing all of them: the run splits where ``v >= median`` begins; before
    it deviations fall towards the split (run A, read backwards), from it they rise (run B):
    the k-th smallest of two sorted runs is found by bisecting how many of the k + 1 smallest
    come from A, exactly the value a sort gives.
    """
    rows, length = ordered.shape
    base = np.arange(rows) * length  # flat index of each row's start
    first = np.where(count > 0, first, 0)
    half = np.maximum(count - 1, 0) // 2
    at_median = base + first + half
    flat = ordered.ravel()
    median = np.where(count > 0, flat[at_median], np.float32(np.nan))

    def dev(index: np.ndarray) -> np.ndarray:  # |v - median| as written, only where looked at
        return np.abs(flat.take(index, mode="clip") - median)

    def value(index: np.ndarray) -> np.ndarray:
        return flat.take(index, mode="clip")

    # Where the run's v >= median begins: at the median itself unless its value repeats
    # before it (ties: integer images), where it is bisected for.
    start = base + first
    tied = (at_median > start) & ~(value(at_median - 1) < median)
    low = np.where(tied, start, at_median)
    split = _first_false(lambda i: value(i) < median, low, at_median, length)
    from_a, from_b = split - base - first, base + first + count - split  # run lengths
    low = np.maximum(0, half + 1 - from_b)  # taken from A, of the k + 1 smallest
    high = np.minimum(half + 1, from_a)
    last_b = split + half  # B[k - i] sits at last_b - i, A[i] at split - 1 - i
    # Too few from A while B's last taken one exceeds A's next one.
    taken = _first_false(lambda i: dev(last_b - i) > dev(split - 1 - i), low, high, length)
    mad = np.maximum(
        np.where(taken > 0, dev(split - taken), -np.inf),  # A[taken - 1]
        np.where(half - taken >= 0, dev(last_b - taken), -np.inf),  # B[k - taken]
    )
    sigma = np.where(count > 0, MAD_TO_SIGMA * mad.astype(np.float32), np.float32(np.nan))
    return median, sigma


def _clipped_run(
    ordered: np.ndarray, median: np.ndarray, limit: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(first, count)`` per row of the values a clipping round keeps, ``|v - median| <=
    limit`` as written in float32: ``v - median`` rounds monotonically, so along a sorted row
    the kept values are one run (NaN, sorted last, is never kept), found by bisection."""
    rows, length = ordered.shape
    flat = ordered.ravel()
    base = np.arange(rows) * length
    end = base + length

    def shifted(index: np.ndarray) -> np.ndarray:
        return flat.take(index, mode="clip") - median

    start = _first_false(lambda i: shifted(i) < -limit, base, end, length)
    stop = _first_false(lambda i: shifted(i) <= limit, start, end, length)
    return start - base, stop - start


def background_and_noise(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sky level and noise sigma per image of ``images`` (..., h, w), float32, shaped (..., 1):
    the border frame's median and 1.4826 x MAD, then ``CLIP_ITERATIONS`` rounds of 3-sigma
    clipping. NaN or 0 where the noise cannot be measured (callers fall back).

    One sort per frame: the pixels a clipping round keeps (``|v - median| <= 3 sigma``,
    computed as written) are one run of the sorted frame (``_clipped_run``), so each median is
    read off it and each MAD is selected from the two sorted runs of deviations: the same
    floats as sorting the deviations, with no pass over the frame after its sort.
    """
    images = np.asarray(images, dtype=np.float32)
    batch, (height, width) = images.shape[:-2], images.shape[-2:]
    frame = np.take(images.reshape(-1, height * width), border_index(height, width), axis=-1)
    median, sigma = _frame_statistics(frame)
    return median.reshape(*batch, 1), sigma.reshape(*batch, 1)


def _frame_statistics(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Clipped median and sigma (rows,) of the rows of a float32 (rows, m) ``frame``, which is
    sorted in place (pass a copy you may lose)."""
    with np.errstate(over="ignore", invalid="ignore"):
        all_finite = bool(np.isfinite(frame.sum()))  # a finite sum: every pixel finite
    if not all_finite:
        frame = np.where(np.isfinite(frame), frame, np.float32(np.nan))
    frame.sort(axis=-1)  # in place: NaN last
    ordered = frame
    count = np.full(len(ordered), ordered.shape[1])
    if not all_finite:
        count = np.count_nonzero(~np.isnan(ordered), axis=-1)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN (nothing kept), and overflow
        median, sigma = _median_and_sigma(ordered, np.zeros_like(count), count)
        for _ in range(CLIP_ITERATIONS):
            first, count = _clipped_run(ordered, median, CLIP_SIGMAS * sigma)
            median, sigma = _median_and_sigma(ordered, first, count)
    return median, sigma


def sky_plane_and_noise(
    images: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A tilted sky: ``(sky, slope_x, slope_y, sigma)`` per image of ``images`` (..., h, w),
    each float32 (..., 1), the sky at pixel (row, col) being ``sky + slope_x * (col - (w - 1)
    / 2) + slope_y * (row - (h - 1) / 2)``.

    Real cutouts sit on gradients (a bright neighbour's or a group's halo, scattered light,
    imperfect background subtraction) that a constant sky leaves in the image and reads as
    noise (a 2-sigma gradient cost cpu-small 0.077 AUROC: README, "Session 24"). The plane is a
    least-squares fit to every ``TILT_FRAME_STRIDE``-th border-frame pixel that
    ``background_and_noise`` keeps (companions clipped). Where it rises more than
    ``TILT_SIGMAS`` noise sigmas from the centre to a corner, and ``TILT_SIGNIFICANCE`` times the
    fit's own error, sky and sigma are the clipped statistics of the frame's residual;
    elsewhere (a flat sky) and where no fit is determined (more than half the frame clipped or
    masked), slopes are 0 and sky and sigma are exactly ``background_and_noise``'s, so images
    without a gradient keep their floats.
    """
    images = np.asarray(images, dtype=np.float32)
    batch, (height, width) = images.shape[:-2], images.shape[-2:]
    index, coords, design = _frame_geometry(height, width)
    frame = np.take(images.reshape(-1, height * width), index, axis=-1)
    median, sigma = _frame_statistics(frame.copy())
    sample, at = frame[:, ::TILT_FRAME_STRIDE], coords[::TILT_FRAME_STRIDE]
    with np.errstate(invalid="ignore", over="ignore"):
        deviation = sample - median[:, None]
        kept = np.abs(deviation) <= CLIP_SIGMAS * sigma[:, None]  # NaN: not kept
    # The normal equations' sums, one einsum per column: BLAS would start its threads on
    # every batch beside the scan's and the loader's (and is no faster at these shapes).
    weights, kept_deviation = kept.astype(np.float32), np.where(kept, deviation, np.float32(0))
    n, sx, sy, sxx, sxy, syy = (
        np.einsum("rm,m->r", weights, column) for column in design[::TILT_FRAME_STRIDE].T
    )
    normal = np.stack([n, sx, sy, sx, sxx, sxy, sy, sxy, syy], axis=-1).reshape(-1, 3, 3)
    moments = np.stack([np.einsum("rm,m->r", kept_deviation, c) for c in at.T], axis=-1)
    # Determined where at least half the sample is kept: its pixels then span x and y.
    fitted = np.count_nonzero(kept, axis=1) >= len(at) / 2
    normal[~fitted] = np.eye(3)
    moments[~fitted] = 0.0
    inverse = np.linalg.inv(normal)
    plane = (inverse @ moments[..., None])[..., 0]  # (rows, 3): a, bx, by
    half_x, half_y = (width - 1) / 2, (height - 1) / 2
    rise = np.abs(plane[:, 1]) * half_x + np.abs(plane[:, 2]) * half_y
    # the rise's own error, in noise sigmas: masked frames fit less well
    error = np.sqrt(half_x**2 * inverse[:, 1, 1] + half_y**2 * inverse[:, 2, 2])
    with np.errstate(invalid="ignore"):
        significant = rise > sigma * np.maximum(TILT_SIGMAS, TILT_SIGNIFICANCE * error)
        tilted = np.flatnonzero(fitted & significant)
    sky = median.copy()  # median is read below; sigma is not, and is fresh
    slope_x, slope_y = np.zeros_like(median), np.zeros_like(median)
    if len(tilted):
        a, bx, by = (plane[tilted, i : i + 1] for i in range(3))
        with np.errstate(invalid="ignore", over="ignore"):
            residual = (
                frame[tilted] - median[tilted, None] - (a + bx * coords[:, 1] + by * coords[:, 2])
            )
            offset, residual_sigma = _frame_statistics(residual.astype(np.float32))
            good = np.isfinite(offset) & (residual_sigma > 0)
        rows = tilted[good]
        sky[rows] = median[rows] + plane[rows, 0] + offset[good]
        sigma[rows] = residual_sigma[good]
        slope_x[rows], slope_y[rows] = plane[rows, 1], plane[rows, 2]
    shaped = [v.astype(np.float32).reshape(*batch, 1) for v in (sky, slope_x, slope_y, sigma)]
    return shaped[0], shaped[1], shaped[2], shaped[3]


def centred_offsets(size: int) -> np.ndarray:
    """Pixel offsets from the centre along an axis of ``size`` pixels: the coordinates a tilted
    sky's slopes are per (``sky_plane_and_noise``; the model input and pictures use these)."""
    return np.arange(size) - (size - 1) / 2


def tilted_sky(sky: float, slope_x: float, slope_y: float, shape: tuple[int, int]) -> np.ndarray:
    """The (h, w) sky image of one ``sky_plane_and_noise`` result."""
    height, width = shape
    return sky + slope_x * centred_offsets(width) + slope_y * centred_offsets(height)[:, None]


@functools.lru_cache(maxsize=16)
def _frame_geometry(height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The border frame's flat positions, its pixels' (1, x, y) from the image centre (m, 3)
    and (1, x, y, xx, xy, yy) (m, 6), float32: a plane fit's design, made once per shape."""
    index = border_index(height, width)
    row, col = np.divmod(index, width)
    x, y = centred_offsets(width)[col], centred_offsets(height)[row]
    one = np.ones(len(index))
    coords = np.stack([one, x, y], axis=-1).astype(np.float32)
    design = np.stack([one, x, y, x * x, x * y, y * y], axis=-1).astype(np.float32)
    for array in (index, coords, design):
        array.flags.writeable = False
    return index, coords, design


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
