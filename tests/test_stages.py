"""The stage runner: every verb's output guarded and locked the same way from Python as from the
CLI, quiet read in one place, reports instead of prints in library code."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

import lensfinder
from lensfinder.errors import ConfigError
from lensfinder.evaluate import evaluate
from lensfinder.safety import EVALUATION, LOCK_FILE, MARKER_FILE
from lensfinder.stages import (
    QUIET_ENV,
    report,
    run_stage,
    show_progress,
    show_reports,
)
from lensfinder.testing import make_run

PACKAGE = Path(lensfinder.__file__).parent


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "tiny", seed=0)


def one_line(error: pytest.ExceptionInfo[ConfigError], *words: str) -> str:
    text = str(error.value)
    assert "\n" not in text, text
    for word in words:
        assert word in text, text
    return text


def test_evaluate_from_python_refuses_an_unmarked_non_empty_directory(run, tiny_store, tmp_path):
    out = tmp_path / "my-notes"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    with pytest.raises(ConfigError) as refused:
        evaluate([run], tiny_store, out)
    one_line(refused, str(out), "not empty", "evaluate")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # no marker, no lock left


def test_a_second_evaluate_into_a_locked_directory_is_refused(run, tiny_store, tmp_path):
    out = tmp_path / "evaluation"
    with run_stage("evaluate", EVALUATION, out, [tiny_store, run]):  # the first holds the lock
        with pytest.raises(ConfigError) as refused:
            evaluate([run], tiny_store, out)
        one_line(refused, str(out), "in use by lensfinder evaluate", "PID")
        assert not (out / "metrics.json").exists()
    assert not (out / LOCK_FILE).exists() and (out / MARKER_FILE).is_file()


def _sources() -> dict[Path, ast.Module]:
    return {path: ast.parse(path.read_text()) for path in sorted(PACKAGE.rglob("*.py"))}


def test_quiet_and_the_output_rule_are_each_used_in_one_place():
    """LENSFINDER_QUIET is read only by the runner, and only the runner enters the output rule
    and the lock (every verb goes through ``run_stage`` / ``file_stage``)."""
    runner_only = {"LENSFINDER_QUIET", "writing_output", "output_lock", "prepare_output_file"}
    found = {
        (str(path.relative_to(PACKAGE)), _named(node))
        for path, tree in _sources().items()
        if path.name not in ("stages.py", "safety.py")
        for node in ast.walk(tree)
        if _named(node) in runner_only
    }
    assert found == set()


def _named(node: ast.AST) -> object:
    """The string, name, imported name or attribute ``node`` holds (None for other nodes)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.alias):
        return node.name
    return node.attr if isinstance(node, ast.Attribute) else None


def test_library_code_never_prints():
    """Only the CLI prints; the library reports (``stages.report``), logs or returns summaries."""
    printing = [
        f"{path.relative_to(PACKAGE)}:{node.lineno}"
        for path, tree in _sources().items()
        if path.name != "cli.py"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and _named(node.func) == "print"
    ]
    assert printing == []


def test_reports_reach_stderr_through_the_cli_hook_unless_quiet(monkeypatch, capsys):
    show_reports()
    show_reports()  # installed once, however often a process runs a verb
    monkeypatch.delenv(QUIET_ENV, raising=False)
    report("[1/7] simulating")
    logging.getLogger("lensfinder.stages").info("a stage's summary: the CLI prints it itself")
    assert capsys.readouterr().err == "[1/7] simulating\n"
    monkeypatch.setenv(QUIET_ENV, "1")
    report("[2/7] packing")
    assert capsys.readouterr().err == ""


def test_progress_is_resolved_once_by_the_runner(monkeypatch, tmp_path):
    monkeypatch.delenv(QUIET_ENV, raising=False)
    assert show_progress(True) and not show_progress(False)
    with run_stage("evaluate", EVALUATION, tmp_path / "a") as stage:
        assert stage.progress and stage.out == tmp_path / "a"
    monkeypatch.setenv(QUIET_ENV, "1")
    with run_stage("evaluate", EVALUATION, tmp_path / "b", progress=True) as stage:
        assert not stage.progress


def test_finish_logs_the_summary_and_returns_the_result(tmp_path, caplog):
    class Done:
        def summary(self) -> str:
            return "3 things done"

    done = Done()
    with (
        caplog.at_level(logging.INFO, logger="lensfinder.stages"),
        run_stage("evaluate", EVALUATION, tmp_path / "out") as stage,
    ):
        assert stage.finish(done) is done
    assert "evaluate" in caplog.text and "3 things done" in caplog.text
