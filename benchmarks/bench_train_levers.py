"""Training per CPU-minute: the speed of each training lever against the bare loop, and the
quality each buys on the shifted set for its training minutes.

    .venv/bin/python benchmarks/bench_train_levers.py --data simB.zarr --rounds 3
    .venv/bin/python benchmarks/bench_train_levers.py --data simB.zarr --speed-only
    .venv/bin/python benchmarks/bench_train_levers.py --data simB.zarr --bare-only --rounds 3
    .venv/bin/python benchmarks/bench_train_levers.py --data simB.zarr --quality-only \\
        --shift shift2/shift.zarr --workdir levers \\
        --variant cpu-small=cpu-small --variant progressive=levers/progressive.yaml

Speed: every lever trains through the real command (``lensfinder train`` in a subprocess: the
datamodule, D4, balanced batches, Lightning) for a few short epochs on ``--data``, and its rate
is read from model.json (images/s of its measured epoch, validation excluded; summed over
processes). Levers: cpu-small as shipped; progressive resizing (an epoch at ``low_res_size``);
the stem and first blocks frozen; batches of 16 and 64; two DDP processes of one thread each
(batch 16 each, so the same 32 per step) against one process of two threads; bf16 autocast. In
every round, before the levers, the bare forward + backward + step loop of cpu-small's model on
tensors in memory (``lensfinder.train.time_budget.BareTrainingLoop``) runs in this process: each
figure is a ratio to that yardstick of its own round, and the levers' order rotates between
rounds, so shared cores' busy spells hit all alike. Medians over rounds.

``--bare-only``: the bare loop alone at 100, 80 and 64 px, with the stem and 0-3 blocks frozen,
and at batches of 16 and 64, alternating in rounds: what each lever could give at most.

Quality: each ``--variant LABEL=CONFIG`` trains from scratch on ``--data`` (a shipped name or a
YAML file; a finished run is reused) and is scored on ``--shift`` (the evaluation copy of
``bench_domain_adapt.py``, never trained or tuned on) with D4 TTA: training minutes, AUROC [CI],
TPR at FPR 1e-2 and 1e-3. Equal wall time is set by the speed figures (a lever's epochs are
chosen so that sum(epoch cost) matches the baseline's), since the minutes of one run on shared
cores vary with the load; both are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_domain_shift
import common

# Each lever: settings over cpu-small, and environment for its process.
LEVERS: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    "cpu-small": ({}, {}),
    "crop 64 px": ({"low_res_size": 64, "low_res_fraction": 0.67, "low_res_method": "crop"}, {}),
    "crop 80 px": ({"low_res_size": 80, "low_res_fraction": 0.67, "low_res_method": "crop"}, {}),
    "resample 64 px": (
        {"low_res_size": 64, "low_res_fraction": 0.67, "low_res_method": "resample"},
        {},
    ),
    "stem + 3 blocks frozen": ({"frozen_stages": 4}, {}),
    "batch 16": ({"batch_size": 16, "batch_size_max": 16}, {}),
    "batch 64": ({"batch_size": 64, "batch_size_max": 64}, {}),
    "DDP 2 x 1 thread": (
        {"devices": 2, "accelerator": "cpu", "batch_size": 16, "batch_size_max": 16},
        {"OMP_NUM_THREADS": "1"},
    ),
    "bf16 autocast": ({"precision": "bf16-mixed"}, {}),
}
# The epoch whose rate a lever is measured on: epoch 0 warms up; progressive resizing's
# low-resolution epoch is epoch 1 (of 2 low-res epochs: 0.67 of 3).
MEASURED_EPOCH = 1


def lever_config(settings: dict[str, Any], samples: int, path: Path) -> Path:
    """A YAML over cpu-small: three short epochs, no early stop, plus the lever's settings."""
    import yaml

    config = {
        "max_epochs": 3,
        "max_train_samples": samples,
        "stop_auroc_drop": 1.0,
        "stop_patience": 10,
        **settings,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def lever_rate(store: Path, config: Path, env: dict[str, str], out: Path) -> float:
    """images/s of the measured epoch of one short ``lensfinder train`` run."""
    command = [*common.lensfinder_command(), "train", "--data", str(store)]
    command += ["--config", str(config), "--out", str(out)]
    environment = {**os.environ, "LENSFINDER_QUIET": "1", **env}
    done = subprocess.run(command, env=environment, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{config}: training failed:\n{done.stderr[-2000:]}")
    history = json.loads((out / "model.json").read_text())["metrics"]["images_per_s_history"]
    return float(history[MEASURED_EPOCH])


def bare_rate(seconds: float) -> float:
    """images/s of cpu-small's bare forward + backward + step loop, for about ``seconds``."""
    from lensfinder.config import TrainConfig
    from lensfinder.train.time_budget import BareTrainingLoop

    loop = BareTrainingLoop(TrainConfig())
    steps, elapsed = 0, 0.0
    while elapsed < seconds:
        elapsed += loop.run(2)
        steps += 2
    return common.rate(steps * loop.batch, elapsed)


# The bare loop's own levers: (input pixels, batch, frozen stages).
BARE_LEVERS: dict[str, tuple[int, int, int]] = {
    "100 px (cpu-small)": (100, 32, 0),
    "80 px": (80, 32, 0),
    "64 px": (64, 32, 0),
    "stem frozen": (100, 32, 1),
    "stem + 1 block frozen": (100, 32, 2),
    "stem + 2 blocks frozen": (100, 32, 3),
    "stem + 3 blocks frozen": (100, 32, 4),
    "batch 16": (100, 16, 0),
    "batch 64": (100, 64, 0),
}


def bare_lever_rate(size: int, batch: int, frozen: int, seconds: float) -> float:
    """images/s of the bare loop of cpu-small's model at ``size`` px, ``batch``, with the stem
    and first blocks frozen (``frozen`` stages, as ``TrainConfig.frozen_stages``)."""
    import torch

    from lensfinder.config import TrainConfig
    from lensfinder.models.factory import create_model
    from lensfinder.train.module import make_optimizer

    config = TrainConfig()
    model = create_model(config.model, config.input).to(memory_format=torch.channels_last)
    if frozen:
        model.set_leading_stages_trainable(frozen, False)
    optimizer = make_optimizer(config, [p for p in model.parameters() if p.requires_grad])
    x = torch.randn(batch, len(config.input.bands), size, size)
    x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.arange(batch) % 2).float()

    def step() -> None:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    images, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        step()
        images += batch
    return common.rate(images, time.perf_counter() - began)


def bare_speed(rounds: int, seconds: float) -> list[dict]:
    """Per bare lever: median images/s and median speed against 100 px in the same round."""
    speeds: dict[str, list[float]] = {name: [] for name in BARE_LEVERS}
    rates: dict[str, list[float]] = {name: [] for name in BARE_LEVERS}
    names = list(BARE_LEVERS)
    for round_index in range(rounds):
        order = names[round_index:] + names[:round_index]
        measured = {name: bare_lever_rate(*BARE_LEVERS[name], seconds) for name in order}
        for name in names:
            rates[name].append(measured[name])
            speeds[name].append(measured[name] / measured[names[0]])
        print(f"round {round_index}: " + ", ".join(f"{n} {measured[n]:.0f}" for n in names),
              flush=True)  # fmt: skip
    return [
        {
            "lever": name,
            "images_per_s": round(statistics.median(rates[name]), 1),
            "speed_vs_first": round(statistics.median(speeds[name]), 3),
        }
        for name in names
    ]


def speed(store: Path, levers: list[str], rounds: int, samples: int, bare_s: float) -> list[dict]:
    """Per lever: median images/s and median ratio to the bare loop of the same round."""
    rates: dict[str, list[float]] = {name: [] for name in levers}
    ratios: dict[str, list[float]] = {name: [] for name in levers}
    with tempfile.TemporaryDirectory(prefix="bench_levers_") as tmp:
        work = Path(tmp)
        for round_index in range(rounds):
            bare = bare_rate(bare_s)
            order = levers[round_index % len(levers) :] + levers[: round_index % len(levers)]
            for name in order:
                settings, env = LEVERS[name]
                slug = name.replace(" ", "_").replace("+", "")
                config = lever_config(settings, samples, work / f"{slug}.yaml")
                rate = lever_rate(store, config, env, work / f"{slug}-{round_index}")
                rates[name].append(rate)
                ratios[name].append(rate / bare)
                share = rate / bare
                print(f"round {round_index}: {name}: {rate:.1f} images/s, {share:.2f} of bare "
                      f"({bare:.1f})", flush=True)  # fmt: skip
    rows = []
    base = statistics.median(ratios[levers[0]])
    for name in levers:
        ratio = statistics.median(ratios[name])
        rows.append(
            {
                "lever": name,
                "images_per_s": round(statistics.median(rates[name]), 1),
                "ratio_to_bare": round(ratio, 3),
                "speed_vs_first": round(ratio / base, 3),
                "rounds": [round(r, 3) for r in ratios[name]],
            }
        )
    return rows


def quality(store: Path, shift: Path, workdir: Path, variants: list[str], bootstrap: int) -> list:
    """Per variant: train (reusing a finished run), score on the shifted set."""
    from lensfinder.config import TrainConfig, load_config
    from lensfinder.train import train

    rows = []
    for spec in variants:
        label, _, config_name = spec.rpartition("=")
        label = label or Path(config_name).stem
        run = workdir / "runs" / label.replace(" ", "_")
        config = load_config(TrainConfig, config_name)
        load_before = os.getloadavg()[0]
        with common.Stopwatch() as watch:
            result = train(config, store, run, resume=True, progress=False)
        row = bench_domain_shift.score(run, shift, workdir / "eval" / run.name, bootstrap)
        row.update(
            label=label,
            config=config_name,
            train_min=round(watch.seconds / 60, 1),
            epochs=result.epochs,
            load_average=[round(load_before, 2), round(os.getloadavg()[0], 2)],
        )
        rows.append(row)
        low, high = row["auroc_ci"]
        print(f"{label}: {row['train_min']} min, AUROC {row['auroc']:.3f} [{low:.3f}, {high:.3f}] "
              f"TPR@1e-3 {row['tpr_at_fpr_1e-3']}", flush=True)  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a packed training store")
    parser.add_argument("--levers", default=",".join(LEVERS), help="comma-separated, first = base")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=640, help="samples per speed epoch")
    parser.add_argument("--bare-seconds", type=float, default=8.0)
    parser.add_argument("--speed-only", action="store_true")
    parser.add_argument(
        "--bare-only", action="store_true",
        help="only the bare loop's levers (size, frozen stages, batch), alternating in rounds",
    )  # fmt: skip
    parser.add_argument("--quality-only", action="store_true")
    parser.add_argument("--shift", type=Path, help="the shifted evaluation store (quality)")
    parser.add_argument("--workdir", type=Path, help="runs and scores of the quality part")
    parser.add_argument("--variant", action="append", default=[], help="LABEL=CONFIG")
    parser.add_argument("--bootstrap", type=int, default=1000)
    common.add_json_argument(parser)
    args = parser.parse_args(argv)
    common.quiet()
    common.quiet_lightning()
    machine = common.print_machine()
    levers = [name.strip() for name in args.levers.split(",") if name.strip()]
    unknown = [name for name in levers if name not in LEVERS]
    if unknown:
        raise SystemExit(f"unknown levers {unknown}; known: {', '.join(LEVERS)}")
    speed_rows: list[dict] = []
    quality_rows: list[dict] = []
    if args.bare_only:
        bare_rows = bare_speed(args.rounds, args.bare_seconds)
        print("\n| bare loop | images/s | speed vs 100 px |\n|---|---|---|")
        for row in bare_rows:
            print(f"| {row['lever']} | {row['images_per_s']} | {row['speed_vs_first']:.2f}x |")
        figures = [common.figure(f"bare loop, {r['lever']}", r["images_per_s"], "images/s")
                   for r in bare_rows]  # fmt: skip
        common.write_results(args.json, __file__, figures, {"bare": bare_rows}, machine)
        return
    if not args.quality_only:
        speed_rows = speed(args.data, levers, args.rounds, args.samples, args.bare_seconds)
        print("\n| lever | images/s | of the bare loop | speed vs " + levers[0] + " |")
        print("|---|---|---|---|")
        for row in speed_rows:
            print(f"| {row['lever']} | {row['images_per_s']} | {row['ratio_to_bare']:.2f} | "
                  f"{row['speed_vs_first']:.2f}x |")  # fmt: skip
    if not args.speed_only:
        if args.shift is None or args.workdir is None or not args.variant:
            raise SystemExit("the quality part needs --shift, --workdir and --variant")
        quality_rows = quality(args.data, args.shift, args.workdir, args.variant, args.bootstrap)
    figures = [
        common.figure(f"training rate, {r['lever']}, ratio to the bare loop", r["ratio_to_bare"])
        for r in speed_rows
    ] + [
        common.figure(f"shifted-set AUROC, {r['label']} ({r['train_min']} min)", r["auroc"])
        for r in quality_rows
    ]
    details = {
        "speed": speed_rows,
        "quality": quality_rows,
        "levers": {k: LEVERS[k] for k in levers},
    }
    common.write_results(args.json, __file__, figures, details, machine, argv or sys.argv[1:])


if __name__ == "__main__":
    main()
