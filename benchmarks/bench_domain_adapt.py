"""Learning from the survey itself: models scored on a shifted evaluation copy they never saw.

    .venv/bin/python benchmarks/bench_domain_adapt.py --workdir /tmp/shift \\
        --model "simulator only=runs/cpu-best" --model "+ AdaBN=runs/cpu-best-adabn" ...

The shifted set (``bench_domain_shift.py``: real Hubble Deep Field galaxies, other PSF, depth,
noise texture and confuser mix) is made twice, with different seeds:

- the **field copy** (``field.zarr``, seed 7001, 2% lenses, as a survey field has): the
  unlabelled cutouts a user hands ``lensfinder train --adapt``; its labels are never read by
  training. ``--make-sets`` prints its path.
- the **evaluation copy** (``shift.zarr``, seed 990, half lenses): scored here and nowhere else;
  nothing is tuned on it.
- the **tail copy** (``tail.zarr``, seed 991, ``--tail-n`` non-lenses only, same settings): with
  1,000 non-lenses the evaluation copy decides TPR at FPR 1e-3 by its single highest-scoring
  non-lens, so single runs differ there by seed noise; scored beside the evaluation copy's lenses,
  the tail copy's non-lenses put ~``tail-n / 1000`` false positives at that point and give it a
  bootstrap CI (``tail`` in each row).
- with ``--real-neighbours`` (in a ``--workdir`` of their own): the three copies again with
  every blue neighbour (field galaxies, satellites, compact companions) a Hubble Deep Field
  galaxy. On independent data the failure is neighbours and companions taken for arcs, and
  real neighbours are real galaxies, where the default sets' are parametric;
- with ``--bands-apart`` (likewise): the three copies again with each NISP band at its own depth
  and PSF width beside VIS (``bench_domain_shift.BANDS_APART``): the same scenes, VIS images and
  labels, other colours in noise units, as another pipeline's noise model would give.
- with ``--nisp-shifted`` (likewise): the three copies again with the NISP images shifted
  together against VIS by up to half a NISP pixel (``bench_domain_shift.NISP_SHIFTED``): the same
  scenes, VIS images and labels, NISP centred as cutouts of another mosaic are.

Each ``--model LABEL=RUN`` (a run or ensemble directory, trained however its label says) is
scored with D4 test-time augmentation on the evaluation copy: AUROC with its bootstrap CI, TPR0,
TPR10, TPR at FPR 1e-2 and 1e-3, and the AUROC of all lenses against each kind of non-lens. With
``--on-field`` it is also scored on the field copy itself (the cutouts it adapted to, as a survey
would use them; only ~40 lenses there, so wide CIs).
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench_domain_shift as shift
import common
import numpy as np

FIELD_SEED = 7001
FIELD_LENS_FRACTION = 0.02
TAIL_SEED = 991
TAIL_FPRS = (1e-2, 1e-3)
TOP_KINDS = 20  # kinds of this many highest-scoring non-lenses are reported


def make_sets(
    workdir: Path, n_eval: int, n_field: int, workers: int, variant: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    """The evaluation copy and the unlabelled field copy (resumable)."""
    evaluation = shift.shifted_store(workdir, n_eval, 990, workers, variant=variant)
    field = shift.shifted_store(
        workdir,
        n_field,
        FIELD_SEED,
        workers,
        lens_fraction=FIELD_LENS_FRACTION,
        name="field",
        variant=variant,
    )
    return evaluation, field


def tail_copy(
    workdir: Path, n: int, workers: int, variant: dict[str, Any] | None = None
) -> Path | None:
    """Non-lenses only, made like the evaluation copy with another seed (resumable)."""
    if n <= 0:
        return None
    return shift.shifted_store(
        workdir, n, TAIL_SEED, workers, lens_fraction=0.0, name="tail", variant=variant
    )


def score_with_kinds(
    model: Path, store: Path, out: Path, bootstrap: int, reuse: bool = False
) -> dict[str, Any]:
    """``bench_domain_shift.score`` plus the AUROC of lenses against each kind of non-lens.

    With ``reuse``, an earlier evaluation of the same model and store in ``out`` is read back.
    """
    metrics_file = out / "metrics.json"
    earlier = json.loads(metrics_file.read_text()) if reuse and metrics_file.exists() else None
    if earlier and earlier["models"] == [str(model)] and earlier["data"] == str(store):
        row = shift.metrics_row(model, earlier["overall"], 0.0)
    else:
        row = shift.score(model, store, out, bootstrap)
    metrics = json.loads(metrics_file.read_text())
    kinds = metrics.get("breakdown", {}).get("kinds", [])
    row["kinds"] = {k["kind"]: round(k["auroc_vs_lenses"], 3) for k in kinds}
    return row


def tail_scores(model: Path, store: Path, out: Path) -> tuple[np.ndarray, list[str]]:
    """D4-TTA scores of the tail copy and each cutout's kind (cached in ``out/tail_scores.csv``)."""
    from lensfinder.config import PredictConfig
    from lensfinder.data import open_source
    from lensfinder.predict import Predictor

    cache = out / "tail_scores.csv"
    if cache.exists():
        rows = list(csv.DictReader(cache.open()))
        if rows and rows[0]["model"] == str(model):
            return np.array([float(r["score"]) for r in rows]), [r["kind"] for r in rows]
    source = open_source(store)
    indices = np.arange(len(source.ids))
    scored = Predictor([model], PredictConfig(tta=True)).predict_source(
        source, indices, progress=True
    )
    valid = np.asarray(scored.valid, dtype=bool)
    scores = np.asarray(scored.score, dtype=np.float64)[valid]
    kinds = [str(k) for k in np.asarray(source.catalog["kind"])[indices][valid]]
    ids = [str(i) for i in np.asarray(source.ids)[indices][valid]]
    write_tail_scores(cache, ids, kinds, scores, str(model))
    return scores, kinds


def write_tail_scores(
    path: Path, ids: list[str], kinds: list[str], scores: np.ndarray, model: str
) -> None:
    """The tail copy's scores as ``tail_scores.csv`` (id, kind, score, model), atomically."""
    from lensfinder.files import atomic_write_text

    lines = ["id,kind,score,model"] + [
        f"{i},{k},{v:.9g},{model}" for i, k, v in zip(ids, kinds, scores, strict=True)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(lines) + "\n")


def _read_scores(path: Path) -> dict[str, tuple[int, float]]:
    with path.open() as handle:
        return {
            r["id"]: (int(r.get("label", 0)), float(r["score"])) for r in csv.DictReader(handle)
        }


def committee_row(
    label: str,
    members: list[Path],
    out: Path,
    truth: EvalTruth | None,
    bootstrap: int,
) -> dict[str, Any]:
    """A committee scored from its members' cached scores: probabilities averaged (what
    ``ensemble.json`` does by default), on the evaluation copy and the tail copy alike.

    ``members`` are evaluation directories (``eval/NAME``) already written by this benchmark;
    with ``truth`` (the evaluation copy's kinds and radii by ID) the tail copy is scored too.
    """
    from lensfinder.config import EvaluateConfig
    from lensfinder.evaluate.metrics import compute_metrics

    def averaged(file: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        tables = [_read_scores(member / file) for member in members]
        ids = sorted(set.intersection(*(set(t) for t in tables)))
        labels = np.array([tables[0][i][0] for i in ids])
        mean = np.mean([[t[i][1] for i in ids] for t in tables], axis=0)
        return ids, labels, mean

    ids, labels, score = averaged("scores.csv")
    metrics = compute_metrics(labels, score, EvaluateConfig(bootstrap=bootstrap))
    row = shift.metrics_row(Path("+".join(m.name for m in members)), metrics, 0.0)
    row["kinds"] = {}
    out.mkdir(parents=True, exist_ok=True)
    lines = ["id,label,score"] + [
        f"{i},{y},{v:.9g}" for i, y, v in zip(ids, labels, score, strict=True)
    ]
    (out / "scores.csv").write_text("\n".join(lines) + "\n")
    if truth is not None:
        tail_ids, _, tail_score = averaged("tail_scores.csv")
        with (members[0] / "tail_scores.csv").open() as handle:
            kinds = {r["id"]: r["kind"] for r in csv.DictReader(handle)}
        tail_kinds = [kinds[i] for i in tail_ids]
        write_tail_scores(out / "tail_scores.csv", tail_ids, tail_kinds, tail_score, label)
        row["tail"] = tail_metrics(out, truth, tail_score, tail_kinds, bootstrap)
    return {"label": label, **row}


@dataclass(frozen=True)
class EvalTruth:
    """The evaluation copy's truth by ID, read by the benchmark only: kinds and Einstein radii."""

    kinds: dict[str, str]
    theta_e: dict[str, float]  # arcsec; NaN for non-lenses


def store_truth(store: Path) -> EvalTruth:
    """Each cutout's ``kind`` and theta_E (from ``ein_area``) in a store's catalogue, by ID."""
    from lensfinder.data import open_source
    from lensfinder.einstein import catalog_theta_e

    source = open_source(store)
    ids = [str(i) for i in source.ids]
    theta = catalog_theta_e(source.catalog)
    theta = np.full(len(ids), np.nan) if theta is None else theta
    return EvalTruth(
        {i: str(k) for i, k in zip(ids, source.catalog["kind"], strict=True)},
        {i: float(t) for i, t in zip(ids, theta, strict=True)},
    )


def tail_metrics(
    eval_dir: Path,
    truth: EvalTruth,
    tail: np.ndarray,
    tail_kinds: list[str],
    bootstrap: int,
) -> dict[str, Any]:
    """TPR at FPR 1e-2 / 1e-3 over the evaluation copy's lenses against both copies' non-lenses,
    overall and per Einstein-radius bin (``completeness_by_theta_e``, the evaluate config's bins).

    The CI resamples lenses and non-lenses separately, as the AUROC's does.
    """
    from lensfinder.config import EvaluateConfig
    from lensfinder.evaluate.breakdown import OperatingPoint, completeness_rows
    from lensfinder.evaluate.metrics import tpr_at_fpr

    with (eval_dir / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    labels = np.array([int(r["label"]) for r in rows])
    scores = np.array([float(r["score"]) for r in rows])
    lenses = scores[labels == 1]
    nonlenses = np.concatenate([scores[labels == 0], tail])
    kinds = [truth.kinds[r["id"]] for r in rows if r["label"] == "0"] + list(tail_kinds)
    lens_theta = [truth.theta_e[r["id"]] for r in rows if r["label"] == "1"]
    both = np.concatenate([np.ones(len(lenses)), np.zeros(len(nonlenses))])
    everything = np.concatenate([lenses, nonlenses])
    rng = np.random.default_rng(0)
    result: dict[str, Any] = {"n_lenses": len(lenses), "n_nonlenses": len(nonlenses)}
    points = []
    for fpr in TAIL_FPRS:
        value = tpr_at_fpr(both, everything, fpr)
        point = value.tpr
        points.append(OperatingPoint(fpr, value.threshold, value.tpr))
        draws = [
            tpr_at_fpr(
                both,
                np.concatenate(
                    [
                        lenses[rng.integers(0, len(lenses), len(lenses))],
                        nonlenses[rng.integers(0, len(nonlenses), len(nonlenses))],
                    ]
                ),
                fpr,
            ).tpr
            for _ in range(bootstrap)
        ]
        ci = [round(float(q), 3) for q in np.quantile(draws, [0.025, 0.975])] if draws else None
        result[f"tpr_at_fpr_{fpr:.0e}"] = {"tpr": round(point, 3), "ci": ci}
    result["completeness_by_theta_e"] = completeness_rows(
        both,
        everything,
        np.concatenate([lens_theta, np.full(len(nonlenses), np.nan)]),
        EvaluateConfig().einstein_radius_bins,
        points,
        '"',
    )
    top = np.argsort(-nonlenses, kind="stable")[:TOP_KINDS]
    result["top_nonlens_kinds"] = _counts([kinds[i] for i in top])
    return result


def _paired_scores(eval_dir: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The cutouts' IDs (the tail copy's after the evaluation copy's, each by ID), and one
    model's lens and non-lens scores in that order, so two models' arrays pair cutout by cutout."""
    tables = [_read_scores(eval_dir / "scores.csv")]
    if (eval_dir / "tail_scores.csv").exists():
        tables.append(_read_scores(eval_dir / "tail_scores.csv"))
    order = [(i, table[i]) for table in tables for i in sorted(table)]
    ids = [i for i, _ in order]
    labels = np.array([label for _, (label, _) in order])
    scores = np.array([score for _, (_, score) in order])
    return ids, scores[labels == 1], scores[labels == 0]


def paired_differences(base: Path, other: Path, bootstrap: int) -> dict[str, Any]:
    """``other`` minus ``base`` on the same cutouts: AUROC (evaluation copy and tail together)
    and TPR at FPR 1e-2 / 1e-3 against all non-lenses, each with a paired bootstrap CI (the
    same resampled cutouts for both models), which is far narrower than comparing two CIs."""
    from lensfinder.evaluate.metrics import auroc, tpr_at_fpr

    (ids_a, lens_a, non_a), (ids_b, lens_b, non_b) = _paired_scores(base), _paired_scores(other)
    if ids_a != ids_b:
        raise SystemExit(f"{base} and {other} were not scored on the same cutouts")
    labels = np.concatenate([np.ones(len(lens_a)), np.zeros(len(non_a))])

    def figures(lens_draw: np.ndarray, non_draw: np.ndarray) -> np.ndarray:
        values = []
        for lens, non in ((lens_a, non_a), (lens_b, non_b)):
            scores = np.concatenate([lens[lens_draw], non[non_draw]])
            values.append(
                [auroc(labels, scores)] + [tpr_at_fpr(labels, scores, f).tpr for f in TAIL_FPRS]
            )
        return np.array(values[1]) - np.array(values[0])

    point = figures(np.arange(len(lens_a)), np.arange(len(non_a)))
    rng = np.random.default_rng(0)
    draws = np.array(
        [
            figures(
                rng.integers(0, len(lens_a), len(lens_a)), rng.integers(0, len(non_a), len(non_a))
            )
            for _ in range(bootstrap)
        ]
    )
    names = ["auroc"] + [f"tpr_at_fpr_{f:.0e}" for f in TAIL_FPRS]
    result: dict[str, Any] = {"base": base.name}
    for k, name in enumerate(names):
        ci = np.quantile(draws[:, k], [0.025, 0.975]) if len(draws) else [np.nan, np.nan]
        result[name] = {"diff": round(float(point[k]), 4), "ci": [round(float(c), 4) for c in ci]}
    return result


def _counts(values: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def _ci(row: dict[str, Any]) -> str:
    low, high = row["auroc_ci"] or (float("nan"), float("nan"))
    return f"{row['auroc']:.3f} [{low:.3f}, {high:.3f}]"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _tail_cell(row: dict[str, Any], key: str) -> str:
    point = row.get("tail", {}).get(f"tpr_at_fpr_{key}")
    if not point:
        return "-"
    low, high = point["ci"] or (float("nan"), float("nan"))
    return f"{point['tpr']:.2f} [{low:.2f}, {high:.2f}]"


def _theta_cell(row: dict[str, Any]) -> str:
    """Completeness at FPR 1e-2 (with the tail) per Einstein-radius bin, small to wide."""
    bins = row.get("tail", {}).get("completeness_by_theta_e", [])
    return " / ".join(_fmt(b.get("completeness@1e-02")) for b in bins if b["bin"] != "unknown")


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the rows, kinds as extra columns."""
    kinds = sorted({k for row in rows for k in row["kinds"]})
    with_tail = any("tail" in row for row in rows)
    tail_head = ["TPR@1e-2 with tail [CI]", "TPR@1e-3 with tail [CI]"] if with_tail else []
    if with_tail:
        tail_head.append('TPR@1e-2 by theta_E <0.5/0.5-0.8/0.8-1.2/1.2-2/>=2"')
    head = ["model", "AUROC [95% CI]", "TPR0", "TPR10", "TPR@1e-2", "TPR@1e-3", *tail_head, *kinds]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [
            row["label"],
            _ci(row),
            _fmt(row["tpr0"]),
            _fmt(row["tpr10"]),
            _fmt(row["tpr_at_fpr_1e-2"]),
            _fmt(row["tpr_at_fpr_1e-3"]),
            *([_tail_cell(row, f"{fpr:.0e}") for fpr in TAIL_FPRS] if with_tail else []),
            *([_theta_cell(row)] if with_tail else []),
            *(_fmt(row["kinds"].get(k)) for k in kinds),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--n", type=int, default=2000, help="evaluation cutouts")
    parser.add_argument("--n-field", type=int, default=2000, help="unlabelled field cutouts")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", action="append", default=[], help="LABEL=RUN (repeatable)")
    parser.add_argument(
        "--committee",
        action="append",
        default=[],
        help="LABEL=NAME+NAME+...: members' cached scores (eval/NAME) averaged, no rescoring",
    )
    parser.add_argument("--on-field", action="store_true", help="also score the field copy")
    parser.add_argument(
        "--paired",
        action="store_true",
        help="each row against the first: differences with a paired bootstrap CI",
    )
    parser.add_argument("--make-sets", action="store_true", help="make the two copies and stop")
    parser.add_argument(
        "--tail-n", type=int, default=6000, help="non-lenses of the tail copy (0: none)"
    )
    parser.add_argument(
        "--reuse-scores",
        action="store_true",
        help="read back an earlier evaluation of the same model (eval/NAME) instead of rescoring",
    )
    parser.add_argument(
        "--real-neighbours",
        action="store_true",
        help="every blue neighbour a Hubble Deep Field galaxy (with its own --workdir)",
    )
    parser.add_argument(
        "--bands-apart",
        action="store_true",
        help="each NISP band at its own depth and PSF width beside VIS (with its own --workdir)",
    )
    parser.add_argument(
        "--nisp-shifted",
        action="store_true",
        help="NISP shifted against VIS by up to half a NISP pixel (with its own --workdir)",
    )
    parser.add_argument("--bootstrap", type=int, default=1000)
    common.add_json_argument(parser)
    args = parser.parse_args()
    print(common.machine_line())
    variant = {
        **(shift.REAL_NEIGHBOURS if args.real_neighbours else {}),
        **(shift.BANDS_APART if args.bands_apart else {}),
        **(shift.NISP_SHIFTED if args.nisp_shifted else {}),
    } or None
    evaluation, field = make_sets(args.workdir, args.n, args.n_field, args.workers, variant)
    tail = tail_copy(args.workdir, args.tail_n, args.workers, variant)
    print(f"field copy (for --adapt): {field}\nevaluation copy: {evaluation}\ntail copy: {tail}")
    if args.make_sets:
        return
    truth = store_truth(evaluation) if tail else None
    rows, field_rows = [], []
    for spec in args.model:
        label, _, run = spec.rpartition("=")
        run_path = Path(run)
        label = label or run_path.name
        out = args.workdir / "eval" / run_path.name
        row = score_with_kinds(run_path, evaluation, out, args.bootstrap, args.reuse_scores)
        if tail:
            scores, kinds = tail_scores(run_path, tail, out)
            assert truth is not None
            row["tail"] = tail_metrics(out, truth, scores, kinds, args.bootstrap)
        rows.append({"label": label, "eval_dir": out.name, **row})
        print(f"{label}: AUROC {_ci(row)} TPR@1e-3 {_fmt(row['tpr_at_fpr_1e-3'])}", flush=True)
        if tail:
            print(f"  with the tail copy: {json.dumps(row['tail'])}", flush=True)
        if args.on_field:
            on_field = score_with_kinds(
                run_path, field, args.workdir / "eval-field" / run_path.name, args.bootstrap
            )
            field_rows.append({"label": label, **on_field})
    for spec in args.committee:
        label, _, names = spec.rpartition("=")
        members = [args.workdir / "eval" / name for name in names.split("+")]
        out = args.workdir / "eval" / f"committee-{names.replace('+', '-')}"
        row = committee_row(label or out.name, members, out, truth, args.bootstrap)
        rows.append({**row, "eval_dir": out.name})
        print(f"{row['label']}: AUROC {_ci(row)} TPR@1e-3 {_fmt(row['tpr_at_fpr_1e-3'])}")
    print("\nEvaluation copy (never trained or tuned on):\n" + table(rows))
    if args.paired and len(rows) > 1:
        base = args.workdir / "eval" / rows[0]["eval_dir"]
        print(f"\nAgainst {rows[0]['label']}, paired bootstrap (difference [95% CI]):")
        for row in rows[1:]:
            row["paired"] = paired_differences(
                base, args.workdir / "eval" / row["eval_dir"], args.bootstrap
            )
            cells = [
                f"{name} {v['diff']:+.3f} [{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}]"
                for name, v in row["paired"].items()
                if name != "base"
            ]
            print(f"- {row['label']}: " + "; ".join(cells))
    if field_rows:
        print("\nField copy (the unlabelled cutouts adapted to):\n" + table(field_rows))
    common.write_results(
        args.json,
        __file__,
        rows + [{**r, "on": "field"} for r in field_rows],
        {
            "shift_settings": {**shift.SHIFT_SETTINGS, **(variant or {})},
            "field_seed": FIELD_SEED,
            "tail_seed": TAIL_SEED,
            "tail_n": args.tail_n,
        },
    )


if __name__ == "__main__":
    main()
