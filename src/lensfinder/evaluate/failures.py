"""Failure galleries: the non-lenses scored highest and the lenses scored lowest, as pictures.

Tables say how many rings pass the cut; pictures say why. Each gallery is a colour-composite
mosaic (``presentation.composite``, as the candidate gallery draws them) titled with the catalogue's
quantities: kind, Einstein radius sqrt(ein_area / pi), source magnitude and score.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lensfinder.data.cutouts import CutoutSource
from lensfinder.evaluate.breakdown import SOURCE_MAGNITUDE, einstein_radius
from lensfinder.presentation.composite import colour_composite, resize_square, save_grid

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


def _title(row: Mapping[str, Any]) -> str:
    parts = [str(row["kind"])] if "kind" in row else []
    if row.get("theta_E") is not None:
        parts.append(f'θE {row["theta_E"]:.2f}"')
    if row.get(SOURCE_MAGNITUDE) is not None:
        parts.append(f"m {row[SOURCE_MAGNITUDE]:.1f}")
    return f"{row['id']}  score {row['score']:.3f}\n" + " ".join(parts)


def failure_mosaic(
    source: CutoutSource,
    source_indices: np.ndarray,
    rows: list[dict[str, Any]],
    path: Path,
    columns: int = 6,
    softening: float = 3.0,
    pixels: int = 128,
) -> Path | None:
    """A PNG mosaic of these objects (their rows give the titles); None when none is readable."""
    if len(source_indices) == 0:
        return None
    cutouts = source.read(np.asarray(source_indices, dtype=np.int64))
    images, titles = [], []
    for j, row in enumerate(rows):
        if cutouts.valid[j]:
            image = colour_composite(cutouts.vis[j], cutouts.nisp[j], softening)
            images.append(resize_square(image, pixels))
            titles.append(_title(row))
    if not images:
        return None
    return save_grid(images, titles, path, columns=columns)
