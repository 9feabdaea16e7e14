"""Learning curve: independent-set quality against training-set size and minutes, per input mode.

    .venv/bin/python benchmarks/bench_learning_curve.py --data TRAIN_STORE \\
        --shift-workdir /tmp/shift --sizes 1000,2000,4000,8000 --modes native,bin

Each (size, mode) trains the config (default ``cpu-small``) from scratch on the first ``size``
objects of the training split (``max_train_objects``; a seeded random subset) with the input's
``vis_sampling`` set to ``mode``, for ``--epochs`` epochs of at most ``size`` samples. Every model
is scored on the domain-shift set of ``bench_domain_shift.py`` (made there, never trained on),
so the curve shows what more simulated data buys on data made another way. Prints size, mode,
training minutes, AUROC [CI] and TPR at FPR 1e-3.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import bench_domain_shift
import common


def _ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1000,2000; got {text!r}")
    return values


def train_one(
    store: Path, run_dir: Path, config: str, size: int, mode: str, epochs: int
) -> tuple[float, int]:
    """Train one point of the curve; returns (training seconds, epochs run)."""
    from lensfinder.config import TrainConfig, load_config
    from lensfinder.train import train

    base = load_config(TrainConfig, config)
    cfg = load_config(
        TrainConfig,
        config,
        max_train_objects=size,
        max_train_samples=min(size, base.max_train_samples or size),
        max_epochs=epochs,
        input={"vis_sampling": mode},
    )
    with common.Stopwatch() as watch:
        result = train(cfg, store, run_dir, resume=True, progress=False)
    return watch.seconds, result.epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="training store (ours)")
    parser.add_argument("--shift-workdir", type=Path, required=True)
    parser.add_argument("--shift-n", type=int, default=2000)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--config", default="cpu-small")
    parser.add_argument("--sizes", type=_ints, default=[1000, 2000, 4000, 8000])
    parser.add_argument("--modes", default="native,bin")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--bootstrap", type=int, default=500)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    print(common.machine_line())
    shift = bench_domain_shift.shifted_store(args.shift_workdir, args.shift_n, 990, 2)
    rows: list[dict[str, Any]] = []
    for mode in args.modes.split(","):
        for size in args.sizes:
            run_dir = args.workdir / f"{mode}-{size}"
            seconds, epochs = train_one(args.data, run_dir, args.config, size, mode, args.epochs)
            row = bench_domain_shift.score(run_dir, shift, run_dir / "shift-eval", args.bootstrap)
            row.update(mode=mode, size=size, train_minutes=round(seconds / 60, 2), epochs=epochs)
            rows.append(row)
            ci = row["auroc_ci"] or [float("nan")] * 2
            print(
                f"{mode:6s} {size:6d} objects  {row['train_minutes']:5.1f} min  AUROC "
                f"{row['auroc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]  TPR@1e-3 {row['tpr_at_fpr_1e-3']}"
            )
    common.write_results(args.json, __file__, rows, {"config": args.config})


if __name__ == "__main__":
    main()
