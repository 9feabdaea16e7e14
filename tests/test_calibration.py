"""Temperature scaling and calibration error: over-confident scores get T > 1 and a lower ECE."""

from __future__ import annotations

import numpy as np
import pytest

from lensfinder.evaluate.calibration import (
    apply_temperature,
    calibrate,
    expected_calibration_error,
    fit_temperature,
    logits,
    reliability,
)
from lensfinder.evaluate.metrics import auroc


def synthetic(sharpen: float, n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from true probabilities, and scores whose logits are ``sharpen`` times the
    true ones (> 1: over-confident, < 1: under-confident)."""
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0.03, 0.97, n)
    labels = (rng.uniform(size=n) < truth).astype(np.int8)
    return labels, apply_temperature(truth, 1.0 / sharpen)


def test_over_confident_scores_get_a_temperature_above_one_and_a_lower_ece():
    labels, scores = synthetic(sharpen=3.0)
    temperature = fit_temperature(labels, scores)
    assert temperature == pytest.approx(3.0, rel=0.15)
    before = expected_calibration_error(labels, scores, 10)
    after = expected_calibration_error(labels, apply_temperature(scores, temperature), 10)
    assert before > 0.08 and after < 0.03


def test_under_confident_scores_get_a_temperature_below_one():
    labels, scores = synthetic(sharpen=0.4, seed=1)
    assert fit_temperature(labels, scores) < 0.6


def test_temperature_keeps_the_ranking_and_extreme_scores_finite():
    labels, scores = synthetic(sharpen=2.0, n=300, seed=2)
    scores[:3] = [0.0, 1.0, 1.0]
    calibrated = apply_temperature(scores, 2.5)
    assert np.isfinite(logits(scores)).all() and np.isfinite(calibrated).all()
    assert auroc(labels, calibrated) == pytest.approx(auroc(labels, scores))


def test_reliability_bins_and_the_calibrate_record():
    labels = np.array([0, 0, 1, 1, 1, 0])
    probs = np.array([0.05, 0.15, 0.95, 0.99, 0.55, 0.5])
    rows = reliability(labels, probs, 2)
    assert [r["n"] for r in rows] == [2, 4]
    assert rows[1]["lens_fraction"] == pytest.approx(0.75)
    assert rows[1]["mean_probability"] == pytest.approx((0.95 + 0.99 + 0.55 + 0.5) / 4)
    # ECE = (2 * |0 - 0.1| + 4 * |0.75 - 0.7475|) / 6
    assert expected_calibration_error(labels, probs, 2) == pytest.approx((0.2 + 0.01) / 6)
    # Bins whose lens fraction is their mean probability are perfectly calibrated: ECE 0.
    calibrated = np.array([0.2] * 5 + [0.8] * 5)
    perfect = expected_calibration_error([1, 0, 0, 0, 0, 1, 1, 1, 1, 0], calibrated, 2)
    assert perfect == pytest.approx(0.0, abs=1e-12)
    record = calibrate(labels, probs, labels, probs, 2, "here")
    assert record["fitted_on"] == "here" and record["n_fit"] == 6 and record["bins"] == 2
    assert record["temperature"] == pytest.approx(fit_temperature(labels, probs))
    after = apply_temperature(probs, record["temperature"])
    assert record["ece_after"] == pytest.approx(expected_calibration_error(labels, after, 2))
    assert record["reliability_after"] == reliability(labels, after, 2)
