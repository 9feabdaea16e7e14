"""Scan speed of the CPU backends on the same cutouts with the same model.

Eager torch (NCHW), torch channels_last, ONNX Runtime and ONNX Runtime int8 (quantised, calibrated
on the benchmark's own cutouts), each through ``Predictor.predict_arrays`` (so ``to_model_input``
is included, as in a real scan), after one warm-up batch. Prints cutouts/s, the ratio to eager
torch, the largest logit difference from eager torch, and the machine. A run directory given with
``--model`` gets its ``model.onnx`` and ``model.int8.onnx`` caches written, as a scan would.

    python benchmarks/bench_backends.py                      # lite0, random init, 200 px, 4 bands
    python benchmarks/bench_backends.py --model RUN_DIR --data STORE --n 256 --threads 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import numpy as np


def cutouts(data: Path | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    from lensfinder.predict import synthetic_cutouts

    if data is None:
        return synthetic_cutouts(n, seed=0)
    from lensfinder.data import open_source

    source = open_source(data)
    cut = source.read(np.arange(min(n, len(source))))
    return cut.vis[cut.valid], cut.nisp[cut.valid]


def run(
    model: Path | None, data: Path | None, n: int, batch: int, threads: int | None
) -> dict[str, Any]:
    import torch

    from lensfinder.config import PredictConfig
    from lensfinder.predict import Predictor
    from lensfinder.predict.onnx_cache import Calibration

    if threads:
        torch.set_num_threads(threads)
    vis, nisp = cutouts(data, n)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = (
            Path(model)
            if model
            else common.untrained_run(Path(tmp) / "lite0", "cpu-small", size=200, pretrained=False)
        )
        # The first ONNX use exports the model next to it (cached for later scans): timed apart.
        began = time.perf_counter()
        Predictor([run_dir], PredictConfig(backend="onnx"), onnx_threads=threads)
        export_seconds = time.perf_counter() - began
        calibration = Calibration(f"bench_backends:{data}:{len(vis)}", lambda: (vis, nisp))
        began = time.perf_counter()
        Predictor([run_dir], PredictConfig(backend="onnx-int8"), calibration=calibration)
        quantise_seconds = time.perf_counter() - began
        setups = {
            "eager torch NCHW": (PredictConfig(batch_size=batch), {"channels_last": False}),
            "torch channels_last": (PredictConfig(batch_size=batch), {"channels_last": True}),
            "onnxruntime": (
                PredictConfig(batch_size=batch, backend="onnx"),
                {"onnx_threads": threads},
            ),
            "onnxruntime int8": (
                PredictConfig(batch_size=batch, backend="onnx-int8"),
                {"onnx_threads": threads, "calibration": calibration},
            ),
        }
        results: dict[str, Any] = {}
        for name, (cfg, kwargs) in setups.items():
            predictor = Predictor([run_dir], cfg, device="cpu", **kwargs)
            per_second, logits = common.time_predictor(predictor, vis, nisp, warmup=batch)
            results[name] = {"per_second": per_second, "logit": logits[0]}
    base = results["eager torch NCHW"]
    common.print_machine()
    print(f"model: {model or 'tf_efficientnet_lite0 (random init), 4 bands, 200 px'}")
    print(
        f"data: {data or 'synthetic cutouts'}, {len(vis)} cutouts, batch {batch}, "
        f"threads {threads or torch.get_num_threads()}; "
        f"ONNX export/cache check: {export_seconds:.1f} s, int8 quantisation/cache check: "
        f"{quantise_seconds:.1f} s"
    )
    base_logit = base["logit"]
    for name, result in results.items():
        result["ratio"] = result["per_second"] / base["per_second"]
        result["max_logit_diff"] = float(np.abs(result.pop("logit") - base_logit).max())
        print(
            f"  {name:22s} {result['per_second']:8.1f} cutouts/s  x{result['ratio']:4.2f}  "
            f"max |logit diff| {result['max_logit_diff']:.1e}"
        )
    return {
        "backends": results,
        "n": len(vis),
        "export_s": export_seconds,
        "quantise_s": quantise_seconds,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="run directory (default: lite0, random init)")
    parser.add_argument("--data", type=Path, help="store or layout (default: synthetic cutouts)")
    parser.add_argument("--n", type=int, default=192, help="cutouts to score")
    parser.add_argument("--batch", type=int, default=32, help="inference batch size")
    parser.add_argument("--threads", type=int, default=None, help="torch and ORT threads")
    common.add_json_argument(parser)
    args = parser.parse_args(argv)
    common.quiet()
    details = run(args.model, args.data, args.n, args.batch, args.threads)
    model = "untrained lite0 at 200 px" if args.model is None else "the given model"
    figures = [
        common.figure(
            f"inference, {name} ({model}, batch {args.batch})",
            r["per_second"],
            "cutouts/s",
            ratio_to_eager=round(r["ratio"], 3),
        )
        for name, r in details["backends"].items()
    ]
    details |= {"model": str(args.model), "data": str(args.data), "batch": args.batch}
    common.write_results(args.json, __file__, figures, details, argv=argv)
    return {name: r["per_second"] for name, r in details["backends"].items()}


if __name__ == "__main__":
    main()
