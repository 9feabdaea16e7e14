"""Training per CPU-minute: progressive resizing (early epochs at a lower resolution)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from lensfinder.config import TrainConfig
from lensfinder.errors import ConfigError
from lensfinder.testing import TINY_INPUT, TINY_MODEL
from lensfinder.train.module import resized_input


class InputSizes(pl.Callback):
    """The input size of every training and validation batch, per epoch."""

    def __init__(self) -> None:
        self.train: list[set[int]] = []
        self.val: list[set[int]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.train.append(set())
        self.val.append(set())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.train[-1].add(batch[0].shape[-1])

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if self.val:  # not the sanity check before the first epoch
            self.val[-1].add(batch[0].shape[-1])


def test_resized_input_scales_each_tensor_and_keeps_surface_brightness():
    x = torch.full((3, 4, 100, 100), 2.5)
    small = resized_input(x, 64, 100)
    assert small.shape == (3, 4, 64, 64)
    assert torch.allclose(small, torch.full_like(small, 2.5))  # a flat image stays flat
    vis, nisp = resized_input((torch.rand(2, 1, 100, 100), torch.rand(2, 3, 34, 34)), 50, 100)
    assert vis.shape == (2, 1, 50, 50) and nisp.shape == (2, 3, 17, 17)
    y = torch.rand(2, 4, 100, 100)
    assert torch.equal(resized_input(y, 100, 100), y)


def test_low_res_epochs_train_small_then_full_and_always_validate_full(tiny_store, tmp_path):
    from lensfinder.train import train

    cfg = TrainConfig(
        input=TINY_INPUT,
        model=TINY_MODEL,
        max_epochs=3,
        low_res_size=16,
        low_res_epochs=2,
        max_train_samples=8,
        batch_size=4,
        batch_size_max=4,
        stop_auroc_drop=1.0,
        accelerator="cpu",
    )
    seen = InputSizes()
    train(cfg, tiny_store, tmp_path / "run", progress=False, callbacks=[seen])
    assert seen.train == [{16}, {16}, {TINY_INPUT.size}]
    assert seen.val == [{TINY_INPUT.size}] * 3


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"low_res_epochs": 2}, "without low_res_size"),
        ({"low_res_size": 100, "low_res_epochs": 2}, "expected 8 <= size < input.size"),
        ({"low_res_size": 64, "low_res_epochs": 10}, "expected 1..max_epochs - 1"),
        ({"low_res_size": 64, "low_res_epochs": 0}, "expected 1..max_epochs - 1"),
    ],
)
def test_low_res_settings_are_checked(settings, problem):
    with pytest.raises(ConfigError, match=problem):
        TrainConfig(**settings)


def test_hard_negative_second_pass_trains_at_full_size(tmp_path):
    from lensfinder.train.hard_negatives import second_pass_config

    cfg = TrainConfig(low_res_size=64, low_res_epochs=4)
    fine_tune = second_pass_config(cfg, tmp_path)
    assert fine_tune.low_res_size is None and fine_tune.low_res_epochs == 0
