"""Simulation speed: cutouts (all four bands, catalogue row, files) per second on this machine.

    python benchmarks/bench_simulate.py --n 400 --workers 2            # the rate (goal: >= 50/s)
    python benchmarks/bench_simulate.py --n 100 --workers 1 --stages   # where the time goes

Writes into a temporary directory that is removed afterwards; the preview and catalogue at the
end are included in the wall time but not in the rate (see ``SimulateResult.rate``). The first
objects of each worker pay one-off costs (imports, numba's compiled-profile cache), so small
``--n`` understates the rate.

``--stages`` runs in one process and splits the CPU time per cutout by stage (scene drawing,
lens equation, deflections, light profiles, sampling bookkeeping, PSF convolution, noise,
catalogue quantities, FITS writing), timing each stage's functions exclusively.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import tempfile
import time
from pathlib import Path
from typing import Any

import common

from lensfinder.config import SimulateConfig
from lensfinder.simulate import simulate

GOAL = 50.0  # cutouts/s on 2 cores (issue 14)


def _stage_targets() -> dict[str, list[tuple[Any, str]]]:
    """stage -> the (owner, attribute) functions whose time is the stage's."""
    from lensfinder.simulate import quantities, render, writer
    from lensfinder.simulate import simulation as sim_run

    return {
        "scene drawing": [
            (sim_run.scenes, "draw_lens_galaxy"),
            (sim_run.scenes, "draw_nonlens"),
            (sim_run.scenes, "draw_source"),
            (sim_run.scenes, "add_field"),
            (sim_run, "draw_observing"),
        ],
        "lens equation (image count)": [(quantities, "count_source_images")],
        "deflections": [(render.Deflector, "__init__"), (render.Deflector, "subpixels")],
        "light profiles": [(render.LightGroup, "__call__")],
        "sampling bookkeeping": [(render.SceneRenderer, "_sample")],
        "PSF convolution": [(render.SceneRenderer, "_convolve")],
        "noise": [(render.SceneRenderer, "noise")],
        "point sources": [(render.SceneRenderer, "_stars")],
        "catalogue quantities": [(sim_run, "catalogue_row")],
        "FITS writing": [(writer, "write_band_fits")],
        "row files": [(writer, "write_row")],
        "total": [(sim_run, "_make_and_write")],
    }


class _StageClock:
    """Exclusive CPU time per stage: each timed call's time less that of timed calls inside it
    (so "sampling bookkeeping" excludes the light profiles and deflections it calls)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._children: list[float] = []

    def wrap(self, stage: str, function: Any) -> Any:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.process_time()
            self._children.append(0.0)
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.process_time() - began
                inner = self._children.pop()
                self.seconds[stage] = self.seconds.get(stage, 0.0) + elapsed - inner
                if self._children:
                    self._children[-1] += elapsed

        return timed


def stage_breakdown(config: SimulateConfig) -> dict[str, Any]:
    """CPU ms per cutout by stage in one process (CPU clock: other processes on the machine do
    not inflate it), after a few warm-up objects (imports, numba's compiled-profile cache,
    header templates). Stages are timed by wrapping their functions, which costs microseconds
    per call (cProfile's per-call overhead would distort call-heavy stages like FITS writing)."""
    clock = _StageClock()
    originals = []
    for stage, targets in _stage_targets().items():
        for owner, name in targets:
            originals.append((owner, name, getattr(owner, name)))
            setattr(owner, name, clock.wrap(stage, getattr(owner, name)))
    try:
        with tempfile.TemporaryDirectory(prefix="bench_simulate_") as tmp:
            warm_up = dataclasses.replace(config, n=4, seed=config.seed + 1)
            simulate(warm_up, Path(tmp) / "warm-up", progress=False)
            clock.seconds.clear()
            result = simulate(config, Path(tmp) / "layout", progress=False)
    finally:
        for owner, name, function in originals:
            setattr(owner, name, function)
    per = 1000.0 / result.written
    ms = {stage: per * seconds for stage, seconds in clock.seconds.items()}
    ms["other (bookkeeping, Python)"] = ms.pop("total", 0.0)  # what no stage claimed
    return {"total_ms": sum(ms.values()), "stages_ms": ms}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="cutouts to simulate")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--supersampling", type=int, default=SimulateConfig.supersampling)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stages", action="store_true", help="CPU time per stage, one process")
    common.add_json_argument(parser)
    args = parser.parse_args(argv)

    config = SimulateConfig(
        n=args.n, workers=args.workers, supersampling=args.supersampling, seed=args.seed
    )
    machine = common.print_machine()
    if args.stages:
        config.workers = 1
        breakdown = stage_breakdown(config)
        total = breakdown["total_ms"]
        print(f"simulate, one process: {total:.1f} ms CPU per cutout")
        for stage, ms in sorted(breakdown["stages_ms"].items(), key=lambda kv: -kv[1]):
            print(f"  {stage:30s} {ms:6.1f} ms  {100 * ms / total:5.1f}%")
        figures = [common.figure("simulation CPU per cutout, one process", total, "ms")]
        common.write_results(args.json, __file__, figures, breakdown, machine, argv)
        return
    with (
        tempfile.TemporaryDirectory(prefix="bench_simulate_") as tmp,
        common.Stopwatch() as watch,
    ):
        result = simulate(config, Path(tmp) / "layout", progress=False)
    wall = watch.seconds
    verdict = "meets" if result.rate >= GOAL else "below"
    print(
        f"simulate: {result.written} cutouts in {result.seconds:.1f} s = {result.rate:.2f} "
        f"cutouts/s with {result.workers} worker(s), supersampling {args.supersampling} "
        f"(wall incl. catalogue and preview {wall:.1f} s); {verdict} the goal of {GOAL:g}/s "
        "on 2 cores"
    )
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
        "goal_per_s": GOAL,
    }
    common.write_results(args.json, __file__, figures, details, machine, argv)


if __name__ == "__main__":
    main()
