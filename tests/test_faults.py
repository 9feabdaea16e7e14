"""Fault injection, verb by verb: bad input, interruptions and collisions end in a one-line error
or a counted skip, and never lose or change a finished result (issue 11, cases 1-8, plus a full
disk during a shard write and a Dask worker killed mid-shard).

Scans share one module-scoped 2-worker LocalCluster (a real one: workers are processes), passed
as ``--scheduler``; faults are planted in the workers with ``Client.run``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from lensfinder.config import InputConfig
from lensfinder.layout import CATALOG_NAME, image_path
from lensfinder.surveys import EUCLID
from lensfinder.testing import cli, make_run, one_line_error, two_worker_cluster, write_fits

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
VIS = EUCLID.bands[0]


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` with the hash of its bytes: proves nothing changed."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "tiny", seed=0)


@pytest.fixture(scope="module")
def cluster():
    """A real 2-process LocalCluster and a client to plant faults in its workers."""
    from distributed import Client

    local = two_worker_cluster()
    client = Client(local)
    yield local.scheduler_address, client
    client.close()
    local.close()


def scan_cli(run: Path, data: Path, out: Path, scheduler: str, shard_size: int = 5):
    return cli(
        "scan", "-m", run, "-d", data, "-o", out, "--scheduler", scheduler,
        "--shard-size", shard_size, "--batch-size", 4,
    )  # fmt: skip


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def candidates(out: Path) -> list[tuple[int, float]]:
    table = pq.read_table(out / "candidates.parquet")
    return list(zip(table["id"].to_pylist(), table["score"].to_pylist(), strict=True))


# -- 1. data loss: --overwrite --------------------------------------------------------------
def test_1_pack_overwrite_never_deletes_the_input_or_an_unmarked_directory(
    layout_factory, tmp_path
):
    layout = layout_factory("victim", n=6, seed=1)
    before = tree_digest(layout)
    one_line_error(cli("pack", layout, "--out", layout, "--overwrite"), "input")
    one_line_error(cli("pack", layout, "--out", layout.parent, "--overwrite"), "input")
    assert tree_digest(layout) == before

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    one_line_error(cli("pack", layout, "--out", precious, "--overwrite"), "not marked")
    assert (precious / "thesis.tex").read_text() == "years of work"

    store = tmp_path / "store.zarr"  # a store lensfinder packed may be replaced
    assert cli("pack", layout, "--out", store, "--chunk", 4).exit_code == 0
    result = cli("pack", layout, "--out", store, "--chunk", 2, "--overwrite")
    assert result.exit_code == 0, result.output
    from lensfinder.data.store import open_store

    assert open_store(store).chunk == 2


# -- 2. mixed results: one writer per output directory ------------------------------------
_HOLD = (  # argv: output directory, verb, [lock file]
    "import sys, time\n"
    "from lensfinder.safety import output_lock\n"
    "with output_lock(*sys.argv[1:]):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(120)\n"
)


@pytest.mark.parametrize("verb", ["scan", "pack", "simulate", "train"])
def test_2_a_second_writer_is_refused_and_a_dead_holders_lock_is_taken_over(
    verb, tiny_layout, tiny_store, run, tmp_path
):
    out, lock_file = tmp_path / "out", None
    if verb == "pack":  # pack locks beside its output, which appears only when complete
        lock_file = tmp_path / ".out.lock"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    extra = [str(lock_file)] if lock_file else []
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(out), verb, *extra],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        args = {
            "scan": ["scan", "-m", run, "-d", tiny_store, "-o", out],
            "pack": ["pack", tiny_layout, "--out", out],
            "simulate": ["simulate", "--out", out, "--n", 2],
            "train": ["train", "-d", tiny_store, "-o", out],
        }[verb]
        host = socket.gethostname()
        one_line_error(cli(*args), "in use by", f"PID {holder.pid}", host)
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding it: the lock file stays behind
        holder.wait()
    from lensfinder.safety import LOCK_FILE, output_lock

    stale = lock_file or out / LOCK_FILE
    assert str(holder.pid) in stale.read_text()
    with output_lock(out, verb, lock_file=lock_file):  # taken over, not refused
        assert str(os.getpid()) in stale.read_text()
    assert not stale.exists()


# -- 3. stale results: resume keyed on content ---------------------------------------------
def test_3_scan_resume_refuses_data_changed_under_the_same_ids(
    layout_factory, run, cluster, tmp_path
):
    layout = layout_factory("changing", n=8, seed=2)
    store = tmp_path / "store.zarr"
    assert cli("pack", layout, "--out", store).exit_code == 0
    for data in (store, layout):
        out = tmp_path / f"scan-{data.name}"
        first = scan_cli(run, data, out, cluster[0])
        assert first.exit_code == 0, first.output
        kept = tree_digest(out / "shards")
        # Same IDs, new pixels: object 200003 is re-observed.
        path = image_path(layout, VIS, 200003)
        write_fits(path, np.random.default_rng(9).normal(size=(200, 200)) * 1e-11)
        if data == store:
            assert cli("pack", layout, "--out", store, "--overwrite").exit_code == 0
        one_line_error(scan_cli(run, data, out, cluster[0]), "data content")
        assert tree_digest(out / "shards") == kept


# -- 4. silent zeros: missing chunks and blank images --------------------------------------
def test_4_missing_chunk_and_blank_images_are_skipped_and_counted(
    layout_factory, run, cluster, tmp_path
):
    layout = layout_factory("blank", n=12, seed=3)
    write_fits(image_path(layout, VIS, 200005), np.zeros((200, 200)))  # an all-zero image
    store = tmp_path / "store.zarr"
    packed = cli("pack", layout, "--out", store, "--chunk", 4)
    assert packed.exit_code == 0 and "blank image" in packed.output

    out = tmp_path / "scan-layout"
    assert scan_cli(run, layout, out, cluster[0]).exit_code == 0
    assert summary(out)["skipped"] == {"blank image": 1}
    assert 200005 not in [i for i, _ in candidates(out)]

    (store / "vis" / "c" / "1" / "0" / "0").unlink()  # objects 4-7 of the 11 packed
    out = tmp_path / "scan-store"
    result = scan_cli(run, store, out, cluster[0])
    assert result.exit_code == 0, result.output
    assert summary(out)["skipped"] == {"missing store chunk": 4}
    assert summary(out)["n_scored"] == 7 and "missing store chunk: 4" in result.output


def test_7_evaluate_on_a_store_with_a_truncated_chunk_counts_the_rows(
    layout_factory, run, tmp_path
):
    layout = layout_factory("truncated", n=12, seed=4)
    store = tmp_path / "store.zarr"
    assert cli("pack", layout, "--out", store, "--chunk", 4).exit_code == 0
    os.truncate(store / "nisp" / "c" / "2" / "0" / "0" / "0", 100)
    out = tmp_path / "eval"
    result = cli("evaluate", "-m", run, "-d", store, "-o", out, "--split", "all", "--bootstrap", 0)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_reasons"] == {"unreadable store chunk": 4}
    assert metrics["n_evaluated"] == 8


# -- 5. unreadable model: modes follow the umask -------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_5_model_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        run_dir = make_run(tmp_path / "run")
    finally:
        os.umask(old)
    for name in ("model.safetensors", "model.json"):
        assert (run_dir / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


# -- 6. clobbering: no verb writes over a model file ---------------------------------------
def test_6_export_refuses_to_write_over_model_files(run, tmp_path):
    before = tree_digest(run)
    for name in ("model.safetensors", "model.json"):
        one_line_error(cli("export", "-m", run, "--onnx", run / name), "model file")
    one_line_error(cli("export", "-m", run, "--onnx", tmp_path), "is a directory")
    assert tree_digest(run) == before


# -- 7. one-line errors for bad values and output paths ------------------------------------
@pytest.fixture(scope="module")
def bad_configs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("configs")
    (root / "lr.yaml").write_text("lr: -1\n")
    (root / "workers.yaml").write_text("num_workers: -2\n")
    (root / "a-file").write_text("not a directory\n")
    return root


BAD_VALUES = [
    (["simulate", "--out", "{tmp}/s", "--n", "0"], "--n"),
    (["simulate", "--out", "{tmp}/s", "--lens-fraction", "1.5"], "--lens-fraction"),
    (["pack", "{tmp}", "--out", "{tmp}/p", "--workers", "-3"], "--workers"),
    (["evaluate", "-m", "r", "-d", "{tmp}", "-o", "{tmp}/e", "--bootstrap", "-5"], "--bootstrap"),
    (["train", "-d", "{tmp}", "-o", "{tmp}/t", "--devices", "abc"], "'abc'"),
    (["train", "-d", "{tmp}", "-o", "{tmp}/t", "--config", "{cfg}/lr.yaml"], "lr -1"),
    (["train", "-d", "{tmp}", "-o", "{tmp}/t", "--config", "{cfg}/workers.yaml"], "num_workers"),
    (["bn-study", "-m", "r", "-d", "{tmp}", "-o", "{tmp}/b", "--sizes", "a,b"], "'a,b'"),
    (["reproduce", "table1", "-d", "{tmp}", "-o", "{tmp}/r", "--rows", "x"], "'x'"),
    (["reproduce", "table1", "-d", "{tmp}", "-o", "{tmp}/r", "--rows", "9"], "9"),
    (["scan", "-m", "r", "-d", "{tmp}", "-o", "{tmp}/c", "--shard-size", "0"], "--shard-size"),
    (["scan", "-m", "r", "-d", "{tmp}", "-o", "{tmp}/c", "--local-below", "-1"], "--local-below"),
    (["gallery", "{tmp}", "-d", "{tmp}", "-o", "{tmp}/g", "--top", "0"], "--top"),
]


@pytest.mark.parametrize(
    ("args", "word"), BAD_VALUES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD_VALUES]
)
def test_7_bad_values_are_refused_in_one_line(args, word, bad_configs, tmp_path):
    filled = [a.format(tmp=tmp_path, cfg=bad_configs) for a in args]
    one_line_error(cli(*filled), word)


@pytest.mark.parametrize("verb", ["simulate", "train", "evaluate", "scan", "gallery", "pack"])
def test_7_output_that_is_a_file_or_unwritable_is_named_in_one_line(verb, bad_configs, tmp_path):
    def args(out: Path) -> list:
        return {
            "simulate": ["simulate", "--out", out],
            "train": ["train", "-d", tmp_path, "-o", out],
            "evaluate": ["evaluate", "-m", "r", "-d", tmp_path, "-o", out],
            "scan": ["scan", "-m", "r", "-d", tmp_path, "-o", out],
            "gallery": ["gallery", tmp_path, "-d", tmp_path, "-o", out],
            "pack": ["pack", tmp_path, "--out", out],
        }[verb]

    a_file = bad_configs / "a-file"
    one_line_error(cli(*args(a_file)), str(a_file), "not a directory")
    one_line_error(cli(*args(a_file / "below")), str(a_file))
    if os.geteuid() != 0:  # root may write anywhere; the check is then by the kernel, below
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        one_line_error(cli(*args(locked / "out")), str(locked))


def test_7_an_output_the_kernel_refuses_is_named_in_one_line():
    one_line_error(cli("simulate", "--out", "/proc/lensfinder-out", "--n", 2), "/proc")


# -- 8. lesser ------------------------------------------------------------------------------
def _catalogue(layout: Path) -> list[str]:
    return (layout / CATALOG_NAME).read_text().splitlines()


def _data_rows(lines: list[str]) -> list[int]:
    """Positions of the data rows (after comments and the header)."""
    body = [i for i, line in enumerate(lines) if not line.startswith("#")]
    return body[1:]


def test_8_catalogue_with_a_byte_order_mark_reads_like_without(layout_factory):
    from lensfinder.data import read_layout

    layout = layout_factory("bom", n=6, seed=5)
    plain = read_layout(layout)
    path = layout / CATALOG_NAME
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    marked = read_layout(layout)
    assert marked.ids.tolist() == plain.ids.tolist()
    assert marked.labels.tolist() == plain.labels.tolist()


def test_8_empty_or_inf_rule_values_are_counted_and_reported(layout_factory, tmp_path):
    from lensfinder.data.store import open_store

    layout = layout_factory("gaps", n=6, seed=6, lens_fraction=1.0)
    lines = _catalogue(layout)
    header = next(line for line in lines if not line.startswith("#")).split(",")
    column = header.index("mag_eff")
    for row, value in zip(_data_rows(lines)[:2], ["", "inf"], strict=True):
        fields = lines[row].split(",")
        fields[column] = value
        lines[row] = ",".join(fields)
    (layout / CATALOG_NAME).write_text("\n".join(lines) + "\n")
    result = cli("pack", layout, "--out", tmp_path / "s.zarr")
    assert result.exit_code == 0
    assert "2 labelled non-lens for an empty or non-finite value" in result.output
    assert "mag_eff: 2" in result.output
    assert open_store(tmp_path / "s.zarr").attrs["label_gaps"] == {"rows": 2, "mag_eff": 2}


def test_8_non_integer_id_is_refused_with_its_row(layout_factory):
    from lensfinder.data import read_layout

    layout = layout_factory("fraction", n=6, seed=7)
    lines = _catalogue(layout)
    row = _data_rows(lines)[3]
    lines[row] = lines[row].replace(",200003,", ",200003.7,", 1)
    (layout / CATALOG_NAME).write_text("\n".join(lines) + "\n")
    read = read_layout(layout)
    assert 200003 not in read.ids.tolist()
    reasons = [p.reason for p in read.problems]
    assert "catalogue ID 200003.7 is not a whole number" in reasons


def test_8_scanning_a_layout_scans_cutouts_without_catalogue_rows(
    layout_factory, run, cluster, tmp_path
):
    layout = layout_factory("field", n=6, seed=8)
    lines = _catalogue(layout)
    del lines[_data_rows(lines)[2]]  # object 200002 loses its row
    (layout / CATALOG_NAME).write_text("\n".join(lines) + "\n")
    out = tmp_path / "scan"
    assert scan_cli(run, layout, out, cluster[0]).exit_code == 0
    table = pq.read_table(out / "candidates.parquet").to_pydict()
    labels = dict(zip(table["id"], table["label"], strict=True))
    assert sorted(labels) == list(range(200000, 200006))
    assert labels[200002] == -1 and all(labels[i] in (0, 1) for i in labels if i != 200002)


def test_8_header_only_catalogue_is_an_error(layout_factory, tmp_path):
    layout = layout_factory("header", n=4, seed=9)
    lines = _catalogue(layout)
    (layout / CATALOG_NAME).write_text("\n".join(lines[: _data_rows(lines)[0]]) + "\n")
    one_line_error(cli("pack", layout, "--out", tmp_path / "s.zarr"), "header but no usable rows")


def test_8_nisp_only_model_on_a_layout_without_vis_says_why_nothing_is_scanned(
    layout_factory, cluster, tmp_path
):
    import shutil

    layout = layout_factory("novis", n=4, seed=10)
    shutil.rmtree(layout / "Public" / VIS.directory)
    nisp_run = make_run(tmp_path / "nisp", input_cfg=InputConfig(bands=("Y", "J", "H"), size=32))
    out = tmp_path / "scan"
    one_line_error(scan_cli(nisp_run, layout, out, cluster[0]), "missing band VIS")


# -- disk full and a killed worker: finished shards are kept, nothing half-written stays -----
def _plant(start: int, fault: str, flag: str) -> None:
    """In a worker: make the shard starting at ``start`` fail while its file is half written."""
    from lensfinder.files import atomic_path
    from lensfinder.scan import shards

    original = getattr(shards, "_original_write_parquet", shards.write_parquet)
    shards._original_write_parquet = original

    def faulty(table, path):
        if not Path(path).name.startswith(f"shard-{start}-") or os.path.exists(flag):
            return original(table, path)
        Path(flag).touch()
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"PAR1" + b"\0" * 1000)  # half a Parquet file
            if fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))

    shards.write_parquet = faulty


def _unplant() -> None:
    from lensfinder.scan import shards

    shards.write_parquet = getattr(shards, "_original_write_parquet", shards.write_parquet)


@pytest.fixture(scope="module")
def reference(tiny_store, run, cluster, tmp_path_factory) -> list[tuple[int, float]]:
    out = tmp_path_factory.mktemp("reference") / "scan"
    assert scan_cli(run, tiny_store, out, cluster[0]).exit_code == 0
    return candidates(out)


def test_disk_full_during_a_shard_write_keeps_finished_shards(
    tiny_store, run, cluster, reference, tmp_path
):
    address, client = cluster
    out = tmp_path / "scan"
    client.run(_plant, 5, "enospc", str(tmp_path / "flag"))
    try:
        one_line_error(scan_cli(run, tiny_store, out, address), "No space left on device")
    finally:
        client.run(_unplant)
    shards = out / "shards"
    assert not list(shards.glob(".*.tmp"))  # the half-written file went with the error
    assert not (shards / "shard-5-10.parquet").exists()
    finished = tree_digest(shards)
    assert len(finished) >= 1
    resumed = scan_cli(run, tiny_store, out, address)
    assert resumed.exit_code == 0, resumed.output
    assert summary(out)["shards"]["reused"] == len(finished)
    assert {k: v for k, v in tree_digest(shards).items() if k in finished} == finished
    assert candidates(out) == reference


def test_a_worker_killed_mid_shard_is_redone_and_nothing_half_written_stays(
    tiny_store, run, cluster, reference, tmp_path
):
    address, client = cluster
    out, flag = tmp_path / "scan", tmp_path / "killed"
    client.run(_plant, 10, "kill", str(flag))
    try:
        result = scan_cli(run, tiny_store, out, address)
    finally:
        client.run(_unplant)
    assert flag.exists()  # a worker really died mid-write
    assert result.exit_code == 0, result.output
    assert not list((out / "shards").glob(".*.tmp"))
    assert candidates(out) == reference


def test_a_refused_command_leaves_no_event_loop_tracebacks_behind(tmp_path):
    """A disk-full in zarr's asyncio writes leaves futures whose exception nobody retrieves;
    after the one-line error, their "never retrieved" tracebacks must not follow it."""
    code = (
        "import asyncio\n"
        "from lensfinder.cli import user_errors\n"
        "from lensfinder.errors import DataError\n"
        "loop = asyncio.new_event_loop()\n"
        "@user_errors\n"
        "def verb():\n"
        "    future = loop.create_future()\n"
        "    future.set_exception(OSError(28, 'No space left on device'))\n"
        "    raise DataError('store.zarr: no space left on device; re-run to resume')\n"
        "try:\n"
        "    verb()\n"
        "except Exception as exc:\n"
        "    assert type(exc).__name__ == 'Exit', exc  # typer's exit, status 2\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=60)
    lines = done.stderr.decode().strip().splitlines()
    assert lines == ["error: store.zarr: no space left on device; re-run to resume"], lines
