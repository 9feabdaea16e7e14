"""Learning from grades: graded cutouts join the training split with the labels people gave."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from lensfinder.config import InputConfig, ModelConfig, SplitConfig, TrainConfig
from lensfinder.data import open_source
from lensfinder.data.graded import add_graded, graded_labels
from lensfinder.errors import ConfigError, DataError
from lensfinder.train import train
from lensfinder.train.datamodule import LensDataModule


@pytest.fixture(scope="module")
def stores(layout_factory, tmp_path_factory) -> tuple[Path, Path]:
    """A labelled training store and a second store standing for scanned survey data."""
    from lensfinder.data.store import pack

    root = tmp_path_factory.mktemp("graded")
    train_store, survey = root / "train.zarr", root / "survey.zarr"
    pack(layout_factory("graded_train", n=40, seed=5), train_store, progress=False)
    pack(layout_factory("graded_survey", n=12, seed=6, first_id=900000), survey, progress=False)
    return train_store, survey


def write_grades(path: Path, grades: dict[int, str]) -> Path:
    path.write_text("id,grade\n" + "".join(f"{i},{g}\n" for i, g in grades.items()))
    return path


def test_grades_become_labels_c_left_out():
    ids, labels = graded_labels({5: "A", 3: "X", 4: "C", 9: "B"}, ("A", "B"), ("X",))
    assert ids.tolist() == [3, 5, 9] and labels.tolist() == [0, 1, 1]
    with pytest.raises(ConfigError, match="disjoint"):
        graded_labels({}, ("A", "X"), ("X",))


def test_graded_cutouts_from_other_data_join_training(stores):
    train_store, survey_store = stores
    base, survey = open_source(train_store), open_source(survey_store)
    grades = {int(survey.ids[0]): "X", int(survey.ids[1]): "A", int(survey.ids[2]): "C", 1: "X"}
    train_indices = np.arange(10)
    source, indices, record = add_graded(base, train_indices, grades, survey, ("A", "B"), ("X",))
    assert len(source) == len(base) + 2 and indices.tolist() == [*range(10), 40, 41]
    assert source.labels[40:].tolist() == [0, 1] and source.ids[40] == survey.ids[0]
    both = source.read([41, 3])
    np.testing.assert_array_equal(both.vis[0], survey.read([1]).vis[0])
    np.testing.assert_array_equal(both.nisp[1], base.read([3]).nisp[0])
    assert source.validate([40, 0]).all() and len(source.catalog["ID"]) == 42
    assert record["n_lenses"] == 1 and record["n_nonlenses"] == 1
    assert record["n_missing"] == 1 and record["n_other_grades"] == 1
    with pytest.raises(DataError, match="none of the 1 graded IDs"):
        add_graded(base, train_indices, {1: "X"}, survey, ("A", "B"), ("X",))


def test_graded_objects_of_the_eval_splits_stay_out_of_training(stores, tmp_path):
    train_store, _ = stores
    config = TrainConfig(split=SplitConfig(seed=0, test_fraction=0.2, val_fraction=0.3))
    plain = LensDataModule(config, train_store)
    plain.prepare()
    ids = np.asarray(plain.source.ids)
    val_id, train_id = int(ids[plain.val_indices[0]]), int(ids[plain.train_indices[0]])
    label = int(plain.source.labels[plain.train_indices[0]])
    flipped = "X" if label == 1 else "A"  # a grade that contradicts the simulated label
    grades = write_grades(tmp_path / "g.csv", {val_id: "X", train_id: flipped})
    graded = LensDataModule(dataclasses.replace(config, graded=str(grades)), train_store)
    graded.prepare()
    assert len(graded.train_indices) == len(plain.train_indices) + 1
    assert graded.source.labels[graded.train_indices[-1]] == 1 - label
    np.testing.assert_array_equal(graded.val_indices, plain.val_indices)
    assert graded.graded_record["n_in_eval_splits"] == 1


@pytest.mark.slow
def test_fine_tune_on_grades_records_them(stores, tmp_path):
    train_store, survey_store = stores
    config = TrainConfig(
        input=InputConfig(size=32),
        model=ModelConfig(pretrained=None),
        split=SplitConfig(seed=0, test_fraction=0.2, val_fraction=0.3),
        max_epochs=1,
        max_train_samples=16,
        batch_size=8,
        accelerator="cpu",
    )
    first = train(config, train_store, tmp_path / "first", progress=False)
    survey = open_source(survey_store)
    grades = write_grades(
        tmp_path / "grades.csv", {int(i): "X" for i in survey.ids[:6]} | {int(survey.ids[6]): "B"}
    )
    tuned = dataclasses.replace(
        config, graded=str(grades), graded_data=str(survey_store), init=str(first.run_dir)
    )
    train(tuned, train_store, tmp_path / "tuned", progress=False)
    meta = json.loads((tmp_path / "tuned" / "model.json").read_text())
    assert meta["graded"]["n_nonlenses"] == 6 and meta["graded"]["n_lenses"] == 1
    assert meta["graded"]["lens_grades"] == ["A", "B"] and meta["init"].endswith("first")
    assert meta["data"]["store"] == str(train_store.resolve())  # the split's data
    other = dataclasses.replace(tuned, model=ModelConfig(pretrained=None, drop_rate=0.5))
    with pytest.raises(ConfigError, match="drop_rate"):
        train(other, train_store, tmp_path / "other", progress=False)
