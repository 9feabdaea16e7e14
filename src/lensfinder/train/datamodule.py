"""Data for training: the ID split, D4-augmented training cutouts, and a train loader rebuilt every
epoch so that a batch size changed by ``BatchSizeGrowth`` takes effect at the next epoch.

Every epoch draws the same number of samples (``max_train_samples``, at most the training split),
so epochs stay comparable as the batch grows; only the number of steps changes. Batches come from
``BalancedBatchSampler`` (half lenses, half not) or from plain shuffling, seeded by (seed,
epoch): a resumed run draws the same batches as an uninterrupted one (augmentations and dropout
differ, their random streams are not checkpointed). With several processes each draws its own
share of the epoch's batches (disjoint within a pass) and validates its own slice of the
validation set (the AUROC metric gathers the slices), so Lightning's distributed sampler is off.

The data path is cheap next to the model: the model inputs of both sets are computed once at setup
when they fit in memory (``CutoutDataset.precompute``), so a training step only picks its images
and applies their D4 elements; the dataset returns whole batches (no per-item collation). Workers
(``num_workers``) are left at the config's 0 on CPU: with the inputs precomputed there is nothing
left for them to overlap, and on few cores they take threads from the model.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch.utils.data import DataLoader

from lensfinder.config import PredictConfig, SplitConfig, TrainConfig
from lensfinder.data import open_source
from lensfinder.data.challenge import reason_kind
from lensfinder.data.cutouts import (
    NISP_SHAPE,
    VIS_SHAPE,
    Cutouts,
    CutoutSource,
    Indices,
    combined_arc_maps,
)
from lensfinder.data.dataset import CutoutDataset, collate
from lensfinder.data.graded import add_graded
from lensfinder.data.grades import posterior_grades, read_graded, read_graded_posteriors
from lensfinder.data.sampler import BalancedBatchSampler
from lensfinder.data.splits import split_indices
from lensfinder.errors import ConfigError, DataError
from lensfinder.labels import lenses_outside

MEMORY_SHARE = 0.5  # load a store into RAM when all processes' copies fit in this share
# Precompute the model inputs of the training and validation sets when all processes' copies fit
# in this share of the available memory; 0 never does (benchmarks compare both data paths).
PRECOMPUTE_SHARE = MEMORY_SHARE


def available_memory() -> int:
    """Bytes of memory available without swapping (Linux MemAvailable, else free pages, else a
    conservative 4 GiB guess)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 4 * 2**30


def fits_in_memory(nbytes: int, processes: int = 1, share: float = MEMORY_SHARE) -> bool:
    """Whether ``processes`` copies of ``nbytes`` fit in ``share`` of the available memory."""
    return nbytes * processes <= share * available_memory()


def load_into_memory(source: Any, processes: int = 1) -> bool:
    """Load a store's pixels into RAM when the copies of all ``processes`` fit comfortably.

    Training reads random objects; from a chunked store each random batch would decompress a
    whole chunk per object, so an in-memory copy is many times faster. Larger stores are read
    from disk (slowly). Returns whether the pixels are now in memory.
    """
    if not hasattr(source, "to_memory"):
        return False
    if getattr(source, "_memory", None) is not None:
        return True
    nbytes = len(source) * 4 * (math.prod(VIS_SHAPE) + math.prod(NISP_SHAPE))
    if not fits_in_memory(nbytes, processes):
        rank_zero_warn(
            f"{source.path}: {nbytes / 2**30:.1f} GiB of pixels do not fit in memory here; "
            "training reads them from disk, which is much slower"
        )
        return False
    source.to_memory()
    return True


def epoch_seed(*parts: int) -> int:
    """A 32-bit seed from several integers (seed, epoch, rank) that never collide trivially."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class ShuffledBatchSampler:
    """``num_batches`` batches of ``batch_size`` distinct-within-a-pass indices into ``n`` items
    (or of the positions ``n`` lists), reshuffled for every pass; the unbalanced counterpart of
    ``BalancedBatchSampler``. With
    ``world_size`` ranks (all given the same ``seed``) rank ``rank`` keeps every
    ``world_size``-th item of the one shuffled stream: within a pass the ranks' items are
    disjoint and together cover every index."""

    def __init__(
        self,
        n: int | np.ndarray,
        batch_size: int,
        num_batches: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.items = np.arange(n) if isinstance(n, int) else np.asarray(n, np.int64)
        self.n = len(self.items)
        if self.n < 1 or batch_size < 1 or num_batches < 1:
            raise ValueError(
                f"need n, batch_size, num_batches >= 1: {self.n}, {batch_size}, {num_batches}"
            )
        self.batch_size, self.num_batches, self.seed = batch_size, num_batches, seed
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng(self.seed)
        needed = self.batch_size * self.num_batches
        passes = -(-needed * self.world_size // self.n)
        stream = np.concatenate([self.items[rng.permutation(self.n)] for _ in range(passes)])
        order = stream[self.rank :: self.world_size][:needed]
        for start in range(0, needed, self.batch_size):
            yield order[start : start + self.batch_size].tolist()


class ConcatSource(CutoutSource):
    """Several labelled data sets as one (``train --data A --data B``): rows of ``parts[0]``,
    then of ``parts[1]``, ...; IDs may repeat across parts (each part keeps its own split)."""

    def __init__(self, parts: Sequence[CutoutSource]) -> None:
        rules = {p.label_rule for p in parts if p.label_rule is not None}
        if len(rules) > 1:
            raise DataError(
                f"training data labelled by different rules ({'; '.join(sorted(rules))}): "
                "re-pack them with one rule"
            )
        self.parts = list(parts)
        self.path = parts[0].path
        self.ids = np.concatenate([p.ids for p in parts]).astype(np.int64)
        self.labels = np.concatenate([p.labels for p in parts]).astype(np.int8)
        self.problems = [problem for p in parts for problem in p.problems]
        self.label_rule = next(iter(rules), None)
        self.starts = np.cumsum([0] + [len(p) for p in parts])

    def _gather(self, name: str) -> np.ndarray:
        return np.concatenate([np.asarray(getattr(p, name), np.float64) for p in self.parts])

    @property
    def ra(self) -> np.ndarray:
        return self._gather("ra")

    @property
    def dec(self) -> np.ndarray:
        return self._gather("dec")

    @property
    def catalog(self) -> dict[str, np.ndarray]:
        """The numeric columns of any part, NaN where a part lacks them."""
        catalogs = [p.catalog for p in self.parts]
        names = sorted(
            {n for c in catalogs for n, v in c.items() if np.asarray(v).dtype.kind in "fiub"}
        )
        return {
            name: np.concatenate(
                [
                    np.asarray(c[name], np.float64) if name in c else np.full(len(p), np.nan)
                    for c, p in zip(catalogs, self.parts, strict=True)
                ]
            )
            for name in names
        }

    def to_memory(self) -> None:
        for part in self.parts:
            load_into_memory(part)

    def _by_part(self, indices: Indices | None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(part, rows of the request, positions in the part) for every part requested."""
        rows = self._as_indices(range(len(self)) if indices is None else indices)
        part_of = np.searchsorted(self.starts, rows, side="right") - 1
        for part in np.unique(part_of).tolist():
            mask = np.flatnonzero(part_of == part)
            yield part, mask, rows[mask] - self.starts[part]

    def read(self, indices: Indices) -> Cutouts:
        out = Cutouts.empty(len(self._as_indices(indices)))
        for part, mask, positions in self._by_part(indices):
            got = self.parts[part].read(positions)
            out.vis[mask], out.nisp[mask], out.valid[mask] = got.vis, got.nisp, got.valid
            for slot, reason in zip(mask.tolist(), got.reasons, strict=True):
                out.reasons[slot] = reason
        return out

    def arc_maps(self, indices: Indices) -> np.ndarray | None:
        """Each part's arc maps; ``ARC_UNKNOWN`` for the rows of a part without them."""
        rows = self._as_indices(indices)
        pieces = ((mask, self.parts[part], at) for part, mask, at in self._by_part(rows))
        return combined_arc_maps(len(rows), pieces)

    def content_fingerprint(self) -> str:
        digest = hashlib.sha256("|".join(p.content_fingerprint() for p in self.parts).encode())
        return digest.hexdigest()[:16]


def split_parts(parts: Sequence[CutoutSource], split_cfg: SplitConfig) -> dict[str, np.ndarray]:
    """Each part split by its own IDs (as if trained on alone), as rows of the concatenation:
    a part's test objects stay its test objects, and validation draws from every part."""
    offsets = np.cumsum([0] + [len(p) for p in parts])
    per_part = [split_indices(np.asarray(p.ids), split_cfg) for p in parts]
    return {
        name: np.concatenate(
            [s[name] + offset for s, offset in zip(per_part, offsets, strict=False)]
        )
        for name in ("train", "val", "test")
    }


class LensDataModule(pl.LightningDataModule):
    """Train/validation loaders over a store, split by object ID (``split_indices``).

    ``train_batch_size`` is the one mutable setting (``BatchSizeGrowth`` doubles it); it is part
    of the datamodule's checkpoint state so a resumed run continues with the grown batch.
    """

    def __init__(self, config: TrainConfig, store: str | Path | Sequence[str | Path]) -> None:
        super().__init__()
        self.config = config
        # Several labelled sets (``--data A --data B``) train together as one ``ConcatSource``.
        self.stores = [Path(store)] if isinstance(store, str | Path) else [Path(s) for s in store]
        if not self.stores:
            raise ConfigError("train: no training data given")
        self.store = (
            self.stores[0] if len(self.stores) == 1 else Path(" + ".join(map(str, self.stores)))
        )
        self.parts: list[Any] = []
        self.train_batch_size = config.batch_size
        self.source: Any = None
        self.train_indices = np.empty(0, np.int64)
        self.val_indices = np.empty(0, np.int64)
        self.test_indices = np.empty(0, np.int64)
        self.train_dataset: Any = None
        self.val_dataset: Any = None
        self.base_source: Any = None  # the training data, without graded additions
        self.graded_record: dict[str, Any] | None = None  # what model.json says about grades
        self.precompute_seconds: float | None = None  # None: batches are normalised as drawn
        self.dropped: dict[str, Any] = {}  # what was left out of training, and why (model.json)
        self.lens_rule_record: dict[str, Any] = {}  # the lenses ``train_lens_rule`` left out
        # (train dataset, epoch, LightningModule) -> the labels this epoch's sampler draws from
        # (-1: not drawn); the painted field's holdback of likely real lenses (train/adapt.py)
        self.train_label_filter: Callable[[CutoutDataset, int, Any], np.ndarray] | None = None

    # -- data ------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Open the store, split it and check both classes are present; idempotent, and
        called before the Trainer starts so bad data fails in one line, not mid-launch."""
        if self.source is not None:
            return
        self.parts = [open_source(path) for path in self.stores]
        source = self.parts[0] if len(self.parts) == 1 else ConcatSource(self.parts)
        labels = np.asarray(source.labels)
        if not (labels >= 0).any():
            raise DataError(
                f"{self.store}: no labels (every object is unlabelled); pack a layout that has "
                "a catalogue to train on it"
            )
        splits = split_parts(self.parts, self.config.split)
        labelled = {name: idx[labels[idx] >= 0] for name, idx in splits.items()}
        for name in ("train", "val"):
            self._check_classes(name, labels[labelled[name]])
        if self.config.arc_map_weight > 0 and source.arc_maps(labelled["train"][:1]) is None:
            raise DataError(
                f"arc_map_weight {self.config.arc_map_weight:g}: {self.store} has no arc maps "
                "(simulate with arc_maps: true and pack again, or set arc_map_weight: 0)"
            )
        self.source = source
        train = self._lenses_to_learn(source, labelled["train"], labels)
        self.train_indices = self._cap(train, self.config.max_train_objects)
        self.val_indices = self._cap(labelled["val"], self.config.limit_val_samples)
        self.test_indices = np.asarray(splits["test"])
        self.base_source = source
        if self.config.graded is not None:
            graded_data = self.config.graded_data
            grades, lens, nonlens = self._graded()
            self.source, self.train_indices, self.graded_record = add_graded(
                source,
                self.train_indices,
                grades,
                open_source(Path(graded_data)) if graded_data else source,
                lens,
                nonlens,
            )
            self.graded_record["file"] = str(Path(self.config.graded).resolve())
            self.graded_record["by"] = self.config.graded_by
        self._drop_unusable()

    def _lenses_to_learn(
        self, source: CutoutSource, rows: np.ndarray, labels: np.ndarray
    ) -> np.ndarray:
        """The training split's ``rows`` less its lenses that fail ``train_lens_rule`` (arcs
        too faint to learn from), counted in ``dropped``; every row without a rule."""
        rule = self.config.train_lens_rule
        if rule is None:
            return rows
        outside = lenses_outside(rule, source.catalog, labels, rows, self.store)
        n_lenses = int((labels[rows] == 1).sum())
        if n_lenses and outside.sum() == n_lenses:
            raise DataError(
                f"{self.store}: train_lens_rule '{rule}' leaves none of the training split's "
                f"{n_lenses} lenses to learn from"
            )
        self.lens_rule_record = {
            "train_lens_rule": rule,
            "n_lenses_outside_rule": int(outside.sum()),
            "n_lenses_learnt": n_lenses - int(outside.sum()),
        }
        return rows[~outside]

    def _graded(self) -> tuple[dict[int, str], tuple[str, ...], tuple[str, ...]]:
        """(ID -> grade, lens grades, non-lens grades) to learn from: the consensus grades, or
        with ``graded_by: posterior`` the posteriors above/below their thresholds as A/X."""
        cfg = self.config
        if cfg.graded_by == "grade":
            return read_graded(str(cfg.graded)), cfg.graded_lens, cfg.graded_nonlens
        posteriors = read_graded_posteriors(str(cfg.graded))
        grades = posterior_grades(
            posteriors, cfg.graded_posterior_lens, cfg.graded_posterior_nonlens
        )
        return grades, ("A",), ("X",)

    def _drop_unusable(self) -> None:
        """Read the training and validation objects once with the checks a scan or an
        evaluation applies (``CutoutSource.check``: missing or damaged store chunks, unreadable
        files, blank images, non-finite pixels) and leave out what they would skip, so nothing
        is learnt from zeros. Recorded in ``dropped`` with the objects the data reader already
        left out (``source.problems``: a layout's bad files, or those ``pack`` skipped)."""
        wanted = np.concatenate([self.train_indices, self.val_indices])
        checked = self.source.check(wanted, progress=rank_zero_only.rank == 0)  # type: ignore[attr-defined]
        n_train = len(self.train_indices)
        self.train_indices = self.train_indices[checked.valid[:n_train]]
        self.val_indices = self.val_indices[checked.valid[n_train:]]
        problems = list(getattr(self.base_source, "problems", []))
        kinds = Counter(reason_kind(p.reason) for p in problems)
        self.dropped = self.lens_rule_record | {
            "n_unreadable": checked.n_invalid,
            "unreadable_reasons": checked.kinds(),
            "unreadable_ids": [int(i) for i in np.asarray(self.source.ids)[wanted[~checked.valid]]],
            "n_data_problems": len(problems),
            "data_problem_reasons": dict(kinds.most_common()),
        }
        labels = self.labels
        for name, indices in (("train", self.train_indices), ("val", self.val_indices)):
            self._check_classes(name, labels[indices])

    def _check_classes(self, split: str, labels: np.ndarray) -> None:
        lenses, others = int((labels == 1).sum()), int((labels == 0).sum())
        if lenses == 0 or others == 0:
            missing = "lenses" if lenses == 0 else "non-lenses"
            raise DataError(
                f"{self.store}: the {split} split has no {missing} ({lenses} lenses, {others} "
                f"non-lenses labelled); training needs both classes in train and validation"
            )

    def _cap(self, indices: np.ndarray, limit: int | None) -> np.ndarray:
        """At most ``limit`` of ``indices``, a seeded random subset (kept in store order)."""
        if limit is None or len(indices) <= limit:
            return indices
        rng = np.random.default_rng(self.config.split.seed)
        return np.sort(rng.choice(indices, size=limit, replace=False))

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.source.labels)

    @property
    def samples_per_epoch(self) -> int:
        """Samples drawn per epoch: ``max_train_samples``, at most the training split."""
        n_train = len(self.train_indices)
        cap = self.config.max_train_samples
        return n_train if cap is None else max(1, min(cap, n_train))

    def setup(self, stage: str | None = None) -> None:
        """Datasets are made once (for a layout that checks every file once); the augmentation
        stream of the training set simply continues from epoch to epoch.

        When the model inputs of both sets fit in memory they are computed here, once, from the
        store read in order (``CutoutDataset.precompute``): each training step is then only an
        index and a D4 element per image, not a normalisation and resampling of the batch.
        Otherwise the store's pixels are loaded into memory if they fit and every batch is
        normalised as it is drawn; the values the model sees are the same either way.
        """
        self.prepare()
        if self.train_dataset is not None:
            return
        processes = self.trainer.num_devices if self.trainer is not None else 1
        _, rank, world = self._rank()
        self.train_dataset = CutoutDataset(
            self.source,
            self.train_indices,
            self.config.input,
            augment=self.config.augment_d4,
            seed=epoch_seed(self.config.seed, rank),
            check=False,  # prepare() dropped what cannot be used
            theta_e=self.config.model.theta_e_head,
            shift=self.config.augment_shift,  # the config refuses it without augment_d4
            arc_maps=self.config.arc_map_weight > 0,
        )
        self.val_dataset = CutoutDataset(
            self.source,
            self.val_indices[rank::world],
            self.config.input,
            augment=False,
            check=False,
            theta_e=self.config.model.theta_e_head,
        )
        nbytes = sum(
            len(dataset) * dataset.bytes_per_item
            for dataset in (self.train_dataset, self.val_dataset)
        )
        if fits_in_memory(nbytes, processes, PRECOMPUTE_SHARE):
            began = time.perf_counter()
            for dataset in (self.train_dataset, self.val_dataset):
                dataset.precompute(progress=rank == 0)
            self.precompute_seconds = time.perf_counter() - began
        else:
            load_into_memory(self.source, processes)

    # -- loaders ---------------------------------------------------------------------------
    def _rank(self) -> tuple[int, int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 0, 1
        return trainer.current_epoch, trainer.global_rank, trainer.world_size

    def _loader(self, dataset: Any, **kwargs: Any) -> DataLoader:
        workers = self.config.num_workers
        return DataLoader(
            dataset,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,  # the train loader is rebuilt every epoch anyway
            prefetch_factor=4 if workers > 0 else None,
            collate_fn=collate,  # the dataset makes whole batches: no second stacking
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        dataset = self.train_dataset
        epoch, rank, world = self._rank()
        batch_size = int(self.train_batch_size)
        total_batches = max(1, self.samples_per_epoch // batch_size)
        num_batches = -(-total_batches // world)
        labels = dataset.labels
        if self.train_label_filter is not None and self.trainer is not None:
            labels = self.train_label_filter(dataset, epoch, self.trainer.lightning_module)
        if self.config.balanced_sampler:
            sampler: Any = BalancedBatchSampler(
                labels,
                batch_size,
                num_batches,
                seed=self.config.seed,
                rank=rank,
                world_size=world,
            )
            sampler.set_epoch(epoch)
        else:
            # 0 where the rank once was: one stream for all ranks, as a one-process run had it
            seed = epoch_seed(self.config.seed, epoch, 0)
            drawn = np.flatnonzero(np.asarray(labels) >= 0)
            sampler = ShuffledBatchSampler(drawn, batch_size, num_batches, seed, rank, world)
        return self._loader(dataset, batch_sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        model_cfg = self.config.model
        batch_size = (
            model_cfg.bn_inference_batch
            if model_cfg.bn_inference == "batch"
            else PredictConfig.batch_size
        )
        return self._loader(self.val_dataset, batch_size=batch_size, shuffle=False)

    # -- checkpoint state ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"train_batch_size": int(self.train_batch_size)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_batch_size = int(state_dict["train_batch_size"])
