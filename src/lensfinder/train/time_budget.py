"""Fit a training run into minutes on this machine: measure it, then plan ``max_epochs``.

Why: a config's ``max_epochs`` fixes the samples a model sees, not the minutes it takes, and
the same 2 cores differ by 2x from one CPU to another (cpu-best's 28 epochs: 24.5 min on an
AMD EPYC, 36.6 min on a 2.8 GHz Intel Xeon; README). With ``time_budget_minutes`` the run
measures this machine once, before its first epoch: a few training steps of the config's
model on random inputs (``BareTrainingLoop``; the trainer runs at 0.97-0.99 of it,
``benchmarks/bench_train.py``), a few forward passes for validation and scoring, and the input
preparation of a few cutouts. It then trains the most epochs, never more than ``max_epochs``,
whose estimated end, with what follows them (mining and its second pass, AdaBN), lies within
the budget counted from the start of ``train`` (painting a field comes first, so it is counted
as spent, not estimated).

Mining is planned before its pool is simulated (a few of the pool's objects are made twice and
timed warm: ``simulation.planned_seconds``), and
where the minutes cannot hold it and all the configured epochs, ``hard_negatives.short_budget``
chooses (``plan_mining``): "mine" (fewer epochs, then mining: the tail gains) or "epochs" (no
mining: AUROC gains; README, "Session 19").

The probe is seconds long, so another job's burst can catch it (README "Session 19": 44 images/s
measured, 61 trained, 9 epochs planned where 13 fit). So the run looks again when its first epoch
is done (``EpochReplan``): where that epoch took more than 10% longer or shorter than the plan
said, or where a mining pool was simulated before it (its estimate, from a few objects, is
then replaced by what it took), the epochs are planned again (``TimeBudget.replan``); after later
epochs again from their mean, both ways in the plan's first half and after it only shrinking,
where the run would overrun. The schedule follows (``time_budget_replan``, on by default).

Everything that derives from ``max_epochs`` (the cosine schedule, warm-up, progressive
resizing, freezing, SWA, early stopping's first epoch) derives from the planned number, so a
slower machine trains the same recipe, shorter. The plan is written to the run directory
(``time_plan.json``) before the first epoch: a resumed run and the other DDP processes use it
instead of measuring again; model.json records it and what the run took.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR

from lensfinder.config import PredictConfig, TrainConfig
from lensfinder.data.augment import N_ELEMENTS
from lensfinder.data.cutouts import NISP_SHAPE, VIS_SHAPE
from lensfinder.data.dataset import CutoutDataset
from lensfinder.data.transforms import map_input, to_model_input
from lensfinder.files import atomic_write_text
from lensfinder.train.adapt import (
    JOINT_METHODS,
    UnpaintedHoldback,
    adapt_methods,
    painted_validation,
)
from lensfinder.train.devices import prepare_cpu_for_training, resolve_precision, uses_cuda
from lensfinder.train.module import (
    LensClassifier,
    epoch_schedule,
    initial_model,
    make_optimizer,
    to_channels_last,
)

PLAN_FILE = "time_plan.json"
# The plan aims at this share of the minutes left: the estimates come from a few steps, and a
# run that ends a little early costs less than one that overruns.
SAFETY = 0.97
EPOCH_OVERHEAD_S = 1.0  # checkpoint, logging and the loaders' rebuild, per epoch
# Mining scores its pool through the Predictor (store reads, batching, the model's own
# preparation): 144 cutouts/s against 304 for the bare forward pass and 2,320 for the preparation
# timed here (cpu-best on a 2.8 GHz Xeon, README "Session 15"), so twice the sum of the two.
SCORING_FACTOR = 2.0
PASS_OVERHEAD_S = 10.0  # a second pass's start: its data, the first pass's model, Lightning
# Timed training steps (after ``PROBE_WARMUP``), their median taken: single steps of one
# process vary by +-15% on 2 cores (Lite0, 80 px: 76-98 images/s step to step).
PROBE_STEPS = 6
PROBE_WARMUP = 3
PROBE_PREPARED = 128  # cutouts read and prepared to time the input preparation
# Joint adaptation (dann, consistency) runs the network on a field batch beside every labelled
# batch: about twice the work per step.
JOINT_STEP_FACTOR = 2.0
# The first epoch re-plans the run when its wall time is off the plan's by more than this share
# (the probe's step-to-step spread is +-15%, its median's much less; the first epoch also holds
# one-time costs, so a plan within 10% is kept).
REPLAN_TOLERANCE = 0.10


class BareTrainingLoop:
    """Forward + backward + optimiser steps of ``config``'s model (the one training builds, the
    same optimiser, batch size, input size, channels-last setting and precision) on one random
    batch already in memory: the yardstick of the trainer's speed, and what the plan times."""

    def __init__(self, config: TrainConfig, warmup: int = 3) -> None:
        prepare_cpu_for_training()  # as training does, so that the yardstick is timed as it trains
        self.device = torch.device("cuda" if uses_cuda(config.accelerator) else "cpu")
        self.module = LensClassifier(config, initial_model(config)).to(self.device).train()
        trainable = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(config, trainable)
        batch = config.batch_size
        example = to_model_input(
            np.zeros((1, *VIS_SHAPE), np.float32),
            np.zeros((1, *NISP_SHAPE), np.float32),
            config.input,
        )
        x = map_input(example, lambda t: torch.randn(batch, *t.shape[1:], device=self.device))
        self.x = to_channels_last(x) if config.channels_last else x
        self.y = (torch.arange(batch, device=self.device) % 2).float()
        precision = resolve_precision(config)
        self.dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
        self.batch = batch
        for _ in range(warmup):
            self.step()

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.dtype is None:
            loss = self.module.loss_fn(self.module(self.x), self.y)
        else:
            with torch.autocast(self.device.type, dtype=self.dtype):
                loss = self.module.loss_fn(self.module(self.x), self.y)
        loss.backward()
        self.optimizer.step()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def run(self, steps: int = 1) -> float:
        """Seconds taken by ``steps`` more steps."""
        self._sync()
        began = time.perf_counter()
        for _ in range(steps):
            self.step()
        self._sync()
        return time.perf_counter() - began

    def predict_seconds(self, batch: int, passes: int = 2) -> float:
        """Seconds per image of eval-mode forward passes on batches of ``batch`` (validation,
        scoring), after one pass of warm-up; the module is left in training mode."""
        inputs = map_input(self.x, lambda t: t[:1].expand(batch, *t.shape[1:]).contiguous())
        self.module.eval()
        try:
            with torch.no_grad():
                self.module(inputs)
                self._sync()
                began = time.perf_counter()
                for _ in range(passes):
                    self.module(inputs)
                self._sync()
        finally:
            self.module.train()
        return (time.perf_counter() - began) / (passes * batch)


@dataclass(frozen=True)
class Rates:
    """Seconds per image on this machine, measured by ``measure_rates``."""

    train_s: float  # a training step's share per image
    predict_s: float  # an eval forward pass's share per image
    prepare_s: float  # reading a cutout and making its model input
    probe_s: float  # what measuring took


def measure_rates(config: TrainConfig, datamodule: Any) -> Rates:
    """Time the config's model and the data's preparation here (a few seconds). Random numbers
    drawn here do not reach training: ``_fit`` seeds everything after it."""
    began = time.perf_counter()
    loop = BareTrainingLoop(config, warmup=PROBE_WARMUP)
    train_s = float(np.median([loop.run(1) for _ in range(PROBE_STEPS)])) / loop.batch
    predict_s = loop.predict_seconds(PredictConfig.batch_size)
    del loop
    rows = np.asarray(datamodule.train_indices)[:PROBE_PREPARED]
    dataset = CutoutDataset(datamodule.source, rows, config.input, check=False)
    prepared = time.perf_counter()
    dataset.model_input(np.arange(len(rows)))
    prepare_s = (time.perf_counter() - prepared) / max(1, len(rows))
    return Rates(train_s, predict_s, prepare_s, time.perf_counter() - began)


@dataclass
class AfterFirstPass:
    """What follows the planned epochs and must fit in the budget too: mining (scoring a pool
    of ``pool_rows`` cutouts, ``views`` each) and its second pass of ``epochs`` over
    ``replayed`` more training cutouts."""

    pool_rows: int = 0
    views: int = 1
    epochs: int = 0
    replayed: int = 0
    simulate_s: float = 0.0  # the pool's simulation, where it is still to be made


@dataclass
class TimeBudget:
    """The minutes a ``train`` command may take, counted from ``started`` (``time.monotonic``),
    and the plan made for its (first) pass; None for a run without a budget."""

    minutes: float
    started: float
    plan: dict[str, Any] | None = None
    rates: Rates | None = None  # measured once per command, by the first plan
    # made in this process for the pass about to train (``plan_mining``), saved by ``reuse``
    decided: dict[str, Any] | None = None
    # whether ``plan`` was made by this command (and may be re-planned), not read back from a
    # run directory (a resumed run, DDP's other processes)
    fresh: bool = False

    @classmethod
    def start(cls, config: TrainConfig) -> TimeBudget | None:
        if not config.time_budget_minutes:  # None or 0: no budget
            return None
        return cls(float(config.time_budget_minutes), time.monotonic())

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def reuse(self, config: TrainConfig, out: Path) -> TrainConfig | None:
        """``config`` with the planned ``max_epochs`` of the plan decided for this pass
        (``plan_mining``; saved in ``out`` now) or of the plan saved in ``out`` when it was made
        for the same budget and ``max_epochs`` (a resumed run, DDP's other processes), else
        None."""
        decided, self.decided = self.decided, None
        self.fresh = decided is not None and _same_request(decided, config)
        if self.fresh:
            _save_plan(decided, out)  # type: ignore[arg-type]
            saved: dict[str, Any] | None = decided
        else:
            saved = read_plan(out)
        if saved is None or not _same_request(saved, config):
            return None
        self.plan = saved
        return dataclasses.replace(config, max_epochs=int(saved["planned_epochs"]))

    def make(
        self, config: TrainConfig, datamodule: Any, out: Path, done_epochs: int = 0
    ) -> TrainConfig:
        """Measure this machine, plan, save the plan in ``out`` (before training starts) and
        return ``config`` with the planned ``max_epochs``. ``done_epochs``: epochs a checkpoint
        already holds (they are not trained again, so they cost no time)."""
        self.plan = self._measure_and_plan(config, datamodule, done_epochs)
        self.fresh = True
        _save_plan(self.plan, out)
        return dataclasses.replace(config, max_epochs=int(self.plan["planned_epochs"]))

    def plan_mining(
        self, config: TrainConfig, datamodule: Any, mining: AfterFirstPass, short: str = "mine"
    ) -> bool:
        """Whether hard-negative mining (``mining``: its pool, scoring and second pass) runs
        after the first pass of ``config`` on ``datamodule``: always with ``short`` "mine" (the
        first pass gets the minutes it leaves); with "epochs" only when the first pass keeps
        all its configured epochs beside it, otherwise the epochs get its minutes. The chosen
        plan (with ``hard_negatives``: what was decided, and the epochs mining would have left)
        waits in ``decided`` for the pass that trains next, mining's in the first pass, the
        other in the one pass."""
        with_mining = self._measure_and_plan(config, datamodule, 0, mining)
        mines = short == "mine" or with_mining["planned_epochs"] >= config.max_epochs
        chosen = with_mining if mines else self._measure_and_plan(config, datamodule, 0)
        chosen["hard_negatives"] = {
            "mined": mines,
            "epochs_with_mining": with_mining["planned_epochs"],
            "mining_s": with_mining["after_s"],  # all that follows the first pass's epochs
            "pool_simulate_s": round(mining.simulate_s, 1),
        }
        self.decided = chosen
        return mines

    def _measure_and_plan(
        self,
        config: TrainConfig,
        datamodule: Any,
        done_epochs: int,
        after: AfterFirstPass | None = None,
    ) -> dict[str, Any]:
        """The plan of a pass followed by ``after`` (mining), from this machine's rates."""
        if self.rates is None:
            self.rates = measure_rates(config, datamodule)
        rates = self.rates
        costs = pass_costs(config, datamodule, rates)
        after = after or AfterFirstPass()
        second_pass_s = (
            PASS_OVERHEAD_S + costs["setup_s"] + after.replayed * rates.prepare_s
            if after.epochs
            else 0.0
        )
        after_s = (
            after.simulate_s
            + after.pool_rows * (after.views * rates.predict_s + rates.prepare_s) * SCORING_FACTOR
            + second_pass_s
            + after.epochs * costs["epoch_s"]
            + costs["finish_s"]
        )
        elapsed = self.elapsed_s()
        left = SAFETY * 60.0 * self.minutes - elapsed - costs["setup_s"] - after_s
        fitting = math.floor(left / costs["epoch_s"]) if left > 0 else 0
        least = min(config.max_epochs, max(config.warmup_epochs, done_epochs) + 1)
        epochs = max(least, min(config.max_epochs, done_epochs + fitting))
        to_train = epochs - done_epochs
        estimate_s = elapsed + costs["setup_s"] + to_train * costs["epoch_s"] + after_s
        return {
            "budget_minutes": self.minutes,
            "configured_epochs": config.max_epochs,
            "planned_epochs": epochs,
            "fits": done_epochs + fitting >= least,
            "resumed_after_epoch": done_epochs or None,
            "spent_before_s": round(elapsed, 1),  # painting, a given pool's opening, measuring
            "epoch_s": round(costs["epoch_s"], 1),
            "setup_s": round(costs["setup_s"], 1),
            "after_s": round(after_s, 1),
            "estimated_total_s": round(estimate_s, 1),
            "train_images_per_s": round(1.0 / rates.train_s, 1),
            "predict_images_per_s": round(1.0 / rates.predict_s, 1),
            "prepare_images_per_s": round(1.0 / rates.prepare_s, 1),
            "probe_s": round(rates.probe_s, 1),
        }

    def replan(
        self, config: TrainConfig, epoch_s: float, done_epochs: int, first: bool
    ) -> int | None:
        """The epochs to train now that ``done_epochs`` are done at ``epoch_s`` each (the mean
        wall time of the epochs this process trained), or None to keep the plan.

        After the ``first`` epoch the plan is kept where ``epoch_s`` lies within
        ``REPLAN_TOLERANCE`` of the plan's epoch, and is otherwise made again: the most epochs
        (between the warm-up's end and the configured number) that fit with what follows them,
        itself scaled by the same ratio (all of it but a mining pool's simulation, made before
        the first epoch: it is then spent, counted in the elapsed time, and the plan is made
        again after the first epoch whatever its time).
        After later epochs the same count is made from the mean so far; it replaces the plan
        in the first half of the planned epochs (the cosine has barely begun to fall), and
        after that only where it is smaller, so that a run never overruns (epochs on 2 shared
        cores vary by +-15%: a fast spell must not commit the run to minutes it will not have)
        and its schedule's end does not swing. Recorded in the plan's ``replanned``."""
        plan = self.plan
        if plan is None:
            return None
        before = int(plan["planned_epochs"])
        ratio = epoch_s / max(float(plan["epoch_s"]), 1e-9)
        record: dict[str, Any] = plan.setdefault(
            "replanned", {"planned_epochs_before": before, "changes": []}
        )
        record.update(
            after_epoch=done_epochs,
            epoch_s=round(epoch_s, 1),
            of_planned=round(ratio, 2),
            planned_epochs=before,
        )
        mining = plan.get("hard_negatives")
        simulate_s = (
            float(mining.get("pool_simulate_s", 0.0))
            if isinstance(mining, dict) and mining.get("mined")
            else 0.0
        )
        # A mining pool is made before the first epoch (``train_with_hard_negatives``): by now
        # its simulation is in ``elapsed``, no longer ahead, and its estimate (a few objects
        # timed) is replaced by what it took.
        if first and abs(ratio - 1.0) <= REPLAN_TOLERANCE and not simulate_s:
            return None
        after_s = (float(plan["after_s"]) - simulate_s) * ratio
        elapsed = self.elapsed_s()
        left = SAFETY * 60.0 * self.minutes - elapsed - after_s
        fitting = math.floor(left / epoch_s) if left > 0 else 0
        configured = int(plan["configured_epochs"])
        least = min(configured, max(config.warmup_epochs + 1, done_epochs))
        epochs = max(least, min(configured, done_epochs + fitting))
        if not first and 2 * done_epochs > before:  # past the plan's first half: only shrink
            epochs = min(epochs, before)
        record.update(
            after_s=round(after_s, 1),
            estimated_total_s=round(elapsed + (epochs - done_epochs) * epoch_s + after_s, 1),
        )
        if epochs == before:
            return None
        record["planned_epochs"] = plan["planned_epochs"] = epochs
        record["changes"].append({"after_epoch": done_epochs, "planned_epochs": epochs})
        plan["fits"] = done_epochs + fitting >= least
        return epochs

    def describe(self, total_s: float | None = None) -> str:
        """One line for the summary: what was planned, and against what it ran."""
        plan = self.plan
        if plan is None:
            return f"time budget {self.minutes:g} min: no epochs planned"
        replanned = plan.get("replanned") or {}
        first = replanned.get("planned_epochs_before", plan["planned_epochs"])
        text = (
            f"time budget {plan['budget_minutes']:g} min: {first} of "
            f"{plan['configured_epochs']} epochs planned (~{plan['epoch_s']:.0f} s each; "
            f"estimated {plan['estimated_total_s'] / 60:.1f} min)"
        )
        if replanned.get("changes"):
            changes = ", ".join(
                f"after epoch {c['after_epoch']} {c['planned_epochs']}"
                for c in replanned["changes"]
            )
            text += (
                f"; re-planned from the epochs' measured ~{replanned['epoch_s']:.0f} s: "
                f"{changes} epochs"
            )
        mining = plan.get("hard_negatives")
        if mining is not None and not mining["mined"]:
            text += (
                f"; hard negatives left out (short_budget: epochs): beside them "
                f"{mining['epochs_with_mining']} epochs would fit"
            )
        if not plan["fits"]:
            text += "; even the fewest epochs do not fit: give more minutes or fewer samples"
        if total_s is not None:
            text += f"; took {total_s / 60:.1f} min"
        return text


def replans(config: TrainConfig) -> bool:
    """Whether a budgeted run of ``config`` may re-plan its epochs after the first: not where
    progressive resizing, freezing or SWA have set their epochs from the first plan."""
    return (
        config.time_budget_replan
        and not config.low_res_size
        and not config.frozen_stages
        and config.weight_averaging != "swa"
    )


class EpochReplan(pl.Callback):
    """Time the epochs this process trains (from the start of training to the end of each
    epoch's validation) and hand their mean to ``TimeBudget.replan`` after each; where the
    epochs change, the run follows: the loop's end, the module's config and the cosine schedule
    from the next epoch on (the warm-up keeps its epochs). Rank 0 decides (``decides``) and
    broadcasts, so DDP's processes agree; the plan in ``out`` is saved again, which a resumed
    run reads."""

    def __init__(self, budget: TimeBudget, out: Path, decides: bool) -> None:
        self.budget, self.out, self.decides = budget, Path(out), decides
        self.began = 0.0
        self.epochs = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.began, self.epochs = time.monotonic(), 0

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.epochs += 1
        epoch_s = (time.monotonic() - self.began) / self.epochs
        epochs, plan = None, None
        if self.decides and self.budget.plan is not None:
            done = trainer.current_epoch + 1
            epochs = self.budget.replan(pl_module.config, epoch_s, done, self.epochs == 1)
            plan = self.budget.plan
            _save_plan(plan, self.out)
        epochs, plan = trainer.strategy.broadcast((epochs, plan), src=0)
        if plan is not None:  # DDP's other processes describe the plan rank 0 follows
            self.budget.plan = plan
        if epochs is not None:
            follow_planned_epochs(trainer, pl_module, int(epochs))


def follow_planned_epochs(trainer: pl.Trainer, pl_module: Any, epochs: int) -> None:
    """Make a running fit train ``epochs`` in all: its loop, its module's (and datamodule's)
    config, and a cosine schedule's learning rate from the next epoch on."""
    config = dataclasses.replace(pl_module.config, max_epochs=epochs)
    pl_module.config = config
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is not None and hasattr(datamodule, "config"):
        datamodule.config = config
    trainer.fit_loop.max_epochs = epochs
    if config.lr_schedule != "cosine":  # the other shapes do not depend on the epochs
        return
    shape = epoch_schedule(config)
    for scheduler_config in trainer.lr_scheduler_configs:
        scheduler = scheduler_config.scheduler
        if not isinstance(scheduler, LambdaLR):
            continue
        scheduler.lr_lambdas = [shape for _ in scheduler.lr_lambdas]
        # the epoch scheduler has already stepped to the next epoch (``last_epoch``)
        groups = scheduler.optimizer.param_groups
        for group, base in zip(groups, scheduler.base_lrs, strict=True):
            group["lr"] = base * shape(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in groups]


def _same_request(plan: dict[str, Any], config: TrainConfig) -> bool:
    return (
        plan.get("budget_minutes") == config.time_budget_minutes
        and plan.get("configured_epochs") == config.max_epochs
    )


def _save_plan(plan: dict[str, Any], out: Path) -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(out) / PLAN_FILE, json.dumps(plan, indent=1) + "\n")


def mining_plan(out: Path, config: TrainConfig) -> bool | None:
    """What the plan saved in ``out`` for ``config``'s budget says about mining (False: left
    out; a plan made before mining was planned says True), or None when ``out`` holds no plan
    for that budget."""
    plan = read_plan(out)
    if plan is None or not _same_request(plan, config):
        return None
    decided = plan.get("hard_negatives")
    return bool(decided.get("mined", True)) if isinstance(decided, dict) else True


def read_plan(out: Path) -> dict[str, Any] | None:
    """The plan a run directory holds, or None (none, or unreadable: then a new one is made)."""
    try:
        plan = json.loads((Path(out) / PLAN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return plan if isinstance(plan, dict) and "planned_epochs" in plan else None


def pass_costs(config: TrainConfig, datamodule: Any, rates: Rates) -> dict[str, float]:
    """Seconds of one pass of ``config`` on ``datamodule`` at ``rates``: ``setup_s`` (inputs
    prepared once), ``epoch_s`` (training steps, validation, the unpainted holdback's scoring)
    and ``finish_s`` (AdaBN after training, when asked for)."""
    methods = adapt_methods(config.adapt)
    step_factor = JOINT_STEP_FACTOR if any(m in JOINT_METHODS for m in methods) else 1.0
    n_train, n_val = len(datamodule.train_indices), len(datamodule.val_indices)
    holdback = UnpaintedHoldback.of(config, datamodule)
    scored = n_val + (len(holdback.positions) if holdback is not None else 0)
    epoch_s = (
        datamodule.samples_per_epoch * rates.train_s * step_factor
        + scored * rates.predict_s
        + EPOCH_OVERHEAD_S
    )
    finish_s = 0.0
    if "adabn" in methods and config.adapt.max_cutouts:
        finish_s = config.adapt.max_cutouts * (
            config.adapt.adabn_views * rates.predict_s + rates.prepare_s
        )
        judged = (
            painted_validation(config, datamodule)
            if config.adapt.adabn_keep == "if_better"
            else None
        )
        if judged is not None:  # scored with every D4 view, without and with AdaBN
            finish_s += len(judged) * 2 * N_ELEMENTS * rates.predict_s
    return {
        "setup_s": (n_train + n_val) * rates.prepare_s,
        "epoch_s": epoch_s,
        "finish_s": finish_s,
    }
