"""The one policy for NaN/inf pixels, wherever images come in (the FITS reader, a source's rows,
arrays given to the predictor, flagged pixels of mosaic tiles).

- Scattered non-finite pixels (at most ``MAX_NONFINITE_FRACTION`` of the image) take the
  median of the finite ones, neutral in any flux unit.
- Non-finite *regions* (every pixel of a 3x3 square of them, ``pixels.square_blocks``: masks,
  chip gaps, ground off a mosaic's footprint, a satellite trail) are no data: they become
  exact zeros, the one form missing regions take downstream (``pixels.missing_pixels``), which
  the model input, the pictures and the painting of lenses leave out of sky and noise. Up to
  half the image.
- Anything else (more scattered bad pixels, or regions over more than half the image) refuses
  the image with a reason, and the caller skips the object.

Either way the pixels changed are counted (``repaired``).
"""

from __future__ import annotations

import numpy as np

from lensfinder.data.pixels import (
    MAX_ZERO_FILLED_FRACTION,
    NO_DATA_AT_CENTRE,
    centre_missing,
    square_blocks,
)

MAX_NONFINITE_FRACTION = 0.01


def repair_nonfinite(image: np.ndarray) -> tuple[int, str | None]:
    """``(non-finite pixels, reason)``: reason None means usable (repaired in place if needed;
    a refused image is left as it was)."""
    bad = ~np.isfinite(image)
    count = int(bad.sum())
    if count == 0:
        return 0, None
    regions = square_blocks(bad)
    scattered = bad & ~regions
    if scattered.sum() > MAX_NONFINITE_FRACTION * image.size or (
        regions.any()  # missing, with the zero-filled regions already there: over half
        and square_blocks(regions | (image == 0)).mean() > MAX_ZERO_FILLED_FRACTION
    ):
        return count, f"non-finite pixels: {count} of {image.size} are NaN or inf"
    if scattered.any():
        image[scattered] = np.median(image[~bad])
    image[regions] = 0.0
    return count, None


def checked_pixels(image: np.ndarray) -> tuple[int, str | None]:
    """What every reader of single images does (the FITS reader, the tile cutter): the
    non-finite policy, then a blank image (constant: zeros from a failed writer, a masked
    field) or one without data at its centre (``pixels.centre_missing``) refused.
    ``(pixels repaired, reason)``; reason None means usable. ``cutouts.mark_blank`` does the
    last two for batches of rows."""
    repaired, reason = repair_nonfinite(image)
    if reason is not None:
        return repaired, reason
    if image.size and image.min() == image.max():
        return repaired, f"blank image (every pixel is {float(image.flat[0]):g})"
    if centre_missing(image):
        return repaired, f"{NO_DATA_AT_CENTRE} (masked or zero-filled)"
    return repaired, None
