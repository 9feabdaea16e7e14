"""``train_lens_rule``: lenses whose arcs are too faint to learn from are left out of training
(never turned into non-lenses), validation keeps every lens, the hard-negative pool's are not
mined, and model.json says how many were left out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lensfinder.config import HardNegativeConfig, TrainConfig
from lensfinder.data import open_source
from lensfinder.errors import ConfigError, DataError
from lensfinder.labels import lenses_outside
from lensfinder.testing import tiny_train_config
from lensfinder.train import train
from lensfinder.train.datamodule import LensDataModule
from lensfinder.train.hard_negatives import open_pool
from lensfinder.train.training import describe_dropped

RULE = "sb_contrast >= 0.5"  # the fixture's lenses draw sb_contrast uniformly in 0.01-1


@pytest.fixture(scope="module")
def store(layout_factory, tmp_path_factory) -> Path:
    from lensfinder.data.store import pack

    out = tmp_path_factory.mktemp("rule_store") / "store.zarr"
    pack(layout_factory("rule_layout", n=60, seed=4), out, progress=False)
    return out


def config(**overrides: object) -> TrainConfig:
    return tiny_train_config(**overrides)


def faint_lenses(store: Path, rows: np.ndarray) -> set[int]:
    """The lenses among ``rows`` whose sb_contrast is below 0.5, found without the rule code."""
    source = open_source(store)
    labels, contrast = np.asarray(source.labels), source.catalog["sb_contrast"]
    return {int(r) for r in rows if labels[r] == 1 and not contrast[r] >= 0.5}


def test_lenses_outside_picks_only_lenses_that_fail_the_rule():
    labels = np.array([1, 1, 0, 1, -1])
    columns = {"sb_contrast": np.array([0.6, 0.1, 0.05, np.nan, 0.01])}
    assert lenses_outside(RULE, columns, labels, np.arange(5), "cat.csv").tolist() == [
        False,
        True,  # a faint lens
        False,  # a non-lens is never left out, however faint
        True,  # NaN fails the rule, as in the label rule
        False,  # unlabelled
    ]
    assert lenses_outside(RULE, columns, labels, np.array([3, 0]), "cat.csv").tolist() == [
        True,
        False,
    ]
    with pytest.raises(DataError, match=r"^cat.csv: .*needs catalogue column.*arc_snr"):
        lenses_outside("arc_snr > 5", columns, labels, np.arange(5), "cat.csv")


def test_a_rule_that_cannot_be_read_is_a_config_error():
    with pytest.raises(ConfigError, match=r"train_lens_rule.*sb_contrast ~ 2"):
        config(train_lens_rule="sb_contrast ~ 2")


def test_only_the_training_splits_faint_lenses_are_left_out(store):
    plain, ruled = (
        LensDataModule(config(), store),
        LensDataModule(config(train_lens_rule=RULE), store),
    )
    plain.prepare()
    ruled.prepare()
    faint = faint_lenses(store, plain.train_indices)
    assert 3 <= len(faint) < int((plain.labels[plain.train_indices] == 1).sum())
    assert set(ruled.train_indices.tolist()) == set(plain.train_indices.tolist()) - faint
    # validation still measures the challenge's rule: every lens, faint or not
    assert ruled.val_indices.tolist() == plain.val_indices.tolist()
    assert faint_lenses(store, ruled.val_indices)  # faint lenses are validated on
    assert ruled.dropped["n_lenses_outside_rule"] == len(faint)
    assert ruled.dropped["train_lens_rule"] == RULE
    assert f"{len(faint)} lenses outside train_lens_rule" in describe_dropped(ruled.dropped)
    assert "train_lens_rule" not in plain.dropped


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("arc_snr > 5", "needs catalogue column.*arc_snr"),
        ("sb_contrast > 5", "leaves none of the training split's"),
    ],
)
def test_a_rule_the_data_cannot_serve_fails_in_one_line_naming_the_store(store, rule, message):
    with pytest.raises(DataError, match=message) as error:
        LensDataModule(config(train_lens_rule=rule), store).prepare()
    assert str(store) in str(error.value) and "\n" not in str(error.value)


def test_the_pools_faint_lenses_are_not_mined(store, tmp_path):
    mining = HardNegativeConfig(
        enabled=True, pool=str(store), top_nonlenses=5, bottom_lenses=2, epochs=1
    )
    source = open_source(store)
    every = open_pool(config(hard_negatives=mining), [source], tmp_path, progress=False)
    ruled = open_pool(
        config(hard_negatives=mining, train_lens_rule=RULE), [source], tmp_path, False
    )
    faint = faint_lenses(store, every.candidates)
    assert faint and set(ruled.candidates.tolist()) == set(every.candidates.tolist()) - faint
    assert ruled.record["n_lenses"] == every.record["n_lenses"] - len(faint)


def test_model_json_records_the_rule_and_the_lenses_left_out(store, tmp_path):
    result = train(config(train_lens_rule=RULE), store, tmp_path / "run", progress=False)
    meta = json.loads((result.run_dir / "model.json").read_text())
    assert meta["train"]["train_lens_rule"] == RULE
    dropped = meta["data"]["dropped"]
    assert dropped["n_lenses_outside_rule"] > 0 and dropped["train_lens_rule"] == RULE
    assert dropped["n_lenses_learnt"] > 0
    assert "lenses outside train_lens_rule" in result.summary()
