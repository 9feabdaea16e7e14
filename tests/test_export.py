"""ONNX export and the onnx backend: same logits as torch, input config inside the file, caching."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lensfinder import __version__
from lensfinder.config import InputConfig, ModelConfig, PredictConfig, to_dict
from lensfinder.errors import ConfigError, ModelFileError
from lensfinder.predict import Predictor, export_onnx, synthetic_cutouts
from lensfinder.predict.export import build_onnx, example_input, read_metadata
from lensfinder.predict.onnx_backend import OnnxRunner
from lensfinder.testing import TINY_BN_BATCH_MODEL, TINY_INPUT, TINY_MODEL, make_run

ONNX = PredictConfig(backend="onnx", batch_size=4)


def scaled_diff(a: np.ndarray, b: np.ndarray) -> float:
    """The export check's measure: |a - b| / max(1, |b|)."""
    return float((np.abs(a - b) / np.maximum(1.0, np.abs(b))).max())


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """ONNX files that cannot live beside their model go here, not into the user's cache."""
    monkeypatch.setenv("LENSFINDER_CACHE", str(tmp_path / "onnx-cache"))


@pytest.fixture(scope="module")
def cutouts() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_cutouts(9, seed=11)


def test_export_lite0_is_checked_and_carries_its_input_config(tmp_path):
    from lensfinder.models.checkpoint import load_model

    input_cfg = InputConfig(size=64)
    model_cfg = ModelConfig(arch="tf_efficientnet_lite0", pretrained=None)
    run = make_run(tmp_path / "lite0", input_cfg=input_cfg, model_cfg=model_cfg)
    result = export_onnx(run, tmp_path / "out" / "lite0.onnx")

    assert result.path == tmp_path / "out" / "lite0.onnx" and result.path.is_file()
    assert result.max_scaled_diff is not None and result.max_scaled_diff <= 1e-4
    assert str(result.path) in result.summary() and "max |logit diff|" in result.summary()
    props = read_metadata(result.path)
    assert props["lensfinder_version"] == __version__
    assert json.loads(props["lensfinder_input"]) == to_dict(input_cfg)
    assert json.loads(props["lensfinder_meta"])["model"]["arch"] == "tf_efficientnet_lite0"

    # Dynamic batch axis: a batch of 5 (traced with 2) gives torch's logits.
    x = example_input(input_cfg, n=5, seed=4)
    model, _ = load_model(run)
    with torch.inference_mode():
        expected = model(x).double().numpy()
    runner = OnnxRunner(result.path, threads=1)
    assert runner.session.get_inputs()[0].shape[0] == "batch"
    assert scaled_diff(runner(x), expected) <= 1e-4


@pytest.mark.parametrize("average", ["probability", "logit"])
def test_onnx_backend_gives_torch_scores_and_caches_the_export(tmp_path, cutouts, average):
    runs = [make_run(tmp_path / f"run{seed}", seed=seed) for seed in (0, 1)]
    cfg = replace(ONNX, tta=True, ensemble_average=average)
    onnx = Predictor(runs, cfg, onnx_threads=1).predict_arrays(*cutouts)
    torch_scores = Predictor(runs, replace(cfg, backend="torch")).predict_arrays(*cutouts)
    assert scaled_diff(onnx.logits, torch_scores.logits) <= 1e-4
    np.testing.assert_allclose(onnx.score, torch_scores.score, atol=1e-5)

    cache = runs[0] / "model.onnx"
    assert cache.is_file()
    stamp = cache.stat().st_mtime_ns
    Predictor(runs[:1], ONNX)
    assert cache.stat().st_mtime_ns == stamp  # reused, not exported again


def test_stale_or_unwritable_cache_is_never_used(tmp_path, cutouts):
    run = make_run(tmp_path / "run", seed=0)
    Predictor([run], ONNX)
    make_run(run, seed=7)  # retrained in the same directory: the cached export is stale
    with pytest.warns(UserWarning, match="not made from this model"):
        onnx = Predictor([run], ONNX).predict_arrays(*cutouts)
    expected = Predictor([run]).predict_arrays(*cutouts)
    assert scaled_diff(onnx.logits, expected.logits) <= 1e-4

    other = make_run(tmp_path / "other", seed=3)
    (other / "model.onnx").mkdir()  # something in the way of the cache file
    with pytest.warns(UserWarning, match="cannot cache"):
        onnx = Predictor([other], ONNX).predict_arrays(*cutouts)
    expected = Predictor([other]).predict_arrays(*cutouts)
    assert scaled_diff(onnx.logits, expected.logits) <= 1e-4


def test_predictor_runs_an_exported_file_alone(tmp_path, cutouts):
    run = make_run(tmp_path / "run", seed=2)
    path = export_onnx(run, tmp_path / "deploy" / "lens.onnx").path
    predictor = Predictor([path], ONNX)
    assert predictor.members[0].input == TINY_INPUT and predictor.members[0].name == "lens"
    expected = Predictor([run]).predict_arrays(*cutouts)
    assert scaled_diff(predictor.predict_arrays(*cutouts).logits, expected.logits) <= 1e-4
    with pytest.raises(ConfigError, match="needs backend 'onnx'"):
        Predictor([path])


def test_two_branch_model_exports_with_two_inputs(tmp_path, cutouts):
    input_cfg = replace(TINY_INPUT, layout="two_branch")
    run = make_run(tmp_path / "two", input_cfg=input_cfg)
    result = export_onnx(run, tmp_path / "two.onnx")
    assert result.input_names == ("vis", "nisp") and result.max_scaled_diff <= 1e-4
    onnx = Predictor([run], ONNX).predict_arrays(*cutouts)
    assert scaled_diff(onnx.logits, Predictor([run]).predict_arrays(*cutouts).logits) <= 1e-4


def test_bn_method_2_models_are_refused_unless_allowed(tmp_path):
    run = make_run(tmp_path / "bn", model_cfg=TINY_BN_BATCH_MODEL)
    with pytest.raises(ModelFileError, match="BN method 2"):
        export_onnx(run, tmp_path / "bn.onnx")
    assert not (tmp_path / "bn.onnx").exists()
    result = export_onnx(run, tmp_path / "bn.onnx", allow_bn_batch=True)
    assert "eval-mode BN" in result.summary()
    assert read_metadata(result.path)["lensfinder_bn_inference"] == "eval"
    with pytest.raises(ConfigError, match="BN method 2"):
        Predictor([run], ONNX)


class TraceFrozen(torch.nn.Module):
    """Python state is frozen into the traced graph, so ONNX and eager disagree afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x.mean(dim=(1, 2, 3)) * self.scale + float(self.calls)


def test_a_failed_check_is_an_error():
    meta = {"input": to_dict(TINY_INPUT), "model": to_dict(TINY_MODEL)}
    with pytest.raises(ModelFileError, match="differ from torch"):
        build_onnx(TraceFrozen(), meta, "frozen")
    _, unchecked = build_onnx(TraceFrozen(), meta, "frozen", check=False)
    assert unchecked.max_abs_diff is None and "not checked" in unchecked.summary()


def test_foreign_onnx_file_is_a_clear_error(tmp_path):
    path = Path(tmp_path / "foreign.onnx")
    path.write_bytes(b"not an onnx model")
    with pytest.raises(ModelFileError, match=r"foreign\.onnx"):
        Predictor([path], ONNX)
