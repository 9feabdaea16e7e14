"""``lensfinder demo``: the whole pipeline on fresh simulations, as a newcomer's first run.

simulate a training set -> pack -> train (cpu-small) -> evaluate on the held-out test split ->
simulate a survey-like field (few lenses) -> scan it (in this process: a field this small does not
pay for a Dask cluster's start-up; ``scan.local_below``) -> gallery of the top candidates.
Every stage resumes, so an interrupted demo picks up where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from lensfinder.config import (
    DemoConfig,
    EvaluateConfig,
    GalleryConfig,
    ScanConfig,
    SimulateConfig,
    TrainConfig,
    load_config,
)
from lensfinder.data.store import pack
from lensfinder.evaluate import EvaluationResult, evaluate
from lensfinder.safety import DEMO
from lensfinder.scan import ScanResult, scan
from lensfinder.scan.gallery import make_gallery
from lensfinder.simulate import simulate
from lensfinder.stages import Stage, Summarised, report, run_stage
from lensfinder.train import train

QUICK = DemoConfig(
    n_train=48, n_field=24, field_lens_fraction=0.25, max_epochs=1, train_minutes=None,
    gallery_top=8,
)  # fmt: skip
# A quick demo also shrinks the model input so that a test can run the whole pipeline in seconds.
QUICK_TRAIN_OVERRIDES: dict[str, Any] = {
    "input": {"size": 64},
    "model": {"arch": "resnet18", "pretrained": None},
    "max_train_samples": 64,
}
STEPS = 7  # simulate, pack, train, evaluate, simulate a field, scan, gallery
R = TypeVar("R", bound=Summarised)


@dataclass
class DemoResult:
    out: Path
    paths: dict[str, Path]
    auroc: float
    auroc_ci: tuple[float, float]
    tpr_at_1e3: float | None
    tpr0: float
    scan_rate: float
    field_lenses_in_top: tuple[int, int]  # (true lenses among the top N of the field, N)
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        tpr = "unresolved (too few non-lenses)"
        if self.tpr_at_1e3 is not None:
            tpr = f"{self.tpr_at_1e3:.3f}"
        found, top = self.field_lenses_in_top
        lines = [
            "",
            "lensfinder demo finished",
            f"  test AUROC        {self.auroc:.3f} "
            f"(95% CI {self.auroc_ci[0]:.3f}-{self.auroc_ci[1]:.3f}), TPR0 {self.tpr0:.3f}",
            f"  TPR at FPR 1e-3   {tpr}",
            f"  scan rate         {self.scan_rate:.1f} cutouts/s",
            f"  field top {top:<6}  {found} true lenses",
            f"  wall time         {sum(self.stage_seconds.values()) / 60:.1f} min "
            + "("
            + ", ".join(f"{k} {v:.0f}s" for k, v in self.stage_seconds.items())
            + ")",
            "",
            "Outputs:",
        ]
        lines += [f"  {name:<18}{path}" for name, path in self.paths.items()]
        lines.append("Open the report and the gallery (index.html files) in a browser.")
        return "\n".join(lines)


def demo_train_config(cfg: DemoConfig, quick: bool) -> TrainConfig:
    """The named training config with the demo's epoch cap and minutes (and tiny when
    quick)."""
    overrides: dict[str, Any] = dict(QUICK_TRAIN_OVERRIDES) if quick else {}
    if cfg.max_epochs is not None:
        overrides["max_epochs"] = cfg.max_epochs
    if cfg.train_minutes is not None:
        overrides["time_budget_minutes"] = cfg.train_minutes
    return load_config(TrainConfig, cfg.train_config, **overrides)


def run_demo(
    out: Path, quick: bool = False, config: DemoConfig | None = None, progress: bool = True
) -> DemoResult:
    """Run every stage into ``out``; returns the headline numbers and where everything is."""
    cfg = config or (QUICK if quick else DemoConfig())
    with run_stage("demo", DEMO, out, progress=progress) as stage:
        return stage.finish(_run_stages(stage, quick, cfg))


class _Steps:
    """The demo's steps in order: each one's header and summary reported, its time kept."""

    def __init__(self, progress: bool) -> None:
        self.progress = progress
        self.number = 0
        self.seconds: dict[str, float] = {}

    def run(self, header: str, name: str, func: Callable[..., R], *args: Any) -> R:
        self.number += 1
        report(f"\n[{self.number}/{STEPS}] {header}")
        start = time.perf_counter()
        result = func(*args, progress=self.progress)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        report(result.summary())
        return result


def _demo_paths(out: Path) -> dict[str, Path]:
    return {
        "training layout": out / "train-layout",
        "training store": out / "train.zarr",
        "model": out / "model",
        "evaluation": out / "evaluation" / "report.html",
        "field layout": out / "field-layout",
        "candidates": out / "scan" / "candidates.csv",
        "gallery": out / "gallery" / "index.html",
    }


def _run_stages(stage: Stage, quick: bool, cfg: DemoConfig) -> DemoResult:
    """``run_demo`` once it holds the lock of ``stage.out``."""
    paths = _demo_paths(stage.out)
    steps = _Steps(stage.progress)
    sim = SimulateConfig(n=cfg.n_train, seed=cfg.seed, workers=cfg.workers)
    evaluation = _train_and_evaluate(steps, paths, sim, cfg, quick)
    scanned = _scan_field(steps, paths, sim, cfg)
    metrics = evaluation.metrics
    tpr = metrics.get("tpr_at_fpr", {}).get("1e-03")
    return DemoResult(
        out=stage.out,
        paths=paths,
        auroc=float(metrics["auroc"]),
        auroc_ci=tuple(metrics["auroc_ci"]),
        tpr_at_1e3=None if tpr is None else float(tpr),
        tpr0=float(metrics["tpr0"]),
        scan_rate=float(scanned.rate),
        field_lenses_in_top=_lenses_in_top(paths["candidates"].parent, cfg.gallery_top),
        stage_seconds=steps.seconds,
    )


def _train_and_evaluate(
    steps: _Steps, paths: dict[str, Path], sim: SimulateConfig, cfg: DemoConfig, quick: bool
) -> EvaluationResult:
    """Steps 1-4: simulate a training set, pack it, train, evaluate on its test split."""
    header = f"Simulating {cfg.n_train} Euclid-like cutouts (VIS + NISP Y, J, H)"
    steps.run(header, "simulate", simulate, sim, paths["training layout"])
    header = "Packing the layout into one chunked store"
    steps.run(header, "pack", pack, paths["training layout"], paths["training store"])
    train_cfg = demo_train_config(cfg, quick)
    header = f"Training {train_cfg.model.arch} at {train_cfg.input.size}px on 4 bands"
    steps.run(header, "train", train, train_cfg, paths["training store"], paths["model"])
    return steps.run(
        "Evaluating on the held-out test split (metrics, ROC, HTML report)",
        "evaluate",
        evaluate,
        [paths["model"]],
        paths["training store"],
        paths["evaluation"].parent,
        EvaluateConfig(),
    )


def _scan_field(
    steps: _Steps, paths: dict[str, Path], sim: SimulateConfig, cfg: DemoConfig
) -> ScanResult:
    """Steps 5-7: simulate a field with few lenses, scan it, a gallery of its top candidates."""
    field_sim = replace(
        sim,
        n=cfg.n_field,
        seed=cfg.seed + 1,
        lens_fraction=cfg.field_lens_fraction,
        first_id=sim.first_id + 100000,
    )
    header = f"Simulating a field of {cfg.n_field} cutouts with few lenses"
    steps.run(header, "simulate", simulate, field_sim, paths["field layout"])
    scan_cfg = ScanConfig(workers=cfg.workers)  # shard size: the scan's own rule
    scanned = steps.run(
        "Scanning the field (in this process below scan.local_below cutouts, else on Dask)",
        "scan",
        scan,
        [paths["model"]],
        paths["field layout"],
        paths["candidates"].parent,
        scan_cfg,
    )
    steps.run(
        f"Gallery of the top {cfg.gallery_top} candidates",
        "gallery",
        make_gallery,
        paths["candidates"].parent,
        paths["field layout"],
        paths["gallery"].parent,
        GalleryConfig(top=cfg.gallery_top),
    )
    return scanned


def _lenses_in_top(scan_dir: Path, top: int) -> tuple[int, int]:
    """True lenses among the ``top`` highest-scoring field cutouts (the field is simulated)."""
    import pyarrow.parquet as pq

    labels = pq.read_table(scan_dir / "candidates.parquet", columns=["label"])["label"]
    head = labels.to_numpy()[:top]
    return int((head == 1).sum()), len(head)
