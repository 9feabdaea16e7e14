"""The dihedral group D4 on images: 4 rotations by 90 degrees, each with or without a flip.

Lensing has no preferred orientation, so the label is invariant under D4: it serves as training
augmentation (the Dataset) and as test-time augmentation (the predictor averages over all 8).
Element ``k`` is ``rot90(x, k % 4)`` applied after an optional left-right flip (``k >= 4``), on the
last two axes, so it works alike on (h, w), (c, h, w) and (n, c, h, w) tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lensfinder.config import D4_ELEMENTS

N_ELEMENTS = D4_ELEMENTS


def apply_d4(x: torch.Tensor, k: int) -> torch.Tensor:
    """Element ``k`` (0..7) of D4 on the last two axes; 0 is the identity."""
    if not 0 <= k < N_ELEMENTS:
        raise ValueError(f"D4 element must be 0..7, got {k}")
    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k % 4, dims=(-2, -1))


def apply_d4_per_sample(
    x: torch.Tensor,
    ks: Sequence[int],
    rows: Sequence[int] | None = None,
    windows: Sequence[tuple[int, int]] | None = None,
    size: int | None = None,
) -> torch.Tensor:
    """A batch (n, ...) with element ``ks[i]`` applied to sample ``i``; with ``rows``, the batch
    is made of samples ``x[rows[i]]`` instead, so picking a batch out of a larger tensor and
    augmenting it is one copy. With ``windows`` (top, left) and ``size``, sample ``i`` is first
    cut to the ``size`` x ``size`` window at ``windows[i]`` (a random translation).

    One small rot90/flip per sample, stacked: on CPU this is faster than grouping the samples by
    element and transforming each group as a batch (the gathers and scatters cost more).
    """
    rows = range(len(x)) if rows is None else rows
    if len(rows) != len(ks):
        raise ValueError(f"{len(ks)} D4 elements for {len(rows)} samples")
    if windows is None:
        return torch.stack([apply_d4(x[row], k) for row, k in zip(rows, ks, strict=True)])
    if size is None or len(windows) != len(ks):
        raise ValueError(f"{len(windows)} windows of size {size} for {len(ks)} samples")
    return torch.stack(
        [
            apply_d4(x[row, ..., top : top + size, left : left + size], k)
            for row, k, (top, left) in zip(rows, ks, windows, strict=True)
        ]
    )
