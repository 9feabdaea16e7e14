"""How a model's eight D4 views are best combined into one score, chosen on one set, then read on
others: the mean probability (what ``predict`` does), the mean, median, lowest, second-lowest or
highest logit, and the mean of the middle four.

    .venv/bin/python benchmarks/bench_tta_rules.py --model RUN --select SELECT.zarr \
        --data shift2/shift.zarr --data shift2/tail.zarr --workdir tta

Why: at FPR 1e-3 a ranking is decided by a handful of non-lenses; a confuser that one view
mistakes for a lens, which the mean probability lets through, might be caught by a rule that
asks every view. ``--select`` (labelled, e.g. fresh simulations never trained on) chooses the
rule; each ``--data`` set is then read only to report (the sets given together are pooled: a
store without labels counts as non-lenses, as the tail copy of ``bench_domain_adapt.py``).
The per-view logits are cached in the work directory (``--reuse`` reads them back).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import common
import numpy as np


def view_logits(model: Path, data: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(views (8, n), labels (n,))`` of every valid cutout of the store ``data``: the
    predictor's own input preparation and D4 views, one logit per view, not yet combined."""
    from lensfinder.config import PredictConfig
    from lensfinder.data.source import open_source
    from lensfinder.predict.predictor import Predictor
    from lensfinder.stages import progress_bar

    predictor = Predictor([model], PredictConfig(tta=True))
    source = open_source(data)
    indices = np.arange(len(source))
    valid = np.zeros(len(indices), dtype=bool)
    reasons: list[str | None] = [None] * len(indices)
    bar = progress_bar(None, total=len(indices), desc=f"views of {data.name}", unit="cutout")
    views = []
    for _, vis, nisp in predictor._valid_chunks(source, indices, valid, reasons, bar):
        (x,) = predictor._prepare(vis, nisp)  # one model: one input config
        views.append(np.stack([predictor._run_member(0, v)[:, 0] for v in predictor._views(x)]))
    bar.close()
    labels = np.asarray(source.labels)[valid]
    return np.concatenate(views, axis=1), np.where(labels < 0, 0, labels)


def rules(views: np.ndarray) -> dict[str, np.ndarray]:
    """Every combination rule's score of (8, n) view logits; the first two are ``predict``'s own
    (``ensemble_average`` "probability", its default, and "logit"), computed by its code."""
    from lensfinder.predict.predictor import ensemble_score

    ordered = np.sort(views, axis=0)
    return {
        "mean probability (predict's)": ensemble_score(views, "probability"),
        "mean logit": ensemble_score(views, "logit"),
        "median logit": np.median(views, axis=0),
        "lowest logit": ordered[0],
        "second-lowest logit": ordered[1],
        "highest logit": ordered[-1],
        "mean of the middle four": ordered[2:6].mean(axis=0),
    }


def cached_views(
    model: Path, data: Path, workdir: Path, reuse: bool
) -> tuple[np.ndarray, np.ndarray]:
    path = workdir / f"{model.name}-{data.stem}.npz"
    if reuse and path.exists():
        with np.load(path) as cached:
            return cached["views"], cached["labels"]
    views, labels = view_logits(model, data)
    np.savez(path, views=views, labels=labels)
    return views, labels


def table(name: str, views: np.ndarray, labels: np.ndarray) -> list[str]:
    from lensfinder.evaluate.metrics import auroc, tpr_at_fpr

    lines = [
        f"{name}: {int(labels.sum())} lenses, {int((labels == 0).sum())} non-lenses",
        "| rule | AUROC | TPR at FPR 1e-2 | TPR at FPR 1e-3 |",
        "|---|---|---|---|",
    ]
    for rule, score in rules(views).items():
        tprs = [tpr_at_fpr(labels, score, fpr).tpr for fpr in (1e-2, 1e-3)]
        lines.append(f"| {rule} | {auroc(labels, score):.4f} | {tprs[0]:.3f} | {tprs[1]:.3f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a run directory")
    parser.add_argument("--select", type=Path, required=True, help="labelled store: chooses")
    parser.add_argument("--data", type=Path, action="append", default=[], help="store to report")
    parser.add_argument("--workdir", type=Path, default=Path("tta-rules"))
    parser.add_argument("--reuse", action="store_true", help="read cached view logits back")
    args = parser.parse_args()
    common.print_machine()
    args.workdir.mkdir(parents=True, exist_ok=True)
    views, labels = cached_views(args.model, args.select, args.workdir, args.reuse)
    print("\n".join(table(f"selection set {args.select}", views, labels)))
    if args.data:
        pooled = [cached_views(args.model, d, args.workdir, args.reuse) for d in args.data]
        views = np.concatenate([v for v, _ in pooled], axis=1)
        labels = np.concatenate([lab for _, lab in pooled])
        names = " + ".join(str(d) for d in args.data)
        print("\n".join(table(f"reported only: {names}", views, labels)))


if __name__ == "__main__":
    main()
