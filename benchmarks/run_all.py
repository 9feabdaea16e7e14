"""Run every benchmark at sizes for a small machine and write ``benchmarks/results.md``.

    .venv/bin/python benchmarks/run_all.py                 # about 10-20 minutes on 2 idle cores
    .venv/bin/python benchmarks/run_all.py --quick --out /tmp/results.md    # checks the runner
    .venv/bin/python benchmarks/run_all.py --only bench_train,bench_backends

Each benchmark runs as its own process (its own threads and memory; the scan benchmark starts
Dask workers) with ``--json``; their records become one markdown table: figure, value, the exact
command, the machine and the date. The AUROC-budget benchmark's data and best run are reused by
the scan benchmark. A benchmark that fails is listed as failed, and the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import common

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.md"
WORKDIR = Path(tempfile.gettempdir()) / "lensfinder-bench"


def plan(workdir: Path, quick: bool) -> list[tuple[str, list[str]]]:
    """``(script, arguments)`` in run order; ``quick`` shrinks everything to check the runner."""
    budget_dir = workdir / "auroc_budget"
    samples, epochs = ("64,128", 1) if quick else ("250,500,1000", 2)
    best_run = budget_dir / "runs" / f"samples{samples.split(',')[-1]}-epochs{epochs}"
    sizes = {  # (quick, full)
        "bench_simulate": ("--n 20 --workers 2", "--n 600 --workers 2"),
        "bench_store_read": ("--n 128 --repeats 2", "--n 512 --repeats 2"),
        "bench_train": ("--n 128 --epochs 2 --samples 64", "--n 512 --epochs 2 --samples 256"),
        "bench_backends": ("--n 64 --batch 32", "--n 128 --batch 32"),
        "bench_preprocess": ("--rounds 2 --repeats 1 --threads 1", "--rounds 5 --repeats 2"),
        "bench_auroc_budget": ("--n 200 --bootstrap 200", "--n 800 --bootstrap 500"),
    }
    steps = [(script, pair[0 if quick else 1].split()) for script, pair in sizes.items()]
    steps[-1][1].extend(
        ["--lens-fraction", "0.5", "--seed", "0", "--samples", samples, "--epochs", str(epochs),
         "--workdir", str(budget_dir)]
    )  # fmt: skip
    # The scan reuses the budget benchmark's store and its largest-budget model.
    scan = ["--no-simulate", "--layout", str(budget_dir / "layout"),
            "--store", str(budget_dir / "store.zarr"), "--model", str(best_run),
            "--workdir", str(workdir / "scan_scale")]  # fmt: skip
    # scan vs bare ONNX Runtime on the same store and model
    rate = ["--data", str(budget_dir / "store.zarr"), "--model", str(best_run), "--workers", "2",
            "--repeats", "1" if quick else "2"]  # fmt: skip
    return [*steps, ("bench_scan_scale", scan), ("bench_scan", rate)]


def run_one(script: str, arguments: list[str], json_path: Path, log_path: Path) -> int:
    """Run one benchmark, echoing its output and keeping a copy in ``log_path``."""
    command = [sys.executable, str(HERE / f"{script}.py"), *arguments, "--json", str(json_path)]
    print(f"\n=== {script}: {' '.join(command)}", flush=True)
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},  # lines as they come, not at the end
        )
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            log.write(line)
        return process.wait()


def _value(figure: dict[str, Any]) -> str:
    value, unit = figure.get("value"), figure.get("unit") or ""
    text = f"{value:g}" if isinstance(value, int | float) else str(value)
    if figure.get("ci"):
        low, high = figure["ci"]
        text += f" [{low:.3f}, {high:.3f}]"
    return f"{text} {unit}".strip()


def markdown(records: list[dict[str, Any]], failed: dict[str, str]) -> str:
    """The results table; the full machine description of each distinct machine below it."""
    lines = [
        "# Benchmark results",
        "",
        "Written by `benchmarks/run_all.py` (`make bench`); see `benchmarks/README.md` for what "
        "each figure measures. Numbers from shared or busy machines are pessimistic.",
        "",
        "| figure | value | command | machine | date |",
        "|---|---|---|---|---|",
    ]
    machines: dict[str, str] = {}
    for record in records:
        short = common.machine_short(record["machine"])
        machines.setdefault(short, common.machine_line(record["machine"]))
        for figure in record["figures"]:
            cells = [
                figure["figure"],
                _value(figure),
                f"`{record['command']}`",
                short,
                record["date"],
            ]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", "## Machines", ""]
    lines += [f"- {line}" for line in machines.values()]
    if failed:
        lines += ["", "## Failed", ""]
        lines += [f"- `{script}`: {why}" for script, why in failed.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir",
        type=Path,
        default=WORKDIR,
        help="data, runs, JSON and logs; kept, so a re-run reuses the data",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="the markdown file to write")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the runner only")
    parser.add_argument("--only", default=None, help="comma-separated benchmark names")
    args = parser.parse_args(argv)

    from lensfinder.files import atomic_write_text

    workdir = args.workdir / ("quick" if args.quick else "full")
    workdir.mkdir(parents=True, exist_ok=True)
    wanted = set(args.only.split(",")) if args.only else None
    known = {script for script, _ in plan(workdir, args.quick)}
    if wanted is not None and wanted - known:
        parser.error(f"--only: unknown {', '.join(sorted(wanted - known))}; known: "
                     f"{', '.join(sorted(known))}")  # fmt: skip
    records: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    with common.Stopwatch() as watch:
        for script, arguments in plan(workdir, args.quick):
            if wanted is not None and script not in wanted:
                continue
            json_path, log_path = workdir / f"{script}.json", workdir / f"{script}.log"
            json_path.unlink(missing_ok=True)
            status = run_one(script, arguments, json_path, log_path)
            if json_path.is_file():
                records.append(json.loads(json_path.read_text()))
            if status != 0:
                failed[script] = f"exit status {status} (log: {log_path})"
    atomic_write_text(args.out, markdown(records, failed))
    print(f"\n{len(records)} benchmark(s) in {watch.seconds / 60:.1f} min -> {args.out}")
    for script, why in failed.items():
        print(f"FAILED {script}: {why}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
