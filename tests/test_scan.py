"""Scanning on Dask: same scores as direct prediction, resumable, bad cutouts counted, refusals.

Cluster starts are the slow part, so most tests share one module-scoped 2-worker LocalCluster
(passed as an external scheduler); one test uses the LocalCluster that ``scan`` starts itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from lensfinder.config import PredictConfig, ScanConfig
from lensfinder.errors import ConfigError
from lensfinder.scan import scan
from lensfinder.testing import make_run

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    return [make_run(root / "alpha", 0), make_run(root / "beta", 1)]


@pytest.fixture(scope="module")
def scheduler():
    """One 2-worker LocalCluster for the module, used as an external scheduler."""
    import logging

    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": ":0"},  # no dashboard; its server on a free port
        silence_logs=logging.CRITICAL,
    )
    yield cluster.scheduler_address
    cluster.close()


def _cfg(shard_size: int = 5, **kw) -> ScanConfig:
    return ScanConfig(predict=PredictConfig(batch_size=4), shard_size=shard_size, **kw)


def _rows(path: Path) -> list[tuple[int, float]]:
    table = pq.read_table(path / "candidates.parquet")
    return list(zip(table["id"].to_pylist(), table["score"].to_pylist(), strict=True))


def test_scan_of_a_store_equals_direct_prediction(tiny_store, runs, scheduler, tmp_path):
    from lensfinder.data import open_source
    from lensfinder.predict import Predictor

    out = tmp_path / "scan"
    result = scan(runs, tiny_store, out, _cfg(), scheduler=scheduler, progress=False)
    source = open_source(tiny_store)
    direct = Predictor(runs, PredictConfig(batch_size=4)).predict_source(source, progress=False)

    table = pq.read_table(out / "candidates.parquet").to_pydict()
    assert result.n_scored == len(source) == len(table["id"]) == len(set(table["id"]))
    assert table["rank"] == list(range(1, len(source) + 1))
    assert table["score"] == sorted(table["score"], reverse=True)
    by_id = {i: k for k, i in enumerate(np.asarray(source.ids).tolist())}
    order = [by_id[i] for i in table["id"]]
    np.testing.assert_allclose(table["score"], direct.score[order], rtol=1e-5, atol=1e-6)
    for m, name in enumerate(("alpha", "beta")):  # one column per ensemble member
        np.testing.assert_allclose(
            table[f"score_{name}"], direct.member_scores[m][order], rtol=1e-5, atol=1e-6
        )
    np.testing.assert_array_equal(table["ra"], np.asarray(source.ra)[order])
    np.testing.assert_array_equal(table["label"], np.asarray(source.labels)[order])

    meta = json.loads(pq.read_schema(out / "candidates.parquet").metadata[b"lensfinder"])
    assert [m["name"] for m in meta["models"]] == ["alpha", "beta"]
    assert meta["lensfinder_version"] and all(m["version"] for m in meta["models"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_scored"] == len(source)
    assert summary["shards"] == {"total": 5, "done": 5, "reused": 0}  # 24 cutouts, 5 per shard
    # 24 cutouts over the scoring time, as the result and the summary both say
    assert result.rate == pytest.approx(len(source) / summary["scan_seconds"], rel=1e-2)
    assert summary["rate_cutouts_per_s"] == pytest.approx(result.rate, abs=1e-3)
    csv_lines = (out / "candidates.csv").read_text().splitlines()
    assert len(csv_lines) == len(source) + 1 and csv_lines[0].startswith('"rank","id","score"')
    assert "24 of 24" in result.summary()


def test_an_ensemble_directory_scans_as_its_members(tiny_store, runs, scheduler, tmp_path):
    from lensfinder.ensemble import write_ensemble

    ensemble = tmp_path / "ens"
    members = [make_run(ensemble / "member-0", 0), make_run(ensemble / "member-1", 1)]
    write_ensemble(ensemble, members, "probability")
    scan([ensemble], tiny_store, tmp_path / "a", _cfg(), scheduler=scheduler, progress=False)
    scan(runs, tiny_store, tmp_path / "b", _cfg(), scheduler=scheduler, progress=False)
    assert _rows(tmp_path / "a") == _rows(tmp_path / "b")  # same seeds, same weights
    table = pq.read_table(tmp_path / "a" / "candidates.parquet")
    assert sum(c.startswith("score_") for c in table.column_names) == 2  # one per member


def test_interrupted_scan_resumes_to_the_clean_result(
    tiny_store, tiny_layout, runs, scheduler, tmp_path
):
    out = tmp_path / "scan"
    first = scan(runs[:1], tiny_store, out, _cfg(), scheduler=scheduler, progress=False)
    clean = _rows(out)
    assert first.shards_done == 5
    shards = sorted((out / "shards").glob("shard-*.parquet"))
    # A crash: two shards never written, one half-written, a temp file left behind.
    shards[0].unlink()
    shards[3].unlink()
    shards[2].write_bytes(shards[2].read_bytes()[:100])
    (out / "shards" / ".shard-10-15.parquet.abc.tmp").write_bytes(b"partial")
    (out / "candidates.parquet").unlink()

    again = scan(runs[:1], tiny_store, out, _cfg(), scheduler=scheduler, progress=False)
    assert (again.shards_done, again.shards_reused) == (3, 2)
    resumed = _rows(out)
    assert [i for i, _ in resumed] == [i for i, _ in clean]  # same rows, same order
    np.testing.assert_allclose([s for _, s in resumed], [s for _, s in clean], rtol=1e-6)
    assert len({i for i, _ in resumed}) == len(resumed)
    assert not list((out / "shards").glob(".*.tmp"))

    # Resuming into this directory with other models, data or shard size is refused.
    with pytest.raises(ConfigError, match="other models"):
        scan(runs, tiny_store, out, _cfg(), scheduler=scheduler, progress=False)
    with pytest.raises(ConfigError, match="data path"):  # same IDs, other files
        scan(runs[:1], tiny_layout, out, _cfg(), scheduler=scheduler, progress=False)
    with pytest.raises(ConfigError, match="shard size"):
        scan(runs[:1], tiny_store, out, _cfg(shard_size=7), scheduler=scheduler, progress=False)
    with pytest.raises(ConfigError, match="tta"):
        tta = ScanConfig(predict=PredictConfig(batch_size=4, tta=True), shard_size=5)
        scan(runs[:1], tiny_store, out, tta, scheduler=scheduler, progress=False)


def test_retrained_model_at_the_same_path_is_refused(tiny_store, runs, scheduler, tmp_path):
    run = shutil.copytree(runs[0], tmp_path / "run")
    out = tmp_path / "scan"
    scan([run], tiny_store, out, _cfg(shard_size=12), scheduler=scheduler, progress=False)
    make_run(run, seed=5)  # overwrite with new weights
    with pytest.raises(ConfigError, match="other models"):
        scan([run], tiny_store, out, _cfg(shard_size=12), scheduler=scheduler, progress=False)


def test_corrupt_cutouts_are_counted_not_fatal(layout_factory, runs, scheduler, tmp_path):
    from lensfinder.layout import image_path
    from lensfinder.surveys import EUCLID

    layout = layout_factory("corrupt_layout", n=10, seed=3)
    vis = EUCLID.band("VIS")
    nan_image = image_path(layout, vis, 200002)  # all-NaN pixels: unusable
    from astropy.io import fits

    fits.writeto(nan_image, np.full((200, 200), np.nan, dtype=">f4"), overwrite=True)
    image_path(layout, vis, 200007).write_bytes(b"not a FITS file at all")

    out = tmp_path / "scan"
    result = scan(runs[:1], layout, out, _cfg(shard_size=4), scheduler=scheduler, progress=False)
    ids = pq.read_table(out / "candidates.parquet")["id"].to_pylist()
    assert 200002 not in ids and 200007 not in ids
    bad = sum(result.skipped.values()) + sum(result.source_problems.values())
    assert bad == 2 and result.n_scored == 8
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_skipped"] + sum(summary["source_problems"].values()) == 2


def test_two_workers_give_the_catalogue_of_one(tiny_store, runs, scheduler, tmp_path):
    one = tmp_path / "one"
    local = _cfg(shard_size=8, workers=1, local_below=0)  # scan's own LocalCluster
    result = scan(runs[:1], tiny_store, one, local, progress=False)
    assert result.shards_done == 3 and result.runner == "local-cluster"
    two = tmp_path / "two"
    scan(runs[:1], tiny_store, two, _cfg(shard_size=8), scheduler=scheduler, progress=False)
    a, b = _rows(one), _rows(two)
    assert [i for i, _ in a] == [i for i, _ in b]
    np.testing.assert_allclose([s for _, s in a], [s for _, s in b], rtol=1e-5, atol=1e-6)


def test_a_small_scan_in_process_gives_the_clusters_catalogue_and_resumes(
    tiny_store, runs, scheduler, tmp_path
):
    """Below ``local_below`` cutouts (and no scheduler) no cluster starts: this process scores
    the same shards into the same files and catalogue, and resumes as a cluster scan does."""
    import torch

    on_cluster, here = tmp_path / "cluster", tmp_path / "here"
    scan(runs, tiny_store, on_cluster, _cfg(), scheduler=scheduler, progress=False)
    threads = torch.get_num_threads()
    result = scan(runs, tiny_store, here, _cfg(local_below=25), progress=False)
    assert torch.get_num_threads() == threads  # the caller's setting is put back
    a, b = _rows(on_cluster), _rows(here)
    assert [i for i, _ in a] == [i for i, _ in b]
    np.testing.assert_allclose([s for _, s in a], [s for _, s in b], rtol=1e-5, atol=1e-6)
    names = sorted(p.name for p in (here / "shards").glob("shard-*.parquet"))
    assert names == sorted(p.name for p in (on_cluster / "shards").glob("shard-*.parquet"))
    summary = json.loads((here / "summary.json").read_text())
    assert summary["runner"] == result.runner == "in-process"
    assert summary["startup"]["cluster_s"] == 0 and summary["shards"]["done"] == 5
    assert "in this process" in result.summary()
    assert json.loads((on_cluster / "summary.json").read_text())["runner"] == "scheduler"

    # Resume in this process: a complete shard file is kept as it is, the missing ones redone.
    kept, lost = sorted((here / "shards").glob("shard-*.parquet"))[:2]
    before = kept.read_bytes()
    lost.unlink()
    again = scan(runs, tiny_store, here, _cfg(local_below=25), progress=False)
    assert (again.shards_done, again.shards_reused, again.runner) == (1, 4, "in-process")
    assert kept.read_bytes() == before and _rows(here) == b


def test_a_failed_shard_in_process_is_one_line_and_keeps_finished_ones(
    tiny_store, runs, monkeypatch, tmp_path
):
    from lensfinder.errors import DataError
    from lensfinder.scan import scanning as scan_run

    real = scan_run.score_shard

    def fail_third(task):
        if task.shard.start == 10:
            raise OSError(28, "No space left on device")
        return real(task)

    monkeypatch.setattr(scan_run, "score_shard", fail_third)
    out = tmp_path / "scan"
    expected = r"shard-10-15: failed \(OSError: \[Errno 28\] No space left on device\); 2 fin"
    with pytest.raises(DataError, match=expected):
        scan(runs[:1], tiny_store, out, _cfg(local_below=25), progress=False)
    assert len(list((out / "shards").glob("shard-*.parquet"))) == 2


def test_local_below_below_zero_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^scan: local_below must be >= 0, got -1$"):
        ScanConfig(local_below=-1)


def test_a_crash_on_a_worker_is_one_line_naming_the_shard(monkeypatch):
    """A shard that fails with a non-lensfinder error stops the scan with a DataError that names
    the shard and the error."""
    from distributed import Client

    from lensfinder.errors import DataError
    from lensfinder.scan import scanning as scan_run
    from lensfinder.scan.shards import Shard, ShardTask

    def crash(task: ShardTask) -> dict:
        raise RuntimeError(f"worker lost {task.shard.name}")

    monkeypatch.setattr(scan_run, "score_shard", crash)
    task = ShardTask((), "", "", "", {}, Shard(0, 5), "")
    expected = r"shard-0-5: failed on a worker \(RuntimeError: worker lost shard-0-5\)"
    with (
        Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as c,
        pytest.raises(DataError, match=expected),
    ):
        scan_run._run_shards(c, [task], show_progress=False)
