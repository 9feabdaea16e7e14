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
    config = tiny_config(max_epochs=6, warmup_epochs=0, time_budget_minutes=minutes)
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
