"""The dihedral group D4 on images: 4 rotations by 90 degrees, each with or without a flip.

Lensing has no preferred orientation, so the label is invariant under D4: it serves as training
augmentation and as test-time augmentation (average over all 8). Element ``k`` is
``rot90(x, k % 4)`` applied after an optional left-right flip (``k >= 4``), on the last two axes,
so it works alike on (h, w), (c, h, w) and (n, c, h, w) tensors and on numpy arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor
N_ELEMENTS = 8


def apply_d4(x: ArrayLike, k: int) -> ArrayLike:
    """Element ``k`` (0..7) of D4 on the last two axes; 0 is the identity."""
    if not 0 <= k < N_ELEMENTS:
        raise ValueError(f"D4 element must be 0..7, got {k}")
    if isinstance(x, torch.Tensor):
        if k >= 4:
            x = torch.flip(x, dims=(-1,))
        return torch.rot90(x, k % 4, dims=(-2, -1))
    if k >= 4:
        x = np.flip(x, axis=-1)
    return np.rot90(x, k % 4, axes=(-2, -1))


D4_ELEMENTS: tuple[Callable[[ArrayLike], ArrayLike], ...] = tuple(
    partial(apply_d4, k=k) for k in range(N_ELEMENTS)
)


def compose(a: int, b: int) -> int:
    """The element equal to applying ``b`` first, then ``a`` (group closure, used by tests/TTA).

    Element k is R^(k % 4) F^(k // 4) (flip F first, then rotation R); since F R = R^-1 F,
    R^i F^s R^j F^t = R^(i + (-1)^s j) F^(s xor t).
    """
    i, s = a % 4, a // 4
    j, t = b % 4, b // 4
    rotation = (i + (j if s == 0 else -j)) % 4
    return rotation + 4 * (s ^ t)


def inverse(k: int) -> int:
    """The element undoing ``k``: rotations invert, every flipped element is its own inverse."""
    return k if k >= 4 else (-k) % 4


def random_d4(x: ArrayLike, generator: torch.Generator | np.random.Generator | None = None):
    """``x`` under one uniformly drawn D4 element (the same element for the whole array)."""
    if isinstance(generator, np.random.Generator):
        k = int(generator.integers(N_ELEMENTS))
    else:
        k = int(torch.randint(N_ELEMENTS, (1,), generator=generator))
    return apply_d4(x, k)


def random_d4_per_sample(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A batch (n, ...) with an independently drawn D4 element per sample."""
    ks = torch.randint(N_ELEMENTS, (x.shape[0],), generator=generator)
    return torch.stack([apply_d4(sample, int(k)) for sample, k in zip(x, ks, strict=True)])
