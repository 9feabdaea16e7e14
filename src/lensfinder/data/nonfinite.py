"""The one policy for NaN/inf pixels, wherever images come in (the FITS reader, a source's rows,
arrays given to the predictor).

An image with at most ``MAX_NONFINITE_FRACTION`` of its pixels non-finite is repaired in place
(those pixels take the median of the finite ones, neutral in any flux unit) and the repair is
counted; an image with more is refused with a reason, and the caller skips the object.
"""

from __future__ import annotations

import numpy as np

MAX_NONFINITE_FRACTION = 0.01


def repair_nonfinite(image: np.ndarray) -> tuple[int, str | None]:
    """``(non-finite pixels, reason)``: reason None means usable (repaired in place if needed)."""
    bad = ~np.isfinite(image)
    count = int(bad.sum())
    if count == 0:
        return 0, None
    if count > MAX_NONFINITE_FRACTION * image.size:
        return count, f"non-finite pixels: {count} of {image.size} are NaN or inf"
    image[bad] = np.median(image[~bad])
    return count, None
