"""Issue 19, outputs: one rule for every verb's output, and a full disk in one line.

A verb writes only into a new (or empty) directory or into its own marked output of the same
kind; never into another lensfinder output, never inside or above one of its inputs, never into
a non-empty directory it did not mark, never over a file it did not write. A refused command
leaves nothing it created behind. A full disk (a real, small tmpfs where this machine lets us
mount one) is one line naming the output and saying that a re-run resumes; the re-run does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lensfinder.config import SplitConfig, TrainConfig, save_config
from lensfinder.safety import MARKER_FILE, mark_output, output_kind
from lensfinder.testing import TINY_INPUT, TINY_MODEL, make_run
from test_faults import cli, one_line_error, tree_digest

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TINY_TRAIN = TrainConfig(
    input=TINY_INPUT,
    model=TINY_MODEL,
    split=SplitConfig(seed=4, test_fraction=0.3, val_fraction=0.3),
    max_epochs=1,
    max_train_samples=16,
    batch_size=8,
    batch_size_max=8,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run directory marked as ``train`` makes it: an output other verbs must not touch."""
    run_dir = make_run(tmp_path_factory.mktemp("runs") / "tiny", seed=0)
    mark_output(run_dir, "train")
    (run_dir / "config.yaml").write_text("max_epochs: 1\n")
    (run_dir / "metrics.csv").write_text("epoch,val_auroc\n0,0.5\n")
    return run_dir


@pytest.fixture(scope="module")
def train_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("configs") / "tiny.yaml"
    save_config(TINY_TRAIN, path)
    return path


def foreign_output(root: Path, kind: str) -> Path:
    """A directory holding another verb's marked output (with one result file)."""
    root.mkdir(parents=True)
    mark_output(root, kind)
    (root / "result.json").write_text("{}\n")
    return root


# -- fault 2: simulate writes only into a new directory or its own simulation -------------------
@pytest.mark.parametrize("kind", ["store", "train", "scan"])
def test_simulate_refuses_another_output_and_leaves_its_marker(kind, tmp_path):
    other = foreign_output(tmp_path / kind, kind)
    before = tree_digest(other)
    one_line_error(cli("simulate", "--out", other, "--n", 2), str(other), f"{kind} output")
    assert tree_digest(other) == before and output_kind(other) == kind


def test_simulate_refuses_an_unmarked_layout_and_resumes_its_own(layout_factory, tmp_path):
    real = layout_factory("real", n=3, seed=1)  # a layout lensfinder did not write
    before = tree_digest(real)
    one_line_error(cli("simulate", "--out", real, "--n", 2), str(real), "not empty")
    assert tree_digest(real) == before

    empty = tmp_path / "empty"  # an empty directory is a new output
    empty.mkdir()
    first = cli("simulate", "--out", empty, "--n", 2, "--seed", 3)
    assert first.exit_code == 0, first.output
    again = cli("simulate", "--out", empty, "--n", 2, "--seed", 3)
    assert again.exit_code == 0 and "2 already done" in again.output, again.output


# -- fault 3: export writes a new file or an ONNX file it wrote --------------------------------
def test_export_replaces_only_an_onnx_file_it_wrote(run, tiny_store, tmp_path):
    before = tree_digest(run)
    for name in ("config.yaml", "metrics.csv", MARKER_FILE):
        one_line_error(cli("export", "-m", run, "--onnx", run / name), str(run / name), "ONNX")
    assert tree_digest(run) == before
    store_before = tree_digest(tiny_store)
    zarr_json = tiny_store / "zarr.json"
    one_line_error(cli("export", "-m", run, "--onnx", zarr_json), "store output")
    assert tree_digest(tiny_store) == store_before
    notes = tmp_path / "notes.onnx"  # named like an export, but not one
    notes.write_text("my notes")
    one_line_error(cli("export", "-m", run, "--onnx", notes), "not an ONNX file lensfinder")
    assert notes.read_text() == "my notes"

    exported = run / "model.onnx"  # the README's place: beside the model
    for _ in range(2):  # a new file, then the file it wrote
        result = cli("export", "-m", run, "--onnx", exported)
        assert result.exit_code == 0, result.output
    exported.unlink()


# -- fault 5 and 12: nothing inside another output or an input; --overwrite deletes only its own
def test_no_output_inside_a_store_and_overwrite_keeps_what_pack_did_not_write(
    layout_factory, run, tmp_path
):
    layout = layout_factory("nested", n=4, seed=2)
    store = tmp_path / "st.zarr"
    assert cli("pack", layout, "--out", store, "--chunk", 2).exit_code == 0
    reports = store / "reports"
    for args in (
        ["evaluate", "-m", run, "-d", store, "-o", reports],
        ["scan", "-m", run, "-d", store, "-o", reports],
        ["evaluate", "-m", run, "-d", layout, "-o", store / "reports"],
        ["simulate", "--out", reports, "--n", 2],
    ):
        one_line_error(cli(*args), str(reports), "inside")
        assert not reports.exists()

    reports.mkdir()  # as evaluate wrote it before this rule
    (reports / "metrics.json").write_text("{}\n")
    one_line_error(cli("pack", layout, "--out", store, "--overwrite"), "holds reports")
    assert (reports / "metrics.json").read_text() == "{}\n"


def test_pack_refuses_an_output_inside_its_layout(layout_factory):
    layout = layout_factory("inside", n=3, seed=3)
    before = tree_digest(layout)
    one_line_error(cli("pack", layout, "--out", layout / "st.zarr"), "inside", "input")
    assert tree_digest(layout) == before and not list(layout.glob("*st.zarr*"))


def test_library_callers_are_guarded_like_the_cli(run, tiny_store, tmp_path):
    from lensfinder.errors import ConfigError
    from lensfinder.evaluate import evaluate
    from lensfinder.experiments.bn_study import batchnorm_study
    from lensfinder.scan.gallery import make_gallery

    with pytest.raises(ConfigError, match="input"):
        evaluate([run], tiny_store, tiny_store.parent)
    with pytest.raises(ConfigError, match="input"):
        batchnorm_study([run], tiny_store, run / "bn")
    with pytest.raises(ConfigError, match="train output"):
        make_gallery(tmp_path / "candidates.csv", tiny_store, run)


# -- fault 12: a refused command leaves nothing it created ---------------------------------------
@pytest.mark.parametrize("verb", ["train", "scan", "gallery", "evaluate"])
def test_a_refused_command_leaves_nothing_behind(verb, run, tiny_store, tmp_path):
    missing = tmp_path / "no-such-data"
    new = tmp_path / "new"
    own = tmp_path / "mine"  # the user's own empty directory stays as it was: empty
    own.mkdir()
    for out in (new / "deeper" / "out", own):
        args = {
            "train": ["train", "-d", missing, "-o", out],
            "scan": ["scan", "-m", run, "-d", missing, "-o", out],
            "gallery": ["gallery", missing, "-d", tiny_store, "-o", out],
            "evaluate": ["evaluate", "-m", run, "-d", missing, "-o", out],
        }[verb]
        one_line_error(cli(*args), str(missing))
    assert not new.exists()
    assert list(own.iterdir()) == []


# -- fault 11: a full disk ------------------------------------------------------------------------
@dataclass
class SmallDisk:
    """A real tmpfs of a few hundred kB; ``grow`` frees space like deleting other files would."""

    root: Path

    def grow(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.root)], check=True)

    def leftovers(self) -> list[str]:
        """Temporary files a failed write left behind."""
        return [p.name for p in self.root.rglob("*") if p.name.endswith(".tmp")]


def _mount(root: Path, size: str) -> str | None:
    """Mount a tmpfs at ``root``; the reason it cannot be done here, else None."""
    if shutil.which("mount") is None:
        return "no mount command"
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(root)],
        capture_output=True,
        text=True,
    )
    return None if done.returncode == 0 else done.stderr.strip() or f"exit {done.returncode}"


@pytest.fixture
def small_disk(tmp_path, request) -> Iterator[SmallDisk]:
    root = tmp_path / "disk"
    root.mkdir()
    why = _mount(root, getattr(request, "param", "300k"))
    if why is not None:
        pytest.skip(f"a full disk needs a small tmpfs, and mounting one is not permitted ({why})")
    yield SmallDisk(root)
    subprocess.run(["umount", "-l", str(root)], check=False)


def outcome(result) -> tuple[int, str]:
    return result.exit_code, result.output


def disk_full_error(status: int, output: str, out: Path) -> None:
    """Exit status 2, no traceback, and one error line naming ``out``, last (train's Lightning
    prints its device lines before)."""
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    assert status == 2 and "Traceback" not in output, output
    assert errors == lines[-1:] and lines[-1].startswith(f"error: {out}: "), output
    assert "no space left on device" in lines[-1] and "re-run to resume" in lines[-1], lines[-1]


def test_simulate_on_a_full_disk_says_so_and_resumes(small_disk):
    out = small_disk.root / "sim"
    args = ["simulate", "--out", out, "--n", 4, "--seed", 2, "--workers", 1]
    disk_full_error(*outcome(cli(*args)), out)
    assert not small_disk.leftovers()
    small_disk.grow("8m")
    again = cli(*args)
    assert again.exit_code == 0, again.output
    assert "already done" in again.output and "simulated 4 cutouts" not in again.output


def test_pack_on_a_full_disk_says_so_and_resumes(layout_factory, small_disk):
    layout = layout_factory("to_pack", n=6, seed=6)
    out = small_disk.root / "st.zarr"
    disk_full_error(*outcome(cli("pack", layout, "--out", out, "--chunk", 1)), out)
    small_disk.grow("64m")
    again = cli("pack", layout, "--out", out, "--chunk", 1)
    assert again.exit_code == 0 and "6 objects" in again.output, again.output


@pytest.mark.parametrize("small_disk", ["64k"], indirect=True)
def test_scan_on_a_full_disk_says_so_and_leaves_nothing(run, tiny_store, small_disk):
    filler = small_disk.root / "filler"
    with pytest.raises(OSError), filler.open("wb") as handle:
        while True:
            handle.write(b"\0" * 4096)
            handle.flush()
    out = small_disk.root / "scan"
    disk_full_error(*outcome(cli("scan", "-m", run, "-d", tiny_store, "-o", out)), out)
    assert not out.exists()


def run_cli(*args: object) -> subprocess.CompletedProcess:
    """The CLI in its own process: Lightning's log handlers then write to a real stderr (under
    CliRunner they keep an earlier invocation's closed stream and print logging tracebacks)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "lensfinder.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_train_on_a_full_disk_leaves_no_partial_checkpoint_and_resumes(
    kinds_store, train_config, small_disk
):
    out = small_disk.root / "run"
    args = ["train", "-d", kinds_store, "-o", out, "--config", train_config]
    full = run_cli(*args)
    disk_full_error(full.returncode, full.stdout + full.stderr, out)
    assert not small_disk.leftovers() and not (out / "last.ckpt").exists()
    small_disk.grow("16m")
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert (out / "model.safetensors").is_file()


@pytest.mark.parametrize("small_disk", ["48k"], indirect=True)
def test_evaluate_on_a_full_disk_says_so_and_a_rerun_finishes(run, tiny_store, small_disk):
    out = small_disk.root / "eval"
    args = ["evaluate", "-m", run, "-d", tiny_store, "-o", out, "--split", "all"]
    disk_full_error(*outcome(cli(*args, "--bootstrap", 0)), out)
    assert not small_disk.leftovers()
    small_disk.grow("8m")
    again = cli(*args, "--bootstrap", 0)
    assert again.exit_code == 0, again.output
    assert json.loads((out / "metrics.json").read_text())["n_evaluated"] == 24


def test_a_full_disk_inside_a_library_call_is_the_same_one_line(tmp_path, monkeypatch):
    """Where no tmpfs can be mounted, the same path is exercised by a write that raises ENOSPC."""
    import errno

    from lensfinder.config import SimulateConfig
    from lensfinder.errors import DataError
    from lensfinder.simulate import simulate, writer

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer, "write_catalogue", full)
    out = tmp_path / "sim"
    config = dataclasses.replace(SimulateConfig(), n=1, workers=1)
    with pytest.raises(DataError, match="re-run to resume") as caught:
        simulate(config, out, progress=False)
    assert str(out) in str(caught.value) and "\n" not in str(caught.value)
