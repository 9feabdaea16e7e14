"""``evaluate`` end to end: tiny store, tiny random models, every output checked for consistency."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from lensfinder.config import (
    EvaluateConfig,
    PredictConfig,
    SplitConfig,
)
from lensfinder.errors import ConfigError, DataError
from lensfinder.evaluate import evaluate
from lensfinder.evaluate.metrics import auroc, tpr0
from lensfinder.testing import make_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    split = SplitConfig(seed=3, test_fraction=0.5, val_fraction=0.1)
    return [make_run(root / f"run{i}", seed=i, split=split) for i in range(2)]


def read_scores(path: Path) -> dict[str, np.ndarray]:
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    return {key: np.array([float(row[key]) for row in rows]) for key in rows[0]}


def cfg(split: str, **kw) -> EvaluateConfig:
    return EvaluateConfig(predict=PredictConfig(batch_size=8), bootstrap=50, split=split, **kw)


def test_single_model_on_its_test_split(runs, tiny_store, tmp_path):
    from lensfinder.data import open_source
    from lensfinder.data.splits import split_indices

    out = tmp_path / "eval"
    result = evaluate([runs[0]], tiny_store, out, cfg("test"))
    source = open_source(tiny_store)
    test = split_indices(source.ids, SplitConfig(seed=3, test_fraction=0.5, val_fraction=0.1))
    expected_ids = np.sort(np.asarray(source.ids)[test["test"]])

    scores = read_scores(out / "scores.csv")
    assert list(scores) == ["id", "label", "score", "probability"]
    np.testing.assert_array_equal(np.sort(scores["id"]), expected_ids)
    id_to_label = dict(zip(source.ids.tolist(), source.labels.tolist(), strict=True))
    assert [id_to_label[int(i)] for i in scores["id"]] == scores["label"].astype(int).tolist()

    metrics = json.loads((out / "metrics.json").read_text())
    overall = metrics["overall"]
    assert metrics["split"] == "test" and "members" not in metrics
    assert overall["n"] == len(expected_ids) == result.n_evaluated
    assert overall["auroc"] == pytest.approx(auroc(scores["label"], scores["score"]))
    assert overall["tpr0"] == pytest.approx(tpr0(scores["label"], scores["score"]))
    assert result.metrics == overall
    # The temperature is fitted on the model's val split: held out, and not these objects.
    assert metrics["calibration"]["fitted_on"] == f"val split ({len(test['val'])})"
    assert metrics["calibration"]["n_fit"] == len(test["val"])
    for name in ("roc.png", "scores_histogram.png", "report.html"):
        assert (out / name).stat().st_size > 1000
    assert f"{overall['auroc']:.4f}" in (out / "report.html").read_text()
    assert f"AUROC {overall['auroc']:.4f}" in result.summary()


def test_ensemble_on_all_objects_of_a_layout(runs, tiny_layout, tmp_path):
    out = tmp_path / "eval"
    result = evaluate(runs, tiny_layout, out, cfg("all"))
    scores = read_scores(out / "scores.csv")
    assert list(scores) == ["id", "label", "score", "member_0", "member_1", "probability"]
    assert len(scores["id"]) == 24 and scores["label"].sum() == 12
    # The default ensemble average is the mean probability of the members.
    np.testing.assert_allclose(
        scores["score"], (scores["member_0"] + scores["member_1"]) / 2, rtol=1e-6
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ensemble_average"] == "probability"
    members = metrics["members"]
    assert list(members) == ["member 0 (run0)", "member 1 (run1)"]
    assert members["member 1 (run1)"]["auroc"] == pytest.approx(
        auroc(scores["label"], scores["member_1"]), abs=1e-6
    )
    assert result.member_auroc == [m["auroc"] for m in members.values()]
    report = (out / "report.html").read_text()
    assert ">ensemble<" in report and ">member 1 (run1)<" in report


def test_calibration_and_failure_galleries(kinds_store, tmp_path):
    from lensfinder.evaluate.calibration import apply_temperature

    # Logits spread over a few units, so that the scores fill several calibration bins.
    run = make_run(tmp_path / "run", seed=0, head_scale=50.0)
    out = tmp_path / "eval"
    result = evaluate([run], kinds_store, out, cfg("all", failures=3, calibration_bins=5))
    metrics = json.loads((out / "metrics.json").read_text())
    scores = read_scores(out / "scores.csv")
    calibration = metrics["calibration"]
    # Other data than the model's: the temperature is fitted on the evaluated set, and says so.
    assert calibration["fitted_on"].startswith("evaluated set")
    assert calibration["n_fit"] == result.n_evaluated and calibration["bins"] == 5
    # The ECE of the written scores, by hand: 5 equal-width bins, |lens fraction - mean
    # probability| weighted by the bin's objects.
    labels = scores["label"].astype(int)
    for key, column in (("ece_before", "score"), ("ece_after", "probability")):
        probability = scores[column].astype(float)
        which = np.minimum((probability * 5).astype(int), 4)
        gaps = [
            (which == b).sum() * abs(labels[which == b].mean() - probability[which == b].mean())
            for b in range(5)
            if (which == b).any()
        ]
        assert calibration[key] == pytest.approx(sum(gaps) / len(labels), abs=1e-5), key
    before = [row["n"] for row in calibration["reliability_before"]]
    assert sum(before) == result.n_evaluated and sum(n > 0 for n in before) >= 3
    np.testing.assert_allclose(
        scores["probability"],
        apply_temperature(scores["score"], calibration["temperature"]),
        rtol=1e-6,
    )
    failures = metrics["failures"]
    by_id = dict(zip(scores["id"].astype(int), scores["score"], strict=True))
    fp, missed = failures["false_positives"], failures["missed_lenses"]
    assert len(fp) == len(missed) == 3
    label_of = dict(zip(scores["id"].astype(int), scores["label"].astype(int), strict=True))
    nonlens_scores = scores["score"][scores["label"] == 0]
    lens_scores = scores["score"][scores["label"] == 1]
    assert [r["score"] for r in fp] == pytest.approx(sorted(nonlens_scores)[::-1][:3], rel=1e-6)
    assert [r["score"] for r in missed] == pytest.approx(sorted(lens_scores)[:3], rel=1e-6)
    assert all(label_of[r["id"]] == 0 and r["kind"] != "lens" for r in fp)
    assert all(label_of[r["id"]] == 1 and r["theta_E"] > 0 for r in missed)
    assert all(r["score"] == pytest.approx(by_id[r["id"]], rel=1e-6) for r in fp + missed)
    for name in ("reliability.png", "false_positives.png", "missed_lenses.png"):
        assert (out / name).stat().st_size > 1000
        assert out / name in result.plots
    report = (out / "report.html").read_text()
    assert "Worst false positives" in report and "Missed lenses" in report
    assert "ECE after" in report and f"{calibration['temperature']:.4f}" in report
    # Turned off: no galleries, no calibration, no probability column.
    off = tmp_path / "off"
    evaluate([run], kinds_store, off, cfg("all", failures=0, calibrate=False))
    assert list(read_scores(off / "scores.csv")) == ["id", "label", "score"]
    assert not (off / "false_positives.png").exists()
    assert json.loads((off / "metrics.json").read_text())["calibration"] is None


def test_unreadable_object_is_skipped_and_counted(runs, layout_factory, tmp_path):
    from lensfinder.layout import image_path
    from lensfinder.surveys import EUCLID

    layout = layout_factory("broken", n=8, seed=1)
    broken_id, edge_id = 200003, 200005
    image_path(layout, EUCLID.bands[0], broken_id).write_bytes(b"not a FITS file")
    edge = image_path(layout, EUCLID.bands[0], edge_id)  # off a mosaic's footprint: zeros
    with fits.open(edge) as hdus:
        pixels = hdus[0].data.astype(np.float32)
    pixels[:, :50] = 0.0
    fits.PrimaryHDU(pixels).writeto(edge, overwrite=True)
    result = evaluate([runs[0]], layout, tmp_path / "eval", cfg("all"))
    scores = read_scores(tmp_path / "eval" / "scores.csv")
    ids = scores["id"].astype(int).tolist()
    assert broken_id not in ids and edge_id in ids  # zeros are missing pixels, not a reason
    assert len(scores["id"]) == 7 == result.n_evaluated
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    # Dropped either when the layout is listed or when the cutout is read, never silently.
    assert metrics["n_skipped_invalid"] + metrics["n_problems_in_data"] == 1
    # This layout's corrupt file is found when read; the summary names the reason.
    assert metrics["skipped_reasons"] == {"corrupt FITS": 1}
    assert "1 unreadable (corrupt FITS 1)" in result.summary()


def test_clear_errors(runs, layout_factory, tiny_store, tmp_path):
    unlabelled = layout_factory("nocatalog", n=4, catalog=False)
    with pytest.raises(DataError, match=r"no labels|has no label"):
        evaluate([runs[0]], unlabelled, tmp_path / "a", cfg("all"))
    other_split = make_run(tmp_path / "other", seed=5, split=SplitConfig(seed=99))
    with pytest.raises(ConfigError, match="split"):
        evaluate([runs[0], other_split], tiny_store, tmp_path / "b", cfg("test"))
    with pytest.raises(ConfigError, match="at least one model"):
        evaluate([], tiny_store, tmp_path / "c", cfg("test"))


def test_unlabelled_objects_are_dropped_and_counted():
    from lensfinder.data.selection import labelled_only

    labels = np.array([1, -1, 0, -1, 1], dtype=np.int8)
    indices, kept, n_unlabelled = labelled_only(labels, np.array([0, 1, 2, 3]), Path("d"), "test")
    np.testing.assert_array_equal(indices, [0, 2])
    np.testing.assert_array_equal(kept, [1, 0])
    assert n_unlabelled == 2
    with pytest.raises(DataError, match="test split holds no objects"):
        labelled_only(labels, np.array([], dtype=np.int64), Path("d"), "test")


def test_kinds_and_bins_in_metrics_report_and_plot(runs, kinds_store, tmp_path):
    from lensfinder.testing import TINY_KINDS

    out = tmp_path / "eval"
    evaluate([runs[0]], kinds_store, out, cfg("all", operating_fprs=(0.1, 1e-3)))
    metrics = json.loads((out / "metrics.json").read_text())
    details = metrics["breakdown"]
    (point,) = details["operating_points"]  # 20 non-lenses resolve FPR 0.1, not 1e-3
    assert point["target_fpr"] == 0.1
    assert any("1e-03 unresolved" in note for note in details["notes"])
    kinds = {row["kind"]: row for row in details["kinds"]}
    assert set(kinds) == set(TINY_KINDS) and sum(r["n"] for r in kinds.values()) == 20
    shares = [r["fp_share@1e-01"] for r in kinds.values() if r["fp_share@1e-01"] is not None]
    assert not shares or sum(shares) == pytest.approx(1.0)
    for name in ("einstein_radius", "source_magnitude"):
        assert sum(r["n_lenses"] for r in details[name]["rows"]) == 20
    report = (out / "report.html").read_text()
    assert "Non-lenses by kind" in report and "Lens completeness by Einstein radius" in report
    assert ">ring<" in report and "completeness.png" not in report  # embedded, not linked
    assert (out / "completeness.png").stat().st_size > 1000
    assert report.count("<img") == 6  # roc, histogram, completeness, reliability, 2 galleries


def test_auto_split_scores_all_of_other_data_and_the_test_split_of_training_data(
    kinds_store, tiny_store, tiny_layout, tmp_path
):
    split = SplitConfig(seed=3, test_fraction=0.5, val_fraction=0.1)
    run = make_run(tmp_path / "run", seed=0, split=split, data=tiny_store)
    own = evaluate([run], tiny_store, tmp_path / "own", cfg("auto"))
    assert own.split == "test" and own.n_evaluated < 24 and "training data" in own.split_reason
    packed_from = evaluate([run], tiny_layout, tmp_path / "layout", cfg("auto"))
    assert packed_from.split == "test"  # the layout the store was packed from is the same data
    other = evaluate([run], kinds_store, tmp_path / "other", cfg("auto"))
    assert other.split == "all" and other.n_evaluated == 40
    assert "every object is unseen" in other.summary()
    metrics = json.loads((tmp_path / "other" / "metrics.json").read_text())
    assert metrics["split"] == "all" and "not the models' training data" in metrics["split_reason"]
    assert "every object is unseen" in (tmp_path / "other" / "report.html").read_text()
    unknown = evaluate([make_run(tmp_path / "old", 0, split=split)], kinds_store, tmp_path / "u")
    assert unknown.split == "test"  # no record of the training data: the safe choice
