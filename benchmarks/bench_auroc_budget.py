"""Test AUROC reached against training budget: the cpu-small config at several budgets.

    .venv/bin/python benchmarks/bench_auroc_budget.py --n 1000
    .venv/bin/python benchmarks/bench_auroc_budget.py --data STORE --samples 250,500,1000,2000 \\
        --epochs 1,3

Each budget is ``samples`` training samples per epoch (``max_train_samples``) times ``epochs``
(``max_epochs``); every other setting is cpu-small's, early stopping included, so "images seen"
counts the epochs actually run. Every run is evaluated on the same test split (the split is a
hash of the object ID) with ``lensfinder.evaluate.evaluate``. Without ``--data``, ``--n``
cutouts are simulated and packed into ``--workdir`` (resumable). Prints budget -> images seen,
wall time, test AUROC (bootstrap CI) and TPR0, and plots AUROC against images seen.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any

import common


def _int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 250,500; got {text!r}")
    return values


def train_and_evaluate(
    store: Path, run_dir: Path, samples: int, epochs: int, config: str, bootstrap: int
) -> dict[str, Any]:
    """Train one budget from scratch and evaluate it on the test split."""
    from lensfinder.config import EvaluateConfig, TrainConfig, load_config
    from lensfinder.evaluate import evaluate
    from lensfinder.models.meta import read_meta
    from lensfinder.train import train

    train_cfg = load_config(TrainConfig, config, max_train_samples=samples, max_epochs=epochs)
    with common.Stopwatch() as train_watch:
        trained = train(train_cfg, store, run_dir, resume=False, progress=False)
    with common.Stopwatch() as eval_watch:
        evaluation = evaluate(
            [run_dir], store, run_dir / "evaluation", EvaluateConfig(bootstrap=bootstrap)
        )
    per_epoch = int(read_meta(run_dir).get("data", {}).get("samples_per_epoch") or samples)
    metrics = evaluation.metrics
    return {
        "samples_per_epoch": samples,
        "max_epochs": epochs,
        "epochs_run": trained.epochs,
        "drawn_per_epoch": per_epoch,
        "images_seen": per_epoch * trained.epochs,
        "train_s": round(train_watch.seconds, 2),
        "evaluate_s": round(eval_watch.seconds, 2),
        "train_images_per_s": round(trained.images_per_s, 2),
        "best_val_auroc": trained.best_val_auroc,
        "stopped": trained.stopped,
        "test_auroc": metrics["auroc"],
        "test_auroc_ci": metrics.get("auroc_ci"),
        "test_tpr0": metrics["tpr0"],
        "test_tpr10": metrics["tpr10"],
        "n_test": evaluation.n_evaluated,
        "n_test_lenses": metrics["n_lenses"],
        "run_dir": str(run_dir),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'samples/epoch':>13} {'epochs':>6} {'images seen':>11} {'train s':>8} "
        f"{'test AUROC':>10} {'95% CI':>15} {'TPR0':>6}"
    )
    for row in rows:
        ci = row["test_auroc_ci"]
        ci_text = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-"
        print(
            f"{row['samples_per_epoch']:>13} {row['epochs_run']:>3}/{row['max_epochs']:<2} "
            f"{row['images_seen']:>11} {row['train_s']:>8.1f} {row['test_auroc']:>10.4f} "
            f"{ci_text:>15} {row['test_tpr0']:>6.3f}"
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=None, help="a packed store (default: simulate)"
    )
    parser.add_argument("--n", type=int, default=1000, help="cutouts to simulate without --data")
    parser.add_argument("--lens-fraction", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0, help="simulation seed")
    parser.add_argument("--sim-workers", type=int, default=2, help="simulation/pack processes")
    parser.add_argument(
        "--samples",
        type=_int_list,
        default=[250, 500, 1000, 2000],
        help="training samples per epoch, comma-separated",
    )
    parser.add_argument("--epochs", type=_int_list, default=[3], help="max_epochs, comma-separated")
    parser.add_argument("--config", default="cpu-small", help="train config (file or name)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples for the AUROC CI")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep data, runs and the plot here (default: a temporary dir)",
    )
    common.add_json_argument(parser)
    args = parser.parse_args(argv)
    common.quiet()
    common.quiet_lightning()
    common.set_threads(args.threads)

    from lensfinder.presentation.plots import line_plot

    with common.work_directory(args.workdir, "bench_auroc_budget_") as workdir:
        data_info: dict[str, Any] = {"store": str(args.data)}
        store = args.data
        if store is None:
            store = workdir / "store.zarr"
            data_info = common.simulated_store(
                workdir / "layout", store, args.n, args.seed, args.lens_fraction, args.sim_workers
            )
        rows = []
        for samples, epochs in itertools.product(args.samples, args.epochs):
            run_dir = workdir / "runs" / f"samples{samples}-epochs{epochs}"
            row = train_and_evaluate(store, run_dir, samples, epochs, args.config, args.bootstrap)
            print(
                f"  {samples} samples/epoch x {row['epochs_run']} epochs: test AUROC "
                f"{row['test_auroc']:.4f} ({row['train_s']:.0f} s)",
                flush=True,
            )
            rows.append(row)
        rows.sort(key=lambda r: (r["images_seen"], r["samples_per_epoch"]))
        plot = line_plot(
            [r["images_seen"] for r in rows],
            {"test AUROC": [r["test_auroc"] for r in rows]},
            workdir / "auroc_vs_images_seen.png",
            xlabel="training images seen",
            ylabel="test AUROC",
            title=f"{args.config}: test AUROC against training budget",
            log_x=True,
        )
        machine = common.print_machine()
        print(
            f"data: {store}; config {args.config}; test split of {rows[0]['n_test']} objects "
            f"({rows[0]['n_test_lenses']} lenses)"
        )
        print_table(rows)
        print(f"plot: {plot}" + (" (temporary)" if args.workdir is None else ""))
        best = max(rows, key=lambda r: r["test_auroc"])
        figures = [
            common.figure(
                f"test AUROC, {args.config}, {r['samples_per_epoch']} samples x "
                f"{r['epochs_run']} epochs ({r['images_seen']} images)",
                r["test_auroc"],
                "",
                ci=r["test_auroc_ci"],
            )
            for r in rows
        ]
        figures.append(
            common.figure("training wall time, largest budget", rows[-1]["train_s"], "s")
        )
        details = {
            "data": data_info,
            "config": args.config,
            "runs": rows,
            "best": {k: best[k] for k in ("samples_per_epoch", "epochs_run", "test_auroc")},
            "plot": str(plot),
        }
        return common.write_results(args.json, __file__, figures, details, machine, argv)


if __name__ == "__main__":
    main()
