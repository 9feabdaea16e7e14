"""Issue 19, the input faults: what a careless or hostile user feeds in ends in a one-line error
or a counted, reported skip; never zeros fed to training, a hang, a traceback or a silent change.

Case numbers are the issue's: 4 (a damaged store trained on), 7 (more devices than exist),
8 (a FIFO or a directory named like a FITS file), 10 (tracebacks for bad values) and 12 (edited
model files, int64 IDs, store chunking, several-line errors).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from lensfinder.config import TrainConfig, load_config
from lensfinder.data import open_source, read_layout
from lensfinder.data.dataset import CutoutDataset
from lensfinder.errors import ModelFileError
from lensfinder.layout import CATALOG_NAME, image_path
from lensfinder.models.checkpoint import META_FILE, load_model
from lensfinder.surveys import EUCLID
from lensfinder.testing import TINY_INPUT, cli, make_run, one_line_error
from lensfinder.train.datamodule import LensDataModule

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
VIS, Y_BAND = EUCLID.bands[0], EUCLID.bands[1]

TINY_TRAIN_YAML = """\
input: {size: 32}
model: {arch: test_efficientnet, pretrained: null}
split: {seed: 0, test_fraction: 0.1, val_fraction: 0.3}
max_epochs: 1
batch_size: 4
batch_size_max: 4
accelerator: cpu
devices: 1
"""


@pytest.fixture(scope="module")
def tiny_train_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("configs") / "tiny.yaml"
    path.write_text(TINY_TRAIN_YAML)
    return path


def damage(store: Path) -> None:
    """Objects 4-7: a truncated VIS chunk; 8-11: a zeroed NISP chunk (right size, all zeros);
    12-15: a truncated NISP chunk. The files of all three still exist."""
    os.truncate(store / "vis" / "c" / "1" / "0" / "0", 1000)
    nisp_chunk = store / "nisp" / "c" / "2" / "0" / "0" / "0"
    nisp_chunk.write_bytes(bytes(nisp_chunk.stat().st_size))
    os.truncate(store / "nisp" / "c" / "3" / "0" / "0" / "0", 10)


@pytest.fixture(scope="module")
def damaged_store(layout_factory, tmp_path_factory) -> Path:
    """40 objects in chunks of 4, twelve of them (IDs 200004-200015) damaged. Read-only!"""
    store = tmp_path_factory.mktemp("damaged") / "st.zarr"
    assert cli("pack", layout_factory("damaged", n=40, seed=11), "--out", store, "--chunk", 4)
    damage(store)
    return store


DAMAGED_IDS = set(range(200004, 200016))


# -- 4. a damaged store is not trained on as zeros -----------------------------------------
def test_4_dataset_drops_damaged_objects_with_the_reasons_scan_gives(damaged_store):
    source = open_source(damaged_store)
    dataset = CutoutDataset(source, input_cfg=TINY_INPUT)
    assert dataset.skipped == 12 and len(dataset) == 28
    assert not DAMAGED_IDS & set(dataset.ids.tolist())
    assert dataset.skipped_reasons == {"unreadable store chunk": 8, "blank image": 4}
    x, _ = dataset.get_batch(np.arange(len(dataset)))
    assert all(float(image.std()) > 0 for image in x)  # no all-zero input left
    in_memory = open_source(damaged_store).to_memory()  # a damaged chunk fails no load
    assert set(in_memory.ids[~in_memory.check().valid].tolist()) == DAMAGED_IDS


def test_4_training_leaves_out_damaged_objects_and_says_so(
    damaged_store, tiny_train_config, tmp_path
):
    config = load_config(TrainConfig, tiny_train_config)
    data = LensDataModule(config, damaged_store)
    data.prepare()
    ids = open_source(damaged_store).ids
    kept = set(ids[np.concatenate([data.train_indices, data.val_indices])].tolist())
    assert not kept & DAMAGED_IDS
    dropped = data.dropped
    assert set(dropped["unreadable_ids"]) <= DAMAGED_IDS
    assert dropped["n_unreadable"] == len(dropped["unreadable_ids"]) > 0
    assert set(dropped["unreadable_reasons"]) <= {"unreadable store chunk", "blank image"}

    out = tmp_path / "run"
    result = cli("train", "-d", damaged_store, "-o", out, "--config", tiny_train_config)
    assert result.exit_code == 0, result.output
    assert f"left out: {dropped['n_unreadable']} unusable objects" in result.output
    recorded = json.loads((out / META_FILE).read_text())["data"]["dropped"]
    assert recorded == dropped


def test_4_training_on_a_bad_layout_reports_what_the_reader_skipped(
    layout_factory, tiny_train_config
):
    layout = layout_factory("bad_layout", n=30, seed=12)
    for object_id in (200001, 200002, 200003):
        image_path(layout, Y_BAND, object_id).unlink()
    config = load_config(TrainConfig, tiny_train_config)
    data = LensDataModule(config, layout)
    data.prepare()
    assert data.dropped["n_data_problems"] == 3
    assert data.dropped["data_problem_reasons"] == {"missing band Y": 3}


# -- 7. more devices than the machine has --------------------------------------------------
@pytest.mark.parametrize(
    ("devices", "words"),
    [
        ("99", ["devices 99", "2 cores"]),
        ("-1", ["devices -1", "GPU"]),
        ("0,1", ["devices 0,1", "GPU"]),
    ],
)
def test_7_device_counts_beyond_the_cpu_are_refused_before_training(
    devices, words, tiny_store, tiny_train_config, tmp_path, monkeypatch
):
    import lensfinder.train.training as train_run

    monkeypatch.setattr(train_run, "available_cores", lambda: 2, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    started = []
    monkeypatch.setattr("lightning.pytorch.Trainer.__init__", lambda *a, **k: started.append(1))
    out = tmp_path / "run"
    result = cli(
        "train", "-d", tiny_store, "-o", out, "--config", tiny_train_config, "--devices", devices
    )
    one_line_error(result, *words)
    assert not started


def test_7_gpu_counts_and_indices_are_checked_against_the_visible_gpus(monkeypatch):
    from lensfinder.train.training import check_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_devices(2, "cuda") is None and check_devices("0,1", "gpu") is None
    assert check_devices(-1, "auto") is None and check_devices("auto", "cuda") is None
    assert "only 2 GPUs" in (check_devices(3, "cuda") or "")
    assert "0..1" in (check_devices("0,5", "cuda") or "")
    assert "distinct" in (check_devices("1,1", "cuda") or "")


# -- 8. only regular files are images ------------------------------------------------------
@pytest.mark.timeout(60)  # before the fix, pack waited forever for a writer to the FIFO
def test_8_a_fifo_or_a_directory_named_like_a_fits_file_is_skipped_and_counted(
    layout_factory, tmp_path
):
    layout = layout_factory("fifo", n=6, seed=13)
    fifo = image_path(layout, VIS, 200001)
    fifo.unlink()
    os.mkfifo(fifo)
    folder = image_path(layout, VIS, 200002)
    folder.unlink()
    folder.mkdir()
    result = cli("pack", layout, "--out", tmp_path / "s.zarr")
    assert result.exit_code == 0, result.output
    assert "2 skipped (2 not a regular file)" in result.output
    store = open_source(tmp_path / "s.zarr")
    assert 200001 not in store.ids and 200002 not in store.ids and len(store) == 4
    reasons = {p.id: p.reason for p in store.problems}
    assert reasons[200001] == "not a regular file (a FIFO)"
    assert reasons[200002] == "not a regular file (a directory)"
    layout_source = open_source(layout)
    assert layout_source.check().n_invalid == 2
    assert np.isnan(layout_source.ra[1])  # positions skip the FIFO too


# -- 10. one line instead of a traceback ---------------------------------------------------
def test_10_a_negative_seed_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "sim"
    one_line_error(cli("simulate", "--out", out, "--n", 2, "--seed", -1), "seed", "-1")
    assert not out.exists()
    one_line_error(cli("simulate", "--out", out, "--n", 2, "--seed", -1), "seed")  # again
    from lensfinder.config import SimulateConfig
    from lensfinder.errors import ConfigError
    from lensfinder.simulate import simulate

    with pytest.raises(ConfigError, match="seed must be >= 0"):  # from Python too
        simulate(SimulateConfig(n=2, seed=-1), out, progress=False)
    assert not out.exists()


@pytest.mark.parametrize(
    ("verb", "text", "words"),
    [
        ("train", "input: {size: 100000}\n", ["input size 100000", "200"]),
        ("simulate", "depth_scatter_mag: .nan\n", ["depth_scatter_mag", "not a finite number"]),
        ("simulate", "psf_fwhm_scatter: .inf\n", ["psf_fwhm_scatter", "not a finite number"]),
        ("train", "split: {seed: -3}\n", ["split.seed", "below 0"]),
        ("train", "lr: 0.1\n  bad: [1,\n", ["bad.yaml:2:", "not valid YAML"]),
    ],
)
def test_10_bad_config_values_are_one_line(verb, text, words, tiny_store, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    args = {
        "train": ["train", "-d", tiny_store, "-o", tmp_path / "out"],
        "simulate": ["simulate", "--out", tmp_path / "out", "--n", 2],
    }[verb]
    one_line_error(cli(*args, "--config", config), *words)
    assert not (tmp_path / "out").exists()


# -- 12. edited model files, int64 IDs, chunking, several-line errors ----------------------
@pytest.mark.parametrize(
    ("section", "edit"),
    [
        ("input", {"bands": ["Y", "VIS", "J", "H"]}),
        ("input", {"size": 48}),
        ("input", {"vis_sampling": "native"}),
        ("input", {"normalization": "instance"}),
        ("label_rule", None),
    ],
)
def test_12_model_json_edited_after_training_is_refused(section, edit, tmp_path):
    run_dir = make_run(tmp_path / "run", label_rule="n_sources > 0")
    load_model(run_dir)  # as saved: loads
    path = run_dir / META_FILE
    meta = json.loads(path.read_text())
    if edit is None:
        del meta[section]
    else:
        meta[section] = {**meta[section], **edit}
    path.write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="edited after training") as caught:
        load_model(run_dir)
    assert "\n" not in str(caught.value)


def test_12_model_files_from_before_the_hash_still_load(tmp_path):
    from lensfinder.models.checkpoint import DESCRIPTION_KEY

    run_dir = make_run(tmp_path / "run")
    path = run_dir / META_FILE
    meta = json.loads(path.read_text())
    del meta[DESCRIPTION_KEY]
    path.write_text(json.dumps(meta))
    load_model(run_dir)


def test_12_skip_reasons_are_keyed_by_kind_for_a_store_given_without_a_slash(
    damaged_store, tmp_path, monkeypatch
):
    run_dir = make_run(tmp_path / "run")
    monkeypatch.chdir(damaged_store.parent)
    out = tmp_path / "eval"
    result = cli(
        "evaluate", "-m", run_dir, "-d", damaged_store.name, "-o", out,
        "--split", "all", "--bootstrap", 0,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_reasons"] == {"unreadable store chunk": 8, "blank image": 4}


def test_12_an_id_beyond_int64_is_refused_with_its_row(layout_factory):
    layout = layout_factory("huge_id", n=6, seed=14)
    path = layout / CATALOG_NAME
    path.write_text(path.read_text().replace(",200003,", ",99999999999999999999,", 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's cast warning was all a user saw
        read = read_layout(layout)
    assert read.ids.min() >= 200000 and 200003 not in read.ids.tolist()
    reasons = [p.reason for p in read.problems]
    assert "catalogue ID 99999999999999999999 is out of range" in " ".join(reasons)


def test_12_ids_above_2_53_keep_every_digit(layout_factory):
    layout = layout_factory("big_id", n=3, seed=15, first_id=2**60 + 1)
    assert read_layout(layout).ids.tolist() == [2**60 + 1, 2**60 + 2, 2**60 + 3]


def test_12_small_stores_have_small_one_dimensional_chunks(tiny_layout, tmp_path):
    import zarr

    store = tmp_path / "s.zarr"
    assert cli("pack", tiny_layout, "--out", store).exit_code == 0
    group = zarr.open_group(store, mode="r")
    n = group["ids"].shape[0]
    for name in ("ids", "labels", "ra", "dec", "catalog/mag_eff"):
        assert group[name].chunks == (n,), name
    vectors = sum(
        f.stat().st_size
        for f in store.rglob("*")
        if f.is_file() and not {"vis", "nisp"} & set(f.parts)
    )
    assert vectors < 1_000_000  # was 512 KB per catalogue column (65,536 float64 each)


class NotATensor:
    """What a pickle may carry besides tensors (here harmless)."""


def test_12_a_pickle_in_place_of_a_checkpoint_gives_one_line_without_torchs_advice(tmp_path):
    from lensfinder.models.pretrained import read_state_dict
    from lensfinder.train.training import checkpoint_epoch

    for path in (tmp_path / "last.ckpt", tmp_path / "weights.pth"):
        torch.save({"state_dict": {"w": NotATensor()}}, path)
    for call, path in (
        (checkpoint_epoch, tmp_path / "last.ckpt"),
        (read_state_dict, tmp_path / "weights.pth"),
    ):
        with pytest.raises(ModelFileError) as caught:
            call(path)
        message = str(caught.value)
        assert "\n" not in message and str(path) in message
        assert "weights_only" not in message and "could run code" in message
