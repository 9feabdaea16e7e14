"""Balanced batches: half lenses, half non-lenses, whatever the class ratio of the data.

Real searches have one lens per thousand galaxies; training on such a ratio teaches "never a lens".
The minority class is oversampled (cycled in fresh random orders), the majority is drawn without
repeats until exhausted, and every epoch reshuffles (``set_epoch``). Use as
``DataLoader(dataset, batch_sampler=BalancedBatchSampler(...))``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from lensfinder.errors import DataError


class _Cycle:
    """An endless stream of the given indices, reshuffled on every pass, shared out between
    ``world_size`` ranks: every rank draws the same stream (same generator, same pace) and keeps
    every ``world_size``-th item from its ``rank``, so within a pass the ranks' items are
    disjoint and together cover every index. One rank keeps the whole stream."""

    def __init__(
        self, indices: np.ndarray, rng: np.random.Generator, rank: int = 0, world_size: int = 1
    ) -> None:
        self.indices, self.rng = indices, rng
        self.rank, self.world_size = rank, world_size
        self.order = rng.permutation(indices)
        self.at = 0

    def take(self, count: int) -> np.ndarray:
        """This rank's next ``count`` items (the stream moves on by ``count`` for every rank)."""
        return self._stream(count * self.world_size)[self.rank :: self.world_size]

    def _stream(self, count: int) -> np.ndarray:
        out = []
        while count > 0:
            if self.at == len(self.order):
                self.order, self.at = self.rng.permutation(self.indices), 0
            piece = self.order[self.at : self.at + count]
            out.append(piece)
            self.at += len(piece)
            count -= len(piece)
        return np.concatenate(out) if out else np.zeros(0, np.int64)


class BalancedBatchSampler(Sampler[list[int]]):
    """Batches of positions into ``labels``: ``batch_size // 2`` lenses, the rest non-lenses.

    ``batch_size`` may be changed between epochs (the trainer grows it on plateaus).
    ``num_batches=None`` gives one pass over the majority class per epoch. Positions with label
    -1 (unknown) are never drawn. ``rank``/``world_size`` share each epoch's draws out between
    the DDP processes: within a pass over a class their objects are disjoint, and together they
    cover every object (``num_batches=None``: one pass over the majority class in all).
    """

    def __init__(
        self,
        labels: np.ndarray,
        batch_size: int,
        num_batches: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        labels = np.asarray(labels).reshape(-1)
        self.positives = np.flatnonzero(labels == 1)
        self.negatives = np.flatnonzero(labels == 0)
        for name, members in (("lenses (label 1)", self.positives),
                              ("non-lenses (label 0)", self.negatives)):  # fmt: skip
            if len(members) == 0:
                raise DataError(
                    f"balanced sampler: no {name} among {len(labels)} objects; balanced batches "
                    "need both classes (check the label rule and the split)"
                )
        self.batch_size = batch_size
        self._num_batches = num_batches
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        if value < 2:
            raise ValueError(f"balanced batches need batch_size >= 2, got {value}")
        self._batch_size = int(value)

    @property
    def num_batches(self) -> int:
        if self._num_batches is not None:
            return self._num_batches
        majority = max(len(self.positives), len(self.negatives))
        return max(1, -(-2 * majority // (self.batch_size * self.world_size)))

    @num_batches.setter
    def num_batches(self, value: int | None) -> None:
        self._num_batches = value

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        # One generator for every rank, so that they share the streams out (_Cycle); its seed
        # keeps a 0 where the rank once was, so a one-process run draws the batches it always did.
        rng = np.random.default_rng([self.seed, self.epoch, 0, self.world_size])
        lenses = _Cycle(self.positives, rng, self.rank, self.world_size)
        others = _Cycle(self.negatives, rng, self.rank, self.world_size)
        n_lenses = self.batch_size // 2
        for _ in range(self.num_batches):
            batch = np.concatenate([lenses.take(n_lenses), others.take(self.batch_size - n_lenses)])
            yield rng.permutation(batch).tolist()
