"""``reproduce_table1`` with a tiny test budget: real training and evaluation of two rows on the
tiny store, the table's columns, the stated scaling, and resuming without retraining."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest
from sklearn.metrics import roc_auc_score

from lensfinder.config import TrainConfig, load_config
from lensfinder.errors import ConfigError
from lensfinder.experiments.table1 import (
    BUDGETS,
    COLUMNS,
    Table1Budget,
    reproduce_table1,
    scaled_settings,
)

# Split seed 2 with these fractions gives the 24-object tiny store 8 train, 8 val and 8 test
# objects, half of them lenses in each: both classes everywhere, as training and AUROC need.
TINY_BUDGET = Table1Budget(
    name="test",
    why="a tiny test run",
    train={
        "input": {"size": 64},
        "model": {"arch": "test_efficientnet", "pretrained": None},
        "split": {"seed": 2, "test_fraction": 0.4, "val_fraction": 0.3},
        "max_epochs": 1,
        "max_train_samples": 16,
        "num_workers": 0,
        "devices": 1,
        "accelerator": "cpu",
    },
    bootstrap=20,
)
ROWS = [1, 8]  # the frozen baseline and the method 1 + method 2 row


@pytest.fixture(scope="module")
def table(tiny_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("table1")
    return reproduce_table1(tiny_store, out, budget=TINY_BUDGET, rows=ROWS)


def test_table_has_the_rows_and_columns(table):
    markdown = table.markdown_path.read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| model |"))
    assert [c.strip() for c in header.strip("|").split("|")] == list(COLUMNS)
    body = [line for line in markdown.splitlines() if line.startswith(("| 1 |", "| 8 |"))]
    assert len(body) == 4  # each row in the main table and in the run table
    cells = {r.row: r.cells() for r in table.rows}
    assert cells[1]["BN method"] == "1" and cells[8]["BN method"] == "2"
    assert cells[1]["D4"] == "" and cells[8]["D4"] == "x"
    assert cells[1]["balanced"] == "" and cells[8]["balanced"] == "x"
    assert cells[1]["batch (start→end)"] == "128→128" and cells[8]["batch (start→end)"] == "8→8"
    assert cells[8]["epochs (run/max)"] == "1/1" and cells[8]["L2"] == ""
    assert cells[1]["lr (start→end)"] == "0.01→1e-02"
    assert cells[1]["paper AUROC"] == "0.70" and cells[8]["paper AUROC"] == "0.94"
    assert "[" in cells[8]["our AUROC [95% CI]"]
    printed = table.summary()
    assert "| model | D4 |" in printed and "| 0.94 |" in printed  # the CLI prints the table


def test_csv_and_bar_chart(table):
    with table.csv_path.open(newline="") as handle:
        records = list(csv.DictReader(handle))
    assert [r["model"] for r in records] == ["1", "8"]
    assert [float(r["paper_auroc"]) for r in records] == [0.70, 0.94]
    for record, row in zip(records, table.rows, strict=True):
        assert float(record["auroc"]) == pytest.approx(row.test["auroc"])
        low, high = float(record["auroc_ci_low"]), float(record["auroc_ci_high"])
        assert low <= float(record["auroc"]) <= high
    assert table.bar_path.read_bytes()[:4] == b"\x89PNG"


def test_header_states_budget_scaling_and_data(table):
    markdown = table.markdown_path.read_text()
    assert "budget test" in markdown and "a tiny test run" in markdown
    assert "input.size 200 → 64" in markdown and "max_epochs 10 → 1" in markdown
    assert "model.arch tf_efficientnet_lite0 → test_efficientnet" in markdown
    assert "CPU cores" in markdown and "test split 8 objects (4 lenses)" in markdown


def _scores(evaluation: Path) -> tuple[list[int], list[float]]:
    """The labels and scores an evaluation wrote, for an independent AUROC (scikit-learn)."""
    with (evaluation / "scores.csv").open(newline="") as handle:
        records = list(csv.DictReader(handle))
    return [int(r["label"]) for r in records], [float(r["score"]) for r in records]


def test_json_plot_and_metrics(table):
    record = json.loads(table.json_path.read_text())
    assert [r["row"] for r in record["rows"]] == ROWS and record["best_row"] in ROWS
    for row in record["rows"]:
        labels, scores = _scores(table.out / "evaluations" / f"model{row['row']}")
        assert row["test"]["n"] == len(labels) == 8
        assert row["test"]["auroc"] == pytest.approx(roc_auc_score(labels, scores))
        assert row["config"]["input"]["size"] == 64
        assert (table.out / f"model{row['row']}" / "model.safetensors").is_file()
    assert table.roc_path.read_bytes()[:4] == b"\x89PNG"
    # row 8 is evaluated the way it was made: BN in training mode, groups of 8
    evaluation = json.loads((table.out / "evaluations" / "model8" / "metrics.json").read_text())
    member = evaluation["predictor"]["members"][0]
    assert member["bn_inference"] == "batch" and member["bn_batch_size"] == 8
    # model.json says what weight_decay meant (row 8 has no L2)
    meta = json.loads((table.out / "model8" / "model.json").read_text())
    assert meta["regularisation"] == "none" and meta["train"]["optimizer"] == "adam"
    assert table.n_trained_now == 2 and f"best: model {table.best_row}" in table.summary()


def test_second_call_resumes_without_retraining(table, tiny_store):
    weights = [table.out / f"model{row}" / "model.safetensors" for row in ROWS]
    before = [p.stat().st_mtime_ns for p in weights]
    again = reproduce_table1(tiny_store, table.out, budget=TINY_BUDGET, rows=ROWS)
    assert again.n_trained_now == 0 and not any(r.trained_now for r in again.rows)
    assert [p.stat().st_mtime_ns for p in weights] == before
    assert [r.test["auroc"] for r in again.rows] == [r.test["auroc"] for r in table.rows]
    assert "2 rows, 0 trained now, 2 resumed" in again.summary()


def test_another_budget_or_store_never_reuses_these_models(table, tiny_store, tiny_layout):
    other = Table1Budget(name="test2", why="x", train={**TINY_BUDGET.train, "max_train_samples": 8})
    with pytest.raises(ConfigError, match="trained with other settings"):
        reproduce_table1(tiny_store, table.out, budget=other, rows=[1])
    with pytest.raises(ConfigError, match=r"trained on .*tiny\.zarr"):
        reproduce_table1(tiny_layout, table.out, budget=TINY_BUDGET, rows=[1])


def test_budgets_and_bad_arguments(tiny_store, tmp_path):
    gpu = load_config(TrainConfig, "table1-model6")
    assert BUDGETS["gpu"].apply(gpu) == replace(gpu, devices=1)  # the paper's settings
    assert scaled_settings(BUDGETS["gpu"]) == ["devices auto → 1"]
    for row in range(1, 9):  # the cpu budget keeps every row's recipe, scaling only its cost
        paper = load_config(TrainConfig, f"table1-model{row}")
        cpu = BUDGETS["cpu"].apply(paper)
        assert cpu.input.size < paper.input.size and cpu.max_train_samples is not None
        assert cpu.model == paper.model and cpu.split == paper.split  # same network and split
        recipe = ("max_epochs", "batch_size", "batch_size_max", "lr", "lr_min", "lr_factor",
                  "weight_decay", "optimizer", "augment_d4", "balanced_sampler")  # fmt: skip
        assert all(getattr(cpu, k) == getattr(paper, k) for k in recipe)
    with pytest.raises(ConfigError, match="needs its data: pass --data"):
        reproduce_table1(None, tmp_path, budget="gpu")
    with pytest.raises(ConfigError, match="budget 'tpu'"):
        reproduce_table1(tiny_store, tmp_path, budget="tpu")
    with pytest.raises(ConfigError, match=r"among 1\.\.8"):
        reproduce_table1(tiny_store, tmp_path, budget=TINY_BUDGET, rows=[9])


def test_cli_gpu_budget_without_data_is_a_one_line_error(tmp_path):
    from typer.testing import CliRunner

    from lensfinder.cli import app

    result = CliRunner().invoke(
        app, ["reproduce", "table1", "--out", str(tmp_path), "--budget", "gpu"]
    )
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1
    assert "paper's setting and needs its data: pass --data" in lines[0]
