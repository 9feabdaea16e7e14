"""Training end to end on tiny stores: learning, the run directory, resume, batches, bad data."""

from __future__ import annotations

import csv
import dataclasses
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from lensfinder.config import (
    SHIPPED_CONFIGS,
    InputConfig,
    ModelConfig,
    SplitConfig,
    TrainConfig,
    load_config,
)
from lensfinder.errors import ConfigError, DataError
from lensfinder.train import TrainResult, train
from lensfinder.train.datamodule import LensDataModule
from lensfinder.train.training import check_config, resolve_precision


def tiny_config(**overrides) -> TrainConfig:
    """Pretrained lite0 at 64 px: learns the fixture's arcs in a few epochs on a CPU."""
    base = TrainConfig(
        input=InputConfig(size=64),
        model=ModelConfig(arch="tf_efficientnet_lite0", pretrained="imagenet"),
        split=SplitConfig(seed=0, test_fraction=0.1, val_fraction=0.3),
        max_epochs=4,
        batch_size=8,
        batch_size_max=16,
        plateau_patience=1,
        stop_patience=10,
        stop_auroc_drop=1.0,
    )
    return dataclasses.replace(base, **overrides)


@pytest.fixture(scope="module")
def store(layout_factory, tmp_path_factory) -> Path:
    """100 objects (half lenses): ~30 validation objects, an AUROC that means something."""
    from lensfinder.data.store import pack

    out = tmp_path_factory.mktemp("train_store") / "store.zarr"
    pack(layout_factory("train_layout", n=100, seed=3), out, progress=False)
    return out


class Throughput(pl.Callback):
    """Per epoch, as the trainer runs it: training samples, and seconds from the epoch's start
    to the end of its last training batch (validation left out)."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self.seconds: list[float] = []
        self._start = self._last = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.samples.append(0)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.samples[-1] += len(batch[-1])
        self._last = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(self._last - self._start)


@pytest.fixture(scope="module")
def throughput() -> Throughput:
    return Throughput()


@pytest.fixture(scope="module")
def trained(store, throughput, tmp_path_factory) -> tuple[TrainResult, TrainConfig]:
    config = tiny_config()
    run_dir = tmp_path_factory.mktemp("run")
    return train(config, store, run_dir, progress=False, callbacks=[throughput]), config


def val_auroc_of_saved_model(run_dir: Path, store: Path, config: TrainConfig) -> float:
    from sklearn.metrics import roc_auc_score

    from lensfinder.data import open_source
    from lensfinder.data.splits import split_indices
    from lensfinder.data.transforms import to_model_input
    from lensfinder.models.checkpoint import load_model

    model, _ = load_model(run_dir, expect_input=config.input)
    source = open_source(store)
    val = split_indices(source.ids, config.split)["val"]
    cutouts = source.read(val)
    with torch.no_grad():
        scores = model(to_model_input(cutouts.vis, cutouts.nisp, config.input)).numpy()
    return float(roc_auc_score(source.labels[val], scores))


def test_training_learns_and_writes_a_loadable_run_dir(trained, store, throughput):
    result, config = trained
    run_dir = result.run_dir
    assert result.best_val_auroc > 0.8, result.summary()
    assert len(result.val_auroc_history) == result.epochs == config.max_epochs
    for name in ("model.safetensors", "model.json", "metrics.csv", "config.yaml", "last.ckpt"):
        assert (run_dir / name).is_file(), name
    assert load_config(TrainConfig, run_dir / "config.yaml") == config

    from lensfinder.models.meta import read_meta

    meta = read_meta(run_dir)
    assert meta["label_rule"] and meta["train"]["lr"] == config.lr
    from lensfinder.data import open_source
    from lensfinder.data.identity import same_data

    assert same_data(open_source(store), meta["data"]) is True  # evaluate's split "auto"
    assert meta["metrics"]["val_auroc_history"] == pytest.approx(result.val_auroc_history)
    # The training rate of each epoch is its samples over its training time as the trainer ran
    # them (every epoch draws the same samples); the run's rate leaves the first epoch out.
    rates = meta["metrics"]["images_per_s_history"]
    assert len(set(throughput.samples)) == 1 and throughput.samples[0] >= config.batch_size
    observed = [n / s for n, s in zip(throughput.samples, throughput.seconds, strict=True)]
    assert rates == pytest.approx(observed, rel=0.05)
    assert result.images_per_s == pytest.approx(np.mean(rates[1:]))
    assert meta["metrics"]["best_epoch"] == int(np.argmax(result.val_auroc_history))
    # The saved weights are the best epoch's: they reproduce its validation AUROC exactly.
    reproduced = val_auroc_of_saved_model(run_dir, store, config)
    assert reproduced == pytest.approx(result.best_val_auroc, abs=1e-3)

    with open(run_dir / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    epochs_with_auroc = [int(r["epoch"]) for r in rows if r.get("val_auroc")]
    assert epochs_with_auroc == list(range(config.max_epochs))
    assert {"train_loss", "val_loss", "lr", "batch_size"} <= set(rows[0])


def test_resume_continues_from_the_last_epoch(trained, store, tmp_path):
    first, config = trained
    # Rerunning the finished command trains nothing.
    again = train(config, store, first.run_dir, progress=False)
    assert again.already_trained and again.epochs == config.max_epochs

    # A longer run picks up from last.ckpt: the history so far is kept, one epoch is added.
    longer = dataclasses.replace(config, max_epochs=config.max_epochs + 1)
    resumed = train(longer, store, first.run_dir, progress=False)
    assert resumed.resumed_from_epoch == config.max_epochs - 1
    assert resumed.epochs == config.max_epochs + 1
    assert resumed.val_auroc_history[:-1] == pytest.approx(first.val_auroc_history)
    with open(first.run_dir / "metrics.csv", newline="") as handle:
        epochs = [int(r["epoch"]) for r in csv.DictReader(handle) if r.get("val_auroc")]
    assert epochs == list(range(config.max_epochs + 1))  # appended, no duplicated epochs

    with pytest.raises(ConfigError, match="lr"):
        train(dataclasses.replace(longer, lr=0.1), store, first.run_dir, progress=False)


def test_balanced_batches_and_constant_samples_per_epoch(store):
    module = LensDataModule(tiny_config(balanced_sampler=True, max_train_samples=32), store)
    module.setup("fit")
    batches = [y for _, y in module.train_dataloader()]
    assert len(batches) == 4 and all(len(y) == 8 and int(y.sum()) == 4 for y in batches)
    module.train_batch_size = 16  # what BatchSizeGrowth does on a plateau
    assert [len(y) for _, y in module.train_dataloader()] == [16, 16]

    plain = LensDataModule(tiny_config(balanced_sampler=False), store)
    plain.setup("fit")
    loader = plain.train_dataloader()
    positions = [i for batch in loader.batch_sampler for i in batch]
    assert len(positions) == len(set(positions)) == len(plain.train_indices) // 8 * 8


def test_precomputed_and_per_batch_loaders_give_the_same_seeded_batches(store, monkeypatch):
    """Inputs precomputed at setup (when they fit in memory) or normalised per batch: the same
    batches, labels and D4 elements for the same seed, epoch after epoch."""
    from lensfinder.train import datamodule as dm

    def epoch_batches(module: LensDataModule) -> list:
        return [(x.clone(), y.clone()) for x, y in module.train_dataloader()]

    config = tiny_config(max_train_samples=24, input=InputConfig(size=48))
    fast, again = LensDataModule(config, store), LensDataModule(config, store)
    for module in (fast, again):
        module.setup("fit")
        assert module.precompute_seconds is not None and module.train_dataset.inputs is not None
    monkeypatch.setattr(dm, "PRECOMPUTE_SHARE", 0.0)  # as if the inputs did not fit in memory
    slow = LensDataModule(config, store)
    slow.setup("fit")
    assert slow.precompute_seconds is None and slow.train_dataset.inputs is None
    assert slow.source._memory is not None  # the store's pixels were loaded instead
    for _ in range(2):  # the augmentation stream continues from epoch to epoch
        batches = [epoch_batches(m) for m in (fast, again, slow)]
        for (x, y), (x2, y2), (x3, y3) in zip(*batches, strict=True):
            assert x.shape == (8, 4, 48, 48) and torch.equal(y, y2) and torch.equal(y, y3)
            assert torch.equal(x, x2) and torch.allclose(x, x3, atol=1e-6, rtol=0)
    val = [next(iter(m.val_dataloader())) for m in (fast, slow)]
    assert torch.allclose(val[0][0], val[1][0], atol=1e-6, rtol=0)
    assert torch.equal(val[0][1], val[1][1])


def test_augment_shift_translates_training_batches_only(store):
    """With ``augment_shift`` training batches keep the input size but differ from unshifted
    ones; validation batches are exactly the centred inputs."""
    base = tiny_config(max_train_samples=16, input=InputConfig(size=48))
    modules = [
        LensDataModule(base, store),
        LensDataModule(dataclasses.replace(base, augment_shift=3), store),
    ]
    for module in modules:
        module.setup("fit")
    (x, y), (x_shift, y_shift) = (next(iter(m.train_dataloader())) for m in modules)
    assert x_shift.shape == x.shape == (8, 4, 48, 48) and torch.equal(y, y_shift)
    assert not torch.allclose(x, x_shift)
    assert modules[1].train_dataset.inputs.shape[-1] == 54  # prepared 3 px wider each side
    val = [next(iter(m.val_dataloader()))[0] for m in modules]
    assert torch.allclose(val[0], val[1], atol=1e-5, rtol=0)


def test_frozen_backbone_trains_only_the_head(store, tmp_path):
    from lensfinder.models.checkpoint import load_model
    from lensfinder.models.factory import create_model

    config = tiny_config(
        max_epochs=1, input=InputConfig(bands=("Y", "J", "H"), size=64),
        model=ModelConfig(pretrained="imagenet", freeze_backbone=True),
    )  # fmt: skip
    train(config, store, tmp_path, progress=False)
    before = create_model(config.model, config.input).state_dict()
    after = load_model(tmp_path)[0].state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("backbone.classifier.") for k in changed), changed


def test_extra_callbacks_run_after_ours(store, tmp_path):
    """``train(callbacks=...)``: how bench_train times the bare model between training steps."""
    import lightning.pytorch as pl

    from lensfinder.train.callbacks import EpochHistory

    seen: list[tuple[int, bool]] = []

    class Record(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            history = next(c for c in trainer.callbacks if isinstance(c, EpochHistory))
            seen.append((trainer.current_epoch, len(history.rows) == trainer.current_epoch + 1))

    config = tiny_config(max_epochs=1, max_train_samples=8, input=InputConfig(size=32))
    train(config, store, tmp_path, progress=False, callbacks=[Record()])
    assert seen == [(0, True)]


def test_unusable_labels_are_data_errors(layout_factory, tmp_path):
    from lensfinder.data.store import pack

    no_lenses = pack(layout_factory("no_lenses", n=12, lens_fraction=0.0), tmp_path / "a.zarr")
    with pytest.raises(DataError, match="no lenses"):
        train(tiny_config(), no_lenses.out, tmp_path / "run_a", progress=False)
    unlabelled = pack(layout_factory("unlabelled", n=6, catalog=False), tmp_path / "b.zarr")
    with pytest.raises(DataError, match="no labels"):
        train(tiny_config(), unlabelled.out, tmp_path / "run_b", progress=False)
    assert not (tmp_path / "run_a" / "model.json").exists()


def test_precision_is_fp32_on_cpu_and_explicit_values_pass():
    assert resolve_precision(TrainConfig(accelerator="cpu")) == "32-true"
    assert resolve_precision(TrainConfig(precision="bf16-mixed")) == "bf16-mixed"


def test_shipped_configs_load_and_table1_rows_keep_the_papers_budget():
    """Every shipped config is valid; the paper's rows (their content: test_paper_recipe) run at
    the paper's budget unless a table1 budget scales them."""
    for path in sorted(SHIPPED_CONFIGS.glob("*.yaml")):
        check_config(load_config(TrainConfig, path))
    for i in range(1, 9):
        row = load_config(TrainConfig, f"table1-model{i}")
        assert row.input.size == 200 and row.max_train_samples is None
