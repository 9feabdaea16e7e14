"""Hard-negative mining: exactly the top-scoring non-lenses (never a lens) are mined, replayed
into the second pass's batches, recorded in model.json, and a crash resumes the second pass."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest

from lensfinder.config import HardNegativeConfig, SplitConfig, TrainConfig, load_config
from lensfinder.data import open_source
from lensfinder.data.splits import split_indices
from lensfinder.errors import ConfigError
from lensfinder.testing import tiny_train_config
from lensfinder.train import hard_negatives, train
from lensfinder.train.hard_negatives import (
    FIRST_PASS_DIR,
    MINED_CSV,
    MINED_RECORD,
    open_pool,
    score_rows,
    select_hard,
)
from lensfinder.train.training import check_config


def mining_config(pool: Path | None, **hn) -> TrainConfig:
    settings = {"enabled": True, "top_nonlenses": 5, "bottom_lenses": 2, "epochs": 1} | hn
    return tiny_train_config(
        hard_negatives=HardNegativeConfig(pool=None if pool is None else str(pool), **settings)
    )


@pytest.fixture(scope="module")
def store(layout_factory, tmp_path_factory) -> Path:
    from lensfinder.data.store import pack

    out = tmp_path_factory.mktemp("hn_store") / "store.zarr"
    pack(layout_factory("hn_layout", n=60, seed=3), out, progress=False)
    return out


@pytest.fixture(scope="module")
def pool(layout_factory) -> Path:
    """40 other objects (IDs 300000+), half lenses, with the simulator's kind column."""
    return layout_factory("hn_pool", n=40, seed=9, first_id=300000, kinds=True)


def mined_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / MINED_CSV, newline="") as handle:
        return list(csv.DictReader(handle))


class SecondPassBatchIds(pl.Callback):
    """IDs of the cutouts the second pass's training batches draw (the first pass ignored)."""

    def __init__(self) -> None:
        self.ids: set[int] = set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if Path(trainer.default_root_dir).name == FIRST_PASS_DIR or batch_idx:
            return
        loader = trainer.train_dataloader
        dataset_ids = loader.dataset.ids
        for indices in loader.batch_sampler:  # the epoch's batches (seeded: as trained)
            self.ids.update(int(i) for i in dataset_ids[indices])


# -- selection ---------------------------------------------------------------------------------
def test_select_hard_picks_exactly_the_top_nonlenses_and_bottom_lenses():
    labels = np.array([0, 1, 0, -1, 0, 1, 0, 1, 0])
    scores = np.array([0.2, 0.1, 0.9, 0.99, np.nan, 0.95, 0.7, 0.4, 0.9])
    top, bottom = select_hard(labels, scores, top_nonlenses=3, bottom_lenses=2)
    # Highest non-lens scores first (ties in input order); the unlabelled 0.99, the NaN row
    # and the high-scoring lens 0.95 are never negatives.
    assert top.tolist() == [2, 8, 6]
    assert bottom.tolist() == [1, 7]  # lowest-scoring lenses first
    top, bottom = select_hard(labels, scores, top_nonlenses=10, bottom_lenses=0)
    assert sorted(top.tolist()) == [0, 2, 6, 8] and bottom.size == 0
    assert set(labels[top]) == {0}


def test_the_training_data_as_pool_is_mined_in_its_training_split_only(store):
    config = mining_config(store)
    source = open_source(store)
    pooled = open_pool(config, [source], Path("unused"), progress=False)
    assert pooled.record["is_training_data"] is True
    train_split = split_indices(np.asarray(source.ids), config.split)["train"]
    assert set(pooled.candidates.tolist()) == set(train_split.tolist())


# -- the whole run -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mined_run(store, pool, tmp_path_factory):
    out = tmp_path_factory.mktemp("hn_run") / "run"
    config = mining_config(pool, replay_copies=3)
    batches = SecondPassBatchIds()
    result = train(config, store, out, progress=False, callbacks=[batches])
    return result, config, batches


def test_mining_keeps_the_first_pass_models_top_nonlenses(mined_run, pool):
    result, _, _ = mined_run
    out = result.run_dir
    rows = mined_rows(out)
    # Score the pool independently with the first pass's model: the CSV holds exactly the
    # 5 highest-scoring non-lenses and the 2 lowest-scoring lenses.
    source = open_source(pool)
    scores = score_rows(out / FIRST_PASS_DIR, source, np.arange(len(source)), False, False)
    labels = np.asarray(source.labels)
    nonlens_order = np.flatnonzero(labels == 0)[np.argsort(-scores[labels == 0], kind="stable")]
    lens_order = np.flatnonzero(labels == 1)[np.argsort(scores[labels == 1], kind="stable")]
    negatives = [r for r in rows if r["role"] == "nonlens"]
    lenses = [r for r in rows if r["role"] == "lens"]
    assert [int(r["id"]) for r in negatives] == source.ids[nonlens_order[:5]].tolist()
    assert [int(r["id"]) for r in lenses] == source.ids[lens_order[:2]].tolist()
    assert {r["label"] for r in negatives} == {"0"} and {r["label"] for r in lenses} == {"1"}
    assert all(r["kind"] != "lens" for r in negatives)
    np.testing.assert_allclose([float(r["score"]) for r in negatives], scores[nonlens_order[:5]])


def test_model_json_records_the_mining_and_the_second_pass_fine_tunes(mined_run, pool):
    result, config, _ = mined_run
    out = result.run_dir
    meta = json.loads((out / "model.json").read_text())
    record = meta["hard_negatives"]
    assert record == json.loads((out / MINED_RECORD).read_text())
    assert record["n_nonlenses"] == 5 and record["n_lenses"] == 2
    assert record["replay_copies"] == 3 and record["ids_file"] == MINED_CSV
    assert record["pool"]["fingerprint"] == meta_fingerprint(pool)
    assert record["pool"]["n_candidates"] == 40 and record["pool"]["is_training_data"] is False
    scores = [float(r["score"]) for r in mined_rows(out) if r["role"] == "nonlens"]
    assert record["nonlens_score_min"] == pytest.approx(min(scores))
    assert sum(record["nonlens_kinds"].values()) == 5
    assert record["first_pass"]["epochs"] == config.max_epochs
    # The final model is a fine-tune of the first pass, for the second pass's epochs.
    assert meta["init"] == str((out / FIRST_PASS_DIR).resolve())
    assert meta["train"]["max_epochs"] == config.hard_negatives.epochs
    assert meta["train"]["lr"] == pytest.approx(config.lr * config.hard_negatives.lr_scale)
    assert meta["data"]["n_train"] == len(open_source_train(meta)) + 7 * 3
    assert "hard negatives: 5 non-lenses" in result.summary()


def meta_fingerprint(path: Path) -> str:
    from lensfinder.data.identity import fingerprint

    return fingerprint(open_source(path))


def open_source_train(meta: dict) -> np.ndarray:
    source = open_source(meta["data"]["store"])
    return split_indices(np.asarray(source.ids), SplitConfig(**meta["split"]))["train"]


def test_replay_puts_the_mined_ids_into_the_second_pass_batches(mined_run):
    result, _, batches = mined_run
    mined_ids = {int(r["id"]) for r in mined_rows(result.run_dir)}
    assert mined_ids <= batches.ids
    assert all(i >= 300000 for i in mined_ids)  # pool IDs: not in the training store


class CrashInSecondPass(pl.Callback):
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        # After the second pass's first epoch (and its checkpoint).
        if Path(trainer.default_root_dir).name != FIRST_PASS_DIR and trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")


def test_a_crash_in_the_second_pass_resumes_it_not_the_first(store, pool, tmp_path, monkeypatch):
    out = tmp_path / "run"
    config = mining_config(pool, epochs=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, store, out, progress=False, callbacks=[CrashInSecondPass()])
    first_weights = (out / FIRST_PASS_DIR / "model.safetensors").stat().st_mtime_ns
    mined_before = (out / MINED_CSV).read_text()

    def no_mining(*args, **kwargs):
        raise AssertionError("mined again")

    monkeypatch.setattr(hard_negatives, "score_rows", no_mining)
    result = train(config, store, out, progress=False)
    assert result.resumed_from_epoch == 0 and result.epochs == 2
    assert (out / FIRST_PASS_DIR / "model.safetensors").stat().st_mtime_ns == first_weights
    assert (out / MINED_CSV).read_text() == mined_before
    # Finished: a rerun trains nothing.
    assert train(config, store, out, progress=False).already_trained


def test_a_simulated_pool_has_fresh_ids_and_the_training_label_rule(store, tmp_path):
    out = tmp_path / "run"
    config = mining_config(None, pool_size=6, top_nonlenses=2, bottom_lenses=1)
    train(config, store, out, progress=False)
    record = json.loads((out / MINED_RECORD).read_text())
    simulated = record["pool"]["simulated"]
    training = open_source(store)
    assert simulated["n"] == 6 and simulated["first_id"] == int(training.ids.max()) + 1
    assert simulated["label_rule"] == str(training.label_rule)
    pool_source = open_source(record["pool"]["path"])
    assert not set(pool_source.ids.tolist()) & set(training.ids.tolist())
    assert record["n_nonlenses"] == 2 and record["n_lenses"] == 1


def test_settings_come_from_yaml_and_bad_ones_fail_in_one_line(tmp_path):
    path = tmp_path / "mined.yaml"
    path.write_text("hard_negatives:\n  enabled: true\n  top_nonlenses: 300\n  tta: true\n")
    config = load_config(TrainConfig, path)
    assert config.hard_negatives.enabled and config.hard_negatives.top_nonlenses == 300
    assert config.hard_negatives.bottom_lenses == HardNegativeConfig.bottom_lenses
    path.write_text("hard_negatives:\n  top_negatives: 3\n")
    with pytest.raises(ConfigError, match="top_negatives"):
        load_config(TrainConfig, path)
    with pytest.raises(ConfigError, match=r"both 0.*lr_scale"):  # refused as it is made
        HardNegativeConfig(enabled=True, top_nonlenses=0, bottom_lenses=0, lr_scale=2.0)
    with pytest.raises(ConfigError, match="short_budget 'never': expected one of mine, epochs"):
        HardNegativeConfig(enabled=True, short_budget="never")
    # A pool that is not there fails before the first pass trains.
    with pytest.raises(ConfigError, match="nowhere: no such store or layout"):
        check_config(mining_config(tmp_path / "nowhere"))


def test_a_run_dir_of_another_config_is_refused_before_the_first_pass(store, pool, tmp_path):
    out = tmp_path / "run"
    plain = mining_config(pool)
    train(
        dataclasses.replace(plain, hard_negatives=HardNegativeConfig()), store, out, progress=False
    )
    with pytest.raises(ConfigError, match="another config"):
        train(plain, store, out, progress=False)
    assert not (out / FIRST_PASS_DIR).exists()


@pytest.fixture
def epochs_of_4_s(monkeypatch):
    """This machine 'measured': an epoch takes 4 s (3 s of steps, 1 s overhead), scoring and
    preparing nothing; returns whether each measurement had mining on (it never should)."""
    from lensfinder.train import time_budget

    seen = []

    def measure(config, datamodule):
        seen.append(config.hard_negatives.enabled)
        return time_budget.Rates(3.0 / datamodule.samples_per_epoch, 1e-9, 1e-9, 0.0)

    monkeypatch.setattr(time_budget, "measure_rates", measure)
    return seen


def budgeted(
    pool: Path | None, max_epochs: int, minutes: float, short_budget: str = "epochs"
) -> TrainConfig:
    config = mining_config(pool, epochs=2, short_budget=short_budget)
    return dataclasses.replace(  # the probe's plan, not one re-planned from real epochs
        config,
        max_epochs=max_epochs,
        warmup_epochs=0,
        time_budget_minutes=minutes,
        time_budget_replan=False,
    )


def test_a_time_budget_mines_when_the_configured_epochs_fit_beside_it(
    store, pool, tmp_path, epochs_of_4_s
):
    """Mining's minutes (the pool's scoring, the second pass) are planned before the first
    pass; where all configured epochs fit beside them, the run mines; model.json says so."""
    from lensfinder.models.meta import read_meta
    from lensfinder.train import time_budget

    out = tmp_path / "run"
    result = train(budgeted(pool, max_epochs=2, minutes=1.0), store, out, progress=False)
    plan = read_meta(out)["time_plan"]
    assert epochs_of_4_s == [False]  # measured once, for the first pass (mining removed)
    assert plan == read_meta(out / FIRST_PASS_DIR)["time_plan"]
    assert plan["planned_epochs"] == 2 and plan["hard_negatives"]["mined"]
    # 40 pool cutouts scored (~0 s), then 2 epochs of the second pass (4 s each)
    assert plan["after_s"] == pytest.approx(time_budget.PASS_OVERHEAD_S + 2 * 4.0, abs=0.1)
    assert read_meta(out)["hard_negatives"]["n_nonlenses"] == 5
    assert result.epochs == 2


def test_a_short_budget_mines_after_fewer_epochs_by_default(store, pool, tmp_path, epochs_of_4_s):
    """``short_budget: mine`` (the default): beside mining (18 s) only 4 of 5 epochs fit in
    the 34.9 s planned, so the first pass trains 4, then the run mines."""
    from lensfinder.models.meta import read_meta

    out = tmp_path / "run"
    config = budgeted(pool, max_epochs=5, minutes=0.6, short_budget="mine")
    train(config, store, out, progress=False)
    plan = read_meta(out)["time_plan"]
    assert plan["hard_negatives"]["mined"] and plan["planned_epochs"] < 5
    assert plan["planned_epochs"] == plan["hard_negatives"]["epochs_with_mining"]
    assert read_meta(out / FIRST_PASS_DIR)["metrics"]["epochs"] == plan["planned_epochs"]
    assert read_meta(out)["hard_negatives"]["n_nonlenses"] == 5


def test_a_time_budget_gives_mining_minutes_to_epochs_when_they_do_not_fit(
    store, pool, tmp_path, epochs_of_4_s
):
    """``short_budget: epochs``: beside mining (18 s) only 4 of 5 epochs fit in the 34.9 s
    planned: one pass of all 5 epochs, into OUT itself, no pool scored; a re-run reads the
    decision back."""
    from lensfinder.models.meta import read_meta

    out = tmp_path / "run"
    config = budgeted(pool, max_epochs=5, minutes=0.6)
    result = train(config, store, out, progress=False)
    meta = read_meta(out)
    plan = meta["time_plan"]
    assert plan["planned_epochs"] == 5 and result.epochs == 5
    assert not plan["hard_negatives"]["mined"]
    assert plan["hard_negatives"]["epochs_with_mining"] < 5
    assert meta["hard_negatives"] is None and not meta["train"]["hard_negatives"]["enabled"]
    assert not (out / FIRST_PASS_DIR).exists() and not (out / MINED_RECORD).exists()
    assert any("hard negatives left out" in note for note in result.notes)
    again = train(config, store, out, progress=False)
    assert again.already_trained and epochs_of_4_s == [False]


def test_a_time_budget_counts_the_pool_simulation_before_making_it(
    store, tmp_path, epochs_of_4_s, monkeypatch
):
    """A pool still to simulate is timed first (``planned_seconds``) and its minutes weigh
    against mining: here they leave no room, so nothing is simulated."""
    from lensfinder.models.meta import read_meta

    asked = []

    def planned_seconds(sim, path):
        asked.append((sim.n, path))
        return 40.0

    monkeypatch.setattr(hard_negatives, "planned_seconds", planned_seconds)
    out = tmp_path / "run"
    config = budgeted(None, max_epochs=2, minutes=1.0)
    config = dataclasses.replace(
        config, hard_negatives=dataclasses.replace(config.hard_negatives, pool_size=30)
    )
    train(config, store, out, progress=False)
    decided = read_meta(out)["time_plan"]["hard_negatives"]
    assert decided["pool_simulate_s"] == 40.0 and not decided["mined"]
    assert asked[0][0] == 30 and asked[0][1].name.startswith(hard_negatives.POOL_DIR)
    assert not list(out.glob(f"{hard_negatives.POOL_DIR}*"))
