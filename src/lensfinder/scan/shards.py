"""One shard of a scan: the work a Dask worker does, start to finish, on its own.

A shard is a contiguous index range of the source. The worker opens the source from its path
and loads the models itself (both cached per process, so a worker pays for them once), scores
the shard with ``Predictor.predict_source`` (streaming; invalid cutouts skipped and counted) and
writes ``shards/shard-<start>-<stop>.parquet`` atomically. Only a small summary dict travels
back to the client: never images, never scores.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lensfinder.config import PredictConfig, from_dict
from lensfinder.data import open_source
from lensfinder.errors import DataError
from lensfinder.predict import Predictor
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


def plan_shards(n: int, shard_size: int) -> list[Shard]:
    """Contiguous ranges of ``shard_size`` indices covering ``[0, n)`` exactly once."""
    return [Shard(a, min(a + shard_size, n)) for a in range(0, n, shard_size)]


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
    torch_threads: int | None = None
    lensfinder_version: str = ""


_lock = threading.Lock()
_cache: dict[str, tuple[Any, Any]] = {}  # "source"/"predictor" -> (key, object)


def _cached(kind: str, key: Any, build) -> Any:
    """One live object per kind and process; a new key replaces the old one (bounded memory)."""
    with _lock:
        held = _cache.get(kind)
        if held is not None and held[0] == key:
            return held[1]
        _cache.pop(kind, None)
        value = build()
        _cache[kind] = (key, value)
        return value


def _open_checked(data: str, data_key: str):
    source = open_source(Path(data), keep_unlisted=True)
    seen = ids_fingerprint(source.ids)
    if seen != data_key:
        raise DataError(
            f"{data}: a worker sees other objects here than the client did "
            f"({seen} != {data_key}); is the path the same file on every machine?"
        )
    return source


def _build_predictor(models: tuple[str, ...], predict: dict[str, Any]):
    return Predictor([Path(m) for m in models], from_dict(PredictConfig, predict))


def member_info(predictor) -> list[dict[str, str]]:
    """Name and version of each model of the predictor, for provenance."""
    return [{"name": str(m.name), "version": str(m.version)} for m in predictor.members]


def score_shard(task: ShardTask) -> dict[str, Any]:
    """Score one shard and write its Parquet file; return its summary (counts, seconds)."""
    began = time.perf_counter()
    if task.torch_threads:
        import torch

        torch.set_num_threads(task.torch_threads)
    source = _cached(
        "source", (task.data, task.data_key), lambda: _open_checked(task.data, task.data_key)
    )
    predictor = _cached(
        "predictor",
        (task.models, task.models_key, repr(sorted(task.predict.items()))),
        lambda: _build_predictor(task.models, task.predict),
    )
    members = member_info(predictor)
    has_labels = bool(np.any(np.asarray(source.labels) >= 0))
    indices = np.arange(task.shard.start, task.shard.stop, dtype=np.int64)
    # predict_source streams the shard in small chunks and skips (and counts) invalid cutouts.
    scores = predictor.predict_source(source, indices, progress=False)
    rows = indices[np.asarray(scores.valid, dtype=bool)]
    scored = scores.only_valid()
    summary = {
        "start": task.shard.start,
        "stop": task.shard.stop,
        "n_scored": int(rows.size),
        "skipped": {str(k): int(v) for k, v in scores.skipped.items()},
        "seconds": round(time.perf_counter() - began, 3),
        "models": members,
        "lensfinder_version": task.lensfinder_version,
    }
    table = shard_table(
        ids=np.asarray(source.ids)[rows],
        scores=scored.score,
        member_scores=scored.member_scores,
        member_names=[m["name"] for m in members],
        ra=np.asarray(source.ra, dtype=np.float64)[rows],
        dec=np.asarray(source.dec, dtype=np.float64)[rows],
        labels=np.asarray(source.labels)[rows] if has_labels else None,
        meta=summary,
    )
    write_parquet(table, task.shard.path(Path(task.out)))
    return summary
