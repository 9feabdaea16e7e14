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
from lensfinder.files import atomic_path, atomic_write_text
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
from lensfinder.safety import EVALUATION
from lensfinder.stages import run_stage

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
    skipped_reasons: dict[str, int] = field(default_factory=dict)  # unreadable, by kind

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
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.skipped_reasons.items()))
            reasons = f" ({kinds})" if kinds else ""
            skipped.append(f"{self.n_skipped_invalid} unreadable{reasons}")
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
    models: Sequence[Path],
    data: Path,
    out: Path,
    cfg: EvaluateConfig | None = None,
    progress: bool = True,
) -> EvaluationResult:
    """Score ``data`` (its ``cfg.split``) with the model(s) and write scores, metrics, plots and
    the HTML report to ``out`` (under the output rule and lock, from Python as from the CLI)."""
    cfg = cfg or EvaluateConfig()
    run_dirs = expand_models(models)  # an ensemble directory is its members
    if not run_dirs:
        raise ConfigError("evaluate needs at least one model run directory (--model)")
    inputs = [data, *models, *run_dirs]
    with run_stage("evaluate", EVALUATION, out, inputs, progress=progress) as stage:
        scored = _score(run_dirs, Path(data), cfg, stage.progress)
        measured = _measure(scored, Path(data), cfg)
        return stage.finish(_write_evaluation(scored, measured, Path(data), stage.out, cfg))


@dataclass
class _Scored:
    """The evaluated objects and their scores; unreadable cutouts (``valid`` false) are left
    out of ``ids``, ``labels``, ``score`` and ``members``, never ranked as either class."""

    source: CutoutSource
    predictor: Predictor
    run_dirs: list[Path]
    metas: list[dict[str, Any]]
    split: str
    split_reason: str
    indices: np.ndarray  # source positions of the labelled objects of the split
    valid: np.ndarray
    n_unlabelled: int
    skipped: dict[str, int]
    ids: np.ndarray
    labels: np.ndarray
    score: np.ndarray
    members: np.ndarray  # (members, objects)
    catalog: dict[str, np.ndarray]  # the catalogue columns ``breakdown`` reads
    theta_e: tuple[np.ndarray, np.ndarray] | None  # mean and sigma, models with the head

    @property
    def ensemble(self) -> bool:
        return len(self.run_dirs) > 1


@dataclass
class _Measured:
    """Metrics, breakdown, calibration and the worst failures of a ``_Scored`` set."""

    overall: dict[str, Any]
    member_metrics: list[dict[str, Any]]
    details: dict[str, Any]
    calibration: dict[str, Any] | None
    failures: dict[str, np.ndarray]  # positions among the scored objects
    failure_tables: dict[str, list[dict[str, Any]]]
    theta_e: dict[str, Any] | None = None  # ``theta_e_metrics``' record
    theta_e_truth: np.ndarray | None = None  # true theta_E per scored object (NaN: none)


def _score(run_dirs: list[Path], data: Path, cfg: EvaluateConfig, progress: bool) -> _Scored:
    """Choose the split (``resolve_split``), its labelled objects, and score them."""
    source = open_source(data)
    predictor = Predictor(run_dirs, cfg.predict)  # loads and checks every member (or ONNX file)
    metas = [member.meta for member in predictor.members]
    split, split_reason = resolve_split(cfg.split, source, metas)
    indices = select_indices(np.asarray(source.ids), split, metas, run_dirs)
    indices, labels, n_unlabelled = labelled_only(np.asarray(source.labels), indices, data, split)
    scores = predictor.predict_source(source, indices, progress=progress)
    score = np.asarray(scores.score, dtype=np.float64)
    members = np.asarray(scores.member_scores, dtype=np.float64).reshape(-1, len(indices))
    valid = np.asarray(scores.valid, dtype=bool) & np.isfinite(score)
    catalog = {
        name: np.asarray(values)[indices][valid]
        for name, values in source.catalog.items()
        if name in BREAKDOWN_COLUMNS
    }
    return _Scored(
        source=source,
        predictor=predictor,
        run_dirs=list(run_dirs),
        metas=metas,
        split=split,
        split_reason=split_reason,
        indices=indices,
        valid=valid,
        n_unlabelled=n_unlabelled,
        skipped=dict(scores.skipped),
        ids=np.asarray(source.ids)[indices][valid],
        labels=labels[valid],
        score=score[valid],
        members=members[:, valid],
        catalog=catalog,
        theta_e=_valid_theta_e(scores, valid),
    )


def _valid_theta_e(scores: Any, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """theta_E's mean and sigma of the scored objects; None when no member has the head."""
    if scores.theta_e is None or scores.theta_e_sigma is None:
        return None
    return np.asarray(scores.theta_e)[valid], np.asarray(scores.theta_e_sigma)[valid]


def _measure(scored: _Scored, data: Path, cfg: EvaluateConfig) -> _Measured:
    """Metrics (overall, per member), the breakdown, calibration and the worst failures."""
    labels, score = scored.labels, scored.score
    try:
        overall = compute_metrics(labels, score, cfg)
        member_metrics = (
            [compute_metrics(labels, m, cfg) for m in scored.members] if scored.ensemble else []
        )
        details = breakdown(
            labels,
            score,
            scored.catalog,
            cfg.operating_fprs,
            cfg.einstein_radius_bins,
            cfg.source_mag_bins,
        )
    except DataError as exc:
        raise DataError(f"{data} ({scored.split} split, {len(labels)} objects): {exc}") from None
    calibration = None
    if cfg.calibrate:
        fit_labels, fit_scores, fitted_on = _calibration_set(
            scored.predictor, scored.source, scored.split, scored.metas, scored.run_dirs,
            labels, score,
        )  # fmt: skip
        calibration = calibrate(
            fit_labels, fit_scores, labels, score, cfg.calibration_bins, fitted_on
        )
    failures = {
        which: worst(labels, score, which, cfg.failures)
        for which in ((FALSE_POSITIVES, MISSED) if cfg.failures > 0 else ())
    }
    failure_tables = {
        which: failure_rows(positions, scored.ids, score, scored.catalog)
        for which, positions in failures.items()
    }
    measured = _Measured(overall, member_metrics, details, calibration, failures, failure_tables)
    if scored.theta_e is not None:
        measured.theta_e, measured.theta_e_truth = theta_e_metrics(
            labels, scored.catalog, *scored.theta_e, cfg.einstein_radius_bins,
            cfg.theta_e_goal_range,
        )  # fmt: skip
    return measured


def _record(scored: _Scored, measured: _Measured, data: Path, cfg: EvaluateConfig) -> dict:
    """``metrics.json``: what was evaluated, how, and every number measured."""
    record: dict[str, Any] = {
        "data": str(data),
        "split": scored.split,
        "split_reason": scored.split_reason,
        "models": [str(p) for p in scored.run_dirs],
        "ensemble_average": cfg.predict.ensemble_average if scored.ensemble else None,
        "tta": cfg.predict.tta,
        "backend": cfg.predict.backend,
        "n_evaluated": len(scored.labels),
        "n_skipped_invalid": int((~scored.valid).sum()),
        "skipped_reasons": scored.skipped,
        "skipped_ids": [
            int(i) for i in np.asarray(scored.source.ids)[scored.indices][~scored.valid]
        ],
        "n_skipped_unlabelled": scored.n_unlabelled,
        "n_problems_in_data": len(getattr(scored.source, "problems", ())),
        "overall_name": "ensemble" if scored.ensemble else "model",
        "predictor": scored.predictor.settings(),
        "overall": measured.overall,
        "breakdown": measured.details,
        "calibration": measured.calibration,
        "failures": measured.failure_tables,
    }
    if measured.theta_e is not None:
        record["theta_e"] = measured.theta_e
    if scored.ensemble:
        names = _member_names(scored.run_dirs)
        record["members"] = dict(zip(names, measured.member_metrics, strict=True))
    return record


def _write_evaluation(
    scored: _Scored, measured: _Measured, data: Path, out: Path, cfg: EvaluateConfig
) -> EvaluationResult:
    """scores.csv, metrics.json, the plots, the failure galleries and report.html."""
    evaluation = _record(scored, measured, data, cfg)
    calibration = measured.calibration
    scores_csv = out / SCORES_NAME
    probability = (
        None if calibration is None else apply_temperature(scored.score, calibration["temperature"])
    )
    members = scored.members if scored.ensemble else None
    _write_scores_csv(
        scores_csv, scored.ids, scored.labels, scored.score, members, probability, scored.theta_e
    )
    metrics_json = out / METRICS_NAME
    atomic_write_text(metrics_json, json.dumps(evaluation, indent=2, allow_nan=False) + "\n")
    plots, tables = _plots(scored, measured, evaluation["overall_name"], data, out)
    galleries = []
    for which, positions in measured.failures.items():
        rows = measured.failure_tables[which]
        where = scored.indices[scored.valid][positions]
        image = failure_mosaic(scored.source, where, rows, out / f"{which}.png")
        galleries.append((TITLES[which], image, rows))
    split, reason = scored.split, scored.split_reason
    notes = "\n".join([f"Split {split}" + (f" ({reason})." if reason else "."),
                       _split_note(split), *measured.details["notes"]])  # fmt: skip
    title = f"lensfinder evaluation: {data.name}"
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
        metrics=measured.overall,
        n_evaluated=len(scored.labels),
        n_skipped_invalid=evaluation["n_skipped_invalid"],
        n_skipped_unlabelled=scored.n_unlabelled,
        split=split,
        member_auroc=[m["auroc"] for m in measured.member_metrics],
        split_reason=reason,
        theta_e=measured.theta_e,
        skipped_reasons=dict(evaluation["skipped_reasons"]),
    )


def _plots(
    scored: _Scored, measured: _Measured, overall_name: str, data: Path, out: Path
) -> tuple[list[Path], list[Any]]:
    """ROC, score histograms, completeness and reliability plots, and the report's tables."""
    labels, score = scored.labels, scored.score
    curves = {overall_name: roc_curve(labels, score)}
    if scored.ensemble:
        names = _member_names(scored.run_dirs)
        curves |= {n: roc_curve(labels, m) for n, m in zip(names, scored.members, strict=True)}
    plots = [
        roc_plot(curves, out / ROC_NAME, title=f"ROC, {data.name} ({scored.split})"),
        score_histograms(labels, score, out / HISTOGRAM_NAME, title="Scores by class"),
    ]
    panels = _completeness_panels(measured.details)
    if panels:
        plots.append(completeness_plot(panels, out / COMPLETENESS_NAME))
    tables = report_tables(measured.details)
    _theta_e_parts(scored, measured, out, plots, tables)
    calibration = measured.calibration
    if calibration is not None:
        curves_by_name = {"scores": calibration["reliability_before"],
                          f"after T = {calibration['temperature']:.3g}":
                          calibration["reliability_after"]}  # fmt: skip
        plots.append(reliability_plot(curves_by_name, out / RELIABILITY_NAME, title="Reliability"))
        tables.insert(0, ("Calibration", [_calibration_row(calibration)]))
    return plots, tables


def _theta_e_parts(
    scored: _Scored, measured: _Measured, out: Path, plots: list[Path], tables: list[Any]
) -> None:
    """The Einstein-radius table and predicted-vs-true plot, for models with the head."""
    if scored.theta_e is None or measured.theta_e is None or measured.theta_e_truth is None:
        return
    tables.insert(0, ("Einstein radius estimate, on lenses", report_rows(measured.theta_e)))
    truth = measured.theta_e_truth
    known = np.isfinite(truth)
    if known.any():
        estimate = scored.theta_e[0][known], scored.theta_e[1][known]
        plots.append(theta_e_plot(truth[known], *estimate, out / THETA_E_NAME))


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
