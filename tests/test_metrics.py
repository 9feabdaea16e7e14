"""Metrics against hand-computed cases, the Mann-Whitney estimate and scikit-learn."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from lensfinder.config import EvaluateConfig
from lensfinder.errors import DataError
from lensfinder.evaluate.metrics import (
    auroc,
    auroc_bootstrap_ci,
    compute_metrics,
    purity_at_top,
    roc_curve,
    tpr0,
    tpr10,
    tpr_at_fpr,
)


def mann_whitney(labels: np.ndarray, scores: np.ndarray) -> float:
    """The definition itself, pair by pair: P(lens > non-lens) + 1/2 P(tie)."""
    lens, nonlens = scores[labels == 1][:, None], scores[labels == 0][None, :]
    return float(((lens > nonlens) + 0.5 * (lens == nonlens)).mean())


def test_roc_curve_by_hand_merges_ties():
    labels = [1, 0, 1, 1, 0, 0]
    scores = [0.9, 0.8, 0.8, 0.5, 0.3, 0.1]
    curve = roc_curve(labels, scores)
    # Thresholds: inf, 0.9, 0.8 (lens + non-lens together), 0.5, 0.3, 0.1.
    np.testing.assert_allclose(curve.thresholds, [np.inf, 0.9, 0.8, 0.5, 0.3, 0.1])
    np.testing.assert_array_equal(curve.true_positives, [0, 1, 2, 3, 3, 3])
    np.testing.assert_array_equal(curve.false_positives, [0, 0, 1, 1, 2, 3])
    np.testing.assert_allclose(curve.tpr, [0, 1 / 3, 2 / 3, 1, 1, 1])
    np.testing.assert_allclose(curve.fpr, [0, 0, 1 / 3, 1 / 3, 2 / 3, 1])


def test_auroc_by_hand():
    # Pairs (lens, non-lens): 9 in all; 0.8 lens vs 0.8 non-lens ties (1/2); lens 0.5 < 0.8.
    labels = [1, 0, 1, 1, 0, 0]
    scores = [0.9, 0.8, 0.8, 0.5, 0.3, 0.1]
    assert auroc(labels, scores) == pytest.approx((9 - 1 - 0.5) / 9)
    assert auroc([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert auroc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert auroc([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]) == 0.5


@pytest.mark.parametrize("seed", range(4))
def test_auroc_matches_mann_whitney_and_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 300
    labels = (rng.random(n) < 0.3).astype(np.int8)
    # Rounded scores: many ties, also across classes.
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)
    value = auroc(labels, scores)
    assert value == pytest.approx(mann_whitney(labels, scores), abs=1e-12)
    assert value == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    curve = roc_curve(labels, scores)
    assert curve.area() == pytest.approx(value, abs=1e-12)
    # Same points as sklearn's curve without its dropping of collinear points.
    sk_fpr, sk_tpr, _ = sk_roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(curve.fpr, sk_fpr)
    np.testing.assert_allclose(curve.tpr, sk_tpr)


def test_auroc_ignores_input_order():
    rng = np.random.default_rng(5)
    labels = np.array([0, 1] * 50)
    scores = np.round(rng.random(100), 1)
    order = rng.permutation(100)
    assert auroc(labels, scores) == auroc(labels[order], scores[order])
    assert purity_at_top(labels, scores, 17) == purity_at_top(labels[order], scores[order], 17)


def test_tpr0_and_tpr10_by_hand():
    # Ranked: L L L N L L N N ... lenses before the first non-lens: 3 of 6.
    labels = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    scores = np.linspace(1.0, 0.0, len(labels))
    assert tpr0(labels, scores) == pytest.approx(3 / 6)
    # Fewer than ten false positives: up to and including the 9th non-lens, the last lens
    # comes after the 11th non-lens, so 5 of 6.
    assert tpr10(labels, scores) == pytest.approx(5 / 6)


def test_tpr0_tie_at_top_between_lens_and_nonlens_is_zero():
    labels = [1, 0, 1, 1, 0]
    scores = [0.99, 0.99, 0.9, 0.8, 0.1]
    assert tpr0(labels, scores) == 0.0
    # Breaking the tie in the lens' favour gives 1/3: the tie rule is what makes it 0.
    assert tpr0(labels, [0.991, 0.99, 0.9, 0.8, 0.1]) == pytest.approx(1 / 3)
    # Lenses tied among themselves only are fine.
    assert tpr0([1, 1, 0, 1], [0.9, 0.9, 0.5, 0.1]) == pytest.approx(2 / 3)


def test_tpr10_tie_group_crossing_ten_false_positives_is_not_reached():
    # 9 non-lenses on top, then a group of 2 lenses tied with 1 non-lens (the 10th), then a lens.
    labels = [0] * 9 + [1, 1, 0] + [1]
    scores = [1.0] * 9 + [0.5, 0.5, 0.5] + [0.1]
    assert tpr10(labels, scores) == 0.0
    labels = [0] * 9 + [1, 1] + [0, 1]
    scores = [1.0] * 9 + [0.5, 0.5] + [0.4, 0.1]
    assert tpr10(labels, scores) == pytest.approx(2 / 3)


def test_tpr_at_fpr_resolved_and_unresolved():
    rng = np.random.default_rng(1)
    labels = np.array([1] * 50 + [0] * 200)
    scores = np.concatenate([rng.uniform(0.5, 1.0, 50), rng.uniform(0.0, 0.6, 200)])
    result = tpr_at_fpr(labels, scores, 1e-2)  # 200 non-lenses: 2 false positives allowed
    assert result.resolved
    nonlens_sorted = np.sort(scores[labels == 0])[::-1]
    expected = np.mean(scores[labels == 1] > nonlens_sorted[2])  # above the 3rd non-lens
    assert result.tpr == pytest.approx(expected)
    assert result.threshold > nonlens_sorted[2]
    low = tpr_at_fpr(labels, scores, 1e-3)  # 200 non-lenses cannot resolve 1e-3
    assert not low.resolved and np.isnan(low.tpr) and low.nonlenses_needed == 1000


def test_tpr_at_fpr_exact_boundary_counts():
    # 100 non-lenses, target 1e-2: exactly one false positive is allowed.
    labels = np.array([1, 0, 1] + [0] * 99 + [1])
    scores = np.linspace(1.0, 0.0, len(labels))
    assert tpr_at_fpr(labels, scores, 1e-2).tpr == pytest.approx(2 / 3)


def test_purity_at_top_with_boundary_tie():
    labels = [1, 1, 0, 1, 0, 0]
    scores = [0.9, 0.8, 0.7, 0.7, 0.7, 0.1]
    assert purity_at_top(labels, scores, 2) == 1.0
    # Top 3: two sure lenses + 1 place from a tie group of 3 holding 1 lens -> (2 + 1/3) / 3.
    assert purity_at_top(labels, scores, 3) == pytest.approx((2 + 1 / 3) / 3)
    assert purity_at_top(labels, scores, 5) == pytest.approx(3 / 5)
    with pytest.raises(DataError, match="top 7"):
        purity_at_top(labels, scores, 7)


def test_bootstrap_ci_contains_estimate_and_narrows_with_more_data():
    rng = np.random.default_rng(2)

    def sample(n):
        labels = (rng.random(n) < 0.5).astype(np.int8)
        return labels, rng.normal(labels * 1.0, 1.0)

    small_labels, small_scores = sample(100)
    big_labels, big_scores = sample(3000)
    small = auroc_bootstrap_ci(small_labels, small_scores, n=300, seed=0)
    big = auroc_bootstrap_ci(big_labels, big_scores, n=300, seed=0)
    assert small[0] < auroc(small_labels, small_scores) < small[1]
    assert big[0] < auroc(big_labels, big_scores) < big[1]
    assert big[1] - big[0] < 0.5 * (small[1] - small[0])
    # Reproducible with the seed, and a wider level gives a wider interval.
    assert auroc_bootstrap_ci(small_labels, small_scores, n=300, seed=0) == small
    wide = auroc_bootstrap_ci(small_labels, small_scores, n=300, seed=0, level=0.99)
    assert wide[0] <= small[0] and wide[1] >= small[1]


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        ([1, 1, 1], [0.1, 0.2, 0.3], "all 3 objects are lenses"),
        ([0, 0], [0.1, 0.2], "all 2 objects are non-lenses"),
        ([1, 0, 1], [0.1, 0.2], "lengths must match"),
        ([1, 0], [0.1, float("nan")], "NaN"),
        ([-1, -1], [0.1, 0.2], "no labels"),
        ([1, 0, 2], [0.1, 0.2, 0.3], "0 \\(non-lens\\) or 1"),
        ([], [], "no objects"),
    ],
)
def test_bad_input_is_a_clear_error(labels, scores, message):
    for metric in (auroc, tpr0, tpr10, roc_curve):
        with pytest.raises(DataError, match=message):
            metric(labels, scores)
    with pytest.raises(DataError, match=message):
        compute_metrics(labels, scores, EvaluateConfig())


def test_compute_metrics_is_json_safe_and_flags_unresolved():
    rng = np.random.default_rng(3)
    labels = np.array([1] * 40 + [0] * 160)
    scores = np.concatenate([rng.beta(5, 2, 40), rng.beta(2, 5, 160)])
    cfg = EvaluateConfig(bootstrap=200, purity_top_n=(10, 50, 1000))
    result = compute_metrics(labels, scores, cfg)
    text = json.dumps(result, allow_nan=False)  # strict JSON: no NaN anywhere
    assert json.loads(text) == result
    assert result["n"] == 200 and result["n_lenses"] == 40 and result["n_nonlenses"] == 160
    assert result["auroc"] == pytest.approx(roc_auc_score(labels, scores))
    low, high = result["auroc_ci"]
    assert low < result["auroc"] < high
    assert result["tpr0"] == tpr0(labels, scores) and result["tpr10"] == tpr10(labels, scores)
    # 160 non-lenses resolve FPR 1e-2 only.
    assert result["tpr_at_fpr"]["1e-02"] == tpr_at_fpr(labels, scores, 1e-2).tpr
    assert result["tpr_at_fpr"]["1e-03"] is None and result["tpr_at_fpr"]["1e-04"] is None
    assert result["purity_top"]["10"] == purity_at_top(labels, scores, 10)
    assert result["purity_top"]["1000"] is None
    assert any("1e-03" in note for note in result["notes"])
    assert any("top 1000" in note for note in result["notes"])
    assert compute_metrics(labels, scores, EvaluateConfig(bootstrap=0))["auroc_ci"] is None
