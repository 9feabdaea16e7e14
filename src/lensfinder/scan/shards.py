"""One shard of a scan: the work a Dask worker does, start to finish, on its own.

A shard is a contiguous index range of the source. The worker opens the source from its path
and loads the models itself (both cached per process, so a worker pays for them once: the ONNX
file it loads was exported or quantised by the client before any shard started), scores the
shard with ``Predictor.predict_source`` (streaming, the next chunk read and prepared while the
model runs; invalid cutouts skipped and counted) and writes
``shards/shard-<start>-<stop>.parquet`` atomically. Only a small summary dict travels back to
the client: counts and timings, never images, never scores.

Torch and the Predictor are imported on a worker's first shard (or by the cluster's preload),
not by the client, which only plans shards and merges them.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lensfinder.config import PredictConfig, from_dict
from lensfinder.data import open_source
from lensfinder.data.tile_source import TileSource
from lensfinder.data.tiles import TILE_COLUMNS
from lensfinder.errors import DataError
from lensfinder.predict.onnx_cache import Calibration, source_calibration
from lensfinder.scan.catalog import shard_table, write_parquet

SHARD_DIR = "shards"


@dataclass(frozen=True)
class Shard:
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"shard-{self.start}-{self.stop}"

    def path(self, out: Path) -> Path:
        return Path(out) / SHARD_DIR / f"{self.name}.parquet"


SHARDS_PER_THREAD = 4  # enough that workers finish together; few enough to keep fixed costs low
MIN_AUTO_SHARD = 64  # a shard's fixed costs (task, Parquet file, first chunk not prefetched)
MAX_AUTO_SHARD = 2048  # bounded worker memory, and little to redo after a crash


def plan_shards(n: int, shard_size: int, breaks: Sequence[int] = ()) -> list[Shard]:
    """Contiguous ranges of ``shard_size`` indices covering ``[0, n)`` exactly once, none
    crossing a position of ``breaks`` (where a tile's objects begin: a shard from tiles is
    rows of one tile, cut from its files opened once).

    >>> [s.name for s in plan_shards(7, 3, breaks=[0, 4])]
    ['shard-0-3', 'shard-3-4', 'shard-4-7']
    """
    edges = sorted({0, n, *(b for b in breaks if 0 < b < n)})
    return [
        Shard(a, min(a + shard_size, stop))
        for begin, stop in itertools.pairwise(edges)
        for a in range(begin, stop, shard_size)
    ]


def auto_shard_size(n: int, threads: int, batch_size: int) -> int:
    """A shard size for ``n`` cutouts on ``threads`` worker threads in all: about
    ``SHARDS_PER_THREAD`` shards per thread, so every worker is busy on a small scan too and
    none waits long for the last one; ``MIN_AUTO_SHARD`` to ``MAX_AUTO_SHARD`` cutouts, but
    never fewer shards than threads; rounded up to whole batches (a short last batch per shard
    is slow) where that leaves as many shards as threads.

    >>> auto_shard_size(1500, 2, 64), auto_shard_size(24, 2, 4), auto_shard_size(10**6, 8, 64)
    (192, 12, 2048)
    """
    threads = max(1, threads)
    size = max(math.ceil(n / (SHARDS_PER_THREAD * threads)), MIN_AUTO_SHARD)
    size = max(1, min(size, math.ceil(n / threads), MAX_AUTO_SHARD))
    whole = min(math.ceil(size / batch_size) * batch_size, MAX_AUTO_SHARD)
    if size > batch_size and math.ceil(n / whole) >= min(threads, math.ceil(n / size)):
        size = whole
    return size


def ids_fingerprint(ids: np.ndarray) -> str:
    """A short hash of the ID sequence: tells whether two sources list the same objects."""
    digest = hashlib.sha256(np.ascontiguousarray(ids, dtype="<i8").tobytes())
    return f"{len(ids)}:{digest.hexdigest()[:16]}"


@dataclass(frozen=True)
class ShardTask:
    """Everything a worker needs, as small plain values (paths, not arrays)."""

    models: tuple[str, ...]
    models_key: str  # content fingerprint: a retrained model at the same path is not reused
    data: str
    data_key: str  # ids_fingerprint of the source the client saw
    predict: dict[str, Any]  # PredictConfig as a dict
    shard: Shard
    out: str
    torch_threads: int | None = None  # also ONNX Runtime's, unless predict sets onnx_threads
    lensfinder_version: str = ""
    data_content: str = ""  # the source's content fingerprint: names int8 calibration cutouts
    # A scan from tiles: the shard's rows (``TileSource.rows``: their IDs, positions and the
    # tile's paths, a few arrays of shard size), cut by the worker itself; ``data`` is then
    # the tiles directory, never opened by the worker. None: the worker opens ``data``.
    tile_rows: Any = None
    calibration_spec: str = ""  # the client's int8 calibration (a tile shard has not its data)
    # Scored in a thread beside other shards of an in-process scan: its CPU is its thread's
    # own (exact with one thread per shard), its ``worker`` the thread (for the steady rate).
    shares_process: bool = False


_lock = threading.Lock()
_cache: dict[str, tuple[Any, Any]] = {}  # "source"/"predictor" -> (key, object)


def _cached(kind: str, key: Any, build: Callable[[], Any]) -> tuple[Any, bool]:
    """One live object per kind and process, and whether it was built now; a new key replaces
    the old one (bounded memory)."""
    with _lock:
        held = _cache.get(kind)
        if held is not None and held[0] == key:
            return held[1], False
        _cache.pop(kind, None)
        value = build()
        _cache[kind] = (key, value)
        return value, True


def release_cached() -> None:
    """Let go of this process's source and models (an in-process scan, once done: its client
    process goes on without them)."""
    with _lock:
        _cache.clear()


def _open_checked(data: str, data_key: str):
    source = open_source(Path(data), keep_unlisted=True)
    seen = ids_fingerprint(source.ids)
    if seen != data_key:
        raise DataError(
            f"{data}: a worker sees other objects here than the client did "
            f"({seen} != {data_key}); is the path the same file on every machine?"
        )
    return source


def _build_predictor(task: ShardTask, source: Any) -> Any:
    """The task's Predictor, warmed up: ONNX threads default to the worker's share of the cores,
    and int8 calibrates on the scanned data (the same cutouts the client quantised with)."""
    from lensfinder.predict.predictor import Predictor  # torch: on the worker, not the client

    cfg = from_dict(PredictConfig, task.predict)
    calibration = None
    if cfg.backend == "onnx-int8" and task.tile_rows is None:
        calibration = source_calibration(source, task.data_content)
    elif cfg.backend == "onnx-int8":
        calibration = _client_calibration(task.calibration_spec)
    predictor = Predictor(
        [Path(m) for m in task.models],
        cfg,
        onnx_threads=cfg.onnx_threads or task.torch_threads,
        calibration=calibration,
        cores=task.torch_threads,  # this worker's share of the machine, where the scan set it
    )
    predictor.warm_up()  # part of the worker's load time, not of its first shard's scoring
    return predictor


def _client_calibration(spec: str) -> Calibration:
    """The client's calibration by name only: a worker with one tile's rows cannot load the
    cutouts it names, and needs not, as the client quantised the model before any shard."""

    def missing() -> tuple[np.ndarray, np.ndarray]:
        raise DataError(
            f"no int8 model file calibrated on {spec} where this worker looks: the client "
            "makes it before any shard starts; do the workers see the model directory (or "
            "$LENSFINDER_CACHE) at the same path?"
        )

    return Calibration(spec, missing)


def _shard_source(task: ShardTask) -> tuple[Any, np.ndarray]:
    """The source a shard reads, and the shard's positions in it: the tile rows it carries
    (all of them), or the data at ``task.data`` opened once per worker (its range)."""
    if task.tile_rows is not None:
        return task.tile_rows, np.arange(len(task.tile_rows), dtype=np.int64)
    source, _ = _cached(
        "source", (task.data, task.data_key), lambda: _open_checked(task.data, task.data_key)
    )
    return source, np.arange(task.shard.start, task.shard.stop, dtype=np.int64)


def _tile_columns(source: Any, rows: np.ndarray) -> dict[str, np.ndarray]:
    """``tile_index``, ``tile_x``, ``tile_y`` (the object's VIS pixel on its tile) of a scan
    from tiles; nothing for other sources."""
    catalog = source.catalog if isinstance(source, TileSource) else {}
    return {name.lower(): catalog[name][rows] for name in TILE_COLUMNS if name in catalog}


def member_info(predictor) -> list[dict[str, str]]:
    """Name and version of each model of the predictor, for provenance."""
    return [{"name": str(m.name), "version": str(m.version)} for m in predictor.members]


def score_shard(task: ShardTask) -> dict[str, Any]:
    """Score one shard and write its Parquet file; return its summary: counts, and timings that
    tell a worker's one-off start-up (``load_s``: data opened, models loaded) from scoring
    (``seconds``, ``began_at``/``ended_at`` in epoch seconds)."""
    began = time.perf_counter()
    if task.torch_threads:
        import torch

        torch.set_num_threads(task.torch_threads)
    source, indices = _shard_source(task)
    predictor, built = _cached(
        "predictor",
        (task.models, task.models_key, repr(sorted(task.predict.items())), task.torch_threads),
        lambda: _build_predictor(task, source),
    )
    load_s = time.perf_counter() - began
    cpu_clock = time.thread_time if task.shares_process else time.process_time
    scoring, began_at, cpu = time.perf_counter(), time.time(), cpu_clock()
    task_cpu = time.thread_time()
    members = member_info(predictor)
    has_labels = bool(np.any(np.asarray(source.labels) >= 0))
    # predict_source streams the shard in small chunks and skips (and counts) invalid cutouts.
    scores = predictor.predict_source(source, indices, progress=False)
    rows = indices[np.asarray(scores.valid, dtype=bool)]
    scored = scores.only_valid()
    summary = {
        "start": task.shard.start,
        "stop": task.shard.stop,
        "n_scored": int(rows.size),
        "skipped": {str(k): int(v) for k, v in scores.skipped.items()},
        "seconds": round(time.perf_counter() - scoring, 3),  # scoring only: no start-up
        # CPU seconds of the worker process meanwhile (one shard at a time per process): a
        # cost per cutout that other processes on shared cores do not change much.
        "cpu_s": round(cpu_clock() - cpu, 3),
        # The task thread alone: the rest of cpu_s is the worker's other threads (Dask's
        # timers, and the prefetch thread where a worker reads ahead).
        "task_cpu_s": round(time.thread_time() - task_cpu, 3),
        "load_s": round(load_s, 3),
        "began_at": began_at,
        "worker": f"{socket.gethostname()}:{os.getpid()}"
        + (f":{threading.current_thread().name}" if task.shares_process else ""),
        "models": members,
        "lensfinder_version": task.lensfinder_version,
    }
    if built:
        summary["onnx_files"] = [f.info() for f in predictor.onnx_files]
    table = shard_table(
        ids=np.asarray(source.ids)[rows],
        scores=scored.score,
        member_scores=scored.member_scores,
        member_names=[m["name"] for m in members],
        ra=np.asarray(source.ra, dtype=np.float64)[rows],
        dec=np.asarray(source.dec, dtype=np.float64)[rows],
        labels=np.asarray(source.labels)[rows] if has_labels else None,
        meta=summary,
        theta_e=scored.theta_e,
        theta_e_sigma=scored.theta_e_sigma,
        extra=_tile_columns(source, rows),
    )
    write_parquet(table, task.shard.path(Path(task.out)))
    summary["ended_at"] = time.time()  # with the file written: the client's steady rate
    return summary
