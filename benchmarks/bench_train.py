"""Training images/s of a config (default the shipped ``cpu-small``) against the bare
forward + backward + optimiser-step loop of the same model, measured in the same run.

    .venv/bin/python benchmarks/bench_train.py --n 512
    .venv/bin/python benchmarks/bench_train.py --data /tmp/sim4000.zarr --epochs 3
    .venv/bin/python benchmarks/bench_train.py --per-batch   # without precomputed inputs

Without ``--data``, builds N fixture cutouts (``lensfinder.testing``) and packs them.
(a) The training rate goes through the real ``train`` (Lightning, the datamodule, D4, balanced
batches): training samples over the time from each epoch's start to its last optimiser step (data
loading included, validation excluded), leaving out the first epoch (warm-up); the one-off
precomputation of the inputs at setup is printed separately. (b) The bare loop runs the same
model, optimiser, batch size, input size, channels-last setting, precision and threads on random
tensors already in memory (channels-last already, where the config says so), in the same process:
one bare step after every training step, each on its own clock (``Interleaved``), so that the busy
and quiet spells of shared cores hit both alike. (c) Their ratio is the share of the model's own
speed that training keeps: what the data path and Lightning cost. The data path alone (one epoch
of the train loader without a model) is timed too. The machine, the torch thread count and the
load average (before and after) are printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import common

if TYPE_CHECKING:
    from lensfinder.train.time_budget import BareTrainingLoop


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


class Interleaved:
    """Training and bare steps taken in turns, each timed on its own clock, per epoch.

    A Lightning callback (``callback()``) runs one bare step after every training step. A
    training step's time runs from the end of the previous bare step (or the epoch's start) to
    the end of its optimiser step, so it holds what ``EpochHistory`` counts (loading the batch,
    Lightning's loop, the step) but no bare step. Taking turns step by step exposes both to the
    same busy and quiet spells of shared cores, which change the speed of either by 2-10x within
    seconds here.
    """

    def __init__(self, bare: BareTrainingLoop) -> None:
        self.bare = bare
        self.train: list[tuple[float, float]] = []  # (images, seconds) per epoch
        self.bare_epochs: list[tuple[float, float]] = []

    def callback(self) -> Any:
        import lightning.pytorch as pl

        owner = self

        class TakeTurns(pl.Callback):
            def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
                owner.train.append((0.0, 0.0))
                owner.bare_epochs.append((0.0, 0.0))
                self.resumed = time.perf_counter()

            def on_train_batch_end(
                self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
            ) -> None:
                images, seconds = owner.train[-1]
                owner.train[-1] = (
                    images + len(batch[-1]),
                    seconds + time.perf_counter() - self.resumed,
                )
                images, seconds = owner.bare_epochs[-1]
                owner.bare_epochs[-1] = (images + owner.bare.batch, seconds + owner.bare.run())
                self.resumed = time.perf_counter()

        return TakeTurns()


def _rate(parts: list[tuple[float, float]]) -> float:
    """images/s over the epochs ``parts``."""
    return common.rate(sum(p[0] for p in parts), sum(p[1] for p in parts))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="a packed store to train on")
    parser.add_argument("--n", type=int, default=800, help="fixture cutouts (without --data)")
    parser.add_argument("--config", default="cpu-small", help="config file or shipped name")
    parser.add_argument("--epochs", type=int, default=3, help="epochs (the first is warm-up)")
    parser.add_argument("--samples", type=int, default=512, help="training samples per epoch")
    parser.add_argument(
        "--per-batch", action="store_true",
        help="normalise every batch as drawn instead of precomputing the inputs at setup",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default=None,
        help="train (and run the bare loop) here; default: the config's accelerator",
    )  # fmt: skip
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
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("bench_train: --device cuda, but torch sees no CUDA GPU here")
    if args.device is not None:  # precision "auto" then means bf16-mixed on the GPU
        accelerator = {"cpu": "cpu", "cuda": "gpu"}[args.device]
        config = dataclasses.replace(config, accelerator=accelerator)
    with common.work_directory(None, "bench_train_") as workdir:
        store = args.data
        if store is None:
            from lensfinder.testing import make_tiny_layout, make_tiny_store

            store = make_tiny_store(
                make_tiny_layout(workdir / "layout", n=args.n, seed=0), workdir / "store.zarr"
            )
        machine = common.print_machine()
        *loader_only, samples = loader_epoch(config, store)
        from lensfinder.train.time_budget import BareTrainingLoop

        turns = Interleaved(BareTrainingLoop(config))
        with common.Stopwatch() as watch:
            result = train(
                config,
                store,
                workdir / "run",
                resume=False,
                progress=False,
                callbacks=[turns.callback()],
            )
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    measured = slice(1, None) if len(turns.train) > 1 else slice(None)  # epoch 0: warm-up
    train_rate, bare_rate = _rate(turns.train[measured]), _rate(turns.bare_epochs[measured])
    ratio = train_rate / bare_rate
    train_epochs = [common.rate(*e) for e in turns.train]
    bare_epochs = [common.rate(*e) for e in turns.bare_epochs]
    precompute = result.metrics.get("precompute_s")
    loader_rate = common.rate(*loader_only)
    data_path = "per batch" if precompute is None else f"precomputed at setup in {precompute:.1f} s"
    print(
        f"train {args.config}: {config.input.size} px, {len(config.input.bands)} bands, "
        f"{config.input.vis_sampling}, batch {config.batch_size}, channels_last "
        f"{config.channels_last}, {samples} samples/epoch, store {store}; inputs {data_path}"
    )
    print(
        f"(a) training: {train_rate:.1f} images/s (per epoch: "
        f"{', '.join(f'{r:.1f}' for r in train_epochs)}; the first is warm-up)"
    )
    print(
        f"(b) bare forward+backward+step: {bare_rate:.1f} images/s (one step after each training "
        f"step; per epoch: {', '.join(f'{r:.1f}' for r in bare_epochs)})"
    )
    print(f"(c) ratio (a)/(b): {ratio:.2f}")
    print(
        f"data path alone (one epoch of the train loader, no model): {loader_rate:.0f} images/s, "
        f"{1000 * loader_only[1] / max(1, loader_only[0] / config.batch_size):.1f} ms per batch; "
        f"wall {watch.seconds:.1f} s for {result.epochs} epochs incl. setup, validation and the "
        "bare steps"
    )
    if load_after is not None:
        print(f"load average: {machine['load_average_1min']} before, {load_after:.2f} after")
    name = f"{args.config} ({config.input.size} px, batch {config.batch_size})"
    figures = [
        common.figure(f"training, {name}", train_rate, "images/s"),
        common.figure(f"bare forward+backward+step, {name}", bare_rate, "images/s"),
        common.figure(f"training / bare loop, {name}", ratio, ""),
    ]
    details = {
        "training_per_epoch": train_epochs,
        "bare_per_epoch": bare_epochs,
        "precompute_s": precompute,
        "data_path": data_path,
        "data_path_images_per_s": loader_rate,
        "wall_s": watch.seconds,
        "epochs": result.epochs,
        "samples_per_epoch": samples,
        "store": str(args.data),
        "load_average_1min_after": load_after,
    }
    common.write_results(args.json, __file__, figures, details, machine, argv)


if __name__ == "__main__":
    main()
