"""The CLI is thin and fast: lazy imports, one verb per stage, one-line errors."""

import subprocess
import sys

from typer.testing import CliRunner

from lensfinder.cli import app

runner = CliRunner()


def test_help_lists_every_stage_and_imports_nothing_heavy():
    code = (
        "import sys, lensfinder.cli; "
        "heavy = [m for m in ('torch', 'lenstronomy', 'dask', 'timm') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for verb in ("simulate", "pack", "train", "evaluate", "scan", "gallery", "export", "demo"):
        assert verb in result.output


def test_user_error_is_one_line_without_traceback(tmp_path):
    result = runner.invoke(
        app, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--config", "nope"]
    )
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "Traceback" not in result.output
