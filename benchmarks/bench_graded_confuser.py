"""Learning from grades: a confuser class absent from training, graded X in a field, then learnt.

    .venv/bin/python benchmarks/bench_graded_confuser.py --workdir /tmp/graded-confuser

1. A training set is simulated WITHOUT one kind of non-lens (``--confuser``, default ``ring``:
   ``nonlens_mix`` share 0), and a field WITH it (its share raised to ``--field-share`` of the
   non-lenses, so a small field holds enough of them).
2. A small model is trained (``--config`` at ``--size`` px, native VIS sampling).
3. The field is split by ID: even IDs are "inspected", odd IDs held out. The inspected half is
   scored; its top ``--top`` candidates are graded from the catalogue's ``kind`` column, standing
   in for human graders: every confuser among them is graded X (nothing else is graded), through
   the real grades database and ``grades export`` CSV.
4. The model is fine-tuned with ``train --graded GRADES --graded-data FIELD --init RUN``, and, as
   a control, fine-tuned the same way without grades (so extra epochs alone are not credited).
5. On the held-out half, at a fixed overall FPR (``--fpr``): the confuser's own FPR (fraction of
   them selected), its share of all false positives, the completeness (TPR) and AUROC, before
   and after.

Everything is resumable in ``--workdir`` (simulations, packed stores, runs).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import common
import numpy as np


def mixes(confuser: str, field_share: float) -> tuple[dict[str, float], dict[str, float]]:
    """(training mix without the confuser, field mix where it is ``field_share`` of the rest)."""
    from lensfinder.config import NONLENS_MIX

    if confuser not in NONLENS_MIX:
        raise SystemExit(f"--confuser must be one of {sorted(NONLENS_MIX)}, got {confuser!r}")
    others = {k: v for k, v in NONLENS_MIX.items() if k != confuser}
    total = sum(others.values())
    training = {k: v / total for k, v in others.items()} | {confuser: 0.0}
    field = {k: v / total * (1.0 - field_share) for k, v in others.items()}
    return training, field | {confuser: field_share}


def score(run_dir: Path, source: Any, indices: np.ndarray) -> np.ndarray:
    """Scores of ``indices`` of ``source`` (NaN for unreadable cutouts)."""
    from lensfinder.predict import Predictor

    predictor = Predictor([run_dir])
    return np.asarray(predictor.predict_source(source, indices, progress=False).score)


def grade_confusers(
    ids: np.ndarray, kinds: np.ndarray, scores: np.ndarray, confuser: str, top: int, out: Path
) -> tuple[Path, int]:
    """Grade X every ``confuser`` among the ``top`` highest-scored, through a grades database
    and its CSV export (the format ``train --graded`` reads); returns (CSV, rows graded)."""
    from lensfinder.data.grades import GradeBook, export_grades

    best = np.argsort(-np.nan_to_num(scores, nan=-1.0), kind="stable")[:top]
    db = out / "grades.sqlite"
    db.unlink(missing_ok=True)
    book = GradeBook(db)
    try:
        for position in best:
            if kinds[position] == confuser:
                book.record(int(ids[position]), "catalogue", "X", notes=f"kind {confuser}")
    finally:
        book.close()
    return export_grades(db, out / "grades.csv")


def measure(
    labels: np.ndarray, scores: np.ndarray, kinds: np.ndarray, confuser: str, fpr: float
) -> dict[str, Any]:
    """At the threshold reaching overall FPR ``fpr``: the confuser's FPR and false-positive
    share, the TPR, and AUROC (``evaluate``'s own breakdown functions)."""
    from lensfinder.evaluate.breakdown import kind_rows, operating_points
    from lensfinder.evaluate.metrics import auroc

    points, notes = operating_points(labels, scores, [fpr])
    if not points:
        raise SystemExit(f"held-out set too small for FPR {fpr}: {notes[0]}")
    (point,) = points
    (row,) = [r for r in kind_rows(labels, scores, kinds, points) if r["kind"] == confuser]
    return {
        "auroc": auroc(labels, scores),
        "tpr": point.tpr,
        "confuser_fpr": row[f"fpr@{point.key}"],
        "confuser_fp_share": row[f"fp_share@{point.key}"],
        "confuser_auroc_vs_lenses": row["auroc_vs_lenses"],
        "n_confusers": row["n"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=400, help="training cutouts")
    parser.add_argument("--n-field", type=int, default=400, help="field cutouts (half held out)")
    parser.add_argument("--confuser", default="ring", help="the non-lens kind left out")
    parser.add_argument("--field-share", type=float, default=0.35,
                        help="the confuser's share of the field's non-lenses")  # fmt: skip
    parser.add_argument("--field-lens-fraction", type=float, default=0.3)
    parser.add_argument("--top", type=int, default=80, help="inspected candidates graded")
    parser.add_argument("--fpr", type=float, default=0.1, help="the fixed overall FPR")
    parser.add_argument("--config", default="cpu-small", help="train config (file or name)")
    parser.add_argument("--size", type=int, default=64, help="input pixels (native VIS)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of the first training")
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--finetune-lr", type=float, default=3e-4)
    parser.add_argument("--sim-workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--workdir", type=Path, default=None, help="keep everything here")
    common.add_json_argument(parser)
    args = parser.parse_args(argv)
    common.quiet()
    common.quiet_lightning()
    common.set_threads(args.threads)

    from lensfinder.config import TrainConfig, load_config
    from lensfinder.data import open_source
    from lensfinder.train import train

    with common.work_directory(args.workdir, "bench_graded_confuser_") as work:
        training_mix, field_mix = mixes(args.confuser, args.field_share)
        with common.Stopwatch() as sim_watch:
            common.simulated_store(work / "train", work / "train.zarr", args.n_train, 0, 0.5,
                                   args.sim_workers, nonlens_mix=training_mix)  # fmt: skip
            common.simulated_store(work / "field", work / "field.zarr", args.n_field, 1,
                                   args.field_lens_fraction, args.sim_workers,
                                   nonlens_mix=field_mix, first_id=600000)  # fmt: skip
        field = open_source(work / "field.zarr")
        ids = np.asarray(field.ids, dtype=np.int64)
        labels = np.asarray(field.labels)
        kinds = np.asarray(field.catalog["kind"]).astype(str)
        inspected = np.flatnonzero(ids % 2 == 0)
        held_out = np.flatnonzero(ids % 2 == 1)

        base = load_config(
            TrainConfig,
            args.config,
            input={"size": args.size, "vis_sampling": "native"},
            max_epochs=args.epochs,
        )
        runs = work / "runs"
        timings = {}
        with common.Stopwatch() as watch:
            train(base, work / "train.zarr", runs / "base", progress=False)
        timings["train_base_s"] = watch.seconds
        inspected_scores = score(runs / "base", field, inspected)
        grades_csv, n_graded = grade_confusers(ids[inspected], kinds[inspected],
                                               inspected_scores, args.confuser, args.top,
                                               work)  # fmt: skip
        finetune = dataclasses.replace(
            base, init=str(runs / "base"), max_epochs=args.finetune_epochs, lr=args.finetune_lr
        )
        graded = dataclasses.replace(
            finetune, graded=str(grades_csv), graded_data=str(work / "field.zarr")
        )
        for name, cfg in (("control", finetune), ("graded", graded)):
            with common.Stopwatch() as watch:
                train(cfg, work / "train.zarr", runs / name, progress=False)
            timings[f"train_{name}_s"] = watch.seconds

        results = {}
        for name in ("base", "control", "graded"):
            scores = score(runs / name, field, held_out)
            ok = np.isfinite(scores)
            results[name] = measure(labels[held_out][ok], scores[ok], kinds[held_out][ok],
                                    args.confuser, args.fpr)  # fmt: skip

        machine = common.print_machine()
        n_lenses = int(labels[held_out].sum())
        print(
            f"training set: {args.n_train} cutouts without '{args.confuser}'; field: "
            f"{args.n_field} cutouts ('{args.confuser}' {args.field_share:.0%} of non-lenses); "
            f"{args.size} px native, {args.config}, {args.epochs} + {args.finetune_epochs} epochs"
        )
        print(
            f"graded X: {n_graded} '{args.confuser}' among the top {args.top} of "
            f"{len(inspected)} inspected field cutouts; held out: {len(held_out)} "
            f"({n_lenses} lenses, {results['base']['n_confusers']} '{args.confuser}')"
        )
        print(f"simulation {sim_watch.seconds:.0f} s; " + ", ".join(
            f"{k} {v:.0f} s" for k, v in timings.items()))  # fmt: skip
        head = f"at overall FPR {args.fpr:g}"
        print(f"{'model':<34} {'AUROC':>6} {'TPR':>6} {args.confuser + ' FPR':>9} "
              f"{args.confuser + ' FP share':>14}   ({head})")  # fmt: skip
        titles = {
            "base": "trained without it",
            "control": "+ fine-tuned, no grades",
            "graded": f"+ fine-tuned on {n_graded} graded X",
        }
        for name, row in results.items():
            share = row["confuser_fp_share"]
            share_text = "-" if share is None else f"{share:.2f}"
            print(f"{titles[name]:<34} {row['auroc']:>6.3f} {row['tpr']:>6.3f} "
                  f"{row['confuser_fpr']:>9.3f} {share_text:>14}")  # fmt: skip
        figures = [
            common.figure(
                f"{args.confuser} FPR at overall FPR {args.fpr:g}, {titles[name]}",
                row["confuser_fpr"],
            )
            for name, row in results.items()
        ]
        details = {"n_graded": n_graded, "results": results, "timings_s": timings,
                   "simulate_s": sim_watch.seconds, "field_mix": field_mix}  # fmt: skip
        return common.write_results(args.json, __file__, figures, details, machine, argv)


if __name__ == "__main__":
    main()
