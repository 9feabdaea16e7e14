"""Training callbacks driven by scripted validation AUROC sequences on a tiny real Trainer."""

from __future__ import annotations

import dataclasses
import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lensfinder.config import TrainConfig
from lensfinder.train.callbacks import AurocDropStopping, BatchSizeGrowth, PlateauTracker
from lensfinder.train.module import LensClassifier, lr_multiplier
from lensfinder.train.training import plateau_callback


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(1)


class Scripted(LensClassifier):
    """The real classifier (loss, optimiser, lr schedule), but validation reports a scripted
    AUROC per epoch and records the weights and the training settings each epoch used."""

    def __init__(self, config: TrainConfig, aurocs: list[float]) -> None:
        super().__init__(config, model=TinyNet())
        self.aurocs = aurocs
        self.weights_at: dict[int, torch.Tensor] = {}
        self.batch_sizes: list[int] = []
        self.lrs: list[float] = []

    def training_step(self, batch, batch_idx):
        if batch_idx == 0:
            self.batch_sizes.append(len(batch[1]))
            self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.log("val_auroc", self.aurocs[self.current_epoch], on_epoch=True, batch_size=1)

    def on_validation_epoch_end(self) -> None:
        self.weights_at[self.current_epoch] = self.model.linear.weight.detach().clone()


class TensorData(pl.LightningDataModule):
    """Random separable data; the train loader reads ``train_batch_size`` each epoch."""

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.train_batch_size = batch_size
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(64, 6, generator=generator)
        self.data = TensorDataset(x, (x[:, 0] > 0).float())

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.train_batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=64)


def fit(module: Scripted, callbacks: list, batch_size: int, max_epochs: int) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        reload_dataloaders_every_n_epochs=1,
    )
    trainer.fit(module, datamodule=TensorData(batch_size))
    return trainer


def config(**kwargs) -> TrainConfig:
    """Plain SGD at a constant lr (no epoch schedule, no warm-up), batch 8 that may grow."""
    plain = {
        "optimizer": "sgd", "lr": 0.5, "weight_decay": 0.0, "decoupled_weight_decay": 0.0,
        "lr_schedule": "plateau", "warmup_epochs": 0, "batch_size": 8, "batch_size_max": 128,
    }  # fmt: skip
    return TrainConfig(channels_last=False, **(plain | kwargs))


@pytest.mark.parametrize(
    ("aurocs", "max_drop", "patience", "best_epoch", "last_epoch"),
    [
        ([0.6, 0.8, 0.9, 0.86, 0.7, 0.95, 0.95], 0.15, 10, 2, 4),  # a drop of 0.2 > 0.15
        ([0.6, 0.7, 0.69, 0.68, 0.695, 0.99, 0.99], 0.5, 3, 1, 4),  # 3 epochs, no new best
    ],
)
def test_early_stop_restores_best_weights(aurocs, max_drop, patience, best_epoch, last_epoch):
    module = Scripted(config(), aurocs)
    stopping = AurocDropStopping(max_drop=max_drop, patience=patience)
    trainer = fit(module, [stopping], batch_size=16, max_epochs=len(aurocs))

    assert trainer.current_epoch == last_epoch + 1  # stopped before the later, better epochs
    assert sorted(module.weights_at) == list(range(last_epoch + 1))
    assert stopping.best_epoch == best_epoch and stopping.best == pytest.approx(aurocs[best_epoch])
    assert stopping.stopped_reason
    final = module.model.linear.weight
    assert torch.equal(final, module.weights_at[best_epoch])
    assert not torch.equal(final, module.weights_at[last_epoch])  # training did move it


def test_early_stop_ignores_epochs_before_first_epoch():
    """Progressive resizing's low-resolution epochs: a high AUROC there is never kept, and their
    lack of progress never stops training."""
    aurocs = [0.9, 0.5, 0.5, 0.6, 0.7, 0.65]
    module = Scripted(config(), aurocs)
    stopping = AurocDropStopping(max_drop=0.1, patience=2, first_epoch=3)
    trainer = fit(module, [stopping], batch_size=16, max_epochs=len(aurocs))
    assert trainer.current_epoch == len(aurocs)  # no stop: 0.9 of epoch 0 is not a best
    assert stopping.best_epoch == 4 and stopping.best == pytest.approx(0.7)
    assert torch.equal(module.model.linear.weight, module.weights_at[4])


def test_growth_doubles_batch_on_plateau_up_to_max_and_lowers_lr():
    aurocs = [0.7, 0.7, 0.7, 0.7, 0.7, 0.8, 0.8]
    module = Scripted(config(), aurocs)
    growth = BatchSizeGrowth(max_batch_size=32, patience=1, lr_factor=0.5)
    fit(module, [growth], batch_size=8, max_epochs=len(aurocs))

    # Plateaus end epochs 1, 2, 3, 4 and 6 (patience 1); each takes effect the next epoch.
    assert module.batch_sizes == [8, 8, 16, 32, 32, 32, 32]
    expected_lr = [0.5, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.03125]
    assert module.lrs == pytest.approx(expected_lr)  # the epoch scheduler does not undo drops
    assert [e["batch_size"] for e in growth.events] == [16, 32, 32, 32, 32]

    restored = BatchSizeGrowth(max_batch_size=32, patience=1, lr_factor=0.5)
    restored.load_state_dict(growth.state_dict())
    assert restored.tracker.best == pytest.approx(0.8) and len(restored.events) == 5


def test_growth_lowers_lr_to_its_floor_and_no_further():
    """The paper's end points: lr /10 per plateau stops at lr_min (1e-9 in the table1 rows)."""
    paper_like = config(batch_growth=True, batch_size_max=16, lr_factor=0.1, lr_min=1e-5)
    cfg = dataclasses.replace(paper_like, lr=1e-3, plateau_patience=1)
    module = Scripted(cfg, [0.7] * 5)
    fit(module, [plateau_callback(cfg)], batch_size=8, max_epochs=5)
    assert module.batch_sizes == [8, 8, 16, 16, 16]
    assert module.lrs == pytest.approx([1e-3, 1e-3, 1e-4, 1e-5, 1e-5])


def test_plateau_owner_follows_the_schedule():
    grow = plateau_callback(config(batch_growth=True, lr_schedule="plateau"))
    assert grow.max_batch_size == 128 and grow.lr_factor == 0.5
    only_lr = plateau_callback(config(batch_growth=False, lr_schedule="plateau"))
    assert only_lr.max_batch_size == 8 and only_lr.lr_factor == 0.5  # plain reduce-on-plateau
    only_batch = plateau_callback(config(batch_growth=True, lr_schedule="cosine"))
    assert only_batch.lr_factor == 1.0
    assert plateau_callback(config(batch_growth=False, lr_schedule="constant")) is None


def test_plateau_tracker_counts_epochs_without_improvement():
    tracker = PlateauTracker(patience=2)
    events = [tracker.update(v) for v in [0.5, 0.6, 0.6, 0.59, 0.7, 0.69, 0.68, 0.67]]
    assert events == [False, False, False, True, False, False, True, False]


def test_lr_multiplier_warmup_then_cosine():
    shape = [lr_multiplier(e, warmup_epochs=2, max_epochs=10, shape="cosine") for e in range(10)]
    assert shape[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert np.all(np.diff(shape[2:]) < 0) and shape[-1] > 0
    flat = [lr_multiplier(e, warmup_epochs=0, max_epochs=10, shape="plateau") for e in range(10)]
    assert flat == [1.0] * 10
    assert math.isclose(lr_multiplier(6, 2, 10, "cosine"), 0.5)
