"""Training callbacks: early stopping that keeps the best weights, the paper's batch-size growth
made automatic, a per-epoch history with throughput, and an atomic ``last.ckpt``.

All of them keep their state in plain dicts, lists, numbers and tensors so that a checkpoint can be
loaded back with ``weights_only=True`` (no pickled classes).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities import rank_zero_info

from lensfinder.config import TrainConfig

MONITOR = "val_auroc"


def monitored_value(trainer: pl.Trainer, key: str = MONITOR) -> float | None:
    """The epoch's value of ``key`` as a float, or None when missing or not finite."""
    value = trainer.callback_metrics.get(key)
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def scale_learning_rate(
    trainer: pl.Trainer, factor: float, lr_min: float = TrainConfig.lr_min
) -> None:
    """Multiply the lr of every optimiser by ``factor`` (never below ``lr_min``), durably.

    The scheduler's ``base_lrs`` are scaled too: an epoch schedule (warmup, cosine) recomputes the
    lr from them at each step and would otherwise undo the drop.
    """

    def lower(lr: float) -> float:
        return max(lr * factor, min(lr, lr_min))

    for optimizer in trainer.optimizers:
        for group in optimizer.param_groups:
            group["lr"] = lower(group["lr"])
            if "initial_lr" in group:
                group["initial_lr"] = lower(group["initial_lr"])
    for config in trainer.lr_scheduler_configs:
        base_lrs = getattr(config.scheduler, "base_lrs", None)
        if base_lrs is not None:
            config.scheduler.base_lrs = [lower(lr) for lr in base_lrs]


class PlateauTracker:
    """Counts epochs since the monitored value last beat its best by more than ``min_delta``."""

    def __init__(self, patience: int, min_delta: float = 1e-4) -> None:
        if patience < 1:
            raise ValueError(f"plateau patience must be >= 1, got {patience}")
        self.patience = patience
        self.min_delta = min_delta
        self.best = -math.inf
        self.wait = 0

    def update(self, value: float) -> bool:
        """Record one epoch; True when it completes a plateau (the counter then restarts)."""
        if value > self.best + self.min_delta:
            self.best, self.wait = value, 0
            return False
        self.wait += 1
        if self.wait >= self.patience:
            self.wait = 0
            return True
        return False

    def state_dict(self) -> dict[str, float]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.best, self.wait = float(state["best"]), int(state["wait"])


class AurocDropStopping(pl.Callback):
    """Stop when val AUROC falls more than ``max_drop`` below its best, or after ``patience``
    epochs without a new best; in either case (and at ``max_epochs``) the weights of the best
    epoch are put back at the end of training, so the saved model is the best one seen.

    The best weights are a CPU copy of the LightningModule's ``state_dict``, kept in memory and in
    the checkpoint (so a resumed run still ends on the best epoch, even one before the restart).
    Epochs before ``first_epoch`` (the learning-rate warm-up; progressive resizing's
    low-resolution ones, validated at their own size) are neither candidates nor counted.
    """

    def __init__(
        self, max_drop: float, patience: int, monitor: str = MONITOR, first_epoch: int = 0
    ) -> None:
        self.first_epoch = first_epoch
        self.max_drop = max_drop
        self.patience = patience
        self.monitor = monitor
        self.best = -math.inf
        self.best_epoch = -1
        self.wait = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.stopped_reason: str | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.current_epoch < self.first_epoch:
            return
        value = monitored_value(trainer, self.monitor)
        if value is None:
            return
        if value > self.best:
            self.best, self.best_epoch, self.wait = value, trainer.current_epoch, 0
            self.best_state = {
                k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()
            }
        else:
            self.wait += 1
        reason = None
        if self.best - value > self.max_drop:
            reason = (
                f"{self.monitor} {value:.4f} fell more than {self.max_drop:g} below its best "
                f"{self.best:.4f} (epoch {self.best_epoch})"
            )
        elif self.wait >= self.patience:
            reason = f"no new best {self.monitor} in {self.patience} epochs"
        if trainer.strategy.reduce_boolean_decision(reason is not None, all=False):
            trainer.should_stop = True
            self.stopped_reason = reason or "another process asked to stop"
            rank_zero_info(f"early stop after epoch {trainer.current_epoch}: {self.stopped_reason}")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.restore_best(pl_module)

    def restore_best(self, pl_module: pl.LightningModule) -> None:
        """Put the best epoch's weights back (idempotent; nothing to do before any epoch)."""
        if self.best_state is not None:
            pl_module.load_state_dict(self.best_state)

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "best_state": self.best_state,
            "stopped_reason": self.stopped_reason,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.wait = int(state["wait"])
        self.best_state = state["best_state"]
        self.stopped_reason = state["stopped_reason"]


class BatchSizeGrowth(pl.Callback):
    """The paper's hand-tuned schedule as a rule: start small with a high lr; on a val AUROC
    plateau (``patience`` epochs without a new best), double the training batch (up to
    ``max_batch_size``) and multiply the lr by ``lr_factor`` (down to ``lr_min``; the paper goes
    from batch 8 and lr 0.01 to batch 128 and lr ~1e-9). Once the batch is at its cap a
    plateau only lowers the lr, i.e. this becomes plain reduce-on-plateau, which is also how it
    serves when batch growth is off (``max_batch_size`` = the starting batch).

    It is the single owner of plateau-driven lr drops (no ReduceLROnPlateau runs beside it);
    ``lr_factor=1`` leaves the lr to its epoch schedule and only grows the batch.
    The new batch size is written to ``trainer.datamodule.train_batch_size`` and takes effect at
    the next epoch, when the datamodule builds a fresh train loader (the datamodule keeps the
    batch size in its own checkpoint state, so a resumed run continues with it).
    """

    def __init__(
        self,
        max_batch_size: int,
        patience: int,
        lr_factor: float,
        monitor: str = MONITOR,
        lr_min: float = TrainConfig.lr_min,
    ) -> None:
        if not 0.0 < lr_factor <= 1.0:
            raise ValueError(f"lr_factor must be in (0, 1], got {lr_factor}")
        self.max_batch_size = max_batch_size
        self.lr_factor = lr_factor
        self.lr_min = lr_min
        self.monitor = monitor
        self.tracker = PlateauTracker(patience)
        self.events: list[dict[str, float]] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = monitored_value(trainer, self.monitor)
        if value is None or not self.tracker.update(value):
            return
        datamodule = trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning at fit
        old_batch = int(datamodule.train_batch_size)
        new_batch = max(old_batch, min(2 * old_batch, self.max_batch_size))
        datamodule.train_batch_size = new_batch
        if self.lr_factor != 1.0:
            scale_learning_rate(trainer, self.lr_factor, self.lr_min)
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        self.events.append({"epoch": trainer.current_epoch, "batch_size": new_batch, "lr": lr})
        rank_zero_info(
            f"{self.monitor} plateau after epoch {trainer.current_epoch}: "
            f"batch {old_batch} -> {new_batch}, lr -> {lr:.3g}"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"tracker": self.tracker.state_dict(), "events": self.events}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state["tracker"])
        self.events = list(state["events"])


class EpochHistory(pl.Callback):
    """One row per epoch (val AUROC and loss, train loss, lr, batch size, images/s) for model.json.

    Throughput counts training samples from the start of the epoch to the end of its last training
    batch, so data loading is included and validation is not; with several processes the rate is
    summed over them.
    """

    KEYS = ("val_auroc", "val_loss", "train_loss")

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self._start = 0.0
        self._last = 0.0
        self._samples = 0
        self._settings: dict[str, float] = {}

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # lr and batch size as this epoch uses them: a plateau changes both before the epoch ends.
        self._settings = {}
        if trainer.optimizers:
            self._settings["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        batch_size = getattr(trainer.datamodule, "train_batch_size", None)  # type: ignore[attr-defined]
        if batch_size is not None:
            self._settings["batch_size"] = int(batch_size)
        self._start = self._last = time.perf_counter()
        self._samples = 0

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._samples += len(batch[-1])
        self._last = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seconds = max(self._last - self._start, 1e-9)
        local = torch.tensor(self._samples / seconds, device=pl_module.device)
        rate = float(trainer.strategy.reduce(local, reduce_op="sum"))
        row: dict[str, float] = {"epoch": trainer.current_epoch, **self._settings}
        row["images_per_s"] = rate
        for key in self.KEYS:
            value = trainer.callback_metrics.get(key)
            if value is not None:
                row[key] = float(value)
        self.rows.append(row)

    def column(self, key: str) -> list[float]:
        return [row[key] for row in self.rows if key in row]

    def images_per_s(self) -> float:
        """Mean rate over epochs, leaving out the first when there are more (warm-up costs)."""
        rates = self.column("images_per_s")
        rates = rates[1:] if len(rates) > 1 else rates
        return float(sum(rates) / len(rates)) if rates else float("nan")

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = [dict(row) for row in state["rows"]]


class AtomicLastCheckpoint(Checkpoint):
    """``dirpath/last.ckpt`` at the end of every training epoch, written to a temporary file and
    renamed into place, so an interruption mid-write leaves the previous checkpoint intact.

    (Lightning's ModelCheckpoint with ``save_top_k=0`` writes ``last.ckpt`` only at the very end
    of training, which defeats resuming.) Being a ``Checkpoint``, it runs after the other
    callbacks' epoch-end hooks, so their state for the finished epoch is in the file.
    """

    FILENAME = "last.ckpt"

    def __init__(self, dirpath: str | os.PathLike[str]) -> None:
        self.path = Path(dirpath) / self.FILENAME

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:  # type: ignore[attr-defined]
            return
        temporary = self.path.with_name(f"{self.FILENAME}.tmp")
        try:
            trainer.save_checkpoint(temporary, weights_only=False)  # full state, to resume
        except BaseException:  # a full disk: no half-written file stays beside the last one
            temporary.unlink(missing_ok=True)
            raise
        if trainer.is_global_zero:
            os.replace(temporary, self.path)
        trainer.strategy.barrier("atomic_last_checkpoint")
