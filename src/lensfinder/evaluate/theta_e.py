"""How well a model with the Einstein-radius head estimates theta_E, on labelled lenses whose
catalogue gives it (``einstein.lens_theta_e``).

- ``mse``: mean squared error in arcsec^2, as the challenge scored Einstein-radius submissions
  (``rmse`` its square root);
- ``bias``: mean of (predicted - true); ``scatter``: their standard deviation;
- ``coverage_68``: the fraction of lenses whose true theta_E lies within the predicted mean
  +- 1 sigma, the 68% interval of the predicted Gaussian (calibrated: ~0.68);
- ``median_sigma``: the typical predicted uncertainty.

Overall, per bin of true theta_E (``EvaluateConfig.einstein_radius_bins``) and over
``EvaluateConfig.theta_e_goal_range``. Pure numpy; JSON-safe (None where undefined).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lensfinder.einstein import INTERVAL_68, lens_theta_e
from lensfinder.evaluate.breakdown import _bin_names

QUANTITY = "theta_E = sqrt(ein_area / pi), arcsec; predicted mean and 1-sigma"


def error_summary(truth: np.ndarray, mean: np.ndarray, sigma: np.ndarray) -> dict[str, Any]:
    """The numbers of the module docstring for aligned arrays (all finite)."""
    n = len(truth)
    if n == 0:
        return {"n_lenses": 0, "mse": None, "rmse": None, "bias": None, "scatter": None,
                "coverage_68": None, "median_sigma": None}  # fmt: skip
    residual = mean - truth
    mse = float(np.mean(residual**2))
    return {
        "n_lenses": n,
        "mse": mse,
        "rmse": float(np.sqrt(mse)),
        "bias": float(residual.mean()),
        "scatter": float(residual.std()),
        "coverage_68": float(np.mean(np.abs(residual) <= INTERVAL_68 * sigma)),
        "median_sigma": float(np.median(sigma)),
    }


def theta_e_metrics(
    labels: Any,
    catalog: dict[str, np.ndarray],
    mean: Any,
    sigma: Any,
    edges: Sequence[float],
    goal_range: tuple[float, float],
) -> tuple[dict[str, Any], np.ndarray]:
    """``(record for metrics.json, true theta_E of the lenses measured, NaN elsewhere)``: the
    estimates against the truth on labelled lenses with a known radius and a finite estimate."""
    truth = lens_theta_e(labels, catalog)
    mean, sigma = np.asarray(mean, np.float64), np.asarray(sigma, np.float64)
    use = np.isfinite(truth) & np.isfinite(mean) & np.isfinite(sigma)
    t, m, s = truth[use], mean[use], sigma[use]
    low, high = goal_range
    in_goal = (t >= low) & (t <= high)
    rows = []
    for lo, hi, name in _bin_names(edges, '"'):
        chosen = (t >= lo) & (t < hi)
        rows.append({"bin": name, **error_summary(t[chosen], m[chosen], s[chosen])})
    record: dict[str, Any] = {
        "quantity": QUANTITY,
        "overall": error_summary(t, m, s),
        "goal_range": [float(low), float(high)],
        "in_goal_range": error_summary(t[in_goal], m[in_goal], s[in_goal]),
        "rows": rows,
        "notes": [],
    }
    n_lenses = int((np.asarray(labels) == 1).sum())
    if not use.any():
        record["notes"].append(
            f"no lens with a known Einstein radius (ein_area) among the {n_lenses} evaluated: "
            "theta_E estimates were made but cannot be checked"
        )
    return record, np.where(use, truth, np.nan)


def report_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's table: overall, the goal range, then each bin."""
    low, high = record["goal_range"]
    return [
        {"bin": "all lenses", **record["overall"]},
        {"bin": f'{low:g}-{high:g}" (goal range)', **record["in_goal_range"]},
        *record["rows"],
    ]
