"""Scan speed-ups that must not change results: automatic shard sizes, the ONNX cache (exported
once, by the scan's client), prefetching, int8, and the start-up report.

Tiny models and a 24-cutout store; most scans share one module-scoped 2-worker LocalCluster,
passed as an external scheduler. ONNX files that cannot live beside a model, and the build
locks, go to a temporary ``LENSFINDER_CACHE``, never to the user's cache.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from lensfinder.config import PredictConfig, ScanConfig
from lensfinder.errors import ConfigError, DataError
from lensfinder.predict import Predictor, synthetic_cutouts
from lensfinder.predict.onnx_build import prepare
from lensfinder.predict.onnx_cache import CACHE_ENV, Calibration
from lensfinder.predict.onnx_files import META_CACHE_KEY, read_metadata
from lensfinder.predict.quantize import META_INT8_CHECK
from lensfinder.scan import scan
from lensfinder.scan.shards import MAX_AUTO_SHARD, auto_shard_size
from lensfinder.testing import TINY_BN_BATCH_MODEL, make_run, two_worker_cluster

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ONNX = PredictConfig(backend="onnx", batch_size=4)
INT8 = PredictConfig(backend="onnx-int8", batch_size=4)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """One LENSFINDER_CACHE for the module: set before the cluster starts, so workers see it."""
    path = tmp_path_factory.mktemp("onnx-cache")
    old = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(path)
    yield path
    if old is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = old


@pytest.fixture(scope="module")
def scheduler(cache_dir):
    # as scan's own LocalCluster: imports at start, quick exit
    cluster = two_worker_cluster(preload=["lensfinder.scan.worker"])
    yield cluster.scheduler_address
    cluster.close()


@pytest.fixture(scope="module")
def cutouts() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_cutouts(10, seed=4)


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def _shard_metas(out: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return [
        json.loads(pq.read_schema(p).metadata[b"lensfinder"])
        for p in sorted((out / "shards").glob("shard-*.parquet"))
    ]


# -- automatic shard size ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "threads", "batch", "size", "shards"),
    [
        (1500, 2, 64, 192, 8),  # the measured case: 1 shard of 1,500 before, one worker idle
        (24, 2, 4, 12, 2),  # tiny: never fewer shards than threads
        (100, 2, 64, 50, 2),  # below a batch: no rounding that would leave a thread idle
        (10_000, 4, 64, 640, 16),  # about four per thread, whole batches
        (10**7, 8, 64, MAX_AUTO_SHARD, 4883),  # large: capped
        (5, 8, 64, 1, 5),  # fewer cutouts than threads
    ],
)
def test_auto_shard_size_gives_every_thread_work(n, threads, batch, size, shards):
    got = auto_shard_size(n, threads, batch)
    assert got == size
    assert -(-n // got) == shards
    assert -(-n // got) >= min(threads, n)


def test_auto_shard_size_is_recorded_and_resumed(tiny_store, scheduler, tmp_path, cache_dir):
    run = make_run(tmp_path / "run", seed=0)
    out = tmp_path / "scan"
    cfg = ScanConfig(predict=PredictConfig(batch_size=4))  # shard_size None: automatic
    result = scan([run], tiny_store, out, cfg, scheduler=scheduler, progress=False)
    summary, manifest = _summary(out), json.loads((out / "scan.json").read_text())
    assert (result.shard_size, result.shards_total) == (12, 2)  # 24 cutouts, 2 worker threads
    assert summary["shard_size"] == manifest["shard_size"] == 12
    assert summary["shard_size_from"] == "auto"

    # A scan made with an explicit size (or by an older lensfinder, without the precision in
    # its scoring settings) resumes with that size when none is given now.
    old = tmp_path / "old"
    scan([run], tiny_store, old, replace(cfg, shard_size=5), scheduler=scheduler, progress=False)
    shards = sorted((old / "shards").glob("shard-*.parquet"))
    shards[1].unlink()
    manifest = json.loads((old / "scan.json").read_text())
    del manifest["scoring"]["precision"]
    (old / "scan.json").write_text(json.dumps(manifest))
    again = scan([run], tiny_store, old, cfg, scheduler=scheduler, progress=False)
    assert (again.shards_done, again.shards_reused, again.shard_size) == (1, 4, 5)
    assert _summary(old)["shard_size_from"] == "resumed scan"
    with pytest.raises(ConfigError, match="shard size"):  # an explicit other size: refused
        scan([run], tiny_store, old, replace(cfg, shard_size=6), scheduler=scheduler)


# -- the ONNX cache ------------------------------------------------------------------------------
def test_onnx_file_is_exported_once_reused_and_redone_for_new_weights(tmp_path, cache_dir):
    run = make_run(tmp_path / "run", seed=0)
    first = Predictor([run], ONNX)
    assert [f.status for f in first.onnx_files] == ["built"]
    cache = run / "model.onnx"
    stamp = cache.stat().st_mtime_ns
    second = Predictor([run], ONNX)
    assert [f.status for f in second.onnx_files] == ["hit"]
    assert cache.stat().st_mtime_ns == stamp
    assert second.settings()["onnx_files"][0]["cache"] == "hit"

    make_run(run, seed=7)  # retrained in place: the cached file is stale
    with pytest.warns(UserWarning, match="not made from this model's weights"):
        third = Predictor([run], ONNX)
    assert [f.status for f in third.onnx_files] == ["built"]
    assert cache.stat().st_mtime_ns != stamp


def test_parallel_builders_export_once(tmp_path, cache_dir):
    """Two builders of the same file at once (threads here; processes alike): one exports
    under the lock, the other waits and finds the file."""
    run = make_run(tmp_path / "run", seed=1)
    statuses: list[str] = []
    barrier = threading.Barrier(2)

    def build() -> None:
        barrier.wait()
        statuses.append(prepare(run, "float32").status)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == ["built", "hit"]


def test_unwritable_model_directory_caches_in_the_user_cache(tmp_path, cache_dir, cutouts):
    run = make_run(tmp_path / "run", seed=2)
    (run / "model.onnx").mkdir()  # in the way, as a read-only directory would be
    with pytest.warns(UserWarning, match="cannot cache the ONNX file beside the model"):
        first = Predictor([run], ONNX)
    path = first.onnx_files[0].path
    assert path is not None and path.parent == cache_dir
    second = Predictor([run], ONNX)  # found there, quietly
    assert (second.onnx_files[0].status, second.onnx_files[0].path) == ("hit", path)
    expected = Predictor([run], PredictConfig(batch_size=4)).predict_arrays(*cutouts)
    np.testing.assert_allclose(second.predict_arrays(*cutouts).logits, expected.logits, atol=1e-4)


def test_scan_exports_in_the_client_and_workers_only_load(
    tiny_store, scheduler, tmp_path, cache_dir
):
    run = make_run(tmp_path / "run", seed=3)
    cfg = ScanConfig(predict=ONNX, shard_size=6)
    out = tmp_path / "scan"
    scan([run], tiny_store, out, cfg, scheduler=scheduler, progress=False)
    startup = _summary(out)["startup"]
    assert [f["cache"] for f in startup["onnx_files"]] == ["built"]
    loaded = [f["cache"] for m in _shard_metas(out) for f in m.get("onnx_files", [])]
    assert loaded and set(loaded) == {"hit"}  # each worker loaded the file, once
    assert len(loaded) == len(startup["worker_load_s"]) <= 2

    scan([run], tiny_store, tmp_path / "again", cfg, scheduler=scheduler, progress=False)
    assert [f["cache"] for f in _summary(tmp_path / "again")["startup"]["onnx_files"]] == ["hit"]


def test_summary_reports_start_up_apart_from_the_steady_rate(
    tiny_store, scheduler, tmp_path, cache_dir
):
    """The start-up phases are each measured and fit inside each other and the wall time; the
    rates agree with the shards' own counts and timings."""
    run = make_run(tmp_path / "run", seed=4)
    out = tmp_path / "scan"
    result = scan([run], tiny_store, out, ScanConfig(predict=ONNX), scheduler=scheduler)
    summary = _summary(out)
    startup = summary["startup"]
    metas = _shard_metas(out)
    for meta in metas:
        assert {"seconds", "cpu_s", "load_s", "began_at", "worker"} <= set(meta)
    slack = 0.005  # every duration is rounded to the millisecond
    # Each phase recorded: the cluster and the models took time, every worker that scored a
    # shard has its load time (its largest, the first shard's), and nothing else has one.
    assert startup["cluster_s"] > 0 and startup["models_s"] > 0
    loads: dict[str, float] = {}
    for meta in metas:
        loads[meta["worker"]] = max(loads.get(meta["worker"], 0.0), meta["load_s"])
    assert startup["worker_load_s"] == pytest.approx(loads, abs=slack)
    assert all(v > 0 for v in loads.values())
    # Phases nest: the cluster and the models (in parallel) before submitting; a worker loads
    # before the first shard scores; that shard scores before it comes back; all within wall.
    submit = startup["submit_after_s"]
    assert max(startup["cluster_s"], startup["models_s"]) <= submit + slack
    first = min(metas, key=lambda m: m["began_at"])
    assert submit + first["load_s"] <= startup["until_scoring_s"] + slack
    scoring_wait = startup["until_scoring_s"] - submit
    first_back = scoring_wait + min(m["seconds"] for m in metas)
    assert first_back <= startup["first_shard_s"] + slack
    assert submit + startup["first_shard_s"] <= summary["wall_s"] + slack
    assert submit + summary["scan_seconds"] + summary["shutdown_s"] <= summary["wall_s"] + slack
    # Rates from the shards' own counts: the whole rate is every cutout over the wall time;
    # the steady rate leaves start-up out, so it is at least that, and at most each worker's
    # cutouts over its scoring time alone.
    cutouts = {worker: 0 for worker in loads}
    scoring = {worker: 0.0 for worker in loads}
    for meta in metas:
        cutouts[meta["worker"]] += meta["n_scored"] + sum(meta["skipped"].values())
        scoring[meta["worker"]] += meta["seconds"]
    whole = summary["whole_rate_cutouts_per_s"]
    n, wall = sum(cutouts.values()), summary["wall_s"]  # wall rounded to the millisecond
    assert n / (wall + 0.0005) - 0.001 <= whole <= n / (wall - 0.0005) + 0.001
    ceiling = sum(cutouts[w] / max(scoring[w] - slack, 1e-3) for w in cutouts)
    assert whole <= summary["steady_rate_cutouts_per_s"] <= ceiling
    assert summary["steady_rate_cutouts_per_s"] == pytest.approx(result.steady_rate, abs=1e-3)
    cpu_ms = 1000 * sum(m["cpu_s"] for m in metas) / sum(cutouts.values())
    assert summary["steady_cpu_ms_per_cutout"] == pytest.approx(cpu_ms, abs=1e-3)
    assert f"start-up {startup['until_scoring_s']:.1f} s" in result.summary()
    assert f"{result.steady_rate:.1f} cutouts/s" in result.summary()


def test_in_process_onnx_scan_scores_shards_at_once_as_the_cluster_does(
    tiny_store, scheduler, tmp_path, cache_dir
):
    """An in-process ONNX scan with 2 workers scores two shards at once in threads sharing
    one single-thread session (the cluster's rate), loading the file itself: the catalogue
    is the cluster's to 1e-5 in float32, shard for shard."""
    run = make_run(tmp_path / "run", seed=6)
    cluster_out, here = tmp_path / "cluster", tmp_path / "here"
    cfg = ScanConfig(predict=ONNX, shard_size=5, workers=2)
    scan([run], tiny_store, cluster_out, cfg, scheduler=scheduler, progress=False)
    result = scan([run], tiny_store, here, replace(cfg, local_below=10**6), progress=False)
    assert result.runner == "in-process"
    ids, scores = (
        pq.read_table(here / "candidates.parquet")[c].to_pylist() for c in ("id", "score")
    )
    theirs = pq.read_table(cluster_out / "candidates.parquet")
    assert ids == theirs["id"].to_pylist()
    np.testing.assert_allclose(scores, theirs["score"].to_pylist(), rtol=0, atol=1e-5)
    metas = _shard_metas(here)
    assert len({m["worker"] for m in metas}) == 2  # two threads, each its share of the shards
    assert [f["cache"] for f in _summary(here)["startup"]["onnx_files"]] == ["hit"]


# -- prefetch ----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_prefetch_gives_exactly_the_plain_scores(kinds_store, tmp_path, cache_dir, backend):
    from lensfinder.data import open_source

    run = make_run(tmp_path / "run", seed=5)
    source = open_source(kinds_store)
    indices = np.r_[3:40, 0:3]  # out of order, crossing chunks
    cfg = PredictConfig(batch_size=4, backend=backend, prefetch=True)
    plain = Predictor([run], replace(cfg, prefetch=False)).predict_source(source, indices)
    ahead = Predictor([run], cfg).predict_source(source, indices)
    np.testing.assert_array_equal(ahead.logits, plain.logits)
    np.testing.assert_array_equal(ahead.valid, plain.valid)
    vis, nisp = synthetic_cutouts(9, seed=1)
    a = Predictor([run], replace(cfg, prefetch=False)).predict_arrays(vis, nisp)
    b = Predictor([run], cfg).predict_arrays(vis, nisp)
    np.testing.assert_array_equal(a.logits, b.logits)


def test_prefetch_keeps_bn_method_2_groups_and_skips(layout_factory, tmp_path):
    """Invalid rows are skipped before groups form, identically with and without prefetch."""
    from astropy.io import fits

    from lensfinder.data import open_source
    from lensfinder.layout import image_path
    from lensfinder.surveys import EUCLID

    layout = layout_factory("bad_rows", n=15, seed=8)
    fits.writeto(
        image_path(layout, EUCLID.band("VIS"), 200005),
        np.full((200, 200), np.nan, dtype=">f4"),
        overwrite=True,
    )
    run = make_run(tmp_path / "bn", seed=6, model_cfg=TINY_BN_BATCH_MODEL)
    source = open_source(layout)
    cfg = PredictConfig(batch_size=4, prefetch=True)
    plain = Predictor([run], replace(cfg, prefetch=False)).predict_source(source)
    ahead = Predictor([run], cfg).predict_source(source)
    assert plain.n_valid == 14 and plain.skipped  # groups of 4, 4, 4, 2
    np.testing.assert_array_equal(ahead.logits, plain.logits)
    assert ahead.skipped == plain.skipped


def test_a_read_error_in_the_prefetch_thread_is_raised_to_the_caller(tmp_path, tiny_store):
    from lensfinder.data import open_source

    class Failing:
        def __init__(self, source):
            self.source, self.reads = source, 0

        def __len__(self) -> int:
            return len(self.source)

        @property
        def ids(self):
            return self.source.ids

        def read(self, indices):
            self.reads += 1
            if self.reads == 2:
                raise DataError("disk went away")
            return self.source.read(indices)

    run = make_run(tmp_path / "run", seed=0)
    predictor = Predictor([run], PredictConfig(batch_size=2, prefetch=True))
    with pytest.raises(DataError, match="disk went away"):
        predictor.predict_source(Failing(open_source(tiny_store)), progress=False)


def test_prefetch_by_default_only_where_a_core_is_free(tmp_path, cache_dir):
    """On busy cores a prefetch thread only competes with inference (a scan's workers fill
    their share of the cores), so by default it runs only where inference leaves one free."""
    run = make_run(tmp_path / "run", seed=0)
    onnx = PredictConfig(backend="onnx")
    assert not Predictor([run], onnx, onnx_threads=2, cores=2).prefetch
    assert Predictor([run], onnx, onnx_threads=1, cores=2).prefetch
    assert not Predictor([run], onnx, onnx_threads=1, cores=1).prefetch
    assert Predictor([run], replace(onnx, prefetch=True), onnx_threads=1, cores=1).prefetch
    assert not Predictor([run], replace(onnx, prefetch=False), onnx_threads=1, cores=2).prefetch


def test_warm_up_leaves_the_scores_alone(tmp_path, cache_dir):
    run = make_run(tmp_path / "run", seed=2, model_cfg=TINY_BN_BATCH_MODEL)  # BN method 2 too
    vis, nisp = synthetic_cutouts(6, seed=4)
    cold = Predictor([run], PredictConfig(batch_size=2)).predict_arrays(vis, nisp)
    warm = Predictor([run], PredictConfig(batch_size=2))
    warm.warm_up()
    np.testing.assert_array_equal(warm.predict_arrays(vis, nisp).logits, cold.logits)


# -- int8 --------------------------------------------------------------------------------------
def test_int8_backend_scores_close_to_float_and_is_cached(tmp_path, cache_dir, cutouts):
    run = make_run(tmp_path / "run", seed=0)
    calibration = Calibration("test:synthetic-10", lambda: cutouts)
    float_scores = Predictor([run], ONNX).predict_arrays(*cutouts)
    int8 = Predictor([run], INT8, calibration=calibration)
    assert [f.status for f in int8.onnx_files] == ["built"]
    int8_scores = int8.predict_arrays(*cutouts)
    assert np.abs(int8_scores.score - float_scores.score).max() < 0.05
    props = read_metadata(run / "model.int8.onnx")
    assert "test:synthetic-10" in props[META_CACHE_KEY]
    assert json.loads(props[META_INT8_CHECK])["rows"] == len(cutouts[0])
    again = Predictor([run], INT8, calibration=calibration)
    assert [f.status for f in again.onnx_files] == ["hit"]
    other = Calibration("test:other", lambda: synthetic_cutouts(6, seed=9))
    with pytest.warns(UserWarning, match="other settings"):  # other calibration: redone
        assert [f.status for f in Predictor([run], INT8, calibration=other).onnx_files] == ["built"]


def test_int8_of_an_exported_onnx_file_is_cached_beside_it(tmp_path, cache_dir, cutouts):
    from lensfinder.predict import export_onnx

    run = make_run(tmp_path / "run", seed=2)
    path = export_onnx(run, tmp_path / "deploy" / "lens.onnx").path
    assert path is not None
    int8 = Predictor([path], INT8, calibration=Calibration("test:lens", lambda: cutouts))
    assert int8.members[0].name == "lens"  # named by the file, as the float one
    assert int8.onnx_files[0].path == tmp_path / "deploy" / "lens.int8.onnx"
    expected = Predictor([path], ONNX).predict_arrays(*cutouts)
    assert np.abs(int8.predict_arrays(*cutouts).score - expected.score).max() < 0.05


def test_int8_scan_is_never_mixed_with_float(tiny_store, scheduler, tmp_path, cache_dir):
    run = make_run(tmp_path / "run", seed=1)
    out = tmp_path / "scan"
    cfg = ScanConfig(predict=INT8, shard_size=12)
    result = scan([run], tiny_store, out, cfg, scheduler=scheduler, progress=False)
    assert result.n_scored == 24
    assert json.loads((out / "scan.json").read_text())["scoring"]["precision"] == "int8"
    assert [f["cache"] for f in _summary(out)["startup"]["onnx_files"]] == ["built"]
    (out / "shards" / "shard-0-12.parquet").unlink()
    with pytest.raises(ConfigError, match="precision"):
        scan([run], tiny_store, out, replace(cfg, predict=ONNX), scheduler=scheduler)


# -- the worker preload --------------------------------------------------------------------------
def test_a_cleanly_closed_worker_skips_the_slow_teardown_and_no_other_does():
    import subprocess
    import sys
    from types import SimpleNamespace

    from distributed.core import Status

    from lensfinder.scan.worker import leave_quickly

    leave_quickly(SimpleNamespace(status=Status.running))  # not closed: returns, exits nothing
    code = (
        "import sys, types; from distributed.core import Status; "
        "from lensfinder.scan.worker import dask_setup; "
        "dask_setup(types.SimpleNamespace(status=Status.closed)); sys.exit(3)"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, timeout=120)
    assert done.returncode == 0  # left by os._exit(0) at exit, not by sys.exit(3)
