"""A torch Dataset over a CutoutSource: (model input, label) pairs, optionally D4-augmented.

Items are made by ``to_model_input`` (the one normalisation path). ``__getitems__`` reads and
normalises a whole batch at once, which torch's DataLoader uses automatically: one store read
and one vectorised normalisation per batch instead of per object.

Training reads the same objects every epoch, and everything but the D4 element is the same every
time, so ``precompute()`` can run ``to_model_input`` once over the whole dataset and keep the
result in memory; a batch is then one pick-and-D4 copy out of it (2-5 ms for 32 cpu-small
objects on 2 shared cores, against 25-60 ms of reading, normalising and resampling them). The
values are those of the per-batch path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate, get_worker_info

from lensfinder.config import InputConfig, check_bands
from lensfinder.data.augment import N_ELEMENTS, apply_d4_per_sample
from lensfinder.data.cutouts import (
    ARC_UNKNOWN,
    NISP_SHAPE,
    VIS_SHAPE,
    CutoutSource,
    repair_rows,
)
from lensfinder.data.transforms import ModelInput, crop_centre, map_input, to_model_input
from lensfinder.einstein import EIN_AREA, lens_theta_e
from lensfinder.errors import ConfigError
from lensfinder.stages import progress_bar

Item = tuple[ModelInput, torch.Tensor]
PRECOMPUTE_CHUNK = 256  # objects normalised at once by precompute(): vectorised, little memory


def tensors(x: ModelInput) -> tuple[torch.Tensor, ...]:
    """The tensors of a stacked (one) or two-branch (two) input."""
    return x if isinstance(x, tuple) else (x,)


def input_bytes_per_item(input_cfg: InputConfig) -> int:
    """Bytes of one object's model input (float32), from the shapes ``to_model_input`` gives."""
    x = to_model_input(
        np.zeros((1, *VIS_SHAPE), np.float32), np.zeros((1, *NISP_SHAPE), np.float32), input_cfg
    )
    return sum(t.numel() * t.element_size() for t in tensors(x))


class ItemBatch(list[Item]):
    """The items of one batch, as a DataLoader's ``collate_fn`` expects them, that also keep
    the batch they were cut from: ``collate`` hands that on instead of stacking the items again
    (torch's default collate still works on them, as on any list of items)."""

    def __init__(self, x: ModelInput, y: torch.Tensor) -> None:
        if isinstance(x, tuple):
            super().__init__(((vis, nisp), label) for vis, nisp, label in zip(*x, y, strict=True))
        else:
            super().__init__(zip(x, y, strict=True))
        self.x, self.y = x, y


def collate(items: list[Item]) -> Any:
    """A DataLoader ``collate_fn``: the batch of an ``ItemBatch`` as it is, else torch's default."""
    if isinstance(items, ItemBatch):
        return items.x, items.y
    return default_collate(items)


def arc_target(maps: np.ndarray | None, labels: np.ndarray, n: int) -> torch.Tensor:
    """(n, 1, 200, 200) float32: a lens's arc map (1 on its arc), 0 everywhere for a non-lens
    (an unlensed or sub-threshold source is not an arc, as the label rule says), -1 where it
    is not known (no map, or no label)."""
    if maps is None:
        return torch.full((n, 1, *VIS_SHAPE), -1.0)
    target = torch.from_numpy(np.asarray(maps)).float()[:, None]
    label = torch.from_numpy(np.asarray(labels, dtype=np.float32)).reshape(-1, 1, 1, 1)
    unknown = (target == ARC_UNKNOWN) | (label < 0)
    return torch.where(unknown, -1.0, target * label)


class CutoutDataset(Dataset):
    """Objects ``indices`` of ``source`` (default all) as model input and float32 labels.

    Objects that cannot be used are dropped at construction (``CutoutSource.check``: every
    object is read once, with the checks prediction applies) and counted in ``skipped``, by kind
    in ``skipped_reasons``; ``check=False`` when the caller has already dropped them (training
    checks its splits once, before the Trainer starts). Labels are 1.0 / 0.0, or -1.0 where the
    source has none. With ``augment``, each item gets a random D4 element; two-branch inputs get
    the same element in both branches. With ``theta_e`` (a model with the Einstein-radius head),
    targets are ``(n, 2)``: the label and theta_E in arcsec (``einstein.lens_theta_e``: NaN
    for non-lenses and lenses without a known radius). With ``shift`` (and ``augment``), each
    item is also cut up to ``shift`` pixels off centre (``TrainConfig.augment_shift``): inputs
    are prepared ``shift`` pixels wider each side (``prepared_input``); unaugmented items are
    their centres, the same pixels as without ``shift``. With ``arc_maps`` (training with
    ``TrainConfig.arc_map_weight``), each input gets one more plane after its bands: the arc
    target (``arc_target``), cut and D4-transformed with the pixels, so it stays on the arc;
    the module takes it off before the network sees the input (``train.arc_maps``).
    """

    def __init__(
        self,
        source: CutoutSource,
        indices: np.ndarray | None = None,
        input_cfg: InputConfig | None = None,
        augment: bool = False,
        seed: int = 0,
        progress: bool = False,
        check: bool = True,
        theta_e: bool = False,
        shift: int = 0,
        arc_maps: bool = False,
    ) -> None:
        self.source = source
        self.input_cfg = input_cfg or InputConfig()
        check_bands(self.input_cfg)
        if arc_maps and (
            self.input_cfg.layout != "stacked" or self.input_cfg.vis_sampling != "native"
        ):
            raise ConfigError(
                "arc_map_weight: arc maps need a stacked input at native VIS sampling"
            )
        self.arc_maps = arc_maps
        self.shift = shift
        self.prepared_input = (
            dataclasses.replace(self.input_cfg, size=self.input_cfg.size + 2 * shift)
            if shift
            else self.input_cfg
        )
        wanted = np.arange(len(source)) if indices is None else np.asarray(indices, np.int64)
        checked = source.check(wanted, progress=progress) if check else None
        self.indices = wanted if checked is None else wanted[checked.valid]
        self.skipped = 0 if checked is None else checked.n_invalid
        self.skipped_reasons: dict[str, int] = {} if checked is None else checked.kinds()
        self.labels = source.labels[self.indices].astype(np.float32)
        self.theta_e: np.ndarray | None = None  # per item, arcsec, when the model has the head
        if theta_e:
            column = source.catalog.get(EIN_AREA)
            rows = {} if column is None else {EIN_AREA: np.asarray(column)[self.indices]}
            self.theta_e = lens_theta_e(self.labels, rows).astype(np.float32)
        self.augment = augment
        self.seed = seed
        self.inputs: ModelInput | None = None  # every item's model input, once precompute() ran
        self._generator: torch.Generator | None = None
        self._generator_owner: int | None = None

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def bytes_per_item(self) -> int:
        """RAM of one precomputed item: its model input, and the arc target plane if any."""
        size = input_bytes_per_item(self.prepared_input)
        if self.arc_maps:  # one more float32 plane beside the stacked bands
            size += size // len(self.prepared_input.bands)
        return size

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

    def model_input(self, positions: np.ndarray) -> ModelInput:
        """The deterministic part of items ``positions``: read, repair a few non-finite pixels
        as prediction does (``repair_rows``), ``to_model_input``."""
        cutouts = self.source.read(self.indices[positions])
        repair_rows(cutouts)
        x = to_model_input(cutouts.vis, cutouts.nisp, self.prepared_input)
        if not self.arc_maps:
            return x
        assert isinstance(x, torch.Tensor)  # stacked (checked in __init__)
        rows = self.indices[positions]
        target = arc_target(self.source.arc_maps(rows), self.labels[positions], len(rows))
        return torch.cat([x, crop_centre(target, self.prepared_input.size)], dim=1)

    def precompute(self, progress: bool = False) -> None:
        """Compute every item's model input now and serve batches from memory from then on.

        Costs the input's size in RAM (``bytes_per_item`` per object) and one pass of
        reading and normalising; the store's pixels themselves are not needed afterwards.
        """
        starts = range(0, len(self), PRECOMPUTE_CHUNK)
        chunks: Iterable[int] = (
            progress_bar(starts, desc="preparing inputs") if progress else starts
        )
        inputs: ModelInput | None = None
        for lo in chunks:
            part = self.model_input(np.arange(lo, min(lo + PRECOMPUTE_CHUNK, len(self))))
            if inputs is None:  # filled in place: no second copy of it all at the end
                inputs = map_input(part, lambda t: t.new_empty((len(self), *t.shape[1:])))
            for whole, piece in zip(tensors(inputs), tensors(part), strict=True):
                whole[lo : lo + len(piece)] = piece
        self.inputs = inputs

    def plain_input(self, positions: np.ndarray) -> ModelInput:
        """Model input of ``positions`` as stored, never augmented and drawing no random
        number (scoring the training set mid-run must not shift its augmentation stream)."""
        if self.inputs is None:
            x = self.model_input(positions)
        else:
            index = torch.from_numpy(np.asarray(positions, dtype=np.int64))
            x = map_input(self.inputs, lambda t: t.index_select(0, index))
        if self.shift:
            x = map_input(x, lambda t: crop_centre(t, self.input_cfg.size).contiguous())
        return x

    def get_batch(self, positions: list[int] | np.ndarray) -> tuple[ModelInput, torch.Tensor]:
        """Model input for dataset positions ``positions`` as one batch, and their labels."""
        positions = np.asarray(positions, dtype=np.int64)
        ks, windows = None, None
        if self.augment:
            ks = torch.randint(N_ELEMENTS, (len(positions),), generator=self._rng()).tolist()
            if self.shift:  # drawn after the D4 elements: without shift the stream is as before
                corners = torch.randint(
                    2 * self.shift + 1, (len(positions), 2), generator=self._rng()
                )
                windows = [(top, left) for top, left in corners.tolist()]
        size = self.input_cfg.size
        if ks is None:
            x = self.plain_input(positions)
        elif self.inputs is None:
            x = map_input(
                self.model_input(positions),
                lambda t: apply_d4_per_sample(t, ks, windows=windows, size=size),
            )
        else:  # pick and transform in one copy
            rows = positions.tolist()
            x = map_input(self.inputs, lambda t: apply_d4_per_sample(t, ks, rows, windows, size))
        labels = self.labels[positions]
        if self.theta_e is not None:
            labels = np.stack([labels, self.theta_e[positions]], axis=1)
        return x, torch.from_numpy(labels)

    def __getitems__(self, positions: list[int]) -> ItemBatch:
        return ItemBatch(*self.get_batch(positions))

    def __getitem__(self, position: int) -> Item:
        return self.__getitems__([position])[0]
