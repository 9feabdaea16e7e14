"""Calibration: whether a score of 0.9 means nine lenses in ten, and one temperature to make it so.

A network trained with cross-entropy is usually over-confident (scores pile up at 0 and 1).
Temperature scaling (Guo et al. 2017) divides the logit by one number T fitted by maximum
likelihood on held-out labelled objects: T > 1 softens over-confident scores, and as the map is
monotonic the ranking (AUROC, TPR0, every threshold's completeness) is unchanged. The probability
is calibrated for the fitting set's lens fraction; at a survey's prevalence only the prior odds
change (``metrics.survey_point`` handles that). Pure numpy and scipy, like ``metrics``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lensfinder.evaluate.metrics import check_labels_scores

_EPS = 1e-7  # scores are clipped this far from 0 and 1 so their logits stay finite
_LOG_T_BOUNDS = (-5.0, 5.0)  # T within [e^-5, e^5]: anything beyond is a degenerate fit


def logits(scores: np.ndarray) -> np.ndarray:
    """The logit of probabilities clipped to [1e-7, 1 - 1e-7]."""
    p = np.clip(np.asarray(scores, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def apply_temperature(scores: Any, temperature: float) -> np.ndarray:
    """Probabilities ``sigmoid(logit(score) / T)``."""
    return 1.0 / (1.0 + np.exp(-logits(scores) / temperature))


def fit_temperature(labels: Any, scores: Any) -> float:
    """The T minimising the mean binary cross-entropy of ``sigmoid(logit / T)`` on this set."""
    from scipy.optimize import minimize_scalar

    labels, scores = check_labels_scores(labels, scores)
    z, y = logits(scores), labels.astype(np.float64)

    def nll(log_t: float) -> float:
        a = z / np.exp(log_t)
        # log(1 + e^-a) for lenses and log(1 + e^a) for non-lenses, overflow-safe.
        return float(np.mean(np.logaddexp(0.0, -a) * y + np.logaddexp(0.0, a) * (1.0 - y)))

    fit = minimize_scalar(nll, bounds=_LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-5})
    return float(np.exp(fit.x))


def reliability(labels: Any, probabilities: Any, bins: int) -> list[dict[str, Any]]:
    """Per equal-width probability bin: its edges, objects, mean probability and lens fraction
    (None for an empty bin)."""
    labels, probabilities = check_labels_scores(labels, probabilities)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, probabilities, side="right") - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        rows.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "n": n,
                "mean_probability": float(probabilities[inside].mean()) if n else None,
                "lens_fraction": float(labels[inside].mean()) if n else None,
            }
        )
    return rows


def expected_calibration_error(labels: Any, probabilities: Any, bins: int) -> float:
    """ECE: the objects-weighted mean of |lens fraction - mean probability| over the bins."""
    rows = reliability(labels, probabilities, bins)
    total = sum(row["n"] for row in rows)
    return float(
        sum(
            row["n"] * abs(row["lens_fraction"] - row["mean_probability"])
            for row in rows
            if row["n"]
        )
        / total
    )


def calibrate(
    fit_labels: Any, fit_scores: Any, labels: Any, scores: Any, bins: int, fitted_on: str
) -> dict[str, Any]:
    """Fit T on ``fit_*`` and measure the evaluated set's calibration before and after:
    a JSON-safe record (temperature, ECE before/after, reliability bins both ways)."""
    temperature = fit_temperature(fit_labels, fit_scores)
    calibrated = apply_temperature(scores, temperature)
    return {
        "temperature": temperature,
        "fitted_on": fitted_on,
        "n_fit": len(np.asarray(fit_labels)),
        "bins": bins,
        "ece_before": expected_calibration_error(labels, scores, bins),
        "ece_after": expected_calibration_error(labels, calibrated, bins),
        "reliability_before": reliability(labels, scores, bins),
        "reliability_after": reliability(labels, calibrated, bins),
    }
