"""``lensfinder demo``: the whole pipeline on fresh simulations, as a newcomer's first run.

simulate a training set -> pack -> train (cpu-small) -> evaluate on the held-out test split ->
simulate a survey-like field (few lenses) -> scan it on Dask -> gallery of the top candidates.
Every stage resumes, so an interrupted demo picks up where it stopped.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

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
from lensfinder.evaluate import evaluate
from lensfinder.safety import DEMO, writing_output
from lensfinder.scan import scan
from lensfinder.scan.gallery import make_gallery
from lensfinder.simulate import simulate
from lensfinder.train import train

QUICK = DemoConfig(n_train=48, n_field=24, field_lens_fraction=0.25, max_epochs=1, gallery_top=8)
# A quick demo also shrinks the model input so that a test can run the whole pipeline in seconds.
QUICK_TRAIN_OVERRIDES: dict[str, Any] = {
    "input": {"size": 64},
    "model": {"arch": "resnet18", "pretrained": None},
    "max_train_samples": 64,
}


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


def _stage(number: int, total: int, text: str) -> None:
    print(f"\n[{number}/{total}] {text}", file=sys.stderr, flush=True)


def demo_train_config(cfg: DemoConfig, quick: bool) -> TrainConfig:
    """The named training config with the demo's epoch cap (and tiny when quick)."""
    overrides: dict[str, Any] = dict(QUICK_TRAIN_OVERRIDES) if quick else {}
    if cfg.max_epochs is not None:
        overrides["max_epochs"] = cfg.max_epochs
    return load_config(TrainConfig, cfg.train_config, **overrides)


def run_demo(out: Path, quick: bool = False, config: DemoConfig | None = None) -> DemoResult:
    """Run every stage into ``out``; returns the headline numbers and where everything is."""
    cfg = config or (QUICK if quick else DemoConfig())
    with writing_output(out, DEMO, "demo") as out_dir:
        return _run_stages(out_dir, quick, cfg)


def _run_stages(out: Path, quick: bool, cfg: DemoConfig) -> DemoResult:
    """``run_demo`` once it holds the lock of ``out``."""
    paths = {
        "training layout": out / "train-layout",
        "training store": out / "train.zarr",
        "model": out / "model",
        "evaluation": out / "evaluation" / "report.html",
        "field layout": out / "field-layout",
        "candidates": out / "scan" / "candidates.csv",
        "gallery": out / "gallery" / "index.html",
    }
    seconds: dict[str, float] = {}
    total = 7

    def timed(name: str, func, *args, **kwargs):
        start = time.perf_counter()
        result = func(*args, **kwargs)
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
        print(result.summary(), file=sys.stderr, flush=True)
        return result

    sim = SimulateConfig(n=cfg.n_train, seed=cfg.seed, workers=cfg.workers)
    _stage(1, total, f"Simulating {cfg.n_train} Euclid-like cutouts (VIS + NISP Y, J, H)")
    timed("simulate", simulate, sim, paths["training layout"])

    _stage(2, total, "Packing the layout into one chunked store")
    timed("pack", pack, paths["training layout"], paths["training store"])

    train_cfg = demo_train_config(cfg, quick)
    _stage(3, total, f"Training {train_cfg.model.arch} at {train_cfg.input.size}px on 4 bands")
    timed("train", train, train_cfg, paths["training store"], paths["model"])

    _stage(4, total, "Evaluating on the held-out test split (metrics, ROC, HTML report)")
    evaluation = timed(
        "evaluate",
        evaluate,
        [paths["model"]],
        paths["training store"],
        paths["evaluation"].parent,
        EvaluateConfig(),
    )

    field_sim = replace(
        sim,
        n=cfg.n_field,
        seed=cfg.seed + 1,
        lens_fraction=cfg.field_lens_fraction,
        first_id=sim.first_id + 100000,
    )
    _stage(5, total, f"Simulating a field of {cfg.n_field} cutouts with few lenses")
    timed("simulate", simulate, field_sim, paths["field layout"])

    _stage(6, total, "Scanning the field on a local Dask cluster")
    scan_cfg = ScanConfig(workers=cfg.workers)  # shard size: the scan's own rule
    scanned = timed(
        "scan", scan, [paths["model"]], paths["field layout"], paths["candidates"].parent, scan_cfg
    )

    _stage(7, total, f"Gallery of the top {cfg.gallery_top} candidates")
    timed(
        "gallery",
        make_gallery,
        paths["candidates"].parent,
        paths["field layout"],
        paths["gallery"].parent,
        GalleryConfig(top=cfg.gallery_top),
    )

    metrics = evaluation.metrics
    tpr = metrics.get("tpr_at_fpr", {}).get("1e-03")
    return DemoResult(
        out=out,
        paths=paths,
        auroc=float(metrics["auroc"]),
        auroc_ci=tuple(metrics["auroc_ci"]),
        tpr_at_1e3=None if tpr is None else float(tpr),
        tpr0=float(metrics["tpr0"]),
        scan_rate=float(scanned.rate),
        field_lenses_in_top=_lenses_in_top(paths["candidates"].parent, cfg.gallery_top),
        stage_seconds=seconds,
    )


def _lenses_in_top(scan_dir: Path, top: int) -> tuple[int, int]:
    """True lenses among the ``top`` highest-scoring field cutouts (the field is simulated)."""
    import pyarrow.parquet as pq

    labels = pq.read_table(scan_dir / "candidates.parquet", columns=["label"])["label"]
    head = labels.to_numpy()[:top]
    return int((head == 1).sum()), len(head)
