"""The newcomer path: the whole pipeline runs end to end (tiny) and says where things are."""

import csv
import json

import pytest
from sklearn.metrics import roc_auc_score

from lensfinder.demo import QUICK, run_demo

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.mark.slow
def test_quick_demo_runs_every_stage(tmp_path, one_thread):
    result = run_demo(tmp_path / "demo", quick=True)
    for name, path in result.paths.items():
        assert path.exists(), name
    metrics = json.loads((tmp_path / "demo" / "evaluation" / "metrics.json").read_text())
    overall = metrics.get("overall", metrics)
    assert result.auroc == pytest.approx(overall["auroc"])
    with (tmp_path / "demo" / "evaluation" / "scores.csv").open(newline="") as handle:
        records = list(csv.DictReader(handle))
    labels, scores = [int(r["label"]) for r in records], [float(r["score"]) for r in records]
    assert result.auroc == pytest.approx(roc_auc_score(labels, scores))
    # The scan rate is the field's cutouts over the scan's scoring time, as the scan recorded.
    scanned = json.loads((result.paths["candidates"].parent / "summary.json").read_text())
    cutouts = scanned["n_scored"] + scanned["n_skipped"]
    assert cutouts == QUICK.n_field
    assert result.scan_rate == pytest.approx(cutouts / scanned["scan_seconds"], rel=1e-2)
    assert result.scan_rate == pytest.approx(scanned["rate_cutouts_per_s"], abs=1e-3)
    html = result.paths["gallery"].read_text()
    assert html.count("<img") >= 8  # the quick demo shows its top 8
    text = result.summary()
    assert f"{result.auroc:.3f}" in text and str(result.paths["gallery"]) in text
    assert f"{result.scan_rate:.1f} cutouts/s" in text
    # every stage resumes: a second run reuses finished work and agrees
    again = run_demo(tmp_path / "demo", quick=True)
    assert again.auroc == pytest.approx(result.auroc)
    assert again.stage_seconds["train"] < result.stage_seconds["train"]
