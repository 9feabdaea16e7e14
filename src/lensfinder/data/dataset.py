"""A torch Dataset over a CutoutSource: (model input, label) pairs, optionally D4-augmented.

Items are made by ``to_model_input`` (the one normalisation path). ``__getitems__`` reads and
normalises a whole batch at once, which torch's DataLoader uses automatically: one store read
and one vectorised normalisation per batch instead of per object.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from lensfinder.config import InputConfig, check_bands
from lensfinder.data.augment import N_ELEMENTS, apply_d4_per_sample
from lensfinder.data.cutouts import CutoutSource
from lensfinder.data.transforms import to_model_input

Item = tuple[torch.Tensor | tuple[torch.Tensor, torch.Tensor], torch.Tensor]


class CutoutDataset(Dataset):
    """Objects ``indices`` of ``source`` (default all) as model input and float32 labels.

    Unreadable objects are dropped at construction and counted in ``skipped`` (for a store this
    costs nothing; for a layout every file is read once). Labels are 1.0 / 0.0, or -1.0 where the
    source has none. With ``augment``, each item gets a random D4 element; two-branch inputs get
    the same element in both branches.
    """

    def __init__(
        self,
        source: CutoutSource,
        indices: np.ndarray | None = None,
        input_cfg: InputConfig | None = None,
        augment: bool = False,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        self.source = source
        self.input_cfg = input_cfg or InputConfig()
        check_bands(self.input_cfg)
        wanted = np.arange(len(source)) if indices is None else np.asarray(indices, np.int64)
        valid = source.validate(wanted, progress=progress)
        self.indices = wanted[valid]
        self.skipped = int((~valid).sum())
        self.labels = source.labels[self.indices].astype(np.float32)
        self.augment = augment
        self.seed = seed
        self._generator: torch.Generator | None = None
        self._generator_owner: int | None = None

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def ids(self) -> np.ndarray:
        return self.source.ids[self.indices]

    def _rng(self) -> torch.Generator:
        """One generator per process: DataLoader workers each get their own stream."""
        worker = get_worker_info()
        owner = -1 if worker is None else worker.id
        if self._generator is None or self._generator_owner != owner:
            entropy = [self.seed] if worker is None else [self.seed, worker.seed]
            seed = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)
            self._generator = torch.Generator().manual_seed(seed)
            self._generator_owner = owner
        return self._generator

    def get_batch(
        self, positions: list[int] | np.ndarray
    ) -> tuple[torch.Tensor | tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Model input for dataset positions ``positions`` as one batch, and their labels."""
        positions = np.asarray(positions, dtype=np.int64)
        cutouts = self.source.read(self.indices[positions])
        x = to_model_input(cutouts.vis, cutouts.nisp, self.input_cfg)
        if self.augment:
            ks = torch.randint(N_ELEMENTS, (len(positions),), generator=self._rng()).tolist()
            if isinstance(x, tuple):
                x = (apply_d4_per_sample(x[0], ks), apply_d4_per_sample(x[1], ks))
            else:
                x = apply_d4_per_sample(x, ks)
        return x, torch.from_numpy(self.labels[positions])

    def __getitems__(self, positions: list[int]) -> list[Item]:
        x, y = self.get_batch(positions)
        if isinstance(x, tuple):
            return [((vis, nisp), label) for vis, nisp, label in zip(*x, y, strict=True)]
        return list(zip(x, y, strict=True))

    def __getitem__(self, position: int) -> Item:
        return self.__getitems__([position])[0]
