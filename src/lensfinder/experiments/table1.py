"""``lensfinder reproduce table1``: train the eight rows of the paper's Table I, evaluate each on
the same test split, and write our AUROC [CI], TPR0 and TPR10 beside the paper's AUROC.

The rows are the shipped configs ``table1-model1`` .. ``table1-model8``: the paper's rows as it
states them (``PAPER_TABLE1``; the configs' comments say what we chose where the paper is
silent). A budget decides how far they are scaled: ``gpu`` runs them as they are (the paper's
settings, on the data given); ``cpu`` keeps every row's recipe (augmentation, sampling, starting
batch, epochs, L2, BN method, schedule) and scales what costs time the same way in every row
(smaller input, samples per epoch), and without ``data`` simulates its own small set first, so
that the whole command fits in ~15 minutes on 2 CPU cores. What was scaled is computed from the
configs (before -> after) and written in the table header, with the machine it ran on.

Every row shares one split (by object ID with a fixed seed), so all are tested on the same objects.
Resume: a row whose run directory holds ``model.json`` is not retrained (its recorded config must
match, else a ``ConfigError``); an interrupted row resumes from its checkpoint; an evaluation newer
than its model is reused. Outputs in ``out``: ``model<N>/`` (run directories),
``evaluations/model<N>/`` (``lensfinder evaluate`` outputs), ``table1.md``, ``table1.csv``,
``table1.json``, ``table1_auroc.png`` (bar chart with CIs) and ``roc_best.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import json
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lensfinder import __version__
from lensfinder.config import TABLE1_BUDGETS as BUDGETS
from lensfinder.config import (
    EvaluateConfig,
    PredictConfig,
    SimulateConfig,
    Table1Budget,
    TrainConfig,
    flat_settings,
    load_config,
    to_dict,
)
from lensfinder.data import open_source
from lensfinder.data.store import pack
from lensfinder.errors import ConfigError, DataError
from lensfinder.evaluate.evaluation import METRICS_NAME, SCORES_NAME, evaluate
from lensfinder.evaluate.metrics import roc_curve
from lensfinder.experiments.bn_study import bn_method
from lensfinder.files import atomic_write_text
from lensfinder.machine import cpu_model
from lensfinder.models.meta import read_meta
from lensfinder.presentation.plots import grouped_bar_plot, roc_plot
from lensfinder.safety import TABLE1
from lensfinder.simulate import simulate
from lensfinder.stages import Stage, report, run_stage
from lensfinder.train import train
from lensfinder.train.training import CONFIG_FILE, config_differences

ROWS: tuple[int, ...] = tuple(range(1, 9))
CONFIG_PATTERN = "table1-model{row}"
MARKDOWN_NAME = "table1.md"
CSV_NAME = "table1.csv"
JSON_NAME = "table1.json"
BAR_NAME = "table1_auroc.png"
ROC_NAME = "roc_best.png"
DATA_DIR = "data"  # where a budget's own simulated set goes, inside ``out``
COLUMNS: tuple[str, ...] = (
    "model", "D4", "balanced", "batch (start→end)", "epochs (run/max)", "lr (start→end)", "L2",
    "BN method", "paper AUROC", "our AUROC [95% CI]", "TPR0", "TPR10",
)  # fmt: skip


@dataclass(frozen=True)
class PaperRow:
    """One row of the paper's Table I, as printed (batch is the starting size)."""

    d4: bool
    balanced: bool
    batch_size: int
    epochs: int
    l2: float
    auroc: float
    bn_method: int


PAPER_TABLE1: dict[int, PaperRow] = {  # D4, balanced, batch, epochs, L2, AUROC, BN method
    1: PaperRow(False, False, 128, 10, 0.0, 0.70, 1),
    2: PaperRow(False, True, 128, 10, 0.0, 0.70, 1),
    3: PaperRow(False, True, 8, 5, 0.0, 0.74, 1),
    4: PaperRow(False, True, 4, 5, 0.0, 0.74, 1),
    5: PaperRow(False, True, 128, 4, 1e-4, 0.64, 1),
    6: PaperRow(False, False, 8, 1, 0.0, 0.72, 1),
    7: PaperRow(True, True, 8, 10, 1e-4, 0.83, 1),
    8: PaperRow(True, True, 8, 10, 0.0, 0.94, 2),
}  # fmt: skip


def paper_bn_method(config: TrainConfig) -> str:
    """The paper's BN method number for a config ("1", "2"), or what it is instead."""
    model = config.model
    if model.norm == "instance":
        return "instance norm"
    if model.freeze_backbone:
        return "frozen"
    used = (("1", model.bn_reinit), ("2", model.bn_inference == "batch"))
    return "+".join(number for number, on in used if on) or "none"


def resolve_budget(budget: str | Table1Budget) -> Table1Budget:
    if isinstance(budget, Table1Budget):
        return budget
    try:
        return BUDGETS[budget]
    except KeyError:
        raise ConfigError(
            f"table1 budget {budget!r}: expected one of {', '.join(sorted(BUDGETS))}"
        ) from None


def scaled_settings(budget: Table1Budget, rows: Sequence[int] = ROWS) -> list[str]:
    """``setting before -> after`` for every setting the budget changes in some of ``rows``."""
    changes: dict[str, tuple[set[str], str]] = {}
    for row in rows:
        original = load_config(TrainConfig, CONFIG_PATTERN.format(row=row))
        before = flat_settings(original)
        after = flat_settings(budget.apply(original))
        for key, value in after.items():
            if before.get(key) != value:
                olds, _ = changes.setdefault(key, (set(), str(value)))
                olds.add("all" if before.get(key) is None else str(before.get(key)))
    return [f"{key} {'/'.join(sorted(olds))} → {new}" for key, (olds, new) in changes.items()]


def machine_description() -> str:
    """Where the table was made: CPU cores and model, GPU if any, torch version."""
    import torch

    text = f"{os.cpu_count()} CPU cores ({cpu_model()}, {platform.system()})"
    if torch.cuda.is_available():
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        text += f", {torch.cuda.device_count()} GPU(s): {', '.join(names)}"
    else:
        text += ", no GPU"
    return f"{text}, torch {torch.__version__} ({torch.get_num_threads()} thread(s))"


# -- rows --------------------------------------------------------------------------------------
@dataclass
class Table1Row:
    row: int
    config_name: str
    config: TrainConfig  # as scaled by the budget
    run_dir: Path
    eval_dir: Path
    trained_now: bool
    train_seconds: float | None  # wall time of the training that made the model, if known
    train_metrics: dict[str, Any]  # model.json's "metrics"
    test: dict[str, Any]  # compute_metrics on the test split

    @property
    def paper(self) -> PaperRow | None:
        return PAPER_TABLE1.get(self.row)

    def cells(self) -> dict[str, str]:
        """The row's table cells: its recipe as run (batch and lr at start and where the plateau
        schedule took them), the paper's AUROC and ours."""
        cfg, metrics = self.config, self.train_metrics
        batches, lrs = metrics.get("batch_size_history") or [], metrics.get("lr_history") or []
        batch_end = int(batches[-1]) if batches else cfg.batch_size
        lr_end = lrs[-1] if lrs else cfg.lr
        ci = self.test.get("auroc_ci")
        ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        return {
            "model": str(self.row),
            "D4": "x" if cfg.augment_d4 else "",
            "balanced": "x" if cfg.balanced_sampler else "",
            "batch (start→end)": f"{cfg.batch_size}→{batch_end}",
            "epochs (run/max)": f"{metrics.get('epochs', '?')}/{cfg.max_epochs}",
            "lr (start→end)": f"{cfg.lr:g}→{lr_end:.0e}",
            "L2": f"{cfg.weight_decay:g}" if cfg.weight_decay else "",
            "BN method": paper_bn_method(cfg),
            "paper AUROC": f"{self.paper.auroc:.2f}" if self.paper else "",
            "our AUROC [95% CI]": f"{self.test['auroc']:.3f}{ci_text}",
            "TPR0": f"{self.test['tpr0']:.3f}",
            "TPR10": f"{self.test['tpr10']:.3f}",
        }

    def csv_row(self) -> dict[str, Any]:
        """Numbers for the CSV: the cells plus the raw values a plot or a script needs."""
        ci = self.test.get("auroc_ci") or (None, None)
        return {
            **self.cells(),
            "paper_auroc": self.paper.auroc if self.paper else None,
            "auroc": self.test["auroc"],
            "auroc_ci_low": ci[0],
            "auroc_ci_high": ci[1],
            "tpr0": self.test["tpr0"],
            "tpr10": self.test["tpr10"],
            "n_test": self.test.get("n"),
            "best_val_auroc": self.train_metrics.get("best_val_auroc"),
            "train_seconds": self.train_seconds,
            "bn_method_words": bn_method(to_dict(self.config.model)),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "row": self.row,
            "config_name": self.config_name,
            "config": to_dict(self.config),
            "run_dir": str(self.run_dir),
            "eval_dir": str(self.eval_dir),
            "train_seconds": self.train_seconds,
            "train_metrics": self.train_metrics,
            "test": self.test,
            "paper": None if self.paper is None else dataclasses.asdict(self.paper),
            "cells": self.cells(),
        }


@dataclass
class Table1Result:
    out: Path
    budget: str
    rows: list[Table1Row]
    markdown_path: Path
    csv_path: Path
    json_path: Path
    bar_path: Path
    roc_path: Path
    data: Path
    best_row: int
    n_trained_now: int
    seconds: float

    def summary(self) -> str:
        best = next(r for r in self.rows if r.row == self.best_row)
        ci = best.test.get("auroc_ci")
        ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        return "\n".join(
            [
                f"Table I ({self.budget} budget) on {self.data}: {len(self.rows)} rows, "
                f"{self.n_trained_now} trained now, {len(self.rows) - self.n_trained_now} "
                f"resumed; {self.seconds / 60:.1f} min",
                "",
                *table_lines(self.rows),
                "",
                f"best: model {best.row}, test AUROC {best.test['auroc']:.3f}{ci_text}",
                f"table: {self.markdown_path}  CSV: {self.csv_path}",
                f"AUROC bars: {self.bar_path}  ROC: {self.roc_path}",
            ]
        )


def table_lines(rows: Sequence[Table1Row]) -> list[str]:
    """The main table as markdown lines (printed by the CLI and written to table1.md)."""
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join(":-:" if c in ("D4", "balanced") else "---:" for c in COLUMNS) + "|",
    ]
    for row in rows:
        cells = row.cells()
        lines.append("| " + " | ".join(cells[c] for c in COLUMNS) + " |")
    return lines


def _check_same_run(run_dir: Path, config: TrainConfig, data: Path) -> None:
    """A finished run in ``run_dir`` must have been made with ``config`` on ``data`` (another
    budget's, config's or store's model must never fill this row)."""
    saved = run_dir / CONFIG_FILE
    if not saved.is_file():
        raise ConfigError(f"{run_dir}: holds a model but no {CONFIG_FILE}; use another --out")
    differences = config_differences(load_config(TrainConfig, saved), config)
    if differences:
        raise ConfigError(
            f"{run_dir}: trained with other settings ({'; '.join(differences)}); use another "
            "--out for another budget"
        )
    store = (read_meta(run_dir).get("data") or {}).get("store")
    if store is not None and Path(store) != data.resolve():
        raise ConfigError(f"{run_dir}: trained on {store}, not {data}; use another --out")


def _evaluate_row(
    run_dir: Path, data: Path, eval_dir: Path, budget: Table1Budget, resume: bool
) -> dict[str, Any]:
    """The row's test metrics, from ``lensfinder evaluate`` (reused if newer than the model)."""
    metrics_path = eval_dir / METRICS_NAME
    model_file = run_dir / "model.safetensors"
    if (
        resume
        and metrics_path.is_file()
        and metrics_path.stat().st_mtime >= model_file.stat().st_mtime
    ):
        recorded = json.loads(metrics_path.read_text())
        same_data = recorded.get("data") == str(data) and recorded.get("split") == "test"
        if same_data and recorded.get("overall", {}).get("bootstrap") == budget.bootstrap:
            return recorded["overall"]
    cfg = EvaluateConfig(
        predict=PredictConfig(batch_size=budget.eval_batch_size),
        bootstrap=budget.bootstrap,
        split="test",
    )
    return evaluate([run_dir], data, eval_dir, cfg).metrics


def _previous_run(path: Path) -> tuple[dict[int, float | None], str | None]:
    """Training wall times per row and the machine recorded by an earlier call (kept for rows
    not retrained now: the table says where the models were trained)."""
    if not path.is_file():
        return {}, None
    try:
        record = json.loads(path.read_text())
        times = {int(r["row"]): r.get("train_seconds") for r in record.get("rows", [])}
        return times, record.get("machine")
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}, None


def _run_row(
    row: int,
    position: str,
    budget: Table1Budget,
    data: Path,
    out: Path,
    resume: bool,
    previous_seconds: float | None,
) -> Table1Row:
    name = CONFIG_PATTERN.format(row=row)
    config = budget.apply(load_config(TrainConfig, name), name)
    run_dir, eval_dir = out / f"model{row}", out / "evaluations" / f"model{row}"
    trained_now, seconds = False, previous_seconds
    if resume and (run_dir / "model.json").is_file():
        _check_same_run(run_dir, config, data)
        report(f"[{position}] {name}: already trained in {run_dir}, not retrained")
    else:
        report(f"[{position}] {name}: training ({', '.join(_row_description(config))})")
        start = time.perf_counter()
        train(config, data, run_dir, resume=resume)
        trained_now, seconds = True, time.perf_counter() - start
    train_metrics = read_meta(run_dir).get("metrics") or {}
    test = _evaluate_row(run_dir, data, eval_dir, budget, resume)
    took = f" in {seconds / 60:.1f} min" if trained_now and seconds is not None else ""
    report(
        f"[{position}] {name}: {train_metrics.get('epochs', '?')} epochs{took}; test AUROC "
        f"{test['auroc']:.3f}, TPR0 {test['tpr0']:.3f}, TPR10 {test['tpr10']:.3f}"
    )
    return Table1Row(
        row=row,
        config_name=name,
        config=config,
        run_dir=run_dir,
        eval_dir=eval_dir,
        trained_now=trained_now,
        train_seconds=seconds,
        train_metrics=train_metrics,
        test=test,
    )


def _row_description(config: TrainConfig) -> list[str]:
    return [
        f"{config.model.arch} at {config.input.size} px",
        f"{config.max_epochs} epochs max",
        f"{config.max_train_samples or 'all'} samples/epoch",
    ]


# -- outputs -----------------------------------------------------------------------------------
def _json_safe(value: Any) -> Any:
    """NaN and infinities (possible in a model.json's histories) become None: strict JSON."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _read_scores(eval_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, scores)`` from an evaluation's scores.csv."""
    path = eval_dir / SCORES_NAME
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        return (
            np.array([int(r["label"]) for r in rows], dtype=np.int8),
            np.array([float(r["score"]) for r in rows]),
        )
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the evaluation's scores ({exc})") from None


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _markdown(
    rows: list[Table1Row], budget: Table1Budget, head: dict[str, Any], scaled: list[str]
) -> str:
    lines = [
        f"# Table I reproduced: budget {budget.name}",
        "",
        f"- **Budget {budget.name}**: {budget.why}.",
        "- **Scaled on every row**: " + ("; ".join(scaled) if scaled else "nothing") + ".",
        f"- **Machine**: {head['machine']}.",
        f"- **Data**: `{head['data']}`, {head['n_objects']} objects; test split "
        f"{head['n_test']} objects ({head['n_test_lenses']} lenses), by object ID with "
        f"split seed {head['split']['seed']} (test fraction {head['split']['test_fraction']}, "
        f"val fraction {head['split']['val_fraction']}), the same for every row.",
        f"- **Made**: lensfinder {head['lensfinder_version']}, {head['date']}; "
        f"total training time {_duration(head['train_minutes'] * 60)}.",
        "",
        *table_lines(rows),
        "",
        "Paper AUROC: the highest AUROC in the paper's Table I (EfficientNet-B0 on the "
        "challenge-2 data, picked on the data it tested on). Our AUROC: Mann-Whitney estimate on "
        "our test split, 95% CI by stratified bootstrap "
        f"({budget.bootstrap} resamples), for the epoch with the best validation AUROC. "
        "TPR0 / TPR10: highest true positive rate with no / fewer than ten false positives "
        "(Metcalf et al. 2019); they count false positives, so they depend on the size of the "
        "test set. Batch and lr (start→end): where the plateau schedule (batch x2 up to 128, "
        "lr /10 down to 1e-9 per one-epoch plateau) had taken them in the last epoch run. "
        "Epochs (run/max): epochs trained before the early stop / the row's maximum. "
        "BN method: 1 = running statistics reset before training, 2 = batch statistics at test "
        "time (batches of 8), as in the paper.",
        "",
        "| model | config | train time | best epoch (1 = first) | best val AUROC | images/s |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        m = row.train_metrics
        minutes = "?" if row.train_seconds is None else _duration(row.train_seconds)
        val, best = m.get("best_val_auroc"), m.get("best_epoch")
        lines.append(
            f"| {row.row} | {row.config_name} | {minutes} | {'?' if best is None else best + 1} | "
            f"{'?' if val is None else f'{val:.3f}'} | {m.get('images_per_s', 0):.0f} |"
        )
    return "\n".join(lines) + "\n"


def _write_csv(rows: Sequence[Table1Row], path: Path) -> Path:
    records = [row.csv_row() for row in rows]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    atomic_write_text(path, buffer.getvalue())
    return path


def _bar_chart(rows: Sequence[Table1Row], path: Path, budget: str) -> Path:
    """Our AUROC with its 95% CI beside the paper's, per row."""
    ours = [row.test["auroc"] for row in rows]
    cis = [tuple(row.test.get("auroc_ci") or (a, a)) for row, a in zip(rows, ours, strict=True)]
    paper = [row.paper.auroc if row.paper else float("nan") for row in rows]
    return grouped_bar_plot(
        [f"model {row.row}" for row in rows],
        {
            "paper (challenge-2 data, B0, GPU)": (paper, None),
            f"ours ({budget} budget)": (ours, cis),
        },
        path,
        ylabel="AUROC",
        title=f"Table I: paper vs lensfinder ({budget} budget; bars: 95% CI)",
        ylim=(0.4, 1.0),
        reference=0.5,
    )


def _own_data_size(budget: Table1Budget) -> int:
    """How many objects the budget simulates without ``--data``; ConfigError if it needs data."""
    if budget.simulate_n is None:
        raise ConfigError(
            f"table1 budget {budget.name!r} is the paper's setting and needs its data: pass "
            "--data (the challenge-2 training set, packed, or a large simulated store)"
        )
    return budget.simulate_n


def own_data(budget: Table1Budget, out: Path, seed: int = 0) -> Path:
    """Simulate and pack the budget's own data set in ``out/data`` (both steps resume), for a
    run without ``--data``; returns the store."""
    simulate_n = _own_data_size(budget)
    layout, store = out / DATA_DIR / "layout", out / DATA_DIR / "sim.zarr"
    report(f"simulating {simulate_n} objects into {layout} (no --data given)")
    sim = SimulateConfig(n=simulate_n, seed=seed, workers=budget.simulate_workers)
    simulate(sim, layout, progress=False)
    pack(layout, store, progress=False)
    return store


def reproduce_table1(
    data: Path | None,
    out: Path,
    budget: str | Table1Budget = "cpu",
    resume: bool = True,
    rows: Sequence[int] | None = None,
    progress: bool = True,
) -> Table1Result:
    """Train (or resume) and evaluate the Table I rows on ``data``; write the table to ``out``.

    ``data`` None: the budget simulates its own set first (``own_data``). ``budget``: ``"cpu"``,
    ``"gpu"`` or a ``Table1Budget`` (tests use a tiny one); ``rows``: a subset of 1..8.
    """
    chosen = resolve_budget(budget)
    wanted = sorted(set(ROWS if rows is None else rows))
    if not wanted or any(r not in ROWS for r in wanted):
        raise ConfigError(f"table1 rows {list(rows or [])}: choose among 1..8")
    if data is None:
        _own_data_size(chosen)  # the paper's budget needs --data: refused before any write
    inputs = [] if data is None else [data]
    with run_stage("reproduce table1", TABLE1, out, inputs, progress=progress) as stage:
        return stage.finish(_reproduce(data, chosen, wanted, resume, stage))


def _reproduce(
    data: Path | None, chosen: Table1Budget, wanted: list[int], resume: bool, stage: Stage
) -> Table1Result:
    """``reproduce_table1`` once it holds the lock of ``stage.out``: every row, then the table."""
    out = stage.out
    data = own_data(chosen, out) if data is None else Path(data)
    if not data.exists():
        raise DataError(f"{data}: no such store or layout")
    previous, previous_machine = _previous_run(out / JSON_NAME) if resume else ({}, None)
    results = [
        _run_row(row, f"{i}/{len(wanted)}", chosen, data, out, resume, previous.get(row))
        for i, row in enumerate(wanted, start=1)
    ]
    splits = {repr(to_dict(r.config.split)) for r in results}
    if len(splits) != 1:  # the shipped configs share one split; a custom budget must too
        raise ConfigError(f"table1 rows use different splits ({', '.join(sorted(splits))})")
    head = _table_head(results, chosen, data, previous_machine)
    return _write_table(results, chosen, wanted, head, stage)


def _table_head(
    results: list[Table1Row], chosen: Table1Budget, data: Path, previous_machine: str | None
) -> dict[str, Any]:
    """What the table was made with: budget, machine, data and its test split, version, date."""

    best = max(results, key=lambda r: r.test["auroc"])
    known = [s for s in (r.train_seconds for r in results) if s is not None]
    return {
        "budget": chosen.name,
        "budget_why": chosen.why,
        "budget_train_overrides": dict(chosen.train),
        "machine": (
            machine_description()
            if previous_machine is None or any(r.trained_now for r in results)
            else previous_machine
        ),
        "data": str(data),
        "n_objects": len(open_source(data)),
        "n_test": int(best.test["n"]),
        "n_test_lenses": int(best.test["n_lenses"]),
        "split": to_dict(results[0].config.split),
        "lensfinder_version": __version__,
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "train_minutes": sum(known) / 60,
    }


def _write_table(
    results: list[Table1Row],
    chosen: Table1Budget,
    wanted: list[int],
    head: dict[str, Any],
    stage: Stage,
) -> Table1Result:
    """The ROC of every row, table1.md, table1.json, table1.csv and the AUROC bar chart."""
    out = stage.out
    best = max(results, key=lambda r: r.test["auroc"])
    labels, scores = _read_scores(best.eval_dir)
    curves = {f"model {best.row} (best)": roc_curve(labels, scores)}
    for row in results:
        if row is not best:
            curves[f"model {row.row}"] = roc_curve(*_read_scores(row.eval_dir))
    roc_path = roc_plot(
        curves, out / ROC_NAME, title=f"Table I ROC, best: model {best.row} ({chosen.name})"
    )
    scaled = scaled_settings(chosen, wanted)
    markdown_path = out / MARKDOWN_NAME
    atomic_write_text(markdown_path, _markdown(results, chosen, head, scaled))
    record = {
        **head,
        "scaled": scaled,
        "columns": list(COLUMNS),
        "best_row": best.row,
        "rows": [r.to_json() for r in results],
    }
    text = json.dumps(_json_safe(record), indent=2, allow_nan=False, default=str)
    atomic_write_text(out / JSON_NAME, text + "\n")
    return Table1Result(
        out=out,
        budget=chosen.name,
        rows=results,
        markdown_path=markdown_path,
        csv_path=_write_csv(results, out / CSV_NAME),
        json_path=out / JSON_NAME,
        bar_path=_bar_chart(results, out / BAR_NAME, chosen.name),
        roc_path=roc_path,
        data=Path(head["data"]),
        best_row=best.row,
        n_trained_now=sum(r.trained_now for r in results),
        seconds=stage.seconds,
    )
