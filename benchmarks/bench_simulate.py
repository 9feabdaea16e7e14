"""Simulation speed: cutouts (all four bands, catalogue row, files) per second on this machine.

    python benchmarks/bench_simulate.py --n 200 --workers 2

Writes into a temporary directory that is removed afterwards; the preview and catalogue at the
end are included in the wall time but not in the rate (see ``SimulateResult.rate``).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from lensfinder.config import SimulateConfig
from lensfinder.simulate import simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="cutouts to simulate")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--supersampling", type=int, default=SimulateConfig.supersampling)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    config = SimulateConfig(
        n=args.n, workers=args.workers, supersampling=args.supersampling, seed=args.seed
    )
    with tempfile.TemporaryDirectory(prefix="bench_simulate_") as tmp:
        start = time.perf_counter()
        result = simulate(config, Path(tmp) / "layout", progress=False)
        wall = time.perf_counter() - start
    print(
        f"simulate: {result.written} cutouts in {result.seconds:.1f} s = {result.rate:.2f} "
        f"cutouts/s with {result.workers} worker(s), supersampling {args.supersampling} "
        f"(wall incl. catalogue and preview {wall:.1f} s)"
    )
    print(
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
