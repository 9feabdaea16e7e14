"""Train / validation / test split by a hash of (object ID, seed).

An object's split depends on nothing but its ID and the seed, so evaluation, later training runs,
and a grown data set all agree on which objects were held out, whatever order or subset they see.
"""

from __future__ import annotations

import numpy as np

from lensfinder.config import SplitConfig

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a well-mixed 64-bit hash, vectorised (wrapping uint64 arithmetic)."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return x ^ (x >> np.uint64(31))


def split_fraction(ids: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per ID, fixed by (ID, seed) alone."""
    ids = np.asarray(ids, dtype=np.int64).astype(np.uint64)
    mixed = _splitmix64(ids ^ _splitmix64(np.full(ids.shape, seed % (1 << 64), dtype=np.uint64)))
    return (mixed >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def split_indices(ids: np.ndarray, split_cfg: SplitConfig) -> dict[str, np.ndarray]:
    """Positions into ``ids`` for "train", "val" and "test" (sorted, disjoint, covering all).

    ``test_fraction`` of objects are test; ``val_fraction`` (of all objects) is carved out of
    what would otherwise be train.
    """
    test, val = split_cfg.test_fraction, split_cfg.val_fraction  # checked by SplitConfig
    u = split_fraction(ids, split_cfg.seed)
    return {
        "train": np.flatnonzero(u >= test + val),
        "val": np.flatnonzero((u >= test) & (u < test + val)),
        "test": np.flatnonzero(u < test),
    }
