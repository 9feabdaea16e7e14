"""The Einstein radius theta_E: from the catalogue's ``ein_area``, and how a predicted one is
combined and shown. One home for the conversion, so training targets, evaluation truth and the
completeness tables agree.

``theta_E = sqrt(ein_area / pi)``: ``ein_area`` is the area inside the tangential critical curve
(the "Einstein area"), and a circle of that area has radius theta_E. Its unit differs by origin:

- the challenge-2 catalogue (``image_catalog2.0train.csv``, made with GLAMER, which works in
  radians) gives it in **steradians** (rad^2): public challenge entrants convert it as
  ``sqrt(ein_area / pi) * 206265`` arcsec (radians to arcsec), and its galaxy-scale lenses then
  come out at ~0.5-3", as Euclid lenses should; read as arcsec^2 they would be ~1e-5";
- lensfinder's own simulator and painter (``simulate/quantities.py``, ``simulate/inject.py``)
  write ``pi * theta_E**2`` in **arcsec^2**.

The two are ~1e11 apart, so each value tells its own unit: an area below ``STERADIAN_LIMIT``
(1e-6, i.e. theta_E < 116" if in steradians, < 0.0006" if in arcsec^2: no lens is either) is
read as steradians, anything larger as arcsec^2. Deciding per value keeps a mix of both (``train
--data challenge --data simulated``) right.

The challenge scored Einstein-radius estimates by their mean squared error in arcsec^2.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

EIN_AREA = "ein_area"  # the catalogue column
ARCSEC_PER_RADIAN = 180.0 / math.pi * 3600.0  # 206264.8...
STERADIAN_LIMIT = 1e-6  # ein_area values below this are steradians, above arcsec^2 (see above)
THETA_E = "theta_e"  # catalogue / scores column names of a model's estimate and its 1-sigma
THETA_E_SIGMA = "theta_e_sigma"
INTERVAL_68 = 1.0  # the 68% interval of a Gaussian is mean +- 1 sigma


def theta_e_arcsec(ein_area: Any) -> np.ndarray:
    """theta_E in arcsec from ``ein_area`` values (steradians or arcsec^2, told apart per value,
    see the module docstring); NaN where the area is missing or negative."""
    area = np.asarray(ein_area, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        area = np.where(area >= 0, area, np.nan)
        in_sr = area < STERADIAN_LIMIT
        radius = np.sqrt(area / np.pi)
    return np.where(in_sr, radius * ARCSEC_PER_RADIAN, radius)


def catalog_theta_e(catalog: Mapping[str, Any]) -> np.ndarray | None:
    """theta_E (arcsec) of every row of a catalogue, or None when it has no ``ein_area``."""
    if EIN_AREA not in catalog:
        return None
    return theta_e_arcsec(catalog[EIN_AREA])


def lens_theta_e(labels: Any, catalog: Mapping[str, Any]) -> np.ndarray:
    """The Einstein-radius target per row: theta_E (arcsec) of labelled lenses with a positive,
    finite ``ein_area``; NaN for every other row (non-lenses, unlabelled, unknown radius), which
    the regression loss and the metrics leave out."""
    labels = np.asarray(labels)
    theta = catalog_theta_e(catalog)
    if theta is None:
        return np.full(len(labels), np.nan)
    usable = (labels == 1) & np.isfinite(theta) & (theta > 0)
    return np.where(usable, theta, np.nan)


def mixture(mean: np.ndarray, sigma: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of an equal-weight mixture of Gaussians along ``axis`` (the
    D4 views of TTA, or an ensemble's members): ``mu = mean(mu_i)``, ``sigma^2 = mean(sigma_i^2
    + mu_i^2) - mu^2``, i.e. the members' mean variance plus the spread of their means. NaN
    entries (members without the head) are left out; all-NaN gives NaN."""
    mean, sigma = np.asarray(mean, np.float64), np.asarray(sigma, np.float64)
    known = np.isfinite(mean) & np.isfinite(sigma)
    count = known.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = np.where(known, mean, 0.0).sum(axis=axis) / count
        second = np.where(known, sigma**2 + mean**2, 0.0).sum(axis=axis) / count
        variance = np.maximum(second - mu**2, 0.0)
    return mu, np.sqrt(variance)


def format_theta_e(theta: Any, sigma: Any) -> str:
    """``θE 1.23" ± 0.10"`` for pages; empty when there is no finite estimate."""
    if theta is None or not np.isfinite(theta):
        return ""
    if sigma is None or not np.isfinite(sigma):
        return f'θE {float(theta):.2f}"'
    return f'θE {float(theta):.2f}" ± {float(sigma):.2f}"'
