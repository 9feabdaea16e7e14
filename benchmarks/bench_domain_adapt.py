"""Learning from the survey itself: models scored on a shifted evaluation copy they never saw.

    .venv/bin/python benchmarks/bench_domain_adapt.py --workdir /tmp/shift \\
        --model "simulator only=runs/cpu-best" --model "+ AdaBN=runs/cpu-best-adabn" ...

The shifted set (``bench_domain_shift.py``: real Hubble Deep Field galaxies, other PSF, depth,
noise texture and confuser mix) is made twice, with different seeds:

- the **field copy** (``field.zarr``, seed 7001, 2% lenses, as a survey field has): the
  unlabelled cutouts a user hands ``lensfinder train --adapt``; its labels are never read by
  training. ``--make-sets`` prints its path.
- the **evaluation copy** (``shift.zarr``, seed 990, half lenses): scored here and nowhere else;
  nothing is tuned on it.

Each ``--model LABEL=RUN`` (a run or ensemble directory, trained however its label says) is
scored with D4 test-time augmentation on the evaluation copy: AUROC with its bootstrap CI, TPR0,
TPR10, TPR at FPR 1e-2 and 1e-3, and the AUROC of all lenses against each kind of non-lens. With
``--on-field`` it is also scored on the field copy itself (the cutouts it adapted to, as a survey
would use them; only ~40 lenses there, so wide CIs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import bench_domain_shift as shift
import common

FIELD_SEED = 7001
FIELD_LENS_FRACTION = 0.02


def make_sets(workdir: Path, n_eval: int, n_field: int, workers: int) -> tuple[Path, Path]:
    """The evaluation copy and the unlabelled field copy (resumable)."""
    evaluation = shift.shifted_store(workdir, n_eval, 990, workers)
    field = shift.shifted_store(
        workdir, n_field, FIELD_SEED, workers, lens_fraction=FIELD_LENS_FRACTION, name="field"
    )
    return evaluation, field


def score_with_kinds(model: Path, store: Path, out: Path, bootstrap: int) -> dict[str, Any]:
    """``bench_domain_shift.score`` plus the AUROC of lenses against each kind of non-lens."""
    row = shift.score(model, store, out, bootstrap)
    metrics = json.loads((out / "metrics.json").read_text())
    kinds = metrics.get("breakdown", {}).get("kinds", [])
    row["kinds"] = {k["kind"]: round(k["auroc_vs_lenses"], 3) for k in kinds}
    return row


def _ci(row: dict[str, Any]) -> str:
    low, high = row["auroc_ci"] or (float("nan"), float("nan"))
    return f"{row['auroc']:.3f} [{low:.3f}, {high:.3f}]"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the rows, kinds as extra columns."""
    kinds = sorted({k for row in rows for k in row["kinds"]})
    head = ["model", "AUROC [95% CI]", "TPR0", "TPR10", "TPR@1e-2", "TPR@1e-3", *kinds]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [
            row["label"],
            _ci(row),
            _fmt(row["tpr0"]),
            _fmt(row["tpr10"]),
            _fmt(row["tpr_at_fpr_1e-2"]),
            _fmt(row["tpr_at_fpr_1e-3"]),
            *(_fmt(row["kinds"].get(k)) for k in kinds),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--n", type=int, default=2000, help="evaluation cutouts")
    parser.add_argument("--n-field", type=int, default=2000, help="unlabelled field cutouts")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", action="append", default=[], help="LABEL=RUN (repeatable)")
    parser.add_argument("--on-field", action="store_true", help="also score the field copy")
    parser.add_argument("--make-sets", action="store_true", help="make the two copies and stop")
    parser.add_argument("--bootstrap", type=int, default=1000)
    common.add_json_argument(parser)
    args = parser.parse_args()
    print(common.machine_line())
    evaluation, field = make_sets(args.workdir, args.n, args.n_field, args.workers)
    print(f"field copy (for --adapt): {field}\nevaluation copy: {evaluation}")
    if args.make_sets:
        return
    rows, field_rows = [], []
    for spec in args.model:
        label, _, run = spec.rpartition("=")
        run_path = Path(run)
        label = label or run_path.name
        name = run_path.name
        row = score_with_kinds(run_path, evaluation, args.workdir / "eval" / name, args.bootstrap)
        rows.append({"label": label, **row})
        print(f"{label}: AUROC {_ci(row)} TPR@1e-3 {_fmt(row['tpr_at_fpr_1e-3'])}", flush=True)
        if args.on_field:
            on_field = score_with_kinds(
                run_path, field, args.workdir / "eval-field" / name, args.bootstrap
            )
            field_rows.append({"label": label, **on_field})
    print("\nEvaluation copy (never trained or tuned on):\n" + table(rows))
    if field_rows:
        print("\nField copy (the unlabelled cutouts adapted to):\n" + table(field_rows))
    common.write_results(
        args.json,
        __file__,
        rows + [{**r, "on": "field"} for r in field_rows],
        {"shift_settings": shift.SHIFT_SETTINGS, "field_seed": FIELD_SEED},
    )


if __name__ == "__main__":
    main()
