"""Survey-scale scan, end to end: N cutouts scanned with flat memory, killed once and resumed.

    .venv/bin/python benchmarks/bench_scan_scale.py --n 20000 --model RUN_DIR \\
        --layout /tmp/scan20k --store /tmp/scan20k.zarr
    .venv/bin/python benchmarks/bench_scan_scale.py --n 200          # a quick check

Steps: simulate N cutouts into ``--layout`` (resumable: a finished layout is reused) and pack
them into ``--store``; then, for each backend, run ``lensfinder scan`` as a subprocess, kill its
whole process tree once some shard files exist, and run the same command again to resume. The
script checks that the final catalogue has N rows less the counted skips, no repeated IDs, and
that the resumed run reused the shards written before the kill. While the scans run it samples
the resident memory (RSS) of the scan's process tree (client, Dask nanny and worker), and
prints its peak in each quarter of the progress: flat memory means the last quarter's peak is
the first's. Cutouts/s per backend: the steady rate of one worker (median over the shard files,
each of which records its own scoring time), compared with eager torch (NCHW, in this process) on
the same cutouts. Optionally the layout itself (FITS files, not packed) is scanned once too.

Without ``--model`` an untrained model of the cpu-small config is used: its speed and memory
are a trained one's, its scores are not. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common

MIB = 2**20
QUARTERS = (25, 50, 75, 100)


# -- the process tree and its memory -----------------------------------------------------------
def process_tree(pid: int) -> list[Any]:
    """The process and all its descendants that are still alive (psutil.Process objects)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_rss(processes: list[Any]) -> int:
    """Summed RSS in bytes (shared library pages count once per process: an upper bound)."""
    import psutil

    total = 0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += process.memory_info().rss
    return total


def complete_shards(out: Path) -> int:
    """Shard files written so far (written atomically, so each one that exists is complete)."""
    return len(list((out / "shards").glob("shard-*.parquet")))


@dataclass
class ScanRun:
    """One ``lensfinder scan`` subprocess: its outcome and its memory samples."""

    command: list[str]
    returncode: int
    wall_s: float
    killed: bool
    shards_at_kill: int | None
    log: str
    samples: list[tuple[float, float, int, int]] = field(default_factory=list)
    # (seconds since start, progress 0..1, tree RSS bytes, processes)


def run_scan(
    command: list[str],
    out: Path,
    total_shards: int,
    kill_after: int | None,
    kill_signal: signal.Signals,
    interval: float,
    log_path: Path,
) -> ScanRun:
    """Run ``command``; sample its process tree's RSS every ``interval`` s; when ``kill_after``
    shard files exist, send ``kill_signal`` to its process group (a new session, so nothing of
    this process is hit) and make sure every process of the tree is gone."""
    import psutil

    env = {**os.environ, "LENSFINDER_QUIET": "1"}
    samples: list[tuple[float, float, int, int]] = []
    killed = False
    shards_at_kill = None
    began = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        tree: list[Any] = []
        try:
            while proc.poll() is None:
                tree = process_tree(proc.pid) or tree
                done = complete_shards(out)
                samples.append(
                    (time.perf_counter() - began, done / total_shards, tree_rss(tree), len(tree))
                )
                if kill_after is not None and done >= kill_after:
                    os.killpg(proc.pid, kill_signal)
                    killed = True
                    try:
                        proc.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
                    break
                time.sleep(interval)
            proc.wait()
        except BaseException:  # this script stopped (Ctrl-C): the scan, in its own session, too
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            raise
    if killed:  # a Dask worker outside the process group must not live on, scoring
        for process in tree:
            try:
                process.wait(timeout=30)
            except psutil.TimeoutExpired:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        shards_at_kill = complete_shards(out)
    return ScanRun(
        command=command,
        returncode=proc.returncode,
        wall_s=time.perf_counter() - began,
        killed=killed,
        shards_at_kill=shards_at_kill,
        log=log_path.read_text(),
        samples=samples,
    )


def memory_by_quarter(samples: list[tuple[float, float, int, int]]) -> dict[int, float | None]:
    """Peak tree RSS (MiB) within each quarter of progress (0-25 %, ..., 75-100 %)."""
    peaks: dict[int, float | None] = {}
    for quarter in QUARTERS:
        low = (quarter - 25) / 100
        chosen = [
            rss
            for _, done, rss, _ in samples
            if (low < done <= quarter / 100) or (quarter == 25 and done == 0)
        ]
        peaks[quarter] = round(max(chosen) / MIB, 1) if chosen else None
    return peaks


# -- checks ------------------------------------------------------------------------------------
def check_catalogue(out: Path, source: Any) -> dict[str, Any]:
    """Rows, repeated IDs and unknown IDs of the merged catalogue, against the scan summary."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    summary = json.loads((out / "summary.json").read_text())
    ids = pq.read_table(out / "candidates.parquet", columns=["id"])["id"]
    n_rows = len(ids)
    skipped = int(summary["n_skipped"])
    unknown = int(np.count_nonzero(~np.isin(ids.to_numpy(), np.asarray(source.ids))))
    return {
        "rows": n_rows,
        "expected_rows": len(source) - skipped,
        "skipped": summary["skipped"],
        "source_problems": summary["source_problems"],
        "repeated_ids": n_rows - pc.count_distinct(ids).as_py(),
        "unknown_ids": unknown,
        "shards": summary["shards"],
        "rate_cutouts_per_s": summary["rate_cutouts_per_s"],
        "scan_seconds": summary["scan_seconds"],
    }


def shard_rate(out: Path) -> float | None:
    """Median cutouts/s of one worker over the shard files (each records its own seconds): the
    steady scoring rate, free of Dask start-up and of each worker's first shard, which pays for
    the imports and the model load."""
    import numpy as np
    import pyarrow.parquet as pq

    rates = []
    for path in (out / "shards").glob("shard-*.parquet"):
        meta = json.loads(pq.read_schema(path).metadata[b"lensfinder"])
        count = meta["n_scored"] + sum(meta.get("skipped", {}).values())
        if meta.get("seconds"):
            rates.append(count / meta["seconds"])
    return float(np.median(rates)) if rates else None


def compare_catalogues(first: Path, second: Path) -> dict[str, Any]:
    """Same IDs, and the largest score difference, between two scans of the same objects."""
    import numpy as np
    import pyarrow.parquet as pq

    a = pq.read_table(first / "candidates.parquet", columns=["id", "score"]).sort_by("id")
    b = pq.read_table(second / "candidates.parquet", columns=["id", "score"]).sort_by("id")
    same_ids = a["id"].equals(b["id"])
    diff = (
        float(np.abs(a["score"].to_numpy() - b["score"].to_numpy()).max())
        if same_ids and len(a)
        else None
    )
    return {"same_ids": same_ids, "max_score_diff": diff}


# -- the benchmark -----------------------------------------------------------------------------
def scan_command(
    model: Path, data: Path, out: Path, backend: str, args: argparse.Namespace, shard_size: int
) -> list[str]:
    """``lensfinder scan ...`` with this interpreter's entry point."""
    prefix = common.lensfinder_command()
    return [
        *prefix,
        "scan",
        "--model",
        str(model),
        "--data",
        str(data),
        "--out",
        str(out),
        "--backend",
        backend,
        "--shard-size",
        str(shard_size),
        "--workers",
        str(args.scan_workers),
        "--batch-size",
        str(args.batch_size),
    ]


def killed_and_resumed(
    model: Path,
    data: Path,
    out: Path,
    backend: str,
    args: argparse.Namespace,
    shard_size: int,
    total_shards: int,
) -> dict[str, Any]:
    """Scan once and kill it after some shards; scan again to finish. Returns both runs."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    command = scan_command(model, data, out, backend, args, shard_size)
    kill_after = args.kill_after or max(1, total_shards // 3)
    kill_signal = signal.SIGINT if args.signal == "int" else signal.SIGKILL
    print(f"[{backend}] {' '.join(command)}", flush=True)
    first = run_scan(
        command, out, total_shards, kill_after, kill_signal, args.interval, out / "run1.log"
    )
    print(
        f"[{backend}] run 1: killed ({args.signal}) after {first.wall_s:.1f} s with "
        f"{first.shards_at_kill}/{total_shards} shards written; exit status {first.returncode}"
        if first.killed
        else f"[{backend}] run 1 finished before the kill (exit status {first.returncode})",
        flush=True,
    )
    finished_early = (out / "candidates.parquet").exists()
    second = run_scan(
        command, out, total_shards, None, kill_signal, args.interval, out / "run2.log"
    )
    print(f"[{backend}] run 2 (resume): {second.wall_s:.1f} s, exit status {second.returncode}")
    print("    " + second.log.strip().replace("\n", "\n    "), flush=True)
    return {"first": first, "second": second, "finished_early": finished_early}


def eager_reference(model: Path, store: Path, n: int, batch: int) -> float:
    """Cutouts/s of eager torch (NCHW, no channels_last) in this process on the first ``n``."""
    import numpy as np

    from lensfinder.config import PredictConfig
    from lensfinder.data import open_source
    from lensfinder.predict import Predictor

    source = open_source(store)
    cut = source.read(np.arange(min(n, len(source))))
    vis, nisp = cut.vis[cut.valid], cut.nisp[cut.valid]
    predictor = Predictor(
        [model], PredictConfig(batch_size=batch), device="cpu", channels_last=False
    )
    per_second, _ = common.time_predictor(predictor, vis, nisp, warmup=batch)
    return per_second


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="cutouts to simulate and scan")
    parser.add_argument("--seed", type=int, default=7, help="simulation seed")
    parser.add_argument("--lens-fraction", type=float, default=0.01, help="lenses are rare")
    parser.add_argument("--sim-workers", type=int, default=2, help="simulation/pack processes")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="scan outputs, logs and default data (default: a fixed temp dir)",
    )
    parser.add_argument("--layout", type=Path, default=None, help="default: WORKDIR/layout")
    parser.add_argument("--store", type=Path, default=None, help="default: WORKDIR/store.zarr")
    parser.add_argument(
        "--simulate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="simulate the layout (resumable); --no-simulate uses --store (or packs --layout) "
        "as it is, e.g. data made elsewhere or real cutouts",
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="run directory (default: an untrained cpu-small model)",
    )
    parser.add_argument("--backends", default="torch,onnx", help="comma-separated")
    parser.add_argument("--scan-workers", type=int, default=1, help="Dask workers")
    parser.add_argument(
        "--shard-size",
        type=int,
        default=None,
        help="cutouts per shard (default: about 16 shards, 32 to 2048 each)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="inference batch size")
    parser.add_argument(
        "--kill-after",
        type=int,
        default=None,
        help="kill the first scan once this many shards exist (default: 1/3)",
    )
    parser.add_argument(
        "--signal",
        choices=("kill", "int"),
        default="kill",
        help="SIGKILL (a crash) or SIGINT (Ctrl-C) to the scan's process group",
    )
    parser.add_argument("--interval", type=float, default=0.5, help="memory sampling period, s")
    parser.add_argument(
        "--eager-n",
        type=int,
        default=256,
        help="cutouts for the eager torch reference (0: skip it)",
    )
    parser.add_argument(
        "--layout-scan",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also scan the layout's FITS files directly, once",
    )
    parser.add_argument(
        "--max-rss-growth",
        type=float,
        default=1.3,
        help="fail when the last quarter's peak RSS exceeds the first's by this",
    )
    common.add_json_argument(parser)
    args = parser.parse_args(argv)
    common.quiet()

    from lensfinder.config import PredictConfig
    from lensfinder.data import open_source
    from lensfinder.predict import Predictor

    workdir = args.workdir or Path(tempfile.gettempdir()) / (
        f"lensfinder-scan-scale-n{args.n}-seed{args.seed}"
    )
    workdir.mkdir(parents=True, exist_ok=True)
    layout = args.layout or workdir / "layout"
    store = args.store or workdir / "store.zarr"
    if args.simulate:
        data_info = common.simulated_store(
            layout, store, args.n, args.seed, args.lens_fraction, args.sim_workers
        )
    else:  # data made elsewhere (or real): used as it is, packed only when there is no store
        data_info = {"layout": str(layout), "store": str(store)}
        if not store.exists():
            from lensfinder.data.store import pack

            print(pack(layout, store, progress=False, workers=args.sim_workers).summary())
    model = args.model
    if model is None:
        model = workdir / "untrained-cpu-small"
        if not (model / "model.json").is_file():
            common.untrained_run(model)
        print(f"model: {model} (untrained cpu-small: speed and memory only)")
    model = model.resolve()
    source = open_source(store)
    shard_size = args.shard_size or min(2048, max(32, math.ceil(len(source) / 16)))
    total_shards = math.ceil(len(source) / shard_size)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]

    details: dict[str, Any] = {
        "data": data_info,
        "model": str(model),
        "shard_size": shard_size,
        "shards": total_shards,
        "scan_workers": args.scan_workers,
        "signal": args.signal,
        "backends": {},
    }
    checks: dict[str, bool] = {}
    rates: dict[str, float] = {}  # steady per-worker rate (median shard)
    if "onnx" in backends:  # export (cached in the run dir) before timing, as a first scan would
        with common.Stopwatch() as watch:
            Predictor([model], PredictConfig(backend="onnx"))
        details["onnx_export_or_cache_check_s"] = round(watch.seconds, 2)

    for backend in backends:
        out = workdir / f"scan-{backend}"
        runs = killed_and_resumed(model, store, out, backend, args, shard_size, total_shards)
        first, second = runs["first"], runs["second"]
        result = check_catalogue(out, source) if second.returncode == 0 else {}
        samples = first.samples + [(t + first.wall_s, *rest) for t, *rest in second.samples]
        memory = memory_by_quarter(samples)
        peaks = [m for m in memory.values() if m is not None]
        growth = peaks[-1] / peaks[0] if len(peaks) >= 2 and peaks[0] else None
        backend_checks = {
            "killed mid-scan": first.killed and not runs["finished_early"],
            "resume exited 0": second.returncode == 0,
            "rows = objects - skipped": bool(result) and result["rows"] == result["expected_rows"],
            "no repeated IDs": bool(result) and result["repeated_ids"] == 0,
            "only known IDs": bool(result) and result["unknown_ids"] == 0,
            "resume reused the shards written before the kill": bool(result)
            and first.shards_at_kill is not None
            and first.shards_at_kill > 0
            and result["shards"]["reused"] == first.shards_at_kill
            and result["shards"]["done"] == total_shards - first.shards_at_kill,
            "memory flat": growth is not None and growth <= args.max_rss_growth,
        }
        checks.update({f"{backend}: {k}": v for k, v in backend_checks.items()})
        rates[backend] = shard_rate(out) or 0.0
        details["backends"][backend] = {
            "median_shard_per_s": round(rates[backend], 2),
            "resumed_run_per_s": result.get("rate_cutouts_per_s"),
            "both_runs_wall_s": round(first.wall_s + second.wall_s, 2),
            "command": " ".join(scan_command(model, store, out, backend, args, shard_size)),
            "catalogue": result,
            "run1_wall_s": round(first.wall_s, 2),
            "run1_shards_at_kill": first.shards_at_kill,
            "run2_wall_s": round(second.wall_s, 2),
            "peak_rss_mib_by_progress": memory,
            "peak_rss_mib": round(max(s[2] for s in samples) / MIB, 1) if samples else None,
            "rss_growth_last_over_first_quarter": round(growth, 3) if growth else None,
            "processes": max((s[3] for s in samples), default=0),
            "checks": backend_checks,
        }
        if second.returncode != 0:
            print(f"[{backend}] resumed scan failed:\n{second.log[-3000:]}", file=sys.stderr)

    if args.layout_scan:
        backend = backends[0]
        out = workdir / f"scan-layout-{backend}"
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        command = scan_command(model, layout.resolve(), out, backend, args, shard_size)
        print(f"[layout, {backend}] {' '.join(command)}", flush=True)
        run = run_scan(
            command, out, total_shards, None, signal.SIGKILL, args.interval, out / "run.log"
        )
        layout_result: dict[str, Any] = {"wall_s": round(run.wall_s, 2)}
        if run.returncode == 0:
            layout_result |= check_catalogue(out, open_source(layout))
            layout_result |= compare_catalogues(workdir / f"scan-{backend}", out)
            layout_result["median_shard_per_s"] = shard_rate(out)
            checks[f"layout {backend}: same IDs as the store scan"] = layout_result["same_ids"]
        else:
            checks[f"layout {backend}: exited 0"] = False
            print(f"[layout] scan failed:\n{run.log[-3000:]}", file=sys.stderr)
        layout_result["peak_rss_mib"] = (
            round(max(s[2] for s in run.samples) / MIB, 1) if run.samples else None
        )
        details["layout_scan"] = layout_result

    eager = eager_reference(model, store, args.eager_n, args.batch_size) if args.eager_n else None
    details["eager_torch_per_s"] = round(eager, 2) if eager else None

    # -- report ---------------------------------------------------------------------------------
    machine = common.print_machine()
    print(
        f"data: {store}, {len(source)} objects ({int((source.labels == 1).sum())} lenses), "
        f"{total_shards} shards of {shard_size}; model {model}; {args.scan_workers} Dask "
        f"worker(s), batch {args.batch_size}"
    )
    print("peak RSS of the scan process tree (MiB) by progress, both runs:")
    print(f"  {'backend':10s}" + "".join(f"{f'<= {q}%':>10s}" for q in QUARTERS) + "   growth")
    for backend, info in details["backends"].items():
        memory = info["peak_rss_mib_by_progress"]
        cells = "".join(f"{m if m is not None else '-':>10}" for m in memory.values())
        growth = info["rss_growth_last_over_first_quarter"]
        print(f"  {backend:10s}{cells}   x{growth if growth is not None else '-'}")
    base = eager or rates.get("torch")
    base_name = "eager torch NCHW, in-process" if eager else "torch scan"
    print(
        "scan speed, cutouts/s: steady = median shard of one worker (no start-up); resumed = "
        "the resumed run's shards over its time, Dask and model start-up included; both runs = "
        "N over the wall time of the killed and the resumed run"
    )
    print(f"  {'':18s} {'steady':>8s} {'ratio':>6s} {'resumed':>8s} {'both runs':>9s}")
    if eager:
        print(f"  {'eager torch (ref)':18s} {eager:8.1f} {'x1.00':>6s}")
    for backend, per_second in rates.items():
        info = details["backends"][backend]
        ratio = f"x{per_second / base:.2f}" if base else "-"
        overall = common.rate(len(source), info["both_runs_wall_s"])
        print(
            f"  {backend + ' scan':18s} {per_second:8.1f} {ratio:>6s} "
            f"{info['resumed_run_per_s'] or 0:8.1f} {overall:9.1f}"
        )
    if "layout_scan" in details and "median_shard_per_s" in details["layout_scan"]:
        lay = details["layout_scan"]
        ratio = f"x{lay['median_shard_per_s'] / base:.2f}" if base else "-"
        print(
            f"  {'layout (FITS) scan':18s} {lay['median_shard_per_s']:8.1f} {ratio:>6s} "
            f"{lay['rate_cutouts_per_s']:8.1f} {'-':>9s}  (same IDs as the store scan: "
            f"{lay['same_ids']}, max |score diff| {lay['max_score_diff']})"
        )
    print(f"  ratio: to {base_name}")
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")

    figures = []
    for backend, info in details["backends"].items():
        figures.append(
            common.figure(
                f"scan, {backend} backend, steady rate of one worker (median shard)",
                rates[backend],
                "cutouts/s",
            )
        )
        if base:
            figures.append(
                common.figure(
                    f"scan {backend} steady rate / {base_name}", rates[backend] / base, "x"
                )
            )
        figures.append(
            common.figure(
                f"scan, {backend} backend, N={len(source)} killed and resumed, end to end",
                common.rate(len(source), info["both_runs_wall_s"]),
                "cutouts/s",
            )
        )
        figures.append(
            common.figure(
                f"peak RSS of scan tree, {backend}",
                info["peak_rss_mib"],
                "MiB",
                by_progress=info["peak_rss_mib_by_progress"],
            )
        )
    if eager:
        figures.append(common.figure("eager torch NCHW inference (reference)", eager, "cutouts/s"))
    if "layout_scan" in details and "median_shard_per_s" in details["layout_scan"]:
        figures.append(
            common.figure(
                f"scan, layout (FITS files, not packed), {backends[0]}, steady rate",
                details["layout_scan"]["median_shard_per_s"],
                "cutouts/s",
            )
        )
    if data_info.get("simulate_per_s"):
        figures.append(common.figure("simulation rate", data_info["simulate_per_s"], "cutouts/s"))
    figures.append(
        common.figure(
            "kill/resume and catalogue checks passed", f"{sum(checks.values())}/{len(checks)}"
        )
    )
    details["checks"] = checks
    common.write_results(args.json, __file__, figures, details, machine, argv)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
