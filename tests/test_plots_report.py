"""Plots are real PNG files; the HTML report is self-contained and shows the numbers."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest

from lensfinder.config import EvaluateConfig
from lensfinder.evaluate.metrics import compute_metrics, roc_curve
from lensfinder.presentation.plots import line_plot, roc_plot, score_histograms
from lensfinder.presentation.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def scored():
    rng = np.random.default_rng(0)
    labels = np.array([1] * 60 + [0] * 240, dtype=np.int8)
    ensemble = np.concatenate([rng.beta(5, 2, 60), rng.beta(2, 5, 240)])
    members = [np.clip(ensemble + rng.normal(0, 0.1, 300), 0, 1) for _ in range(2)]
    return labels, ensemble, members


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plots_write_png_files(tmp_path, scored):
    labels, ensemble, members = scored
    curves = {"ensemble": roc_curve(labels, ensemble)}
    curves |= {f"member {i}": roc_curve(labels, m) for i, m in enumerate(members)}
    paths = [
        roc_plot(curves, tmp_path / "roc.png"),
        score_histograms(labels, ensemble, tmp_path / "hist.png"),
        score_histograms(labels, ensemble * 7 - 3, tmp_path / "hist_logits.png"),
        line_plot(
            [1, 2, 4, 8],
            {"auroc": [0.6, 0.7, 0.8, 0.85]},
            tmp_path / "line.png",
            "batch size",
            "AUROC",
            log_x=True,
        ),
    ]
    for path in paths:
        width, height = png_size(path.read_bytes())
        assert width > 300 and height > 200
    # The two-panel ROC is wider than tall; no temporary files are left behind.
    width, height = png_size(paths[0].read_bytes())
    assert width > 1.8 * height
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)


def test_line_plot_rejects_mismatched_series(tmp_path):
    with pytest.raises(ValueError, match="3 values for 2"):
        line_plot([1, 2], {"a": [1, 2, 3]}, tmp_path / "x.png", "x", "y")


def test_report_embeds_plots_and_shows_metrics(tmp_path, scored):
    labels, ensemble, members = scored
    cfg = EvaluateConfig(bootstrap=50)
    overall = compute_metrics(labels, ensemble, cfg)
    evaluation = {
        "data": "tiny.zarr",
        "split": "test",
        "ensemble_average": "probability",
        "overall": overall,
        "members": {f"member {i}": compute_metrics(labels, m, cfg) for i, m in enumerate(members)},
    }
    roc = roc_plot({"ensemble": roc_curve(labels, ensemble)}, tmp_path / "roc.png")
    hist = score_histograms(labels, ensemble, tmp_path / "hist.png")
    path = write_report(
        tmp_path / "out",
        "Test <evaluation>",
        evaluation,
        [roc, hist],
        tables=[("Extra", [{"batch size": 8, "auroc": 0.91234}])],
        notes="trained on sims & tested on sims",
    )
    assert path == tmp_path / "out" / "report.html"
    text = path.read_text()
    # Self-contained: every image is an embedded PNG equal to the file; nothing external.
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(embedded) == 2
    assert base64.b64decode(embedded[0]) == roc.read_bytes()
    assert all(base64.b64decode(e)[:8] == PNG_MAGIC for e in embedded)
    assert "<script" not in text and "http://" not in text and "https://" not in text
    # The numbers: ensemble first, then members, values as formatted in the table.
    assert f"<td>{overall['auroc']:.4f}</td>" in text
    assert f"<td>{overall['tpr0']:.4f}</td>" in text
    low, high = overall["auroc_ci"]
    assert f"{low:.4f} – {high:.4f}" in text
    assert text.index(">ensemble<") < text.index(">member 0<") < text.index(">member 1<")
    member = evaluation["members"]["member 1"]
    assert f"<td>{member['auroc']:.4f}</td>" in text
    assert "unresolved" in text  # 240 non-lenses cannot resolve FPR 1e-3
    assert "<td>0.9123</td>" in text and "tiny.zarr" in text and "probability" in text
    # Text is escaped, not interpreted.
    assert "Test &lt;evaluation&gt;" in text and "sims &amp; tested" in text


def test_report_accepts_a_single_metrics_dict(tmp_path, scored):
    labels, ensemble, _ = scored
    metrics = compute_metrics(labels, ensemble, EvaluateConfig(bootstrap=0))
    text = write_report(tmp_path, "one", metrics, []).read_text()
    assert ">model<" in text and f"<td>{metrics['auroc']:.4f}</td>" in text
    with pytest.raises(ValueError, match="no metrics"):
        write_report(tmp_path, "bad", {"data": "x"}, [])
