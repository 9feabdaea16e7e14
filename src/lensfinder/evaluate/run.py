"""``lensfinder evaluate``: score a labelled set with one model or an ensemble, honestly.

On the data the models were trained on (told by model.json's data record), the test split is
recomputed from the first model's recorded split settings (a hash of the object ID), so a model
is evaluated on objects it never trained on; on other data every object is unseen and all are
scored (split "auto", the default). Writes to ``out``: ``scores.csv`` (id, label, score, one
column per member), ``metrics.json`` (overall, per member for an ensemble, and the breakdown by
kind of non-lens and by lens Einstein radius / source magnitude when the catalogue allows),
``roc.png``, ``scores_histogram.png``, ``completeness.png``, ``reliability.png`` (calibration
before and after a temperature fitted on the model's val split), ``false_positives.png`` and
``missed_lenses.png`` (the worst failures as colour composites) and ``report.html``. Models
with the Einstein-radius head add ``theta_e``/``theta_e_sigma`` columns to ``scores.csv``, a
``theta_e`` section to ``metrics.json`` (``evaluate.theta_e``) and ``theta_e.png``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lensfinder.config import EvaluateConfig
from lensfinder.data import open_source
from lensfinder.data.cutouts import CutoutSource
from lensfinder.data.selection import labelled_only, resolve_split, select_indices
from lensfinder.einstein import THETA_E, THETA_E_SIGMA
from lensfinder.ensemble import expand_models
from lensfinder.errors import ConfigError, DataError
from lensfinder.evaluate.breakdown import (
    EINSTEIN_RADIUS,
    SOURCE_MAGNITUDE,
    breakdown,
    report_tables,
)
from lensfinder.evaluate.calibration import apply_temperature, calibrate
from lensfinder.evaluate.failures import (
    FALSE_POSITIVES,
    MISSED,
    TITLES,
    failure_rows,
    worst,
)
from lensfinder.evaluate.metrics import compute_metrics, fpr_key, roc_curve
from lensfinder.evaluate.theta_e import report_rows, theta_e_metrics
from lensfinder.predict import Predictor
from lensfinder.presentation.failures import failure_mosaic
from lensfinder.presentation.plots import (
    completeness_plot,
    reliability_plot,
    roc_plot,
    score_histograms,
    theta_e_plot,
)
from lensfinder.presentation.report import write_report
from lensfinder.safety import EVALUATION, writing_output
from lensfinder.utils import atomic_path, atomic_write_text

SCORES_NAME = "scores.csv"
METRICS_NAME = "metrics.json"
ROC_NAME = "roc.png"
HISTOGRAM_NAME = "scores_histogram.png"
COMPLETENESS_NAME = "completeness.png"
RELIABILITY_NAME = "reliability.png"
THETA_E_NAME = "theta_e.png"
BREAKDOWN_COLUMNS = ("kind", "ein_area", SOURCE_MAGNITUDE)  # catalogue columns breakdown reads


@dataclass
class EvaluationResult:
    out: Path
    scores_csv: Path
    metrics_json: Path
    report: Path
    plots: list[Path]
    metrics: dict[str, Any]  # the overall (ensemble) metrics
    n_evaluated: int
    n_skipped_invalid: int
    n_skipped_unlabelled: int
    split: str
    member_auroc: list[float] = field(default_factory=list)
    split_reason: str = ""
    theta_e: dict[str, Any] | None = None  # metrics.json's theta_E section (models with the head)

    def summary(self) -> str:
        m = self.metrics
        ci = m.get("auroc_ci")
        ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        lines = [
            f"evaluated {self.n_evaluated} objects ({m['n_lenses']} lenses), split {self.split}"
            + (f" ({self.split_reason})" if self.split_reason else ""),
            f"AUROC {m['auroc']:.4f}{ci_text}  TPR0 {m['tpr0']:.3f}  TPR10 {m['tpr10']:.3f}",
        ]
        if self.member_auroc:
            lines.append("members' AUROC: " + ", ".join(f"{a:.4f}" for a in self.member_auroc))
        if self.theta_e and self.theta_e["overall"]["n_lenses"]:
            t = self.theta_e["overall"]
            lines.append(
                f'theta_E on {t["n_lenses"]} lenses: RMS error {t["rmse"]:.3f}", bias '
                f'{t["bias"]:+.3f}", 68% interval coverage {t["coverage_68"]:.2f}'
            )
        skipped = []
        if self.n_skipped_invalid:
            skipped.append(f"{self.n_skipped_invalid} unreadable")
        if self.n_skipped_unlabelled:
            skipped.append(f"{self.n_skipped_unlabelled} unlabelled")
        if skipped:
            lines.append("skipped: " + ", ".join(skipped))
        lines.append(f"report: {self.report}")
        return "\n".join(lines)


def _member_names(run_dirs: Sequence[Path]) -> list[str]:
    """Short, unique display names: the run directory's name, or its path if names repeat."""
    names = [Path(p).name or str(p) for p in run_dirs]
    if len(set(names)) < len(names):
        names = [str(p) for p in run_dirs]
    return [f"member {i} ({name})" for i, name in enumerate(names)]


def _write_scores_csv(
    path: Path,
    ids: np.ndarray,
    labels: np.ndarray,
    score: np.ndarray,
    members: np.ndarray | None,
    probability: np.ndarray | None = None,
    theta_e: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """One row per evaluated object; 9 significant digits keep float32 scores exact. The
    calibrated ``probability`` (when fitted) and theta_E and its sigma (models with the head)
    come last, so older readers' columns stay put."""
    header = ["id", "label", "score"]
    n_members = 0 if members is None else len(members)
    header += [f"member_{i}" for i in range(n_members)]
    header += [] if probability is None else ["probability"]
    header += [] if theta_e is None else [THETA_E, THETA_E_SIGMA]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in range(len(ids)):
            values = [int(ids[row]), int(labels[row]), f"{score[row]:.9g}"]
            values += [f"{members[m, row]:.9g}" for m in range(n_members)]  # type: ignore[index]
            values += [] if probability is None else [f"{probability[row]:.9g}"]
            values += [] if theta_e is None else [f"{a[row]:.9g}" for a in theta_e]
            writer.writerow(values)


def _split_note(split: str) -> str:
    """What the chosen objects can and cannot tell, for the report."""
    if split == "all":
        return (
            "Every object of the data set is evaluated: honest only if the model never trained "
            "on any of them (an independent set)."
        )
    if split == "test":
        return (
            "The test split is recomputed from the model's recorded split settings: objects the "
            "model never trained on, but from the same simulations. Scores on independent data "
            "(another simulator, real images) are the honest measure of a lens finder."
        )
    return (
        f"The {split} split was used in training ("
        + ("fitting the weights" if split == "train" else "choosing the epoch and learning rate")
        + "): these numbers are optimistic."
    )


def evaluate(
    models: Sequence[Path], data: Path, out: Path, cfg: EvaluateConfig | None = None
) -> EvaluationResult:
    """Score ``data`` (its ``cfg.split``) with the model(s) and write scores, metrics, plots and
    the HTML report to ``out``."""
    cfg = cfg or EvaluateConfig()
    run_dirs = expand_models(models)  # an ensemble directory is its members
    if not run_dirs:
        raise ConfigError("evaluate needs at least one model run directory (--model)")
    with writing_output(out, EVALUATION, "evaluate", [data, *models, *run_dirs]) as out_dir:
        return _evaluate_locked(run_dirs, Path(data), out_dir, cfg)


def _evaluate_locked(
    run_dirs: list[Path], data: Path, out: Path, cfg: EvaluateConfig
) -> EvaluationResult:
    """``evaluate`` once it holds the lock of ``out``."""
    source = open_source(data)
    predictor = Predictor(run_dirs, cfg.predict)  # loads and checks every member (or ONNX file)
    metas = [member.meta for member in predictor.members]
    split, split_reason = resolve_split(cfg.split, source, metas)
    indices = select_indices(np.asarray(source.ids), split, metas, run_dirs)
    indices, labels, n_unlabelled = labelled_only(np.asarray(source.labels), indices, data, split)

    scores = predictor.predict_source(source, indices)  # shows its own progress bar
    score = np.asarray(scores.score, dtype=np.float64)
    members = np.asarray(scores.member_scores, dtype=np.float64).reshape(-1, len(indices))
    # Unreadable cutouts are skipped, never ranked as a lens or a non-lens.
    valid = np.asarray(scores.valid, dtype=bool) & np.isfinite(score)
    all_ids = np.asarray(source.ids)[indices]
    ids, labels, score, members = all_ids[valid], labels[valid], score[valid], members[:, valid]
    ensemble = len(run_dirs) > 1
    catalog = {
        name: np.asarray(values)[indices][valid]
        for name, values in source.catalog.items()
        if name in BREAKDOWN_COLUMNS
    }
    try:
        overall = compute_metrics(labels, score, cfg)
        member_metrics = [compute_metrics(labels, m, cfg) for m in members] if ensemble else []
        details = breakdown(
            labels,
            score,
            catalog,
            cfg.operating_fprs,
            cfg.einstein_radius_bins,
            cfg.source_mag_bins,
        )
    except DataError as exc:
        raise DataError(f"{data} ({split} split, {len(labels)} objects): {exc}") from None

    calibration = None
    if cfg.calibrate:
        fit_labels, fit_scores, fitted_on = _calibration_set(
            predictor, source, split, metas, run_dirs, labels, score
        )
        calibration = calibrate(
            fit_labels, fit_scores, labels, score, cfg.calibration_bins, fitted_on
        )
    theta_e, theta_e_record = None, None
    if scores.theta_e is not None and scores.theta_e_sigma is not None:
        theta_e = (np.asarray(scores.theta_e)[valid], np.asarray(scores.theta_e_sigma)[valid])
        theta_e_record, truth = theta_e_metrics(
            labels, catalog, *theta_e, cfg.einstein_radius_bins, cfg.theta_e_goal_range
        )
    failures = {
        which: worst(labels, score, which, cfg.failures)
        for which in ((FALSE_POSITIVES, MISSED) if cfg.failures > 0 else ())
    }
    failure_tables = {
        which: failure_rows(positions, ids, score, catalog) for which, positions in failures.items()
    }
    names = _member_names(run_dirs)
    evaluation: dict[str, Any] = {
        "data": str(data),
        "split": split,
        "split_reason": split_reason,
        "models": [str(p) for p in run_dirs],
        "ensemble_average": cfg.predict.ensemble_average if ensemble else None,
        "tta": cfg.predict.tta,
        "backend": cfg.predict.backend,
        "n_evaluated": len(labels),
        "n_skipped_invalid": int((~valid).sum()),
        "skipped_reasons": dict(scores.skipped),
        "skipped_ids": [int(i) for i in all_ids[~valid]],
        "n_skipped_unlabelled": n_unlabelled,
        "n_problems_in_data": len(getattr(source, "problems", ())),
        "overall_name": "ensemble" if ensemble else "model",
        "predictor": predictor.settings(),
        "overall": overall,
        "breakdown": details,
        "calibration": calibration,
        "failures": failure_tables,
    }
    if theta_e_record is not None:
        evaluation["theta_e"] = theta_e_record
    if ensemble:
        evaluation["members"] = dict(zip(names, member_metrics, strict=True))

    scores_csv = out / SCORES_NAME
    probability = (
        None if calibration is None else apply_temperature(score, calibration["temperature"])
    )
    _write_scores_csv(
        scores_csv, ids, labels, score, members if ensemble else None, probability, theta_e
    )
    metrics_json = out / METRICS_NAME
    atomic_write_text(metrics_json, json.dumps(evaluation, indent=2, allow_nan=False) + "\n")

    curves = {evaluation["overall_name"]: roc_curve(labels, score)}
    if ensemble:
        curves |= {name: roc_curve(labels, m) for name, m in zip(names, members, strict=True)}
    plots = [
        roc_plot(curves, out / ROC_NAME, title=f"ROC, {data.name} ({split})"),
        score_histograms(labels, score, out / HISTOGRAM_NAME, title="Scores by class"),
    ]
    panels = _completeness_panels(details)
    if panels:
        plots.append(completeness_plot(panels, out / COMPLETENESS_NAME))
    tables = report_tables(details)
    if theta_e is not None and theta_e_record is not None:
        tables.insert(0, ("Einstein radius estimate, on lenses", report_rows(theta_e_record)))
        measured = np.isfinite(truth)
        if measured.any():
            estimate = theta_e[0][measured], theta_e[1][measured]
            plots.append(theta_e_plot(truth[measured], *estimate, out / THETA_E_NAME))
    if calibration is not None:
        curves_by_name = {"scores": calibration["reliability_before"],
                          f"after T = {calibration['temperature']:.3g}":
                          calibration["reliability_after"]}  # fmt: skip
        plots.append(reliability_plot(curves_by_name, out / RELIABILITY_NAME, title="Reliability"))
        tables.insert(0, ("Calibration", [_calibration_row(calibration)]))
    galleries = []
    for which, positions in failures.items():
        rows = failure_tables[which]
        image = failure_mosaic(source, indices[valid][positions], rows, out / f"{which}.png")
        galleries.append((TITLES[which], image, rows))
    title = f"lensfinder evaluation: {data.name}"
    notes = "\n".join([f"Split {split}" + (f" ({split_reason})." if split_reason else "."),
                       _split_note(split), *details["notes"]])  # fmt: skip
    report = write_report(
        out, title, evaluation, plots, tables=tables, notes=notes, galleries=galleries
    )
    plots += [image for _, image, _ in galleries if image is not None]
    return EvaluationResult(
        out=out,
        scores_csv=scores_csv,
        metrics_json=metrics_json,
        report=report,
        plots=plots,
        metrics=overall,
        n_evaluated=len(labels),
        n_skipped_invalid=evaluation["n_skipped_invalid"],
        n_skipped_unlabelled=n_unlabelled,
        split=split,
        member_auroc=[m["auroc"] for m in member_metrics],
        split_reason=split_reason,
        theta_e=theta_e_record,
    )


def _completeness_panels(
    details: dict[str, Any],
) -> dict[str, tuple[list[str], dict[str, list[float | None]]]]:
    """The completeness plot's panels (x label -> bin names, one line per operating point)."""
    panels = {}
    for key, xlabel in (("einstein_radius", EINSTEIN_RADIUS), ("source_magnitude", "mag_source")):
        rows = details.get(key, {}).get("rows", [])
        if not rows or not details["operating_points"]:
            continue
        bins = [f"{row['bin']} ({row['n_lenses']})" for row in rows]
        series = {}
        for point in details["operating_points"]:
            fpr = fpr_key(point["target_fpr"])
            series[f"at FPR {fpr}"] = [row[f"completeness@{fpr}"] for row in rows]
        panels[xlabel] = (bins, series)
    return panels


def _calibration_set(
    predictor: Predictor,
    source: CutoutSource,
    split: str,
    metas: Sequence[dict[str, Any]],
    run_dirs: Sequence[Path],
    labels: np.ndarray,
    score: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, str]:
    """``(labels, scores, description)`` to fit the temperature on: the models' val split when
    the test split of their training data is evaluated (held out from these objects, and not
    used to fit weights), else the evaluated set itself, which makes the ECE after optimistic."""
    if split == "test":
        val = select_indices(np.asarray(source.ids), "val", metas, run_dirs)
        val = val[np.asarray(source.labels)[val] != -1]
        val_labels = np.asarray(source.labels)[val]
        if len(np.unique(val_labels)) == 2:
            scored = predictor.predict_source(source, val, progress=False)
            ok = np.asarray(scored.valid, dtype=bool) & np.isfinite(scored.score)
            if len(np.unique(val_labels[ok])) == 2:
                return val_labels[ok], np.asarray(scored.score)[ok], f"val split ({ok.sum()})"
    return labels, score, "evaluated set (no usable val split): in-sample, ECE after optimistic"


def _calibration_row(calibration: dict[str, Any]) -> dict[str, Any]:
    """The report's one-line summary of a ``calibrate`` record."""
    return {
        "temperature": calibration["temperature"],
        "fitted on": calibration["fitted_on"],
        "objects fitted": calibration["n_fit"],
        "ECE before": calibration["ece_before"],
        "ECE after": calibration["ece_after"],
        "bins": calibration["bins"],
    }
