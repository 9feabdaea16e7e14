"""The batch-norm study on a tiny random model: eval mode is batch-independent, training-mode BN
is not, and the study measures exactly that."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from lensfinder.config import BnStudyConfig, InputConfig, ModelConfig, PredictConfig
from lensfinder.errors import ConfigError, ModelFileError
from lensfinder.experiments.bn_study import StudyPredictor, batchnorm_study, bn_method
from lensfinder.testing import make_run

TINY_INPUT = InputConfig(size=64)  # the deepest feature map is 2x2: BN works at batch 1
METHOD2_MODEL = ModelConfig(
    arch="test_efficientnet", pretrained=None, bn_reinit=True, bn_inference="batch",
    bn_inference_batch=4,
)  # fmt: skip
SIZES = (1, 4)  # with the eval-mode reference at batch 64: three batch sizes


def _run(run_dir: Path, seed: int, model_cfg: ModelConfig) -> Path:
    return make_run(run_dir, seed, TINY_INPUT, model_cfg, random_bn_stats=True)


@pytest.fixture(scope="module")
def study(tiny_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("bn_study")
    runs = [
        _run(root / "method2", 0, METHOD2_MODEL),
        _run(root / "method1", 1, replace(METHOD2_MODEL, bn_inference="eval")),
    ]
    settings = BnStudyConfig(sizes=SIZES, split="all", bootstrap=50)
    return batchnorm_study(runs, tiny_store, root / "out", settings)


def test_eval_mode_is_batch_independent(study):
    for model in study.models:
        # identical at every batch size, the reference's 64 included
        assert set(model.eval_auroc) == {model.reference["auroc"]}
        assert max(model.eval_change) < 1e-6  # reshuffling companions changes nothing


def test_training_mode_depends_on_the_batch(study):
    for model in study.models:
        assert not model.errors
        # batch 1: each object normalised by its own statistics, far from the running ones...
        assert model.at(model.train_vs_eval, 1) > 1e-3
        # ... yet alone in its batch, so reshuffling cannot change it
        assert model.at(model.train_change, 1) < 1e-6
        # with companions, the score moves when the companions change
        assert model.at(model.train_change, 4) > 1e-4
        # batch 1 has no companions: random, reshuffled and class-sorted batches score alike
        at_one = [model.at(v, 1) for v in (model.train_auroc, model.train_auroc_reshuffled)]
        assert at_one == [model.at(model.sorted_auroc, 1)] * 2


def test_scores_match_a_direct_predictor_pass(study, tiny_store):
    """The study's eval-mode reference is what its predictor gives in eval mode on the whole
    source (``predict_source``, the path ``evaluate`` takes)."""
    from lensfinder.data import open_source
    from lensfinder.evaluate.metrics import auroc

    model = study.models[0]
    source = open_source(tiny_store)
    scores = StudyPredictor(model.run_dir, PredictConfig(), None).predict_source(
        source, progress=False
    )
    assert auroc(source.labels, scores.score) == pytest.approx(model.reference["auroc"])


def test_outputs_and_summary(study):
    out = study.out
    record = json.loads((out / "bn_study.json").read_text())
    assert record["sizes"] == list(SIZES) and record["n_objects"] == 24 and record["n_lenses"] == 12
    names = [m["name"] for m in record["models"]]
    assert names == ["method2", "method1"]
    first = record["models"][0]
    assert first["deployed_batch"] == 4 and first["deployed_metrics"]["n"] == 24
    assert len(first["train_auroc_class_sorted"]) == len(SIZES)
    markdown = (out / "bn_study.md").read_text()
    assert markdown.count("\n| 4 |") == 2  # one table row per model for batch 4
    for plot in study.plots:
        assert plot.stat().st_size > 1000 and plot.read_bytes()[:4] == b"\x89PNG"
    assert study.plots[0].name == "bn_study_auroc.png"
    assert "method2: eval mode" in study.report.read_text()
    text = study.summary()
    assert "method 2 at batch 4: its score for one object changes by" in text
    assert "method 1 (BN statistics reset) + method 2 (batch 4)" in text


def test_bn_method_names():
    assert bn_method({"freeze_backbone": True}) == "frozen ImageNet BN"
    assert bn_method({"bn_reinit": False}) == "ImageNet BN, fine-tuned"
    assert bn_method({"pretrained": None}) == "random-init BN, fine-tuned"
    assert bn_method({"norm": "instance"}) == "instance norm (no BN)"
    both = {"bn_reinit": True, "bn_reinit_affine": True}
    assert bn_method(both) == "method 1 (BN statistics and gamma/beta reset)"


def test_clear_errors(tiny_store, tmp_path, study):
    with pytest.raises(ModelFileError, match="not a run directory"):
        batchnorm_study(tmp_path, tiny_store, tmp_path / "out", BnStudyConfig(sizes=SIZES))
    with pytest.raises(ConfigError, match=">= 1"):
        batchnorm_study(
            study.models[0].run_dir, tiny_store, tmp_path / "out", BnStudyConfig(sizes=(0, 4))
        )
