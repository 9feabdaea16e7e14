"""Ensembles in one command: members with their own seeds and one split, used as one model."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lensfinder.cli import app
from lensfinder.config import (
    EvaluateConfig,
    InputConfig,
    ModelConfig,
    PredictConfig,
    SplitConfig,
    TrainConfig,
    load_config,
    save_config,
)
from lensfinder.errors import ConfigError, ModelFileError
from lensfinder.evaluate import evaluate
from lensfinder.models.checkpoint import load_model
from lensfinder.predict import Predictor, export_onnx, synthetic_cutouts
from lensfinder.train.members import EnsembleResult, train_models

CONFIG = TrainConfig(
    input=InputConfig(size=32),
    model=ModelConfig(arch="test_efficientnet", pretrained=None),
    split=SplitConfig(seed=4, test_fraction=0.3, val_fraction=0.3),
    max_epochs=1,
    max_train_samples=16,
    batch_size=8,
    batch_size_max=8,
    seed=7,
    members=2,
)


@pytest.fixture(scope="module")
def ensemble(kinds_store, tmp_path_factory) -> tuple[Path, EnsembleResult]:
    out = tmp_path_factory.mktemp("ensemble") / "ens"
    result = train_models(CONFIG, kinds_store, out, progress=False)
    assert isinstance(result, EnsembleResult)
    return out, result


def test_members_have_their_own_seed_and_share_the_split(ensemble):
    out, result = ensemble
    record = json.loads((out / "ensemble.json").read_text())
    assert record["members"] == ["member-0", "member-1"] and record["averaging"] == "probability"
    configs = [load_config(TrainConfig, out / m / "config.yaml") for m in record["members"]]
    assert [c.seed for c in configs] == [7, 8] and configs[0].split == configs[1].split
    (first, _), (second, _) = (load_model(out / m) for m in record["members"])
    assert any(
        not np.array_equal(a.numpy(), b.numpy())
        for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    )
    assert "2 members" in result.summary()


def test_a_rerun_skips_finished_members_and_the_cli_takes_members(ensemble, kinds_store, tmp_path):
    out, _ = ensemble
    weights = out / "member-1" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    config_file = tmp_path / "c.yaml"
    save_config(replace(CONFIG, members=1), config_file)  # --members overrides the file
    args = ["train", "--data", str(kinds_store), "--out", str(out), "--config", str(config_file)]
    result = CliRunner().invoke(app, [*args, "--members", "2"])
    assert result.exit_code == 0, result.output
    assert result.output.count("already trained") == 2 and "ensemble:" in result.output
    assert weights.stat().st_mtime_ns == before
    with pytest.raises(ConfigError, match="holds an ensemble"):
        train_models(replace(CONFIG, members=1), kinds_store, out, progress=False)
    with pytest.raises(ConfigError, match="holds a single trained model"):
        train_models(CONFIG, kinds_store, out / "member-0", progress=False)


def test_the_ensemble_directory_is_one_model_everywhere(ensemble, kinds_store, tmp_path):
    out, _ = ensemble
    members = [out / "member-0", out / "member-1"]
    cfg = EvaluateConfig(predict=PredictConfig(batch_size=8), bootstrap=20)
    as_one = evaluate([out], kinds_store, tmp_path / "one", cfg)
    as_list = evaluate(members, kinds_store, tmp_path / "list", cfg)
    assert as_one.split == "test"  # its own training data: the shared held-out split
    assert as_one.metrics["auroc"] == as_list.metrics["auroc"]
    assert (tmp_path / "one" / "scores.csv").read_text() == (
        tmp_path / "list" / "scores.csv"
    ).read_text()
    assert len(as_one.member_auroc) == 2

    vis, nisp = synthetic_cutouts(5, seed=2)
    torch_scores = Predictor([out]).predict_arrays(vis, nisp)
    assert len(torch_scores.logits) == 2
    exported = export_onnx(out, tmp_path / "ens.onnx")
    onnx = Predictor([exported.path], PredictConfig(backend="onnx")).predict_arrays(vis, nisp)
    np.testing.assert_allclose(onnx.score, torch_scores.score, atol=1e-5)


def test_broken_ensemble_record_is_a_clear_error(tmp_path):
    (tmp_path / "ensemble.json").write_text(json.dumps({"members": ["member-0"]}))
    with pytest.raises(ModelFileError, match="member run directory missing"):
        Predictor([tmp_path])
    (tmp_path / "member-0").mkdir()
    with pytest.raises(ModelFileError, match=r"an ensemble directory .* pass one member"):
        load_model(tmp_path)  # steps that take a single model say so
