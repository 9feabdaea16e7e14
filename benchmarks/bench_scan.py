"""End-to-end scan rate against bare ONNX Runtime inference, side by side in one run.

    .venv/bin/python benchmarks/bench_scan.py --model RUN_DIR --data STORE --workers 2
    .venv/bin/python benchmarks/bench_scan.py --n 1000               # untrained model, fake data
    .venv/bin/python benchmarks/bench_scan.py --model RUN_DIR --data STORE --int8
    .venv/bin/python benchmarks/bench_scan.py --model RUN_DIR --data STORE --device cuda --workers 1

Same store, same model file, same batch size and threads for both sides:

(a) bare ONNX Runtime: ``session.run`` on batches already prepared in memory (the first
    ``--bare-n`` cutouts of the store through ``to_model_input``), one session per scan worker,
    each with that worker's threads, the sessions run at once in ``--workers`` processes; the
    rate is their sum. The ceiling a scan could reach: no reading, no preprocessing, no Dask.
(b) ``lensfinder scan`` as a subprocess, as a user runs it: its steady rate (summary.json:
    each worker's cutouts over its scoring time, start-up excluded, summed over workers), and
    the whole command's rate (cutouts over the subprocess's wall time: Python start-up, cluster,
    ONNX cache, workers' model loads, merge all in). The first scan of a fresh copy of the model
    exports its ONNX file (a cold start), later ones find it cached.
(c) the ratios (b)/(a). The goal: steady rate >= 0.8 of bare.

Rates on shared cores change with the other processes; CPU time per cutout much less. So the
same comparison is also made in CPU milliseconds per cutout (bare: the sessions' processes;
scan steady: its workers while scoring; whole command: the scan's whole process tree), and one
process on one thread splits a cutout's CPU cost into reading, preprocessing and inference:
the part of the scan that bare inference does not pay.

With ``--device cuda`` both sides run the torch backend on the GPU instead (bf16 autocast, as a
scan does there): bare is the model's forward pass on batches already on the GPU, synchronised
before the clock stops; the scan's workers score with ``--backend torch`` on the GPU they see.

The two sides alternate ``--repeats`` times, since other processes on shared cores change the
rates from minute to minute; the load average is printed with each. With ``--int8`` the int8
model is scanned too (quantised on the first scan, calibrated on the store) and, where the store
has labels, the AUROC of the float and int8 catalogues is compared. The model files are copied
into the work directory first, so its ONNX cache is written there and never beside the original.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import common
import numpy as np


def load_average() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def worker_threads(workers: int) -> int:
    """The threads a scan gives each LocalCluster worker (scan.run._dask_client's rule)."""
    from lensfinder.machine import available_cores

    return max(1, available_cores() // workers)


# -- (a) bare ONNX Runtime -----------------------------------------------------------------------
def prepared_inputs(model: Path, store: Path, n: int, out: Path) -> Path:
    """The first ``n`` valid cutouts of ``store`` as the model's input, saved to ``out`` (.npy)."""
    from lensfinder.data import open_source
    from lensfinder.data.transforms import to_model_input
    from lensfinder.models.checkpoint import input_config, read_meta

    source = open_source(store)
    cut = source.read(np.arange(min(n, len(source))))
    x = to_model_input(cut.vis[cut.valid], cut.nisp[cut.valid], input_config(read_meta(model)))
    if isinstance(x, tuple):
        raise SystemExit("bench_scan: two-branch models are not supported by the bare side")
    np.save(out, x.numpy())
    return out


def session(onnx_file: str | Path, threads: int) -> Any:
    """A plain ONNX Runtime session, set up as lensfinder's OnnxRunner sets its own."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])


def _bare_process(
    onnx_file: str, inputs: str, batch: int, threads: int, seconds: float, barrier: Any
) -> tuple[int, float, float]:
    """One worker's bare loop: a session with ``threads`` threads, run on the prepared batches
    for at least ``seconds`` after one warm-up batch; returns (cutouts, seconds, CPU seconds)."""
    bare = session(onnx_file, threads)
    name = bare.get_inputs()[0].name
    x = np.load(inputs)
    batches = [np.ascontiguousarray(x[i : i + batch]) for i in range(0, len(x), batch)]
    bare.run(None, {name: batches[0]})
    barrier.wait()
    count, began, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - began < seconds:
        for b in batches:
            bare.run(None, {name: b})
            count += len(b)
    return count, time.perf_counter() - began, time.process_time() - cpu


def bare_rate(
    onnx_file: Path, inputs: Path, batch: int, workers: int, seconds: float
) -> tuple[float, float]:
    """Summed cutouts/s of ``workers`` bare sessions running at once (see the module doc), and
    their CPU milliseconds per cutout."""
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(workers, mp_context=context) as pool:
        barrier = manager.Barrier(workers)
        args = (str(onnx_file), str(inputs), batch, worker_threads(workers), seconds, barrier)
        runs = [r.result() for r in [pool.submit(_bare_process, *args) for _ in range(workers)]]
    rate = sum(count / took for count, took, _ in runs)
    cpu_ms = 1000 * sum(cpu for _, _, cpu in runs) / sum(count for count, _, _ in runs)
    return rate, cpu_ms


def bare_rate_cuda(model: Path, inputs: Path, batch: int, seconds: float) -> tuple[float, float]:
    """Cutouts/s of the torch model's forward pass on the GPU (bf16 autocast where the GPU has
    bf16, channels-last, batches already on the device), and this process's CPU ms per cutout."""
    import torch

    from lensfinder.models.checkpoint import load_model
    from lensfinder.predict.model_io import forward

    device = torch.device("cuda")
    net, _ = load_model(model, device=device)
    net = net.to(memory_format=torch.channels_last)
    x = torch.from_numpy(np.load(inputs)).to(device).contiguous(memory_format=torch.channels_last)
    batches = [x[i : i + batch] for i in range(0, len(x), batch)]
    bf16 = torch.cuda.is_bf16_supported()

    def run() -> int:
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=bf16):
            for b in batches:
                forward(net, b)
        return len(x)

    run()
    torch.cuda.synchronize()
    count, began, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - began < seconds:
        count += run()
    torch.cuda.synchronize()
    took = time.perf_counter() - began
    return count / took, 1000 * (time.process_time() - cpu) / count


def breakdown(model: Path, onnx_file: Path, store: Path, n: int, batch: int) -> dict[str, float]:
    """CPU milliseconds per cutout of each step of scoring, in this process on one thread:
    reading from the store (with the repair of non-finite pixels), preprocessing
    (``to_model_input``) and inference (the same session settings as the bare side)."""
    import torch

    from lensfinder.data import open_source
    from lensfinder.data.cutouts import repair_rows
    from lensfinder.data.transforms import to_model_input
    from lensfinder.models.checkpoint import input_config, read_meta

    torch.set_num_threads(1)
    source = open_source(store)
    rows = np.arange(min(n, len(source)))
    input_cfg = input_config(read_meta(model))
    bare = session(onnx_file, 1) if onnx_file.exists() else None  # none on a --device cuda run
    name = bare.get_inputs()[0].name if bare is not None else ""

    def cpu_ms(step: Any) -> float:
        step()  # warm
        began = time.process_time()
        step()
        return 1000 * (time.process_time() - began) / len(rows)

    cut = source.read(rows)
    x = to_model_input(cut.vis, cut.nisp, input_cfg)
    assert isinstance(x, torch.Tensor)
    batches = [x[i : i + batch].numpy() for i in range(0, len(x), batch)]
    return {
        "read_ms": round(cpu_ms(lambda: repair_rows(source.read(rows))), 3),
        "preprocess_ms": round(cpu_ms(lambda: to_model_input(cut.vis, cut.nisp, input_cfg)), 3),
        "inference_ms": round(cpu_ms(lambda: [bare.run(None, {name: b}) for b in batches]), 3)
        if bare is not None
        else float("nan"),
    }


# -- (b) the scan ------------------------------------------------------------------------------
def run_scan(
    model: Path, store: Path, out: Path, backend: str, workers: int, batch: int
) -> dict[str, Any]:
    """``lensfinder scan`` in a subprocess; its summary.json, wall time and whole-command rate."""
    if out.exists():
        shutil.rmtree(out)
    prefix = common.lensfinder_command()
    command = [
        *prefix,
        "scan",
        "--model",
        str(model),
        "--data",
        str(store),
        "--out",
        str(out),
        "--backend",
        backend,
        "--workers",
        str(workers),
        "--batch-size",
        str(batch),
        "--local-below",  # always the cluster: its steady rate against bare sessions per worker
        "0",
    ]
    env = {**os.environ, "LENSFINDER_QUIET": "1"}
    load = load_average()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with common.Stopwatch() as watch:
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"scan failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    summary = json.loads((out / "summary.json").read_text())
    processed = summary["n_scored"] + summary["n_skipped"]
    # The tree's CPU: every process of it (client, nannies, workers) has been waited for.
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "backend": backend,
        "command": " ".join(command),
        "wall_s": round(watch.seconds, 2),
        "whole_per_s": round(processed / watch.seconds, 2),
        "whole_cpu_ms": round(1000 * cpu / processed, 3),
        "steady_cpu_ms": summary["steady_cpu_ms_per_cutout"],
        # The shards' own threads (older scans did not record it): the rest is Dask's.
        "steady_task_cpu_ms": summary.get("steady_task_cpu_ms_per_cutout"),
        "shutdown_s": summary["shutdown_s"],
        "steady_per_s": summary["steady_rate_cutouts_per_s"],
        "in_scan_per_s": summary["rate_cutouts_per_s"],
        "shards": summary["shards"]["total"],
        "shard_size": summary["shard_size"],
        "startup": summary["startup"],
        "load_average": load,
        "stdout": done.stdout.strip(),
    }


def catalogue_auroc(out: Path) -> float | None:
    """AUROC of a scan's catalogue against its labels (None without labels of both kinds)."""
    import pyarrow.parquet as pq
    from sklearn.metrics import roc_auc_score

    table = pq.read_table(out / "candidates.parquet")
    if "label" not in table.column_names:
        return None
    labels = table["label"].to_numpy()
    known = labels >= 0
    if len(np.unique(labels[known])) < 2:
        return None
    return float(roc_auc_score(labels[known], table["score"].to_numpy()[known]))


# -- the benchmark -----------------------------------------------------------------------------
def fake_store(workdir: Path, n: int) -> Path:
    """Challenge-sized synthetic cutouts (half lenses) packed into a store; reused if present."""
    from lensfinder.testing import make_tiny_layout, make_tiny_store

    store = workdir / f"fake-{n}.zarr"
    if not store.exists():
        layout = make_tiny_layout(workdir / f"fake-{n}", n=n, seed=0)
        make_tiny_store(layout, store)
    return store


def copy_model(model: Path | None, workdir: Path) -> Path:
    """The model's files in WORKDIR/model (its ONNX cache is written there, never beside the
    original); an untrained cpu-small model when none is given (speed only)."""
    target = workdir / "model"
    if target.exists():
        shutil.rmtree(target)
    if model is None:
        return common.untrained_run(target)
    target.mkdir(parents=True)
    for name in ("model.json", "model.safetensors"):
        shutil.copy2(model / name, target / name)
    return target


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="run directory (default: untrained cpu-small)")
    parser.add_argument("--data", type=Path, help="store or layout (default: synthetic, --n)")
    parser.add_argument("--n", type=int, default=1000, help="synthetic cutouts without --data")
    parser.add_argument("--workers", type=int, default=2, help="scan workers = bare sessions")
    parser.add_argument("--batch", type=int, default=64, help="inference batch size")
    parser.add_argument("--repeats", type=int, default=2, help="alternations of bare and scan")
    parser.add_argument("--bare-n", type=int, default=256, help="prepared cutouts, bare side")
    parser.add_argument("--bare-seconds", type=float, default=8.0, help="bare timing per run")
    parser.add_argument("--int8", action="store_true", help="also the int8 model (and AUROC)")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="cuda: torch backend on the GPU"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary dir")
    common.add_json_argument(parser)
    args = parser.parse_args(argv)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("bench_scan: --device cuda, but torch sees no CUDA GPU here")
        if args.int8:
            raise SystemExit("bench_scan: --int8 is an ONNX Runtime (CPU) model; drop --device")
    common.quiet()

    with common.work_directory(args.workdir, "bench-scan-") as workdir:
        store = (args.data or fake_store(workdir, args.n)).resolve()
        model = copy_model(args.model.resolve() if args.model else None, workdir)
        inputs = prepared_inputs(model, store, args.bare_n, workdir / "inputs.npy")
        backends = ["onnx", "onnx-int8"] if args.int8 else ["onnx"]
        if args.device == "cuda":
            backends = ["torch"]
        results: dict[str, dict[str, Any]] = {}
        for backend in backends:
            onnx_file = model / ("model.int8.onnx" if backend == "onnx-int8" else "model.onnx")
            scans, bares = [], []
            for k in range(args.repeats + 1):  # scan 0 is the cold start (ONNX file built)
                out = workdir / f"scan-{backend}-{k}"
                scans.append(run_scan(model, store, out, backend, args.workers, args.batch))
                if k == 0:
                    continue  # the bare side needs the ONNX file the cold scan made
                load = load_average()
                if backend == "torch":
                    rate, cpu_ms = bare_rate_cuda(model, inputs, args.batch, args.bare_seconds)
                else:
                    rate, cpu_ms = bare_rate(
                        onnx_file, inputs, args.batch, args.workers, args.bare_seconds
                    )
                bares.append({"per_s": round(rate, 2), "cpu_ms": round(cpu_ms, 3), "load": load})
                print(
                    f"[{backend}] round {k}: bare {rate:.1f}/s {cpu_ms:.2f} ms CPU (load {load}); "
                    f"scan steady {scans[k]['steady_per_s']:.1f}/s {scans[k]['steady_cpu_ms']:.2f} "
                    f"ms CPU (task threads {scans[k]['steady_task_cpu_ms']}), whole command "
                    f"{scans[k]['whole_per_s']:.1f}/s "
                    f"{scans[k]['whole_cpu_ms']:.2f} ms CPU (load {scans[k]['load_average']})",
                    flush=True,
                )
            warm = scans[1:]

            def median(values: list[float]) -> float:
                return round(float(np.median(values)), 3)

            r = {
                "bare_per_s": median([b["per_s"] for b in bares]),
                "bare_cpu_ms": median([b["cpu_ms"] for b in bares]),
                "scan_steady_per_s": median([s["steady_per_s"] for s in warm]),
                "scan_steady_cpu_ms": median([s["steady_cpu_ms"] for s in warm]),
                "scan_whole_per_s": median([s["whole_per_s"] for s in warm]),
                "scan_whole_cpu_ms": median([s["whole_cpu_ms"] for s in warm]),
                "cold_whole_per_s": scans[0]["whole_per_s"],
                "auroc": catalogue_auroc(workdir / f"scan-{backend}-1"),
                "breakdown": breakdown(model, onnx_file, store, args.bare_n, args.batch),
                "bare_runs": bares,
                "scans": scans,
            }
            r["steady_over_bare"] = round(r["scan_steady_per_s"] / r["bare_per_s"], 3)
            r["whole_over_bare"] = round(r["scan_whole_per_s"] / r["bare_per_s"], 3)
            r["steady_over_bare_cpu"] = round(r["bare_cpu_ms"] / r["scan_steady_cpu_ms"], 3)
            r["whole_over_bare_cpu"] = round(r["bare_cpu_ms"] / r["scan_whole_cpu_ms"], 3)
            results[backend] = r

    machine = common.print_machine()
    threads = worker_threads(args.workers)
    first = next(iter(results.values()))["scans"][1]
    print(
        f"data: {store}; model: {args.model or 'untrained cpu-small'}; {args.workers} worker(s) x "
        f"{threads} thread(s), batch {args.batch}; {first['shards']} shards of "
        f"{first['shard_size']}; medians of {args.repeats} round(s)"
    )
    print("  cutouts/s (ratio to bare), then CPU ms per cutout (bare's over the scan's):")
    for backend, r in results.items():
        print(
            f"  {backend:10s} bare {r['bare_per_s']:7.1f}  scan steady "
            f"{r['scan_steady_per_s']:7.1f} ({r['steady_over_bare']:.2f})  whole command "
            f"{r['scan_whole_per_s']:6.1f}"
            f" ({r['whole_over_bare']:.2f}), cold {r['cold_whole_per_s']:.1f}"
        )
        print(
            f"  {'':10s} bare {r['bare_cpu_ms']:7.2f}  scan steady "
            f"{r['scan_steady_cpu_ms']:7.2f} ({r['steady_over_bare_cpu']:.2f})  whole command "
            f"{r['scan_whole_cpu_ms']:6.2f}"
            f" ({r['whole_over_bare_cpu']:.2f})"
        )
        parts = r["breakdown"]
        print(
            f"  {'':10s} one thread, CPU ms per cutout: read {parts['read_ms']:.2f}, preprocess "
            f"{parts['preprocess_ms']:.2f}, inference {parts['inference_ms']:.2f}"
        )
    start = first["startup"]
    print(
        f"  start-up of a warm {first['backend']} scan: {start['until_scoring_s']:.1f} s to the "
        f"first scoring (cluster {start['cluster_s']:.1f} s, models {start['models_s']:.1f} s, "
        f"worker loads {', '.join(f'{v:.1f}' for v in start['worker_load_s'].values())} s); "
        f"cluster shutdown {first['shutdown_s']:.1f} s"
    )
    if args.int8:
        f32, i8 = results["onnx"], results["onnx-int8"]
        cold = results["onnx-int8"]["scans"][0]["startup"]["onnx_files"]
        notes = "; ".join(n for f in cold for n in f["notes"])
        if f32["auroc"] is not None and i8["auroc"] is not None:
            print(
                f"  AUROC float {f32['auroc']:.4f}, int8 {i8['auroc']:.4f} "
                f"(change {i8['auroc'] - f32['auroc']:+.4f}); int8 bare x"
                f"{i8['bare_per_s'] / f32['bare_per_s']:.2f}, scan steady x"
                f"{i8['scan_steady_per_s'] / f32['scan_steady_per_s']:.2f} of float"
            )
        print(f"  {notes}")

    figures = []
    for backend, r in results.items():
        figures += [
            common.figure(
                f"bare {'torch on the GPU' if backend == 'torch' else 'ONNX Runtime'}, {backend}",
                r["bare_per_s"],
                "cutouts/s",
            ),
            common.figure(f"scan steady rate, {backend}", r["scan_steady_per_s"], "cutouts/s"),
            common.figure(f"scan steady / bare, {backend}", r["steady_over_bare"], "x"),
            common.figure(f"scan whole command, {backend}", r["scan_whole_per_s"], "cutouts/s"),
            common.figure(f"scan whole command / bare, {backend}", r["whole_over_bare"], "x"),
            common.figure(
                f"scan steady / bare at equal CPU, {backend}", r["steady_over_bare_cpu"], "x"
            ),
        ]
        if r["auroc"] is not None:
            figures.append(common.figure(f"AUROC of the scan, {backend}", r["auroc"]))
    details = {
        "data": str(store),
        "model": str(args.model),
        "workers": args.workers,
        "threads_per_worker": threads,
        "batch": args.batch,
        "backends": results,
    }
    common.write_results(args.json, __file__, figures, details, machine, argv)
    return results


if __name__ == "__main__":
    main()
