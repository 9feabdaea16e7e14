"""A small scan's start-up: a LocalCluster against scoring in the scan's own process.

    .venv/bin/python benchmarks/bench_scan_startup.py --model RUN_DIR --n 2000 --rounds 3
    .venv/bin/python benchmarks/bench_scan_startup.py --data STORE --backend torch

``lensfinder scan`` as a user runs it (a subprocess, no ``--scheduler``), on the same store with
the same model and settings, two ways in alternating rounds (other processes on shared cores
change the rates from minute to minute):

- cluster: ``--local-below 0``, a LocalCluster of ``--workers`` processes (the old path);
- in-process: ``--local-below`` above the store's size, the scan's process scores the shards.

For each: seconds from the command's start to the first cutout scored (the earliest shard's
``began_at``, read from the shard files) and the whole command's wall time; medians over the
rounds, and their ratios. The model files are copied into the work directory (its ONNX cache is
written there), and one scan is run first to build it, so every timed scan finds it cached.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import common
import numpy as np
from bench_scan import copy_model, fake_store, load_average

WAYS = {"cluster": 0, "in-process": 10**9}  # --local-below of each


def first_scoring(out: Path) -> float:
    """Epoch seconds when the first shard began scoring (its file's metadata)."""
    import pyarrow.parquet as pq

    from lensfinder.scan.catalog import table_meta

    return min(
        float(table_meta(pq.read_schema(p))["began_at"])
        for p in (out / "shards").glob("shard-*.parquet")
    )


def timed_scan(
    model: Path, store: Path, out: Path, args: argparse.Namespace, local_below: int
) -> dict[str, Any]:
    """One ``lensfinder scan`` subprocess: until its first scored cutout, and its wall time."""
    if out.exists():
        shutil.rmtree(out)
    prefix = common.lensfinder_command()
    command = [
        *prefix,
        *("scan", "--model", str(model), "--data", str(store), "--out", str(out)),
        *("--backend", args.backend, "--workers", str(args.workers)),
        *("--local-below", str(local_below)),
    ]
    load = load_average()
    began = time.time()
    done = subprocess.run(
        command, env={**os.environ, "LENSFINDER_QUIET": "1"}, capture_output=True, text=True
    )
    wall = time.time() - began
    if done.returncode != 0:
        raise SystemExit(f"scan failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    summary = json.loads((out / "summary.json").read_text())
    return {
        "runner": summary["runner"],
        "first_scored_s": round(first_scoring(out) - began, 2),
        "wall_s": round(wall, 2),
        "steady_per_s": summary["steady_rate_cutouts_per_s"],
        "startup": summary["startup"],
        "load_average": load,
        "command": " ".join(command),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="run directory (default: untrained cpu-small)")
    parser.add_argument("--data", type=Path, help="store or layout (default: synthetic, --n)")
    parser.add_argument("--n", type=int, default=2000, help="synthetic cutouts without --data")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster workers")
    parser.add_argument("--backend", default="onnx", help="torch, onnx or onnx-int8")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the two ways")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary dir")
    common.add_json_argument(parser)
    args = parser.parse_args(argv)
    common.quiet()

    with common.work_directory(args.workdir, "bench-scan-startup-") as workdir:
        store = (args.data or fake_store(workdir, args.n)).resolve()
        model = copy_model(args.model.resolve() if args.model else None, workdir)
        timed_scan(model, store, workdir / "cold", args, WAYS["in-process"])  # ONNX cache
        runs: dict[str, list[dict[str, Any]]] = {way: [] for way in WAYS}
        for k in range(args.rounds):
            for way, local_below in WAYS.items():
                run = timed_scan(model, store, workdir / f"scan-{way}", args, local_below)
                runs[way].append(run)
                print(
                    f"round {k + 1} {way:10s}: first cutout scored {run['first_scored_s']:.2f} s,"
                    f" whole {run['wall_s']:.2f} s, steady {run['steady_per_s']:.0f}/s"
                    f" (load {run['load_average']})",
                    flush=True,
                )

    def median(way: str, key: str) -> float:
        return round(float(np.median([r[key] for r in runs[way]])), 2)

    machine = common.print_machine()
    print(f"data: {store}; {args.backend}; cluster of {args.workers}; medians of {args.rounds}")
    figures = []
    for key, what in (("first_scored_s", "first cutout scored"), ("wall_s", "whole command")):
        old, new = median("cluster", key), median("in-process", key)
        print(f"  {what}: cluster {old:.2f} s, in-process {new:.2f} s ({old / new:.2f}x)")
        figures += [
            common.figure(f"scan {what}, cluster", old, "s"),
            common.figure(f"scan {what}, in-process", new, "s"),
            common.figure(f"scan {what}, cluster / in-process", round(old / new, 2), "x"),
        ]
    details = {"data": str(store), "backend": args.backend, "workers": args.workers, **runs}
    common.write_results(args.json, __file__, figures, details, machine, argv)
    return runs


if __name__ == "__main__":
    main()
