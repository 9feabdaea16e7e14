"""What every benchmark script shares: the machine, timing, simulated data, untrained models and
the JSON result file that ``run_all.py`` turns into ``results.md``.

A benchmark figure means little without the machine and the exact command that gave it, so every
script prints ``machine_line()`` and writes both into its ``--json`` file next to its figures.
Scripts import this module as ``common`` (``python benchmarks/X.py`` puts this folder on the path).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lensfinder.machine import available_cores, cpu_model

REPO = Path(__file__).resolve().parents[1]


# -- the machine -------------------------------------------------------------------------------
def _ram_gib() -> float | None:
    try:
        import psutil

        return psutil.virtual_memory().total / 2**30
    except ImportError:
        return None


def _gpus() -> list[str]:
    """Names of the CUDA devices torch sees (empty on a CPU-only machine)."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def machine_info() -> dict[str, Any]:
    """CPU model, cores (those this process may use), RAM, GPUs, library versions, load."""
    import numpy
    import onnxruntime
    import torch

    usable = available_cores()
    ram = _ram_gib()
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "ram_gib": round(ram, 1) if ram is not None else None,
        "gpus": _gpus(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "onnxruntime": onnxruntime.__version__,
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def machine_line(info: dict[str, Any] | None = None) -> str:
    """The machine in one line, as printed by every benchmark."""
    info = info or machine_info()
    ram = f", {info['ram_gib']:.0f} GiB RAM" if info.get("ram_gib") else ""
    gpu = f", GPU: {'; '.join(info['gpus'])}" if info.get("gpus") else ", no GPU"
    load = info.get("load_average_1min")
    return (
        f"{info['cpu']}, {info['usable_cores']} usable of {info['logical_cores']} logical "
        f"cores{ram}{gpu}; {info['os']}, python {info['python']}, torch {info['torch']} "
        f"({info['torch_threads']} threads), onnxruntime {info['onnxruntime']}"
        + (f"; load average {load:.1f}" if load is not None else "")
    )


def machine_short(info: dict[str, Any]) -> str:
    """A compact machine label for a table cell."""
    gpu = "; ".join(info.get("gpus") or []) or "no GPU"
    ram = f", {info['ram_gib']:.0f} GiB" if info.get("ram_gib") else ""
    return f"{info['cpu']}, {info['usable_cores']} cores{ram}, {gpu}, torch {info['torch']}"


def print_machine() -> dict[str, Any]:
    info = machine_info()
    print(f"machine: {machine_line(info)}")
    return info


# -- timing ------------------------------------------------------------------------------------
def lensfinder_command() -> list[str]:
    """The ``lensfinder`` CLI of this interpreter (its entry point, else ``python -m``), for
    benchmarks that time a whole command in a subprocess."""
    entry = Path(sys.executable).parent / "lensfinder"
    return [str(entry)] if entry.exists() else [sys.executable, "-m", "lensfinder.cli"]


def rate(count: float, seconds: float) -> float:
    """Items per second; infinite for a zero duration rather than a ZeroDivisionError."""
    return count / seconds if seconds > 0 else float("inf")


def best_of(repeats: int, func: Callable[[], float]) -> float:
    """Fastest of ``repeats`` runs: the least disturbed by other processes on shared cores."""
    return min(func() for _ in range(max(1, repeats)))


@contextmanager
def work_directory(path: Path | None, prefix: str) -> Iterator[Path]:
    """``path`` (kept, so a re-run reuses its data), or a temporary directory removed at the end."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


class Stopwatch:
    """``with Stopwatch() as watch: ...`` then ``watch.seconds`` (wall clock)."""

    def __enter__(self) -> Stopwatch:
        self.seconds = 0.0
        self._began = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._began


def quiet() -> None:
    """No progress bars from lensfinder: they would bury the printed figures."""
    os.environ.setdefault("LENSFINDER_QUIET", "1")


def quiet_lightning() -> None:
    """No info lines from Lightning (devices, tips). Its import sets its loggers to INFO, so
    it is imported here first, by the scripts that train anyway."""
    import lightning.pytorch  # noqa: F401

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


# -- data and models ---------------------------------------------------------------------------
def simulated_store(
    layout: Path,
    store: Path,
    n: int,
    seed: int,
    lens_fraction: float,
    workers: int = 2,
    **settings: Any,
) -> dict[str, Any]:
    """Simulate ``n`` cutouts into ``layout`` and pack them into ``store``, both resumable:
    a re-run finishes what is missing and reuses the rest. ``settings`` are further
    ``SimulateConfig`` fields (e.g. ``nonlens_mix``). Returns what each step did."""
    from lensfinder.config import SimulateConfig
    from lensfinder.data.store import pack
    from lensfinder.simulate import simulate

    config = SimulateConfig(
        n=n, seed=seed, lens_fraction=lens_fraction, workers=workers, **settings
    )
    with Stopwatch() as sim_watch:
        simulated = simulate(config, layout, progress=False)
    with Stopwatch() as pack_watch:
        packed = pack(layout, store, progress=False, workers=workers)
    print(simulated.summary())
    print(packed.summary())
    return {
        "layout": str(layout),
        "store": str(store),
        "simulated": simulated.written,
        "already_simulated": simulated.skipped,
        "simulate_s": round(sim_watch.seconds, 2),
        "simulate_per_s": round(simulated.rate, 3) if simulated.written else None,
        "lenses": simulated.lenses,
        "packed_objects": packed.n_objects,
        "pack_problems": len(packed.problems),
        "already_packed": packed.already_packed,
        "pack_s": round(pack_watch.seconds, 2),
    }


def untrained_run(
    run_dir: Path, config: str = "cpu-small", size: int | None = None, pretrained: bool = True
) -> Path:
    """A run directory holding a train config's model, untrained: its speed is the trained
    model's, so speed benchmarks need no training. ``size`` overrides the input side."""
    import dataclasses

    from lensfinder.config import TrainConfig, load_config
    from lensfinder.testing import make_run

    train_cfg = load_config(TrainConfig, config)
    input_cfg = train_cfg.input if size is None else dataclasses.replace(train_cfg.input, size=size)
    model_cfg = train_cfg.model
    if not pretrained:
        model_cfg = dataclasses.replace(model_cfg, pretrained=None)
    return make_run(run_dir, 0, input_cfg, model_cfg)


def time_predictor(predictor: Any, vis: Any, nisp: Any, warmup: int) -> tuple[float, Any]:
    """Cutouts/s of ``predictor.predict_arrays`` after one warm-up batch, and the logits."""
    predictor.predict_arrays(vis[:warmup], nisp[:warmup])
    with Stopwatch() as watch:
        scores = predictor.predict_arrays(vis, nisp)
    return rate(len(vis), watch.seconds), scores.logits


# -- results -----------------------------------------------------------------------------------
def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, default=None, help="write the results here (JSON)")


def command_line(script: str | Path, argv: Sequence[str] | None = None) -> str:
    """The command as a user would type it from the repository root, less ``--json PATH``
    (where the record goes changes no figure)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--json" in argv[:-1]:
        at = argv.index("--json")
        argv = argv[:at] + argv[at + 2 :]
    argv = [a for a in argv if not a.startswith("--json=")]
    python = Path(sys.executable)
    try:
        python_text = str(python.relative_to(REPO))
    except ValueError:
        python_text = "python"
    script_path = Path(script).resolve()
    try:
        script_text = str(script_path.relative_to(REPO))
    except ValueError:
        script_text = str(script_path)
    return shlex.join([python_text, script_text, *argv])


def figure(name: str, value: float | int | str | None, unit: str = "", **extra: Any) -> dict:
    """One headline number of a benchmark (one row of ``results.md``)."""
    if isinstance(value, float):
        value = float(f"{value:.4g}")
    return {"figure": name, "value": value, "unit": unit, **extra}


def write_results(
    path: Path | None,
    script: str | Path,
    figures: list[dict[str, Any]],
    details: dict[str, Any],
    machine: dict[str, Any] | None = None,
    argv: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The benchmark's record (figures, details, machine, command, date); written atomically to
    ``path`` when given. Returns the record."""
    from lensfinder.files import atomic_write_text

    record = {
        "benchmark": Path(script).stem,
        "command": command_line(script, argv),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine or machine_info(),
        "figures": figures,
        "details": details,
    }
    if path is not None:
        atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n")
        print(f"results: {path}")
    return record
