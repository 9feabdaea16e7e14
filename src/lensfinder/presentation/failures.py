"""Failure galleries drawn: a colour-composite mosaic of the worst false positives or the
missed lenses, each titled with its catalogue quantities (rows from ``evaluate.failures``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lensfinder.data.cutouts import CutoutSource
from lensfinder.layout import SOURCE_MAGNITUDE
from lensfinder.presentation.composite import colour_composite, resize_square, save_grid


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
