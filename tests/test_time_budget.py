"""time_budget_minutes: the run measures this machine and trains the epochs that fit."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lensfinder.config import TrainConfig
from lensfinder.errors import ConfigError
from lensfinder.models.meta import read_meta
from lensfinder.train import time_budget, train
from lensfinder.train.members import member_config
from lensfinder.train.time_budget import (
    EPOCH_OVERHEAD_S,
    PASS_OVERHEAD_S,
    PLAN_FILE,
    SAFETY,
    SCORING_FACTOR,
    AfterFirstPass,
    Rates,
    TimeBudget,
)
from test_train import tiny_config


def fake_datamodule(n_train: int = 800, n_val: int = 200, samples: int = 400) -> SimpleNamespace:
    return SimpleNamespace(
        train_indices=np.arange(n_train),
        val_indices=np.arange(n_val),
        samples_per_epoch=samples,
        parts=[],
    )


RATES = Rates(train_s=0.1, predict_s=0.01, prepare_s=0.002, probe_s=0.0)


@pytest.fixture
def fixed_rates(monkeypatch):
    """This machine 'measured' as RATES, counting the measurements."""
    calls = []

    def measure(config, datamodule):
        calls.append(config)
        return RATES

    monkeypatch.setattr(time_budget, "measure_rates", measure)
    return calls


def plan_for(config: TrainConfig, after: AfterFirstPass | None = None, spent_s: float = 0.0):
    budget = TimeBudget.start(config)
    assert budget is not None
    budget.started -= spent_s  # as if painting and the pool had taken spent_s
    return budget._measure_and_plan(config, fake_datamodule(), done_epochs=0, after=after)


def test_the_plan_trains_the_epochs_that_fit_and_never_more_than_max_epochs(fixed_rates):
    # an epoch: 400 steps' images x 0.1 s + 200 validation x 0.01 s + overhead = 43 s;
    # setup: 1,000 inputs x 0.002 s = 2 s
    epoch_s = 400 * 0.1 + 200 * 0.01 + EPOCH_OVERHEAD_S
    config = TrainConfig(max_epochs=100, time_budget_minutes=10, warmup_epochs=1)
    plan = plan_for(config, spent_s=60.0)
    expected = math.floor((SAFETY * 600 - 60.0 - 2.0) / epoch_s)
    assert plan["planned_epochs"] == expected == 12 and plan["fits"]
    assert plan["epoch_s"] == pytest.approx(epoch_s, abs=0.1)
    assert plan["estimated_total_s"] <= SAFETY * 600 + 1
    assert plan["train_images_per_s"] == pytest.approx(10.0)
    # a generous budget changes nothing: max_epochs stays the cap
    assert plan_for(dataclasses.replace(config, max_epochs=5))["planned_epochs"] == 5
    # mining after the first pass is paid for out of the same minutes
    after = AfterFirstPass(pool_rows=2000, views=1, epochs=3, replayed=100)
    mined = plan_for(config, after=after, spent_s=60.0)
    after_s = 2000 * (0.01 + 0.002) * SCORING_FACTOR + PASS_OVERHEAD_S + 2.0 + 100 * 0.002
    after_s += 3 * epoch_s
    assert mined["after_s"] == pytest.approx(after_s, abs=0.1)
    assert mined["planned_epochs"] == math.floor((SAFETY * 600 - 62.0 - after_s) / epoch_s)


def test_a_budget_too_small_keeps_the_warmup_and_one_epoch_and_says_so(fixed_rates):
    config = TrainConfig(max_epochs=20, time_budget_minutes=0.5, warmup_epochs=2)
    plan = plan_for(config)
    assert plan["planned_epochs"] == 3 and not plan["fits"]
    budget = TimeBudget(0.5, 0.0, plan=plan)
    assert "do not fit" in budget.describe()


def test_no_budget_means_no_plan():
    assert TimeBudget.start(TrainConfig()) is None
    assert TimeBudget.start(TrainConfig(time_budget_minutes=0)) is None
    with pytest.raises(ConfigError, match="time_budget_minutes"):
        TrainConfig(time_budget_minutes=-1)


def test_ensemble_members_share_the_budget():
    config = TrainConfig(members=3, time_budget_minutes=30)
    assert [member_config(config, k).time_budget_minutes for k in range(3)] == [10, 10, 10]
    assert member_config(TrainConfig(members=2), 1).time_budget_minutes is None


@pytest.fixture(scope="module")
def store(layout_factory, tmp_path_factory) -> Path:
    from lensfinder.data.store import pack

    out = tmp_path_factory.mktemp("budget_store") / "store.zarr"
    pack(layout_factory("budget_layout", n=60, seed=5), out, progress=False)
    return out


def test_a_budgeted_run_trains_the_planned_epochs_on_the_planned_schedule(
    store, tmp_path, monkeypatch
):
    calls = []

    def measure(config, datamodule):
        calls.append(datamodule.samples_per_epoch)
        # epochs of 5 s (+ 1 s overhead); the budget leaves room for 2 of the 6 while setting
        # up took less than 3.5 s
        return Rates(5.0 / datamodule.samples_per_epoch, 1e-9, 1e-9, 0.0)

    monkeypatch.setattr(time_budget, "measure_rates", measure)
    minutes = 15.5 / SAFETY / 60
    config = tiny_config(
        max_epochs=6, warmup_epochs=0, time_budget_minutes=minutes, time_budget_replan=False
    )
    result = train(config, store, tmp_path / "run", progress=False)
    plan = json.loads((tmp_path / "run" / PLAN_FILE).read_text())
    assert plan["planned_epochs"] == 2 and plan["configured_epochs"] == 6
    assert result.epochs == 2 and len(result.val_auroc_history) == 2
    meta = read_meta(tmp_path / "run")
    assert meta["time_plan"] == plan
    assert any("2 of 6 epochs planned" in note for note in result.notes)
    # the cosine schedule spans the 2 planned epochs, not the 6 configured
    lrs = meta["metrics"]["lr_history"]
    assert lrs[0] == pytest.approx(config.lr) and lrs[1] == pytest.approx(config.lr / 2)
    # the same command again: the saved plan is used, nothing is measured or trained again
    again = train(config, store, tmp_path / "run", progress=False)
    assert again.already_trained and len(calls) == 1
    # --no-resume starts afresh: the plan is made again
    train(config, store, tmp_path / "run", progress=False, resume=False)
    assert len(calls) == 2


def test_the_measurement_times_this_machine(store):
    """The real probe: positive, finite rates in a few seconds, training slower than
    inference (a step is a forward, a backward and an update)."""
    from lensfinder.train.datamodule import LensDataModule

    config = tiny_config()
    datamodule = LensDataModule(config, store)
    datamodule.prepare()
    rates = time_budget.measure_rates(config, datamodule)
    values = (rates.train_s, rates.predict_s, rates.prepare_s)
    assert all(np.isfinite(v) and v > 0 for v in values)
    assert rates.train_s > rates.predict_s
    assert rates.probe_s < 60


def test_a_budget_that_fits_changes_nothing_the_run_learns(store, tmp_path):
    """Measuring draws random numbers and runs the model, but training is seeded after it:
    with every epoch fitting, a budgeted run's weights are those of the run without one."""
    from safetensors.torch import load_file

    config = tiny_config(max_epochs=2)
    plain = train(config, store, tmp_path / "plain", progress=False)
    budgeted = dataclasses.replace(config, time_budget_minutes=60)
    timed = train(budgeted, store, tmp_path / "timed", progress=False)
    assert read_meta(tmp_path / "timed")["time_plan"]["planned_epochs"] == 2
    assert timed.val_auroc_history == plain.val_auroc_history
    weights = [load_file(tmp_path / run / "model.safetensors") for run in ("plain", "timed")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_judged_adabn_is_planned_with_its_judgement(fixed_rates):
    """AdaBN after training (2,000 field cutouts x 2 views, prepared once) and, with
    ``adabn_keep: if_better``, the painted field's validation cutouts scored with 8 D4 views
    before and after it: all within the budget (``finish_s`` in ``after_s``)."""
    from lensfinder.config import AdaptConfig

    datamodule = fake_datamodule()
    datamodule.parts = [np.zeros(900), np.zeros(300)]  # simulations, then the painted field
    datamodule.val_indices = np.array([10, 20, 900, 901, 902])
    datamodule.labels = np.r_[np.zeros(900), np.tile([0, 1], 150)]
    adabn_s = 2000 * (2 * RATES.predict_s + RATES.prepare_s)
    for keep, judged_s in (("always", 0.0), ("if_better", 3 * 2 * 8 * RATES.predict_s)):
        adapt = AdaptConfig(field="field.zarr", method="adabn", adabn_keep=keep)
        config = TrainConfig(max_epochs=5, time_budget_minutes=60, adapt=adapt)
        budget = TimeBudget.start(config)
        assert budget is not None
        plan = budget._measure_and_plan(config, datamodule, done_epochs=0)
        assert plan["after_s"] == pytest.approx(adabn_s + judged_s, abs=0.1)


class ShiftedClock:
    """``time_budget``'s clock, pushed ``shift_s`` ahead during ``epoch``: an epoch that 'took'
    that much longer, without waiting for it."""

    def __init__(self, monkeypatch, shift_s: float, epoch: int = 0) -> None:
        import time

        self.offset, self.shift_s, self.epoch = 0.0, shift_s, epoch
        clock = SimpleNamespace(
            monotonic=lambda: time.monotonic() + self.offset, perf_counter=time.perf_counter
        )
        monkeypatch.setattr(time_budget, "time", clock)

    def callback(self):
        import lightning.pytorch as pl

        clock = self

        class Slow(pl.Callback):
            def on_train_epoch_start(self, trainer, pl_module):
                if trainer.current_epoch == clock.epoch:
                    clock.offset += clock.shift_s

        return Slow()


def probe_says(monkeypatch, epoch_s: float) -> None:
    """The probe measures epochs of ``epoch_s`` (with the per-epoch overhead)."""

    def measure(config, datamodule):
        train_s = (epoch_s - EPOCH_OVERHEAD_S) / datamodule.samples_per_epoch
        return Rates(train_s, 1e-9, 1e-9, 0.0)

    monkeypatch.setattr(time_budget, "measure_rates", measure)


def test_a_first_epoch_slower_than_planned_replans_fewer_epochs_on_their_schedule(
    store, tmp_path, monkeypatch
):
    """A probe that saw a faster machine than training did (6 epochs of 1.5 s planned in 60 s;
    the first epoch takes 20 s): after it the run plans again and trains the 2 that fit, on a
    cosine schedule over 2."""
    probe_says(monkeypatch, 1.5)
    clock = ShiftedClock(monkeypatch, 20.0)
    config = tiny_config(max_epochs=6, warmup_epochs=0, time_budget_minutes=1.0)
    out = tmp_path / "run"
    result = train(config, store, out, progress=False, callbacks=[clock.callback()])
    plan = json.loads((out / PLAN_FILE).read_text())
    replanned = plan["replanned"]
    assert replanned["planned_epochs_before"] == 6
    assert replanned["changes"] == [{"after_epoch": 1, "planned_epochs": 2}]
    assert replanned["epoch_s"] >= 10 and replanned["of_planned"] > 5  # the mean of 2 epochs
    assert plan["planned_epochs"] == replanned["planned_epochs"] == 2 == result.epochs
    assert replanned["estimated_total_s"] <= SAFETY * 60 + 1
    meta = read_meta(out)
    assert meta["time_plan"] == plan and meta["train"]["max_epochs"] == 2
    lrs = meta["metrics"]["lr_history"]
    assert lrs[0] == pytest.approx(config.lr) and lrs[1] == pytest.approx(config.lr / 2)
    assert any("re-planned" in note and "after epoch 1 2 epochs" in note for note in result.notes)
    # the saved plan and config say 2: the same command again finds the run finished
    assert train(config, store, out, progress=False).already_trained


def test_a_first_epoch_faster_than_planned_replans_more_epochs(store, tmp_path, monkeypatch):
    """A probe caught by another job's burst (epochs of 5 s planned: 2 of 6 fit in 15.5 s);
    the real epochs take a fraction of that, so after the first the run trains all 6, the
    cosine schedule spanning 6."""
    probe_says(monkeypatch, 6.0)
    minutes = 15.5 / SAFETY / 60
    config = tiny_config(max_epochs=6, warmup_epochs=0, time_budget_minutes=minutes)
    result = train(config, store, tmp_path / "run", progress=False)
    meta = read_meta(tmp_path / "run")
    replanned = meta["time_plan"]["replanned"]
    assert replanned["planned_epochs_before"] == 2 and replanned["of_planned"] < 0.9
    assert replanned["changes"] == [{"after_epoch": 1, "planned_epochs": 6}]
    assert result.epochs == 6 == meta["time_plan"]["planned_epochs"] == meta["train"]["max_epochs"]
    lrs = meta["metrics"]["lr_history"]
    assert lrs[1] == pytest.approx(config.lr * 0.5 * (1 + math.cos(math.pi / 6)))


def test_later_epochs_slower_than_the_first_shrink_the_plan_past_its_half(
    store, tmp_path, monkeypatch
):
    """The first epoch kept the plan (6 of 6); the third 'takes' 45 s more, so after it the
    mean epoch says nothing more fits in the minute: the run ends there, within its budget."""
    probe_says(monkeypatch, 1.5)
    clock = ShiftedClock(monkeypatch, 45.0, epoch=2)
    config = tiny_config(max_epochs=6, warmup_epochs=0, time_budget_minutes=1.0)
    out = tmp_path / "run"
    result = train(config, store, out, progress=False, callbacks=[clock.callback()])
    replanned = read_meta(out)["time_plan"]["replanned"]
    assert replanned["planned_epochs_before"] == 6 and result.epochs == 3
    assert replanned["changes"] == [{"after_epoch": 3, "planned_epochs": 3}]


def test_a_replan_keeps_a_plan_within_its_tolerance_and_scales_what_follows(fixed_rates):
    """An epoch within 10% of the plan keeps it; otherwise mining's scoring and second pass
    scale with the epoch's ratio (a given pool: nothing to simulate)."""
    config = TrainConfig(max_epochs=100, time_budget_minutes=30, warmup_epochs=1)
    budget = TimeBudget.start(config)
    assert budget is not None
    after = AfterFirstPass(pool_rows=2000, views=1, epochs=3, replayed=100)
    budget.plan = budget._measure_and_plan(config, fake_datamodule(), 0, after)
    budget.plan["hard_negatives"] = {"mined": True, "pool_simulate_s": 0.0}
    planned, epoch_s, after_s = (budget.plan[k] for k in ("planned_epochs", "epoch_s", "after_s"))
    assert budget.replan(config, epoch_s * 1.08, 1, first=True) is None
    assert budget.plan["replanned"]["planned_epochs"] == planned == budget.plan["planned_epochs"]
    epochs = budget.replan(config, epoch_s / 2, 1, first=True)
    scaled = after_s / 2
    assert budget.plan["replanned"]["after_s"] == pytest.approx(scaled, abs=0.1)
    left = SAFETY * 1800 - budget.elapsed_s() - scaled
    assert epochs == 1 + math.floor(left / (epoch_s / 2)) == budget.plan["planned_epochs"]
    assert epochs is not None and epochs > planned
    # later epochs: in the plan's first half a faster mean grows it (to max_epochs here) ...
    grown = budget.replan(config, epoch_s / 4, 2, first=False)
    assert grown == config.max_epochs == budget.plan["planned_epochs"]
    # ... past it a faster mean keeps it, a slower one cuts it
    past_half = grown // 2 + 1
    assert budget.replan(config, epoch_s / 8, past_half, first=False) is None
    shrunk = budget.replan(config, epoch_s, past_half, first=False)
    assert shrunk is not None and past_half < shrunk < grown
    assert budget.plan["replanned"]["changes"] == [
        {"after_epoch": 1, "planned_epochs": epochs},
        {"after_epoch": 2, "planned_epochs": grown},
        {"after_epoch": past_half, "planned_epochs": shrunk},
    ]
    # never below the warm-up and the epoch after it, never above max_epochs
    budget.started -= 1800
    assert budget.replan(config, epoch_s * 2, 1, first=True) == 2
    fast = dataclasses.replace(config, max_epochs=planned + 3)
    budget.started += 1800
    budget.plan["configured_epochs"] = fast.max_epochs
    assert budget.replan(fast, 0.1, 1, first=True) == fast.max_epochs


def test_a_mining_pools_estimate_leaves_the_plan_after_the_first_epoch(fixed_rates):
    """The pool is simulated before the first epoch, so by its end the pool's minutes are spent
    (in the elapsed time), not ahead: the first re-plan drops the estimate from what follows
    even where the epoch took what the plan said (counted twice before, the estimate cost a
    24,000-cutout cpu-best run 7 of its 30 minutes: README, "Session 25")."""
    config = TrainConfig(max_epochs=100, time_budget_minutes=30, warmup_epochs=1)
    budget = TimeBudget.start(config)
    assert budget is not None
    after = AfterFirstPass(pool_rows=2000, views=1, epochs=3, replayed=100, simulate_s=300.0)
    budget.plan = budget._measure_and_plan(config, fake_datamodule(), 0, after)
    budget.plan["hard_negatives"] = {"mined": True, "pool_simulate_s": 300.0}
    planned, epoch_s, after_s = (budget.plan[k] for k in ("planned_epochs", "epoch_s", "after_s"))
    epochs = budget.replan(config, epoch_s, 1, first=True)
    assert budget.plan["replanned"]["after_s"] == pytest.approx(after_s - 300.0, abs=0.1)
    left = SAFETY * 1800 - budget.elapsed_s() - (after_s - 300.0)
    assert epochs == 1 + math.floor(left / epoch_s) == budget.plan["planned_epochs"]
    assert epochs is not None and planned < epochs < config.max_epochs


def test_no_replan_where_epochs_were_set_from_the_first_plan():
    from lensfinder.train.time_budget import replans

    assert replans(TrainConfig())
    assert not replans(TrainConfig(time_budget_replan=False))
    assert not replans(TrainConfig(weight_averaging="swa"))
    assert not replans(TrainConfig(low_res_size=64))
    assert not replans(TrainConfig(frozen_stages=2))
