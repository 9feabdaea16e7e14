"""Weight averaging during training: an EMA of the weights, or SWA over the last epochs.

Both are Lightning's ``WeightAveraging`` (an ``AveragedModel`` of the LightningModule, swapped in
for validation, kept in ``last.ckpt`` so a resumed run continues the same average) with three
changes that make the averaged weights the ones early stopping picks and the run saves:

- the averaged weights are swapped back out in ``on_validation_end``, not at the end of the
  validation epoch: ``AurocDropStopping`` keeps its best state in ``on_validation_end``, and it
  runs before this callback (``train/training.py`` adds this one after it), so it keeps the averaged
  weights, which it puts back at the end of training;
- nothing is swapped in before the first average exists (SWA before ``swa_start``): those epochs
  validate the weights as they are, not the initial copy;
- SWA updates its average just before validating (epoch ``e`` is then in the average validated
  after epoch ``e``), and recomputes the BN running statistics for the averaged weights from
  training batches (averaged weights with another model's statistics are miscalibrated;
  Izmailov et al. 2018, "Averaging weights leads to wider optima", sec. 3.2). EMA averages the
  BN buffers along with the weights instead, as timm's ModelEmaV2 does.
"""

from __future__ import annotations

import math
from typing import Any, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch import nn

from lensfinder.config import TrainConfig

EMA_WARMUP = 10  # decay min(d, (1 + n) / (EMA_WARMUP + n)) after n updates


def ema_decay_after(updates: int, decay: float) -> float:
    """The EMA decay applied at the update that follows ``updates`` earlier ones."""
    return min(decay, (1 + updates) / (EMA_WARMUP + updates))


def ema_average(decay: float) -> Any:
    """``AveragedModel``'s ``multi_avg_fn`` for an EMA with the warm-up of ``ema_decay_after``.

    It gets the tensors of one device and dtype at a time, and ``num_averaged`` counts the
    updates so far (the first update copies the weights, so it is >= 1 here): one read of the
    count per group, not per tensor. Integer buffers (BN's ``num_batches_tracked``) follow the
    model: an average of counts is meaningless, and floats copied into them would truncate.
    """

    @torch.no_grad()
    def update(
        averages: list[torch.Tensor], currents: list[torch.Tensor], num_averaged: Any
    ) -> None:
        if not averages[0].is_floating_point():
            torch._foreach_copy_(averages, currents)
            return
        d = ema_decay_after(int(num_averaged) - 1, decay)
        torch._foreach_lerp_(averages, currents, 1.0 - d)  # d * average + (1 - d) * current

    return update


def swa_start_epoch(config: TrainConfig) -> int:
    """The first epoch SWA averages: ``swa_start`` of ``max_epochs``, at most the last epoch."""
    return min(math.floor(config.swa_start * config.max_epochs), config.max_epochs - 1)


@torch.no_grad()
def recompute_batch_norm(
    trainer: pl.Trainer, pl_module: pl.LightningModule, samples: int | None
) -> int:
    """Set the running statistics of the model's trainable BN layers to their plain average
    over ``samples`` training cutouts (None: one epoch's batches); returns the samples used.

    Layers the model keeps in eval mode (a frozen backbone's) are left alone, as training does.
    """
    model = cast(nn.Module, pl_module.model)  # LensClassifier's network
    was_training = model.training
    model.train()
    layers = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    momenta = [m.momentum for m in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over every batch below
    seen = 0
    try:
        if layers:
            loader = trainer.datamodule.train_dataloader()  # type: ignore[attr-defined]
            with trainer.precision_plugin.forward_context():
                for batch in loader:
                    x, y = trainer.strategy.batch_to_device(batch)
                    pl_module(x)
                    seen += len(y)
                    if samples is not None and seen >= samples:
                        break
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        model.train(was_training)
    return seen


class AveragedWeights(WeightAveraging):
    """EMA (every optimiser step) or SWA (every epoch from ``start_epoch``) of the weights; see
    the module docstring for how it differs from Lightning's callback."""

    def __init__(
        self,
        method: str,
        ema_decay: float = 0.999,
        start_epoch: int = 0,
        bn_samples: int | None = None,
    ) -> None:
        if method == "ema":
            super().__init__(use_buffers=True, multi_avg_fn=ema_average(ema_decay))
        elif method == "swa":
            super().__init__(use_buffers=False)  # equal weights; BN recomputed instead
        else:
            raise ValueError(f"weight averaging {method!r}: expected 'ema' or 'swa'")
        self.method = method
        self.start_epoch = start_epoch
        self.bn_samples = bn_samples
        self._swapped = False

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        # SWA's epoch updates happen in on_validation_epoch_start, so validation includes them.
        return self.method == "ema" and step_idx is not None

    @property
    def n_averaged(self) -> int:
        return 0 if self._average_model is None else int(self._average_model.n_averaged)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._average_model is None or trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        if self.method == "swa" and epoch >= self.start_epoch and epoch > self._latest_update_epoch:
            self._average_model.update_parameters(pl_module)
            self._latest_update_epoch = epoch
        if self.n_averaged == 0:
            return  # nothing averaged yet: validate the weights as they are
        self._swap_models(pl_module)
        self._swapped = True
        if self.method == "swa":
            recompute_batch_norm(trainer, pl_module, self.bn_samples)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass  # swapped back in on_validation_end, once early stopping has kept what it wants

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._swapped:
            self._swap_models(pl_module)
            self._swapped = False

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass  # AurocDropStopping puts back the best epoch's (averaged) weights

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "latest_update_epoch": self._latest_update_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._latest_update_epoch = int(state_dict.get("latest_update_epoch", -1))


def weight_averaging_callback(config: TrainConfig) -> AveragedWeights | None:
    """The callback for ``config.weight_averaging``, or None for "none"."""
    if config.weight_averaging == "none":
        return None
    return AveragedWeights(
        config.weight_averaging,
        ema_decay=config.ema_decay,
        start_epoch=swa_start_epoch(config),
        bn_samples=config.swa_bn_samples,
    )


def averaging_record(config: TrainConfig) -> dict[str, Any] | None:
    """What model.json says about weight averaging (None: the weights as trained)."""
    if config.weight_averaging == "none":
        return None
    if config.weight_averaging == "ema":
        return {"method": "ema", "decay": config.ema_decay}
    return {
        "method": "swa",
        "start_epoch": swa_start_epoch(config),
        "bn_samples": config.swa_bn_samples,
    }
