"""Preprocessing (raw cutouts -> model input) ms per cutout: today's ``to_model_input`` against
the one it replaced, per shipped input config, single-thread and 2 threads.

    .venv/bin/python benchmarks/bench_preprocess.py --rounds 7

The old implementation is ``data/transforms.py`` as it was at ``--base`` (read with
``git show``, so run this from a git checkout); both get the same in-memory cutouts
(``lensfinder.testing.tiny_cutouts``: VIS 200x200, NISP 3x66x66, noisy galaxies and arcs) and
must give identical tensors, checked before timing. Old and new alternate batch by batch and
each figure is the median of ``--rounds`` rounds of ``--repeats`` batches, so load from other
jobs on shared cores hits both alike. ``--steps`` adds where a cutout's time goes, per step.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
import types
from collections.abc import Callable
from typing import Any

import common

# The commit before the fused preprocessing (issue 25, item 3).
BASE_COMMIT = "2e17171"


def old_transforms(base: str) -> types.ModuleType:
    """``lensfinder.data.transforms`` as at commit ``base``, as a module of its own."""
    path = "src/lensfinder/data/transforms.py"
    source = subprocess.run(
        ["git", "-C", str(common.REPO), "show", f"{base}:{path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module = types.ModuleType("old_transforms")
    exec(compile(source, f"{base}:{path}", "exec"), module.__dict__)
    return module


def shipped_inputs() -> dict[str, Any]:
    """The distinct input configs of the shipped configs, each named by the configs using it."""
    from lensfinder.config import SHIPPED_CONFIGS, TrainConfig, load_config

    distinct: list[tuple[Any, list[str]]] = []  # configs are dataclasses: equal, not hashable
    for path in sorted(SHIPPED_CONFIGS.glob("*.yaml")):
        cfg = load_config(TrainConfig, path).input
        users = next((names for known, names in distinct if known == cfg), None)
        if users is None:
            distinct.append((cfg, users := []))
        users.append(path.stem)
    return {_label(names): cfg for cfg, names in distinct}


def _label(configs: list[str]) -> str:
    table1 = [c for c in configs if c.startswith("table1-")]
    rest = [c for c in configs if c not in table1]
    return ", ".join(rest + ([f"table1 x{len(table1)}"] if table1 else []))


def _describe(cfg: Any) -> str:
    bands = "+".join(cfg.bands)
    return f"{bands} {cfg.vis_sampling} {cfg.size} {cfg.layout} {cfg.normalization}"


def _same(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, tuple):
        return all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a.shape == b.shape and bool(torch.equal(a, b))


def alternate(funcs: dict[str, Callable[[], Any]], rounds: int, repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, timed in alternation, ``repeats`` calls per
    round, after one warm-up call each."""
    for func in funcs.values():
        func()
    times: dict[str, list[float]] = {name: [] for name in funcs}
    for _ in range(rounds):
        for name, func in funcs.items():
            began = time.perf_counter()
            for _ in range(repeats):
                func()
            times[name].append((time.perf_counter() - began) / repeats)
    return {name: statistics.median(values) for name, values in times.items()}


def step_functions(old: Any, vis: Any, nisp: Any, cfg: Any) -> dict[str, Callable[[], Any]]:
    """Old and new, step by step: sky/noise statistics, the stretch, NISP resampling and the
    whole call (the rest is assembling the output)."""
    import torch

    from lensfinder.data import pixels, transforms

    vis_t = torch.from_numpy(vis)[:, None]
    nisp_t = torch.from_numpy(nisp)
    field = transforms.field_arcsec(vis.shape[-1], cfg)
    native = cfg.vis_sampling == "native"
    vis_crop = cfg.size if native else None
    nisp_crop = None
    if native:
        nisp_crop = transforms.nisp_native_pixels(nisp.shape[-1], field)
        if cfg.layout != "two_branch":
            nisp_crop = min(nisp.shape[-1], nisp_crop + 2)
    nisp_old = old.normalize(nisp_t, cfg, nisp_crop)
    nisp_new = transforms.normalize(nisp_t, cfg, nisp_crop)
    return {
        "old VIS sky+noise": lambda: old.background_and_noise(vis_t),
        "new VIS sky+noise": lambda: pixels.background_and_noise(vis),
        "old NISP sky+noise": lambda: old.background_and_noise(nisp_t),
        "new NISP sky+noise": lambda: pixels.background_and_noise(nisp),
        "old VIS normalise": lambda: old.normalize(vis_t, cfg, vis_crop),
        "new VIS normalise": lambda: transforms.normalize(vis_t, cfg, vis_crop),
        "old NISP normalise": lambda: old.normalize(nisp_t, cfg, nisp_crop),
        "new NISP normalise": lambda: transforms.normalize(nisp_t, cfg, nisp_crop),
        "old NISP resample": lambda: old.resample_nisp(nisp_old, cfg.size, field),
        "new NISP resample": lambda: transforms.resample_nisp(nisp_new, cfg.size, field),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=64, help="cutouts per batch (the scan's 64)")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds (median)")
    parser.add_argument("--repeats", type=int, default=3, help="batches per round")
    parser.add_argument("--threads", default="1,2", help="torch threads, comma-separated")
    parser.add_argument("--base", default=BASE_COMMIT, help="commit of the old implementation")
    parser.add_argument("--steps", action="store_true", help="also time each step")
    common.add_json_argument(parser)
    args = parser.parse_args(argv)
    common.quiet()
    machine = common.print_machine()

    import torch

    from lensfinder.data.transforms import to_model_input
    from lensfinder.testing import tiny_cutouts

    old = old_transforms(args.base)
    vis, nisp = tiny_cutouts(args.n, seed=0)
    configs = shipped_inputs()
    for cfg in configs.values():
        if not _same(old.to_model_input(vis, nisp, cfg), to_model_input(vis, nisp, cfg)):
            raise SystemExit(f"error: old and new differ for {_describe(cfg)}")
    print(f"old ({args.base}) and new give identical tensors for all {len(configs)} configs")

    figures, details = [], []
    per_cutout = 1e3 / args.n
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        print(f"\n{threads} thread(s), ms per cutout (median of {args.rounds} rounds):")
        print("| configs | input | old | new | speed-up |\n|---|---|---|---|---|")
        for label, cfg in configs.items():
            seconds = alternate(
                {
                    "old": lambda cfg=cfg: old.to_model_input(vis, nisp, cfg),
                    "new": lambda cfg=cfg: to_model_input(vis, nisp, cfg),
                },
                args.rounds,
                args.repeats,
            )
            old_ms, new_ms = seconds["old"] * per_cutout, seconds["new"] * per_cutout
            print(
                f"| {label} | {_describe(cfg)} | {old_ms:.3f} | {new_ms:.3f} | "
                f"{old_ms / new_ms:.2f}x |",
                flush=True,
            )
            row: dict[str, Any] = {
                "configs": label,
                "input": _describe(cfg),
                "threads": threads,
                "old_ms": old_ms,
                "new_ms": new_ms,
            }
            figures.append(
                common.figure(
                    f"preprocess {label}, {threads} thread(s): old / new",
                    old_ms / new_ms,
                    "x",
                    new_ms_per_cutout=round(new_ms, 4),
                    old_ms_per_cutout=round(old_ms, 4),
                )
            )
            if args.steps:
                steps = alternate(step_functions(old, vis, nisp, cfg), args.rounds, args.repeats)
                row["steps_ms"] = {name: s * per_cutout for name, s in steps.items()}
                print("    " + ", ".join(f"{k} {v:.3f}" for k, v in row["steps_ms"].items()))
            details.append(row)
    common.write_results(args.json, __file__, figures, {"rows": details}, machine, argv)


if __name__ == "__main__":
    main()
