"""Survey-scale scanning: shards on Dask, Parquet per shard, resumable, one ranked catalogue.

``scan`` splits the source into contiguous shards, keeps a bounded number of them in flight on a
Dask cluster (a LocalCluster it starts, or an existing scheduler), and merges the shard files into
``candidates.parquet``/``.csv`` ranked by score. The client holds only shard summaries, so its
memory does not grow with the survey; workers read their own cutouts from the path.

Re-running the same command resumes: complete shard files are reused, missing or corrupt ones
are redone. ``scan.json`` records what made the directory (model and data fingerprints, shard
size, the scoring settings); a run with other ones is refused rather than mixed in.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lensfinder import __version__
from lensfinder.config import ScanConfig, to_dict
from lensfinder.data import open_source
from lensfinder.data.challenge import summarise_problems
from lensfinder.ensemble import expand_models
from lensfinder.errors import ConfigError, DataError, LensfinderError, ModelFileError
from lensfinder.safety import check_not_input, mark_output, output_lock
from lensfinder.scan.catalog import merge_shards, read_shard, table_meta
from lensfinder.scan.shards import (
    SHARD_DIR,
    Shard,
    ShardTask,
    ids_fingerprint,
    plan_shards,
    score_shard,
)
from lensfinder.utils import atomic_write_text, progress

MANIFEST = "scan.json"
SCAN_KIND = "scan"  # the output marker's kind
SUMMARY = "summary.json"
# Settings that change scores: resuming with others would mix two catalogues in one.
_SCORING_KEYS = ("tta", "ensemble_average")
_MODEL_FILES = ("model.json", "model.safetensors")


@dataclass
class ScanResult:
    out: Path
    candidates: Path
    candidates_csv: Path
    n_objects: int
    n_scored: int
    skipped: dict[str, int]
    source_problems: dict[str, int]
    shards_total: int
    shards_done: int
    shards_reused: int
    wall_s: float
    rate: float  # cutouts per second over the shards done in this run
    top: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"scanned {self.n_scored} of {self.n_objects} cutouts -> {self.candidates}",
            f"shards: {self.shards_done} done, {self.shards_reused} reused, "
            f"{self.shards_total} in all; {self.wall_s:.1f} s"
            + (f", {self.rate:.1f} cutouts/s" if self.shards_done else ""),
        ]
        if self.skipped:
            reasons = ", ".join(f"{r}: {n}" for r, n in sorted(self.skipped.items()))
            lines.append(f"skipped {sum(self.skipped.values())} invalid cutouts ({reasons})")
        if self.source_problems:
            reasons = ", ".join(f"{r}: {n}" for r, n in sorted(self.source_problems.items()))
            lines.append(f"left out by the data reader: {reasons}")
        if self.top:
            best = ", ".join(f"{t['id']} ({t['score']:.3f})" for t in self.top[:5])
            lines.append(f"top candidates: {best}")
        return "\n".join(lines)


def _model_fingerprint(model: Path) -> str:
    """Content hash of a model (run directory or ``.onnx`` file): a retrained model at the same
    path is a different model, and must not be mixed into an old scan."""
    if model.is_file():
        files = [model]
    elif model.is_dir():
        files = [model / name for name in _MODEL_FILES if (model / name).is_file()]
        if not files:
            raise ModelFileError(f"{model}: no {' or '.join(_MODEL_FILES)} in this run directory")
    else:
        raise ModelFileError(f"{model}: no such model run directory or file")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(functools.partial(handle.read, 1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _manifest(
    models: list[Path], data: Path, data_key: str, content_key: str, cfg: ScanConfig
) -> dict[str, Any]:
    predict = to_dict(cfg.predict)
    return {
        "models": [str(m) for m in models],
        "model_fingerprints": [_model_fingerprint(m) for m in models],
        "data": str(data),
        "data_fingerprint": data_key,
        "data_content": content_key,
        "shard_size": cfg.shard_size,
        "scoring": {k: predict[k] for k in _SCORING_KEYS},
        "config": to_dict(cfg),
    }


def _check_resume(out: Path, manifest: dict[str, Any]) -> None:
    """Refuse to add shards to a directory that another scan made."""
    path = out / MANIFEST
    has_shards = any((out / SHARD_DIR).glob("shard-*.parquet"))
    if not has_shards:  # nothing scored yet (e.g. a first try failed): nothing to mix with
        return
    if not path.exists():
        raise ConfigError(
            f"{out}: holds shard files but no {MANIFEST}; cannot tell how they were made "
            "(use a new --out)"
        )
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable scan manifest ({exc}); use a new --out") from None
    checks = {
        "model_fingerprints": "models",
        "data": "data path",
        "data_fingerprint": "objects in the data",
        "data_content": "data content (pixels, catalogue or labels changed since)",
        "shard_size": "shard size",
        "scoring": "scoring settings (tta, ensemble_average)",
    }
    for key, what in checks.items():
        if old.get(key) != manifest[key]:
            raise ConfigError(
                f"{path}: this directory holds a scan made with other {what} "
                f"({old.get(key)!r} here, {manifest[key]!r} now); use a new --out or delete it"
            )


@contextlib.contextmanager
def _dask_client(cfg: ScanConfig, scheduler: str | None) -> Iterator[tuple[Any, int | None]]:
    """A Client on a quiet LocalCluster, or on an existing scheduler (address or file).

    Also yields the torch threads per task: a LocalCluster shares this machine's cores among
    its workers; on an external cluster the workers' own settings are left alone.
    """
    from distributed import Client, LocalCluster

    quiet = logging.CRITICAL  # worker errors come back to the client and are reported once
    if scheduler:
        try:
            if scheduler.endswith(".json") and Path(scheduler).is_file():
                client = Client(scheduler_file=scheduler, timeout="20s")
            else:
                client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"cannot reach Dask scheduler {scheduler} ({exc})") from None
        try:
            yield client, None
        finally:
            client.close()
        return
    if cfg.workers < 1 or cfg.threads_per_worker < 1:
        raise ConfigError(
            f"scan needs at least one worker and thread (workers={cfg.workers}, "
            f"threads_per_worker={cfg.threads_per_worker})"
        )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch_threads = max(1, (cores or 1) // (cfg.workers * cfg.threads_per_worker))
    import dask

    # Dask sets MALLOC_TRIM_THRESHOLD_=65536 in its workers, which halves inference speed here
    # (measured: 100 -> 167-193 cutouts/s for one worker without it); memory stays flat anyway.
    unset_trim = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
    with dask.config.set(unset_trim):
        cluster = LocalCluster(
            n_workers=cfg.workers,
            threads_per_worker=cfg.threads_per_worker,
            processes=True,
            memory_limit=cfg.memory_limit,
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": ":0"},  # no dashboard; a free port
            silence_logs=quiet,
        )
    client = Client(cluster)
    try:
        yield client, torch_threads
    finally:
        client.close()
        cluster.close()


def _remove_partial_shards(out: Path) -> None:
    """Delete half-written shard files left by a killed worker (safe: we hold the lock)."""
    for stale in (out / SHARD_DIR).glob(".shard-*.tmp"):
        stale.unlink(missing_ok=True)


def _complete_shards(shards: list[Shard], out: Path) -> dict[Shard, dict[str, Any]]:
    """Shards whose file is complete, with their summaries: these are reused, not redone."""
    reused = {}
    for shard in shards:
        path = shard.path(out)
        table = read_shard(path, shard.start, shard.stop) if path.exists() else None
        if table is not None:
            reused[shard] = table_meta(table)
    return reused


def _shard_tables(shards: list[Shard], out: Path) -> Iterator[Any]:
    for shard in shards:
        table = read_shard(shard.path(out), shard.start, shard.stop)
        if table is None:  # changed under us between scoring and merging
            raise DataError(f"{shard.path(out)}: shard file vanished or broke; re-run to redo it")
        yield table


def _count_problems(source) -> dict[str, int]:
    problems = Counter(str(getattr(p, "reason", p)) for p in getattr(source, "problems", []))
    return dict(problems)


def _run_shards(
    client: Any,
    tasks: list[ShardTask],
    show_progress: bool,
) -> list[dict[str, Any]]:
    """Keep at most a few shards per worker thread in flight; stop cleanly on the first error.

    A bounded queue keeps the scheduler's state (and the client's) small however many shards
    the survey has; each finished future is dropped as soon as its summary is read.
    """
    from distributed import as_completed

    window = max(4, 2 * sum(client.nthreads().values()))
    pending = iter(tasks)
    done: list[dict[str, Any]] = []
    failure: tuple[Shard, BaseException] | None = None

    shard_of: dict[str, Shard] = {}

    def submit(task: ShardTask):
        key = f"{task.shard.name}-{uuid.uuid4().hex[:12]}"
        shard_of[key] = task.shard
        return client.submit(score_shard, task, key=key, pure=False)

    first = [submit(t) for _, t in zip(range(window), pending, strict=False)]
    queue = as_completed(first)
    bar = progress(queue, total=len(tasks), desc="scan", unit="shard") if show_progress else queue
    n_cutouts = 0
    began = time.perf_counter()
    for future in bar:
        shard = shard_of.pop(future.key)
        try:
            summary = future.result()
        except Exception as exc:  # stop submitting; in-flight shards still finish and are kept
            failure = failure or (shard, exc)
            summary = None
        future.release()
        if summary is not None:
            done.append(summary)
            n_cutouts += summary["n_scored"] + sum(summary["skipped"].values())
            if show_progress and hasattr(bar, "set_postfix_str"):
                rate = n_cutouts / max(time.perf_counter() - began, 1e-9)
                bar.set_postfix_str(f"{rate:.1f} cutouts/s")
        if failure is None:
            task = next(pending, None)
            if task is not None:
                queue.add(submit(task))
    if show_progress and hasattr(bar, "close"):
        bar.close()
    if failure is not None:
        shard, error = failure
        if isinstance(error, LensfinderError):
            raise error
        raise DataError(
            f"{shard.name}: failed on a worker ({type(error).__name__}: {error}); "
            f"{len(done)} finished shards are kept, re-run to resume"
        ) from None
    return done


def scan(
    models: list[Path],
    data: Path,
    out: Path,
    cfg: ScanConfig | None = None,
    scheduler: str | None = None,
    progress: bool = True,
) -> ScanResult:
    """Score every cutout of ``data`` with ``models``; write a ranked candidate catalogue.

    Resumable: re-run the same command after an interruption and finished shards are reused.
    ``scheduler``: a Dask scheduler address (``tcp://host:8786``) or scheduler file; its workers
    must see ``models``, ``data`` and ``out`` at the same paths (a shared file system). Without
    one a LocalCluster of ``cfg.workers`` processes is started: from a script, call ``scan``
    under ``if __name__ == "__main__":``, as for any multiprocessing code.
    """
    began = time.perf_counter()
    cfg = cfg or ScanConfig()
    if not models:
        raise ConfigError("scan needs at least one model run directory (--model)")
    if cfg.shard_size < 1:
        raise ConfigError(f"scan shard_size must be at least 1, got {cfg.shard_size}")
    models = [Path(m).expanduser().resolve() for m in expand_models(models)]
    data, out = Path(data).expanduser().resolve(), Path(out).expanduser().resolve()
    check_not_input(out, [data, *models], "scan")
    with output_lock(out, "scan"):
        return _scan_locked(models, data, out, cfg, scheduler, progress, began)


def _scan_locked(
    models: list[Path],
    data: Path,
    out: Path,
    cfg: ScanConfig,
    scheduler: str | None,
    progress: bool,
    began: float,
) -> ScanResult:
    """``scan`` once it holds the lock of ``out``."""
    import numpy as np

    source = open_source(data, keep_unlisted=True)
    if len(source) == 0:
        raise DataError(
            f"{data}: no cutout can be scanned; {summarise_problems(list(source.problems))}"
        )
    data_key = ids_fingerprint(np.asarray(source.ids))
    manifest = _manifest(models, data, data_key, source.content_fingerprint(), cfg)
    _check_resume(out, manifest)
    mark_output(out, SCAN_KIND)
    (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    _remove_partial_shards(out)

    shards = plan_shards(len(source), cfg.shard_size)
    reused = _complete_shards(shards, out)
    todo = [s for s in shards if s not in reused]

    done: list[dict[str, Any]] = []
    scan_seconds = 0.0
    if todo:
        with _dask_client(cfg, scheduler) as (client, torch_threads):
            tasks = [
                ShardTask(
                    models=tuple(str(m) for m in models),
                    models_key=",".join(manifest["model_fingerprints"]),
                    data=str(data),
                    data_key=data_key,
                    predict=to_dict(cfg.predict),
                    shard=shard,
                    out=str(out),
                    torch_threads=torch_threads,
                    lensfinder_version=__version__,
                )
                for shard in todo
            ]
            started = time.perf_counter()
            done = _run_shards(client, tasks, progress)
            scan_seconds = time.perf_counter() - started

    summaries = list(reused.values()) + done
    skipped: Counter[str] = Counter()
    for s in summaries:
        skipped.update(s.get("skipped", {}))
    models_info: list[dict[str, Any]] = next(
        (s["models"] for s in summaries if s.get("models")), []
    )
    meta = {
        "models": [
            {**info, "path": str(path)}
            for info, path in zip(models_info or [{}] * len(models), models, strict=False)
        ],
        "data": str(data),
        "lensfinder_version": __version__,
        "n_objects": len(source),
    }
    parquet_path, csv_path, n_rows = merge_shards(_shard_tables(shards, out), out, meta)
    _remove_partial_shards(out)  # a worker killed mid-shard in this run (its shard was redone)

    import pyarrow.parquet as pq

    head = pq.read_table(parquet_path, columns=["rank", "id", "score"]).slice(0, 10).to_pylist()
    processed = sum(s["n_scored"] + sum(s["skipped"].values()) for s in done)
    wall = time.perf_counter() - began
    result = ScanResult(
        out=out,
        candidates=parquet_path,
        candidates_csv=csv_path,
        n_objects=len(source),
        n_scored=n_rows,
        skipped=dict(skipped),
        source_problems=_count_problems(source),
        shards_total=len(shards),
        shards_done=len(done),
        shards_reused=len(reused),
        wall_s=wall,
        rate=processed / scan_seconds if scan_seconds > 0 else 0.0,
        top=head,
    )
    report = {
        "n_objects": result.n_objects,
        "n_scored": result.n_scored,
        "n_skipped": sum(result.skipped.values()),
        "skipped": result.skipped,
        "source_problems": result.source_problems,
        "shards": {"total": len(shards), "done": len(done), "reused": len(reused)},
        "rate_cutouts_per_s": round(result.rate, 3),
        "scan_seconds": round(scan_seconds, 3),
        "wall_s": round(wall, 3),
        "candidates": str(parquet_path),
        "top": head,
        **{k: meta[k] for k in ("models", "data", "lensfinder_version")},
    }
    atomic_write_text(out / SUMMARY, json.dumps(report, indent=2) + "\n")
    return result
