"""Training images/s of a config (default the shipped ``cpu-small``) against the bare
forward + backward + optimiser-step loop of the same model, measured in the same run.

    .venv/bin/python benchmarks/bench_train.py --n 512
    .venv/bin/python benchmarks/bench_train.py --data /tmp/sim4000.zarr --epochs 3
    .venv/bin/python benchmarks/bench_train.py --per-batch   # without precomputed inputs

Without ``--data``, builds N fixture cutouts (``lensfinder.testing``) and packs them.
(a) The training rate goes through the real ``train`` (Lightning, the datamodule, D4, balanced
batches): it counts training samples from the start of each epoch to its last optimiser step (data
loading included, validation excluded) and leaves out the first epoch (warm-up); the one-off
precomputation of the inputs at setup is printed separately. (b) The bare loop runs the same
model, optimiser, batch size, input size, channels-last setting and threads on random tensors
already in memory (channels-last already, where the config says so), half before training and
half after, so that a change in the load of shared cores hits both. (c) Their ratio is the share
of the model's own speed that training keeps: what the data path and Lightning cost.
The machine, the torch thread count and the load average (before and after) are printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import common


def loader_epoch(config: Any, store: Path) -> tuple[float, float, int]:
    """(images, seconds) of one epoch of the training loader alone (no model, after one epoch of
    warm-up), and the samples an epoch draws."""
    from lensfinder.train.datamodule import LensDataModule

    module = LensDataModule(config, store)
    module.setup("fit")
    for _ in module.train_dataloader():  # warm-up: first calls of the torch kernels
        pass
    images = 0
    with common.Stopwatch() as watch:
        for _, y in module.train_dataloader():
            images += len(y)
    return float(images), watch.seconds, module.samples_per_epoch


def bare_loop(config: Any, steps: int, warmup: int = 3) -> tuple[float, float]:
    """(images, seconds) of ``steps`` forward + backward + optimiser steps of ``config``'s model
    on one random batch, after ``warmup`` untimed steps."""
    import numpy as np
    import torch

    from lensfinder.data.cutouts import NISP_SHAPE, VIS_SHAPE
    from lensfinder.data.dataset import map_input
    from lensfinder.data.transforms import to_model_input
    from lensfinder.train.module import LensClassifier, make_optimizer, to_channels_last
    from lensfinder.train.run import initial_model, resolve_precision, uses_cuda

    device = torch.device("cuda" if uses_cuda(config.accelerator) else "cpu")
    module = LensClassifier(config, initial_model(config)).to(device).train()
    optimizer = make_optimizer(config, [p for p in module.parameters() if p.requires_grad])
    batch = config.batch_size
    shapes = to_model_input(
        np.zeros((1, *VIS_SHAPE), np.float32), np.zeros((1, *NISP_SHAPE), np.float32), config.input
    )
    x = map_input(shapes, lambda t: torch.randn(batch, *t.shape[1:], device=device))
    if config.channels_last:
        x = to_channels_last(x)
    y = (torch.arange(batch, device=device) % 2).float()
    precision = resolve_precision(config)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = module.loss_fn(module(x), y)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return float(steps * batch), time.perf_counter() - began


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="a packed store to train on")
    parser.add_argument("--n", type=int, default=800, help="fixture cutouts (without --data)")
    parser.add_argument("--config", default="cpu-small", help="config file or shipped name")
    parser.add_argument("--epochs", type=int, default=3, help="epochs (the first is warm-up)")
    parser.add_argument("--samples", type=int, default=512, help="training samples per epoch")
    parser.add_argument(
        "--bare-steps", type=int, default=None,
        help="timed bare-loop steps, half before and half after training (default: as many as "
        "the measured training epochs take)",
    )  # fmt: skip
    parser.add_argument(
        "--per-batch", action="store_true",
        help="normalise every batch as drawn instead of precomputing the inputs at setup",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    common.add_json_argument(parser)
    args = parser.parse_args(argv)
    common.quiet()
    common.quiet_lightning()
    common.set_threads(args.threads)

    from lensfinder.config import TrainConfig, load_config
    from lensfinder.train import datamodule, train

    if args.per_batch:
        datamodule.PRECOMPUTE_SHARE = 0.0
    config = dataclasses.replace(
        load_config(TrainConfig, args.config),
        max_epochs=args.epochs,
        max_train_samples=args.samples,
        batch_growth=False,  # a fixed batch: the rate of one setting, not of a schedule
        stop_patience=args.epochs + 1,
        stop_auroc_drop=1.0,
    )
    with common.work_directory(None, "bench_train_") as workdir:
        store = args.data
        if store is None:
            from lensfinder.testing import make_tiny_layout, make_tiny_store

            store = make_tiny_store(
                make_tiny_layout(workdir / "layout", n=args.n, seed=0), workdir / "store.zarr"
            )
        machine = common.print_machine()
        *loader_only, samples = loader_epoch(config, store)
        steps = max(1, samples // config.batch_size) * max(1, args.epochs - 1)
        half = max(1, (args.bare_steps or steps) // 2)
        bare_before = bare_loop(config, half)
        with common.Stopwatch() as watch:
            result = train(config, store, workdir / "run", resume=False, progress=False)
        bare_after = bare_loop(config, half)
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    wall = watch.seconds
    rates = result.metrics["images_per_s_history"]
    precompute = result.metrics.get("precompute_s")
    bare_rate = common.rate(bare_before[0] + bare_after[0], bare_before[1] + bare_after[1])
    halves = [common.rate(*bare_before), common.rate(*bare_after)]
    ratio = result.images_per_s / bare_rate
    loader_rate = common.rate(*loader_only)
    data_path = "per batch" if precompute is None else f"precomputed at setup in {precompute:.1f} s"
    print(
        f"train {args.config}: {config.input.size} px, {len(config.input.bands)} bands, "
        f"{config.input.vis_sampling}, batch {config.batch_size}, channels_last "
        f"{config.channels_last}, {samples} samples/epoch, store {store}; inputs {data_path}"
    )
    print(
        f"(a) training rate: {result.images_per_s:.1f} images/s (per epoch: "
        f"{', '.join(f'{r:.1f}' for r in rates)}; the first is warm-up); wall {wall:.1f} s for "
        f"{result.epochs} epochs incl. setup and validation"
    )
    print(
        f"(b) bare forward+backward+step: {bare_rate:.1f} images/s ({2 * half} steps of "
        f"{config.batch_size}; before training {halves[0]:.1f}, after {halves[1]:.1f})"
    )
    print(f"(c) ratio (a)/(b): {ratio:.2f}")
    print(
        f"data path alone (one epoch of the train loader, no model): {loader_rate:.0f} images/s, "
        f"{1000 * loader_only[1] / max(1, loader_only[0] / config.batch_size):.1f} ms per batch"
    )
    if load_after is not None:
        print(f"load average: {machine['load_average_1min']} before, {load_after:.2f} after")
    name = f"{args.config} ({config.input.size} px, batch {config.batch_size})"
    figures = [
        common.figure(f"training, {name}", result.images_per_s, "images/s"),
        common.figure(f"bare forward+backward+step, {name}", bare_rate, "images/s"),
        common.figure(f"training / bare loop, {name}", ratio, ""),
    ]
    details = {
        "per_epoch": rates,
        "bare_before_after": halves,
        "bare_steps": 2 * half,
        "precompute_s": precompute,
        "data_path": data_path,
        "wall_s": wall,
        "epochs": result.epochs,
        "samples_per_epoch": samples,
        "data_path_images_per_s": loader_rate,
        "store": str(args.data),
        "load_average_1min_after": load_after,
    }
    common.write_results(args.json, __file__, figures, details, machine, argv)


if __name__ == "__main__":
    main()
