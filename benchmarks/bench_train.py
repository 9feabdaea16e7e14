"""Training images/s with the shipped ``cpu-small`` config on N cutouts.

    .venv/bin/python benchmarks/bench_train.py --n 512
    .venv/bin/python benchmarks/bench_train.py --data /tmp/sim4000.zarr --epochs 2

Without ``--data``, builds N fixture cutouts (``lensfinder.testing``) and packs them.
The rate counts training samples from the start of each epoch to its last optimiser step (data
loading included, validation excluded) and leaves out the first epoch (warm-up). The machine,
the torch thread count and the current load average are printed: on shared cores the numbers
are pessimistic.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import common


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="a packed store to train on")
    parser.add_argument("--n", type=int, default=512, help="fixture cutouts (without --data)")
    parser.add_argument("--config", default="cpu-small", help="config file or shipped name")
    parser.add_argument("--epochs", type=int, default=2, help="epochs (the first is warm-up)")
    parser.add_argument("--samples", type=int, default=512, help="training samples per epoch")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    common.add_json_argument(parser)
    args = parser.parse_args(argv)
    common.quiet()
    common.quiet_lightning()
    common.set_threads(args.threads)

    from lensfinder.config import TrainConfig, load_config
    from lensfinder.train import train

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        workdir = Path(tmp)
        store = args.data
        if store is None:
            from lensfinder.testing import make_tiny_layout, make_tiny_store

            store = make_tiny_store(
                make_tiny_layout(workdir / "layout", n=args.n, seed=0), workdir / "store.zarr"
            )
        config = dataclasses.replace(
            load_config(TrainConfig, args.config),
            max_epochs=args.epochs,
            max_train_samples=args.samples,
            batch_growth=False,  # a fixed batch: the rate of one setting, not of a schedule
            stop_patience=args.epochs + 1,
            stop_auroc_drop=1.0,
        )
        with common.Stopwatch() as watch:
            result = train(config, store, workdir / "run", resume=False, progress=False)
    wall = watch.seconds
    rates = result.metrics["images_per_s_history"]
    machine = common.print_machine()
    print(
        f"train {args.config}: {config.input.size} px, {len(config.input.bands)} bands, "
        f"batch {config.batch_size}, {args.samples} samples/epoch, store {store}"
    )
    print(
        f"training rate: {result.images_per_s:.1f} images/s (per epoch: "
        f"{', '.join(f'{r:.1f}' for r in rates)}); wall {wall:.1f} s for {result.epochs} epochs "
        f"incl. validation"
    )
    figures = [
        common.figure(
            f"training, {args.config} ({config.input.size} px, batch {config.batch_size})",
            result.images_per_s,
            "images/s",
        )
    ]
    details = {
        "per_epoch": rates,
        "wall_s": wall,
        "epochs": result.epochs,
        "samples_per_epoch": args.samples,
        "store": str(args.data),
    }
    common.write_results(args.json, __file__, figures, details, machine, argv)


if __name__ == "__main__":
    main()
