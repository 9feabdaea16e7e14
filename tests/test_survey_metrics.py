"""Survey terms: purity and candidates per million at a prevalence, worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from lensfinder.config import EvaluateConfig
from lensfinder.evaluate.metrics import compute_metrics, roc_curve, survey_point
from lensfinder.presentation.report import survey_rows, write_report


def test_survey_point_by_hand():
    # 4 lenses, 6 non-lenses; descending: L L N L N N L N N N
    scores = np.linspace(1.0, 0.1, 10)
    labels = np.array([1, 1, 0, 1, 0, 0, 1, 0, 0, 0])
    curve = roc_curve(labels, scores)
    half = survey_point(curve, 0.5, 1e-3)  # two lenses, no false positive yet
    assert half.completeness == 0.5 and half.fpr == 0 and half.purity == 1.0
    assert half.per_million == pytest.approx(1e6 * 0.5e-3)
    most = survey_point(curve, 0.75, 1e-3)  # third lens after one false positive: FPR 1/6
    flagged = 0.75e-3 + (1 / 6) * (1 - 1e-3)
    assert most.fpr == pytest.approx(1 / 6) and most.false_positives == 1
    assert most.purity == pytest.approx(0.75e-3 / flagged)
    assert most.per_million == pytest.approx(1e6 * flagged)
    rarer = survey_point(curve, 0.75, 1e-4)
    assert rarer.purity < most.purity and rarer.per_million < most.per_million
    assert survey_point(curve, 0.8, 1e-3).completeness == 1.0  # the next reachable level


def test_survey_terms_in_metrics_json_and_report(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(200), np.zeros(2000)].astype(int)
    scores = np.r_[rng.normal(2, 1, 200), rng.normal(0, 1, 2000)]
    cfg = EvaluateConfig(bootstrap=0, prevalences=(1e-3, 1e-4))
    metrics = compute_metrics(labels, scores, cfg)
    survey = metrics["survey"]
    assert set(survey) == {"0.001", "0.0001"} and set(survey["0.001"]) == {"50%", "80%", "90%"}
    purities = [survey["0.001"][k]["purity"] for k in ("50%", "80%", "90%")]
    assert purities == sorted(purities, reverse=True)  # more complete, less pure
    assert survey["0.0001"]["90%"]["purity"] < survey["0.001"]["90%"]["purity"]
    assert len(survey_rows(metrics)) == 6
    page = write_report(tmp_path, "t", metrics, []).read_text()
    assert "At survey prevalence" in page and "candidates per million" in page
