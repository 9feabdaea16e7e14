"""Failure galleries: which non-lenses scored highest and which lenses scored lowest.

Tables say how many rings pass the cut; pictures say why. This module chooses the failures and
their rows (kind, Einstein radius sqrt(ein_area / pi), source magnitude, score);
``presentation.failures`` draws them as a colour-composite mosaic.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lensfinder.evaluate.breakdown import einstein_radius
from lensfinder.layout import SOURCE_MAGNITUDE

FALSE_POSITIVES = "false_positives"  # the highest-scoring non-lenses
MISSED = "missed_lenses"  # the lowest-scoring lenses
TITLES = {
    FALSE_POSITIVES: "Worst false positives (highest-scoring non-lenses)",
    MISSED: "Missed lenses (lowest-scoring lenses)",
}


def worst(labels: np.ndarray, scores: np.ndarray, which: str, n: int) -> np.ndarray:
    """Positions of the ``n`` worst failures of one kind, worst first (ties by position)."""
    if which == FALSE_POSITIVES:
        chosen = np.flatnonzero(labels == 0)
        order = np.argsort(-scores[chosen], kind="stable")
    elif which == MISSED:
        chosen = np.flatnonzero(labels == 1)
        order = np.argsort(scores[chosen], kind="stable")
    else:
        raise ValueError(f"unknown failure kind {which!r}")
    return chosen[order[:n]]


def failure_rows(
    positions: np.ndarray, ids: np.ndarray, scores: np.ndarray, catalog: Mapping[str, np.ndarray]
) -> list[dict[str, Any]]:
    """One JSON-safe row per failure: id, score and the catalogue quantities it has."""
    radius = einstein_radius(catalog)
    rows = []
    for pos in positions:
        row: dict[str, Any] = {"id": int(ids[pos]), "score": float(scores[pos])}
        if "kind" in catalog:
            row["kind"] = str(catalog["kind"][pos]) or "lens"
        if radius is not None:
            row["theta_E"] = float(radius[pos]) if np.isfinite(radius[pos]) else None
        if SOURCE_MAGNITUDE in catalog:
            mag = float(catalog[SOURCE_MAGNITUDE][pos])
            row[SOURCE_MAGNITUDE] = mag if np.isfinite(mag) else None
        rows.append(row)
    return rows
