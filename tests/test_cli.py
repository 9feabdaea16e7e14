"""The CLI is thin and fast: lazy imports, one verb per stage, one-line errors."""

import subprocess
import sys
from dataclasses import is_dataclass

import pytest
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


class _Captured:
    """Stands in for a stage's entry function: records what the CLI passed it."""

    def __init__(self) -> None:
        self.args: tuple = ()
        self.kwargs: dict = {}

    def __call__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs
        return self

    def summary(self) -> str:
        return "captured"

    def config(self):
        (cfg,) = [a for a in (*self.args, *self.kwargs.values()) if is_dataclass(a)]
        return cfg


def _fields(cfg, names):
    return {name: getattr(cfg, name) for name in names}


# verb, the stage function it calls, its arguments (paths), YAML, the values read back, a flag
# and what it changes.
PRECEDENCE = [
    (
        "simulate",
        "lensfinder.simulate.simulate",
        ["--out", "{tmp}/sim"],
        "n: 7\nseed: 3\nworkers: 2\nlens_fraction: 0.25\nfirst_id: 5\narc_maps: true\n",
        lambda c: _fields(
            c.config(), ["n", "seed", "workers", "lens_fraction", "first_id", "arc_maps"]
        ),
        {"n": 7, "seed": 3, "workers": 2, "lens_fraction": 0.25, "first_id": 5, "arc_maps": True},
        ["--n", "9", "--lens-fraction", "0.5"],
        {"n": 9, "lens_fraction": 0.5},
    ),
    (
        "pack",
        "lensfinder.data.store.pack",
        ["{tmp}", "--out", "{tmp}/s.zarr"],
        "chunk: 3\nworkers: 2\nlabel_rule: 'mag_eff > 2'\n",
        lambda c: {k: c.kwargs[k] for k in ("chunk", "workers", "label_rule")},
        {"chunk": 3, "workers": 2, "label_rule": "mag_eff > 2"},
        ["--chunk", "5"],
        {"chunk": 5},
    ),
    (
        "train",
        "lensfinder.train.members.train_models",
        ["--data", "{tmp}", "--out", "{tmp}/run"],
        "max_epochs: 4\nmembers: 2\nnum_nodes: 1\n",
        lambda c: _fields(c.config(), ["max_epochs", "members", "num_nodes"]),
        {"max_epochs": 4, "members": 2, "num_nodes": 1},
        ["--max-epochs", "2"],
        {"max_epochs": 2},
    ),
    (
        "evaluate",
        "lensfinder.evaluate.evaluate",
        ["--model", "{tmp}/m", "--data", "{tmp}/d", "--out", "{tmp}/e"],
        "bootstrap: 10\nsplit: all\npredict: {batch_size: 16, tta: true}\n",
        lambda c: {
            "bootstrap": c.config().bootstrap,
            "split": c.config().split,
            "batch_size": c.config().predict.batch_size,
            "tta": c.config().predict.tta,
        },
        {"bootstrap": 10, "split": "all", "batch_size": 16, "tta": True},
        ["--batch-size", "4", "--no-tta"],
        {"batch_size": 4, "tta": False},
    ),
    (
        "scan",
        "lensfinder.scan.scan",
        ["--model", "{tmp}/m", "--data", "{tmp}/d", "--out", "{tmp}/s"],
        "shard_size: 100\nworkers: 3\npredict: {batch_size: 16, backend: onnx}\n",
        lambda c: {
            "shard_size": c.config().shard_size,
            "workers": c.config().workers,
            "batch_size": c.config().predict.batch_size,
            "backend": c.config().predict.backend,
        },
        {"shard_size": 100, "workers": 3, "batch_size": 16, "backend": "onnx"},
        ["--backend", "torch", "--shard-size", "50"],
        {"backend": "torch", "shard_size": 50},
    ),
    (
        "gallery",
        "lensfinder.scan.gallery.make_gallery",
        ["{tmp}/c", "--data", "{tmp}/d", "--out", "{tmp}/g"],
        "top: 7\nradius_arcsec: 1.5\nscore_min: 0.2\n",
        lambda c: _fields(c.config(), ["top", "radius_arcsec", "score_min"]),
        {"top": 7, "radius_arcsec": 1.5, "score_min": 0.2},
        ["--top", "3", "--radius", "4"],
        {"top": 3, "radius_arcsec": 4.0},
    ),
    (
        "demo",
        "lensfinder.demo.run_demo",
        ["--out", "{tmp}/demo"],
        "n_train: 30\nworkers: 1\n",
        lambda c: _fields(c.config(), ["n_train", "workers"]),
        {"n_train": 30, "workers": 1},
        [],
        {},
    ),
]


@pytest.mark.parametrize(
    ("verb", "target", "paths", "yaml_text", "read", "from_yaml", "flags", "from_flags"),
    PRECEDENCE,
    ids=[case[0] for case in PRECEDENCE],
)
def test_config_file_beats_defaults_and_typed_flags_beat_the_file(
    verb, target, paths, yaml_text, read, from_yaml, flags, from_flags, tmp_path, monkeypatch
):
    config = tmp_path / "my.yaml"
    config.write_text(yaml_text)
    argv = [verb, *(p.format(tmp=tmp_path) for p in paths), "--config", str(config)]

    captured = _Captured()
    monkeypatch.setattr(target, captured)
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert read(captured) == from_yaml

    if flags:
        captured = _Captured()
        monkeypatch.setattr(target, captured)
        result = runner.invoke(app, [*argv, *flags])
        assert result.exit_code == 0, result.output
        assert read(captured) == {**from_yaml, **from_flags}


def test_arc_maps_flag_turns_them_on_and_its_absence_leaves_the_file_s_choice(
    tmp_path, monkeypatch
):
    captured = _Captured()
    monkeypatch.setattr("lensfinder.simulate.simulate", captured)
    result = runner.invoke(app, ["simulate", "--out", str(tmp_path / "s"), "--arc-maps"])
    assert result.exit_code == 0, result.output
    assert captured.config().arc_maps is True
    result = runner.invoke(app, ["simulate", "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert captured.config().arc_maps is False


def test_options_show_the_config_classes_defaults():
    from lensfinder.config import EvaluateConfig, SimulateConfig

    simulate = runner.invoke(app, ["simulate", "--help"], terminal_width=200).output
    assert f"[default: ({SimulateConfig().n})]" in simulate
    evaluate = runner.invoke(app, ["evaluate", "--help"], terminal_width=200).output
    assert f"[default: ({EvaluateConfig().predict.batch_size})]" in evaluate
