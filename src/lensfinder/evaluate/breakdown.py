"""Where a lens finder fails: false positives per kind of non-lens, completeness per bin of lens.

One AUROC hides what matters for a survey: which look-alikes (rings, spirals, mergers) pass the
cut, and which lenses (small Einstein radii, faint sources) are missed. Everything here is
measured at operating points, score thresholds set where the overall FPR is a target (1e-2,
1e-3), taken from ``metrics.tpr_at_fpr``, so the per-kind and per-bin numbers add up to the
overall FPR and TPR there. An object counts as selected when its score is >= the threshold.
Pure numpy, like ``metrics``; rows are JSON-safe dicts (None where a value is undefined).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lensfinder.einstein import catalog_theta_e
from lensfinder.evaluate.metrics import auroc, check_labels_scores, fpr_key, tpr_at_fpr
from lensfinder.layout import SOURCE_MAGNITUDE

EINSTEIN_RADIUS = "theta_E = sqrt(ein_area / pi), arcsec"


@dataclass(frozen=True)
class OperatingPoint:
    """A score threshold chosen so that the overall FPR is at most ``target_fpr``."""

    target_fpr: float
    threshold: float  # +inf when no threshold reaches the target but "select nothing"
    tpr: float

    @property
    def key(self) -> str:
        return fpr_key(self.target_fpr)

    def to_dict(self) -> dict[str, Any]:
        finite = bool(np.isfinite(self.threshold))
        return {
            "target_fpr": self.target_fpr,
            "threshold": float(self.threshold) if finite else None,
            "tpr": self.tpr,
        }


def operating_points(
    labels: Any, scores: Any, fprs: Sequence[float]
) -> tuple[list[OperatingPoint], list[str]]:
    """The resolvable operating points, and a note for each target the set is too small for."""
    points, notes = [], []
    for target in fprs:
        value = tpr_at_fpr(labels, scores, target)
        if value.resolved:
            points.append(OperatingPoint(target, value.threshold, value.tpr))
        else:
            notes.append(
                f"operating point FPR {fpr_key(target)} unresolved: {value.n_nonlenses} "
                f"non-lenses, needs >= {value.nonlenses_needed}"
            )
    return points, notes


def kind_rows(
    labels: Any, scores: Any, kinds: Any, points: Sequence[OperatingPoint]
) -> list[dict[str, Any]]:
    """One row per kind of non-lens (most common first): its count, the fraction of it selected
    at each operating point (its own FPR), its share of all false positives there, and the AUROC
    of all lenses against that kind alone."""
    labels, scores = check_labels_scores(labels, scores)
    kinds = np.asarray(kinds).astype(str)
    nonlens = labels == 0
    lens_scores = scores[labels == 1]
    names, counts = np.unique(kinds[nonlens], return_counts=True)
    selected = [scores >= point.threshold for point in points]
    false_positives = [int((nonlens & s).sum()) for s in selected]
    rows = []
    for name in names[np.argsort(-counts, kind="stable")]:
        chosen = nonlens & (kinds == name)
        row: dict[str, Any] = {"kind": str(name) or "(none)", "n": int(chosen.sum())}
        for point, picked, all_fp in zip(points, selected, false_positives, strict=True):
            mine = int((chosen & picked).sum())
            row[f"fpr@{point.key}"] = mine / row["n"]
            row[f"fp_share@{point.key}"] = mine / all_fp if all_fp else None
        pair = np.concatenate([np.ones(len(lens_scores)), np.zeros(row["n"])])
        row["auroc_vs_lenses"] = auroc(pair, np.concatenate([lens_scores, scores[chosen]]))
        rows.append(row)
    return rows


def _bin_names(edges: Sequence[float], unit: str) -> list[tuple[float, float, str]]:
    """``(low, high, name)`` for the bins between and beyond ``edges`` (ascending)."""
    bounds = [-np.inf, *edges, np.inf]
    bins = []
    for low, high in itertools.pairwise(bounds):
        if np.isinf(low):
            name = f"< {high:g}{unit}"
        elif np.isinf(high):
            name = f">= {low:g}{unit}"
        else:
            name = f"{low:g}-{high:g}{unit}"
        bins.append((float(low), float(high), name))
    return bins


def completeness_rows(
    labels: Any,
    scores: Any,
    values: Any,
    edges: Sequence[float],
    points: Sequence[OperatingPoint],
    unit: str = "",
) -> list[dict[str, Any]]:
    """Lenses binned by ``values`` (bins ``[low, high)`` between ``edges``): the count and the
    fraction selected at each operating point; lenses without a value form a last bin."""
    labels, scores = check_labels_scores(labels, scores)
    if list(edges) != sorted(edges):
        raise ValueError(f"bin edges must be ascending, got {list(edges)}")
    lens = labels == 1
    values = np.asarray(values, dtype=np.float64)[lens]
    scores = scores[lens]
    known = np.isfinite(values)
    groups = [(name, known & (values >= low) & (values < high))
              for low, high, name in _bin_names(edges, unit)]  # fmt: skip
    if not known.all():
        groups.append(("unknown", ~known))
    rows = []
    for name, chosen in groups:
        row: dict[str, Any] = {"bin": name, "n_lenses": int(chosen.sum())}
        for point in points:
            found = scores[chosen] >= point.threshold
            row[f"completeness@{point.key}"] = float(found.mean()) if len(found) else None
        rows.append(row)
    return rows


def einstein_radius(catalog: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """theta_E in arcsec from the catalogue's ``ein_area`` (the challenge's steradians or the
    simulator's arcsec^2: ``lensfinder.einstein``); None without it."""
    return catalog_theta_e(catalog)


def breakdown(
    labels: Any,
    scores: Any,
    catalog: Mapping[str, np.ndarray],
    fprs: Sequence[float],
    einstein_edges: Sequence[float],
    magnitude_edges: Sequence[float],
) -> dict[str, Any]:
    """Every table this data allows, for metrics.json: per-kind rows when the catalogue has a
    ``kind`` column, completeness by Einstein radius and by source magnitude when it has
    ``ein_area`` / ``mag_source``. ``catalog`` columns are aligned with ``labels``."""
    points, notes = operating_points(labels, scores, fprs)
    result: dict[str, Any] = {"operating_points": [p.to_dict() for p in points]}
    if "kind" in catalog:
        result["kinds"] = kind_rows(labels, scores, catalog["kind"], points)
    theta = einstein_radius(catalog)
    if theta is not None:
        rows = completeness_rows(labels, scores, theta, einstein_edges, points, '"')
        result["einstein_radius"] = {"quantity": EINSTEIN_RADIUS, "rows": rows}
    if SOURCE_MAGNITUDE in catalog:
        rows = completeness_rows(labels, scores, catalog[SOURCE_MAGNITUDE], magnitude_edges, points)
        result["source_magnitude"] = {"quantity": SOURCE_MAGNITUDE, "rows": rows}
    if not points and len(result) > 1:
        notes.append("no operating point resolvable: completeness and FP shares need more data")
    result["notes"] = notes
    return result


def report_tables(result: Mapping[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """``(title, rows)`` for the HTML report, from what ``breakdown`` returned."""
    points = ", ".join(
        f"FPR {fpr_key(p['target_fpr'])}: score >= "
        + ("none" if p["threshold"] is None else f"{p['threshold']:.4g}")
        for p in result.get("operating_points", [])
    )
    where = f" (operating points: {points})" if points else ""
    tables = []
    if "kinds" in result:
        tables.append((f"Non-lenses by kind{where}", result["kinds"]))
    for key, what in (("einstein_radius", "Einstein radius"), ("source_magnitude", "source mag")):
        if key in result:
            tables.append((f"Lens completeness by {what}{where}", result[key]["rows"]))
    return tables
