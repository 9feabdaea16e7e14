"""Per-kind false positives and per-bin completeness: they must add up to the overall numbers."""

from __future__ import annotations

import numpy as np
import pytest

from lensfinder.evaluate.breakdown import (
    breakdown,
    completeness_rows,
    einstein_radius,
    kind_rows,
    operating_points,
)
from lensfinder.evaluate.metrics import auroc


@pytest.fixture(scope="module")
def scored():
    """3,000 objects: lenses score by Einstein radius; rings look like lenses, ellipticals not."""
    rng = np.random.default_rng(0)
    n_lens, n_ell, n_ring = 1000, 1500, 500
    theta = rng.uniform(0.2, 3.0, n_lens)
    lens_scores = np.clip(theta / 3.0 + rng.normal(0, 0.1, n_lens), 0, 1)
    labels = np.r_[np.ones(n_lens), np.zeros(n_ell + n_ring)].astype(np.int8)
    scores = np.r_[lens_scores, rng.uniform(0, 0.4, n_ell), rng.uniform(0.3, 1.0, n_ring)]
    kinds = np.array(["lens"] * n_lens + ["elliptical"] * n_ell + ["ring"] * n_ring)
    ein_area = np.r_[np.pi * theta**2, np.zeros(n_ell + n_ring)]
    return labels, scores, kinds, ein_area


def test_operating_points_meet_their_fpr_and_small_sets_say_so(scored):
    labels, scores, _, _ = scored
    points, notes = operating_points(labels, scores, (1e-2, 1e-3, 1e-4))
    assert [p.target_fpr for p in points] == [1e-2, 1e-3]
    for point in points:
        fpr = np.mean(scores[labels == 0] >= point.threshold)
        assert fpr <= point.target_fpr
        assert point.tpr == pytest.approx(np.mean(scores[labels == 1] >= point.threshold))
    assert notes == ["operating point FPR 1e-04 unresolved: 2000 non-lenses, needs >= 10000"]


def test_kind_rows_add_up_to_the_overall_false_positives(scored):
    labels, scores, kinds, _ = scored
    points, _ = operating_points(labels, scores, (1e-2,))
    rows = kind_rows(labels, scores, kinds, points)
    assert [r["kind"] for r in rows] == ["elliptical", "ring"]  # most common first
    assert [r["n"] for r in rows] == [1500, 500]
    ring, elliptical = rows[1], rows[0]
    assert ring["fp_share@1e-02"] == pytest.approx(1.0)  # ellipticals never score above 0.4
    assert elliptical["fpr@1e-02"] == 0.0
    overall = np.mean(scores[labels == 0] >= points[0].threshold)
    assert ring["fpr@1e-02"] * 500 / 2000 == pytest.approx(overall)
    lens_vs_ring = (kinds == "lens") | (kinds == "ring")
    assert ring["auroc_vs_lenses"] == pytest.approx(
        auroc(labels[lens_vs_ring], scores[lens_vs_ring])
    )
    assert elliptical["auroc_vs_lenses"] > 0.8 > ring["auroc_vs_lenses"]


def test_completeness_bins_cover_every_lens_and_edges_go_up(scored):
    labels, scores, _, ein_area = scored
    points, _ = operating_points(labels, scores, (1e-2,))
    theta = einstein_radius({"ein_area": ein_area})
    rows = completeness_rows(labels, scores, theta, (0.5, 0.8, 1.2, 2.0), points, '"')
    assert [r["bin"] for r in rows] == ['< 0.5"', '0.5-0.8"', '0.8-1.2"', '1.2-2"', '>= 2"']
    assert sum(r["n_lenses"] for r in rows) == 1000
    found = sum(r["n_lenses"] * r["completeness@1e-02"] for r in rows)
    assert found / 1000 == pytest.approx(points[0].tpr)
    values = [r["completeness@1e-02"] for r in rows]
    assert values == sorted(values) and values[0] == 0.0 < values[-1]  # small arcs are missed

    edge = completeness_rows([1, 1, 0], [0.9, 0.9, 0.1], [1.0, np.nan, 0.0], (1.0,), points)
    assert [(r["bin"], r["n_lenses"]) for r in edge] == [("< 1", 0), (">= 1", 1), ("unknown", 1)]
    assert edge[0]["completeness@1e-02"] is None


def test_breakdown_uses_what_the_catalogue_has(scored):
    labels, scores, kinds, ein_area = scored
    mags = np.full(len(labels), 24.5)
    full = breakdown(labels, scores, {"kind": kinds, "ein_area": ein_area, "mag_source": mags},
                     (1e-2, 1e-3), (0.5, 1.0), (23.0, 25.0))  # fmt: skip
    assert set(full) == {"operating_points", "kinds", "einstein_radius", "source_magnitude",
                         "notes"}  # fmt: skip
    assert [r["n_lenses"] for r in full["source_magnitude"]["rows"]] == [0, 1000, 0]
    assert len(full["operating_points"]) == 2 and full["notes"] == []
    plain = breakdown(labels, scores, {}, (1e-2,), (0.5,), (23.0,))
    assert set(plain) == {"operating_points", "notes"}
