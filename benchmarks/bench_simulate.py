"""Simulation speed: cutouts (all four bands, catalogue row, files) per second on this machine.

    python benchmarks/bench_simulate.py --n 200 --workers 2

Writes into a temporary directory that is removed afterwards; the preview and catalogue at the
end are included in the wall time but not in the rate (see ``SimulateResult.rate``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import common

from lensfinder.config import SimulateConfig
from lensfinder.simulate import simulate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="cutouts to simulate")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--supersampling", type=int, default=SimulateConfig.supersampling)
    parser.add_argument("--seed", type=int, default=0)
    common.add_json_argument(parser)
    args = parser.parse_args(argv)

    config = SimulateConfig(
        n=args.n, workers=args.workers, supersampling=args.supersampling, seed=args.seed
    )
    with (
        tempfile.TemporaryDirectory(prefix="bench_simulate_") as tmp,
        common.Stopwatch() as watch,
    ):
        result = simulate(config, Path(tmp) / "layout", progress=False)
    wall = watch.seconds
    print(
        f"simulate: {result.written} cutouts in {result.seconds:.1f} s = {result.rate:.2f} "
        f"cutouts/s with {result.workers} worker(s), supersampling {args.supersampling} "
        f"(wall incl. catalogue and preview {wall:.1f} s)"
    )
    machine = common.print_machine()
    figures = [
        common.figure(
            f"simulation, {result.workers} worker(s), supersampling {args.supersampling}",
            result.rate,
            "cutouts/s",
        )
    ]
    details = {
        "n": result.written,
        "seconds": result.seconds,
        "wall_s": wall,
        "workers": result.workers,
        "lenses": result.lenses,
    }
    common.write_results(args.json, __file__, figures, details, machine, argv)


if __name__ == "__main__":
    main()
