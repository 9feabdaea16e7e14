"""Survey-scale scanning: shards on Dask, Parquet per shard, resumable, one ranked catalogue.

``scan`` splits the source into contiguous shards, keeps a bounded number of them in flight on a
Dask cluster (a LocalCluster it starts, or an existing scheduler), and merges the shard files into
``candidates.parquet``/``.csv`` ranked by score. The client holds only shard summaries, so its
memory does not grow with the survey; workers read their own cutouts from the path.

Start-up is kept short and reported apart from the scanning rate (``summary.json``,
``startup``): the shard size follows the data size and the worker threads (every worker busy on
a small scan too); the client exports (or quantises) each model's ONNX file once, cached beside
the model, while the cluster starts and its workers import torch; each worker then loads the
file once, whatever the number of shards.

A small scan (fewer cutouts than ``local_below``, no scheduler given) starts no cluster: this
process scores the same shards itself, as many at once as the cluster would have worker threads
(ONNX backends; threads sharing the models, each on its share of the cores, so the steady rate
is the cluster's), loads the models as a worker does, and writes the same shard files, summary
and catalogue; ``summary.json`` says which ran (``runner``).

Re-running the same command resumes: complete shard files are reused, missing or corrupt ones
are redone. ``scan.json`` records what made the directory (model and data fingerprints, the shard
size used, the scoring settings); a run with other ones is refused rather than mixed in. An
automatic shard size resumes with the size recorded there, however many workers run now.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lensfinder import __version__
from lensfinder.config import PredictConfig, ScanConfig, to_dict
from lensfinder.data import open_source
from lensfinder.data.challenge import reason_kind, summarise_problems
from lensfinder.data.cutouts import CutoutSource
from lensfinder.data.tile_source import TileSource, open_tiles
from lensfinder.ensemble import expand_models
from lensfinder.errors import ConfigError, DataError, LensfinderError
from lensfinder.files import atomic_write_text
from lensfinder.machine import available_cores
from lensfinder.predict.onnx_cache import PRECISION_OF_BACKEND, lookup, source_calibration
from lensfinder.predict.onnx_files import files_fingerprint
from lensfinder.safety import SCAN
from lensfinder.scan.catalog import merge_shards, read_shard, table_meta
from lensfinder.scan.shards import (
    SHARD_DIR,
    Shard,
    ShardTask,
    auto_shard_size,
    ids_fingerprint,
    plan_shards,
    release_cached,
    score_shard,
)
from lensfinder.stages import Stage, progress_bar, run_stage

MANIFEST = "scan.json"
SCAN_KIND = SCAN  # the output marker's kind
SUMMARY = "summary.json"
# Settings that change scores: resuming with others would mix two catalogues in one.
_SCORING_KEYS = ("tta", "ensemble_average", "torch_precision")
# What a scan made before a setting existed used its default (an old scan.json resumes).
_SCORING_DEFAULTS = {"precision": "float32", "torch_precision": "auto"}  # older scans
# Imported by each LocalCluster worker as it starts (see the module): the heavy imports while
# the client prepares the models, and a quick exit once the worker has closed.
_WORKER_PRELOAD = ["lensfinder.scan.worker"]
# What scores the shards (summary.json's ``runner``).
IN_PROCESS, LOCAL_CLUSTER, SCHEDULER = "in-process", "local-cluster", "scheduler"


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
    shard_size: int = 0
    startup: dict[str, Any] = field(default_factory=dict)  # see _startup
    steady_rate: float = 0.0  # cutouts/s once the workers had loaded (see _steady_rate)
    runner: str = ""  # what scored the shards (IN_PROCESS...); "none": all were reused

    def summary(self) -> str:
        lines = [
            f"scanned {self.n_scored} of {self.n_objects} cutouts -> {self.candidates}",
            f"shards: {self.shards_done} done, {self.shards_reused} reused, "
            f"{self.shards_total} in all of {self.shard_size}; {self.wall_s:.1f} s"
            + (f", {self.rate:.1f} cutouts/s" if self.shards_done else ""),
        ]
        if self.shards_done and self.startup:
            cache = ", ".join(sorted({f["cache"] for f in self.startup.get("onnx_files", [])}))
            where = (
                "in this process"
                if self.runner == IN_PROCESS
                else f"cluster {self.startup['cluster_s']:.1f} s"
            )
            lines.append(
                f"start-up {self.startup['until_scoring_s']:.1f} s ({where}, "
                f"models {self.startup['models_s']:.1f} s"
                + (f", ONNX cache: {cache}" if cache else "")
                + f"); then {self.steady_rate:.1f} cutouts/s"
            )
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


def _manifest(
    models: list[Path],
    data: Path,
    data_key: str,
    content_key: str,
    cfg: ScanConfig,
    shard_size: int,
    catalog: Path | None = None,
) -> dict[str, Any]:
    predict = to_dict(cfg.predict)
    return {
        "models": [str(m) for m in models],
        "model_fingerprints": [files_fingerprint(m) for m in models],
        "data": str(data),
        # a scan from tiles: the catalogue (``data`` is the tiles directory); the gallery
        # reads the candidates back from both, cut with config["cutouts"]
        **({"catalog": str(catalog)} if catalog is not None else {}),
        "data_fingerprint": data_key,
        "data_content": content_key,
        "shard_size": shard_size,  # the size used (automatic or not): a resume keeps it
        "scoring": {
            **{k: predict[k] for k in _SCORING_KEYS},
            "precision": PRECISION_OF_BACKEND.get(cfg.predict.backend, "float32"),
        },
        "config": to_dict(cfg),
    }


def _old_manifest(out: Path) -> dict[str, Any] | None:
    """The manifest of the scan whose shards ``out`` holds; None when it holds none."""
    if not any((out / SHARD_DIR).glob("shard-*.parquet")):
        return None  # nothing scored yet (e.g. a first try failed): nothing to mix with
    path = out / MANIFEST
    if not path.exists():
        raise ConfigError(
            f"{out}: holds shard files but no {MANIFEST}; cannot tell how they were made "
            "(use a new --out)"
        )
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable scan manifest ({exc}); use a new --out") from None
    if not isinstance(old, dict):
        raise DataError(f"{path}: not a scan manifest; use a new --out")
    return old


def _check_resume(out: Path, old: dict[str, Any] | None, manifest: dict[str, Any]) -> None:
    """Refuse to add shards to a directory that another scan made."""
    if old is None:
        return
    old = {**old, "scoring": {**_SCORING_DEFAULTS, **(old.get("scoring") or {})}}
    checks = {
        "model_fingerprints": "models",
        "data": "data path",
        "data_fingerprint": "objects in the data",
        "data_content": "data content (pixels, catalogue or labels changed since)",
        "shard_size": "shard size",
        "scoring": "scoring settings (tta, ensemble_average, torch or ONNX precision)",
    }
    for key, what in checks.items():
        if old.get(key) != manifest[key]:
            raise ConfigError(
                f"{out / MANIFEST}: this directory holds a scan made with other {what} "
                f"({old.get(key)!r} here, {manifest[key]!r} now); use a new --out or delete it"
            )


def _shard_size(
    cfg: ScanConfig, old: dict[str, Any] | None, n: int, cluster: _Cluster
) -> tuple[int, str]:
    """The shard size and where it came from: the config; else the size of the scan being
    resumed (its shard files are reused only with the same ranges); else automatic."""
    if cfg.shard_size is not None:
        return cfg.shard_size, "config"
    recorded = (old or {}).get("shard_size")
    if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded >= 1:
        return recorded, "resumed scan"
    return auto_shard_size(n, cluster.threads(), cfg.predict.batch_size), "auto"


class _Cluster:
    """The Dask client, started on first use (a resumed scan with nothing left to do starts
    none); remembers how long the start took. A small scan without a scheduler starts none
    (``runner`` in-process): this process scores its shards."""

    def __init__(self, cfg: ScanConfig, scheduler: str | None, stack: contextlib.ExitStack, n: int):
        self.cfg, self.scheduler, self.stack = cfg, scheduler, stack
        self.seconds = 0.0
        self._started: tuple[Any, int | None] | None = None
        self.runner = SCHEDULER if scheduler else LOCAL_CLUSTER
        if not scheduler and n < cfg.local_below:
            self.runner = IN_PROCESS

    def in_process_shards(self) -> int:
        """Shards an in-process scan scores at once, one thread each: as many as a LocalCluster
        would have worker threads (at most the cores), each on its share of the cores, so the
        rate is the cluster's (ONNX Runtime and torch release the GIL). The torch backend scores
        one at a time on every core (BN method 2 switches a shared model's mode per batch)."""
        if self.cfg.predict.backend not in PRECISION_OF_BACKEND:
            return 1
        return max(1, min(self.cfg.workers * self.cfg.threads_per_worker, available_cores()))

    def start(self) -> tuple[Any, int | None]:
        """``(client, torch threads per task)``, as ``_dask_client`` yields them; in-process:
        no client, this process's cores shared among the shards scored at once."""
        if self.runner == IN_PROCESS:
            return None, max(1, available_cores() // self.in_process_shards())
        if self._started is None:
            began = time.perf_counter()
            self._started = self.stack.enter_context(_dask_client(self.cfg, self.scheduler))
            self.seconds = time.perf_counter() - began
        return self._started

    def threads(self) -> int:
        """Worker threads in all: from the config for a LocalCluster (not started for this; an
        in-process scan plans the shards a LocalCluster would), from the scheduler for an
        external one."""
        if self.scheduler is None:
            return self.cfg.workers * self.cfg.threads_per_worker
        client, _ = self.start()
        return max(1, sum(client.nthreads().values()))


def _prepare_models(
    models: list[Path], cfg: PredictConfig, source: Any, content_key: str
) -> list[dict[str, Any]]:
    """Export (and for int8 quantise, calibrated on the scanned data) each model's ONNX file
    once, here, before any worker needs it; workers then load the cached file. Nothing to do
    for the torch backend."""
    precision = PRECISION_OF_BACKEND.get(cfg.backend)
    if precision is None:
        return []
    calibration = source_calibration(source, content_key) if precision == "int8" else None
    infos = []
    for model in models:
        cached = lookup(model, precision, calibration)
        if cached is None:  # only a build needs torch: a cache hit leaves the client light
            from lensfinder.predict.onnx_build import prepare

            cached = prepare(model, precision, calibration)
        infos.append(cached.info())
    return infos


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
    torch_threads = max(1, available_cores() // (cfg.workers * cfg.threads_per_worker))
    import dask

    settings = {
        # Dask sets MALLOC_TRIM_THRESHOLD_=65536 in its workers, which halves inference speed
        # here (measured: 100 -> 167-193 cutouts/s for one worker without it); memory stays
        # flat anyway.
        "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
        # Its statistical profiler samples every worker thread 100 times a second for the
        # dashboard, which a scan does not start: ~5% of each worker's core.
        "distributed.worker.profile.enabled": False,
        # Timers that wake every process's event loop between a scan's shards: its tick (a
        # latency metric, 50 times a second), the system monitor (dashboard figures) and the
        # memory monitor (a scan's memory is flat: chunk by chunk). At their defaults a busy
        # worker spends 17 ms of CPU a second beside its task, ~0.05 ms per cutout (measured
        # on 2 cores: 2.6 ms a second with these).
        "distributed.admin.tick.interval": "1s",
        "distributed.admin.system-monitor.interval": "5s",
        "distributed.worker.memory.monitor-interval": "1s",
    }
    with dask.config.set(settings):
        cluster = LocalCluster(
            n_workers=cfg.workers,
            threads_per_worker=cfg.threads_per_worker,
            processes=True,
            memory_limit=cfg.memory_limit,
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": ":0"},  # no dashboard; a free port
            silence_logs=quiet,
            preload=_WORKER_PRELOAD,
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
    """Objects the reader left out, by kind of reason (``reason_kind``: a tile's "outside
    every tile (RA ..., Dec ...)" counts as "outside every tile", whatever the position)."""
    problems = Counter(
        reason_kind(str(getattr(p, "reason", p))) for p in getattr(source, "problems", [])
    )
    return dict(problems.most_common())


def _open_scanned(data: Path, catalog: Path | None, cfg: ScanConfig) -> CutoutSource:
    """What a scan reads: a store or a layout, or with ``catalog`` the catalogue's objects
    on the tiles under ``data``; DataError when nothing can be scanned."""
    if catalog is not None:
        source: CutoutSource = open_tiles(data, catalog, cfg.cutouts)
    else:
        source = open_source(data, keep_unlisted=True)
    if len(source) == 0:
        raise DataError(
            f"{catalog or data}: no cutout can be scanned; "
            f"{summarise_problems(list(source.problems))}"
        )
    return source


def _run_shards(
    client: Any,
    tasks: Sequence[ShardTask] | Iterator[ShardTask],
    show_progress: bool,
    total: int | None = None,
) -> list[dict[str, Any]]:
    """Keep at most a few shards per worker thread in flight; stop cleanly on the first error.

    A bounded queue keeps the scheduler's state (and the client's) small however many shards
    the survey has; each finished future is dropped as soon as its summary is read. Each
    summary gets ``received_at`` (epoch seconds), for the start-up report.
    """
    from distributed import as_completed

    if total is None and isinstance(tasks, Sequence):
        total = len(tasks)
    window = max(4, 2 * sum(client.nthreads().values()))
    pending = iter(tasks)
    failure: tuple[Shard, BaseException] | None = None

    shard_of: dict[str, Shard] = {}

    def submit(task: ShardTask):
        key = f"{task.shard.name}-{uuid.uuid4().hex[:12]}"
        shard_of[key] = task.shard
        return client.submit(score_shard, task, key=key, pure=False)

    first = [submit(t) for _, t in zip(range(window), pending, strict=False)]
    queue = as_completed(first)
    bar = progress_bar(queue, total=total, desc="scan", unit="shard") if show_progress else queue
    finished = _Finished(bar)
    for future in bar:
        shard = shard_of.pop(future.key)
        try:
            summary = future.result()
        except Exception as exc:  # stop submitting; in-flight shards still finish and are kept
            failure = failure or (shard, exc)
            summary = None
        future.release()
        if summary is not None:
            finished.add(summary)
        if failure is None:
            task = next(pending, None)
            if task is not None:
                queue.add(submit(task))
    if show_progress and hasattr(bar, "close"):
        bar.close()
    if failure is not None:
        raise _shard_failure(*failure, len(finished.done), " on a worker")
    return finished.done


def _run_in_process(
    tasks: Iterator[ShardTask], show_progress: bool, total: int, at_once: int = 1
) -> list[dict[str, Any]]:
    """Score the shards in this process (``score_shard``, as a worker does), ``at_once`` at a
    time in threads sharing the models; stop on the first error (the shards in flight finish,
    every finished shard file is kept). The torch thread count is put back and the models let
    go afterwards."""
    import torch  # the Predictor's import anyway

    threads = torch.get_num_threads()
    pending = iter(tasks)
    bar = progress_bar(iter(()), total=total, desc="scan", unit="shard") if show_progress else None
    finished = _Finished(bar)
    failure: tuple[Shard, BaseException] | None = None
    try:
        with ThreadPoolExecutor(at_once, thread_name_prefix="lensfinder-shard") as pool:
            running = {
                pool.submit(score_shard, t): t.shard for t in itertools.islice(pending, at_once)
            }
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    shard = running.pop(future)
                    try:
                        finished.add(future.result())
                    except Exception as exc:  # in-flight shards still finish and are kept
                        failure = failure or (shard, exc)
                    if bar is not None:
                        bar.update(1)
                    task = next(pending, None) if failure is None else None
                    if task is not None:
                        running[pool.submit(score_shard, task)] = task.shard
    finally:
        if bar is not None:
            bar.close()
        torch.set_num_threads(threads)
        release_cached()
    if failure is not None:
        raise _shard_failure(*failure, len(finished.done)) from None
    return finished.done


class _Finished:
    """The summaries of the shards finished, each stamped ``received_at`` (epoch seconds, for
    the start-up report), and the rate so far on the progress bar."""

    def __init__(self, bar: Any):
        self.bar, self.began, self.cutouts = bar, time.perf_counter(), 0
        self.done: list[dict[str, Any]] = []

    def add(self, summary: dict[str, Any]) -> None:
        summary["received_at"] = time.time()
        self.done.append(summary)
        self.cutouts += _cutouts(summary)
        if hasattr(self.bar, "set_postfix_str"):
            rate = self.cutouts / max(time.perf_counter() - self.began, 1e-9)
            self.bar.set_postfix_str(f"{rate:.1f} cutouts/s")


def _shard_failure(shard: Shard, error: BaseException, kept: int, where: str = "") -> Exception:
    """What a failed shard stops the scan with: a lensfinder error as it is, anything else one
    line naming the shard and the error."""
    if isinstance(error, LensfinderError):
        return error
    return DataError(
        f"{shard.name}: failed{where} ({type(error).__name__}: {error}); "
        f"{kept} finished shards are kept, re-run to resume"
    )


def scan(
    models: list[Path],
    data: Path,
    out: Path,
    cfg: ScanConfig | None = None,
    scheduler: str | None = None,
    progress: bool = True,
    catalog: Path | None = None,
) -> ScanResult:
    """Score every cutout of ``data`` with ``models``; write a ranked candidate catalogue.

    ``catalog``: scan straight from mosaic tiles: ``data`` is then a directory of MER tiles,
    and each shard's worker cuts its rows of one tile (``cfg.cutouts``: column names,
    selection, flag mask) as ``lensfinder cutouts`` would, without writing a store.

    Resumable: re-run the same command after an interruption and finished shards are reused.
    ``scheduler``: a Dask scheduler address (``tcp://host:8786``) or scheduler file; its workers
    must see ``models``, ``data`` and ``out`` at the same paths (a shared file system). Without
    one a LocalCluster of ``cfg.workers`` processes is started: from a script, call ``scan``
    under ``if __name__ == "__main__":``, as for any multiprocessing code.
    """
    cfg = cfg or ScanConfig()
    if not models:
        raise ConfigError("scan needs at least one model run directory (--model)")
    models = [Path(m).expanduser().resolve() for m in expand_models(models)]
    data, out = Path(data).expanduser().resolve(), Path(out).expanduser().resolve()
    catalog = None if catalog is None else Path(catalog).expanduser().resolve()
    inputs = [data, *models, *([catalog] if catalog else [])]
    with run_stage("scan", SCAN_KIND, out, inputs, progress=progress) as stage:
        return stage.finish(_scan_locked(models, data, cfg, scheduler, stage, catalog))


@dataclass
class _ScanPlan:
    """What a scan will do in its output: the data's keys, the shards, the ones kept."""

    source: Any
    manifest: dict[str, Any]
    shard_size: int
    shard_size_from: str
    shards: list[Shard]
    reused: dict[Shard, dict[str, Any]]

    @property
    def todo(self) -> list[Shard]:
        return [s for s in self.shards if s not in self.reused]


@dataclass
class _Scoring:
    """What scoring the shards left to do took (all zero when none was left)."""

    done: list[dict[str, Any]] = field(default_factory=list)
    onnx_files: list[dict[str, Any]] = field(default_factory=list)
    scan_seconds: float = 0.0
    models_seconds: float = 0.0
    cluster_seconds: float = 0.0
    submitted_at: float = 0.0
    shutdown_s: float = 0.0  # closing the cluster
    runner: str = "none"  # IN_PROCESS, LOCAL_CLUSTER, SCHEDULER; "none": all were reused


def _scan_locked(
    models: list[Path],
    data: Path,
    cfg: ScanConfig,
    scheduler: str | None,
    stage: Stage,
    catalog: Path | None = None,
) -> ScanResult:
    """``scan`` once it holds the lock of ``stage.out``: plan, score what is left, write."""
    began_at = time.time() - stage.seconds
    source = _open_scanned(data, catalog, cfg)
    scoring = _Scoring()
    with contextlib.ExitStack() as stack:
        cluster = _Cluster(cfg, scheduler, stack, len(source))
        plan = _plan_scan(models, data, stage.out, cfg, source, cluster, catalog)
        if plan.todo:
            scoring = _score_shards(plan, models, data, stage.out, cfg, cluster, stage.progress)
        closing = time.perf_counter()  # the cluster closes as the stack unwinds
    scoring.shutdown_s = time.perf_counter() - closing
    scoring.cluster_seconds = cluster.seconds
    scoring.runner = cluster.runner if plan.todo else "none"
    return _write_scan(plan, scoring, models, data, cfg, stage, began_at)


def _plan_scan(
    models: list[Path],
    data: Path,
    out: Path,
    cfg: ScanConfig,
    source: Any,
    cluster: _Cluster,
    catalog: Path | None = None,
) -> _ScanPlan:
    """The shards (from tiles: none crossing from one tile to the next) and the manifest
    (written: a resume is checked against it), half-written shard files removed and complete
    ones kept."""

    data_key = ids_fingerprint(np.asarray(source.ids))
    content_key = source.content_fingerprint()
    old = _old_manifest(out)
    shard_size, shard_size_from = _shard_size(cfg, old, len(source), cluster)
    manifest = _manifest(models, data, data_key, content_key, cfg, shard_size, catalog)
    _check_resume(out, old, manifest)
    (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    _remove_partial_shards(out)
    breaks = source.tile_starts() if isinstance(source, TileSource) else []
    shards = plan_shards(len(source), shard_size, breaks)
    reused = _complete_shards(shards, out)
    return _ScanPlan(source, manifest, shard_size, shard_size_from, shards, reused)


def _score_shards(
    plan: _ScanPlan,
    models: list[Path],
    data: Path,
    out: Path,
    cfg: ScanConfig,
    cluster: _Cluster,
    show_progress: bool,
) -> _Scoring:
    """Score the shards left to do on the cluster, started here, or in this process."""
    scoring = _Scoring()
    content_key = plan.manifest["data_content"]
    if cluster.runner == IN_PROCESS:
        # This process loads the models as a worker does (its ONNX file opened and checked
        # in one go, built only if missing): a separate check here would import onnx first.
        client, torch_threads = cluster.start()
    else:
        # The models' ONNX files are made here while the cluster starts (and its workers
        # import torch): both take seconds, and neither needs the other.
        with ThreadPoolExecutor(1, thread_name_prefix="lensfinder-prepare") as pool:
            prepared = pool.submit(
                _timed, _prepare_models, models, cfg.predict, plan.source, content_key
            )
            client, torch_threads = cluster.start()
            scoring.onnx_files, scoring.models_seconds = prepared.result()
    tiles = plan.source if isinstance(plan.source, TileSource) else None
    calibration = source_calibration(plan.source, content_key).spec if tiles else ""
    # made as they are submitted: a scan from tiles puts its shard's rows in each task
    tasks = (
        ShardTask(
            models=tuple(str(m) for m in models),
            models_key=",".join(plan.manifest["model_fingerprints"]),
            data=str(data),
            data_key=plan.manifest["data_fingerprint"],
            predict=to_dict(cfg.predict),
            shard=shard,
            out=str(out),
            torch_threads=torch_threads,
            lensfinder_version=__version__,
            data_content=content_key,
            tile_rows=tiles.rows(shard.start, shard.stop) if tiles else None,
            calibration_spec=calibration,
            shares_process=client is None and cluster.in_process_shards() > 1,
        )
        for shard in plan.todo
    )
    started = time.perf_counter()
    scoring.submitted_at = time.time()
    if client is None:
        scoring.done = _run_in_process(
            tasks, show_progress, len(plan.todo), cluster.in_process_shards()
        )
        loaded = [s for s in scoring.done if "onnx_files" in s]  # the shard that loaded them
        if loaded and cfg.predict.backend in PRECISION_OF_BACKEND:
            scoring.onnx_files = loaded[0]["onnx_files"]
        scoring.models_seconds = max((float(s["load_s"]) for s in loaded), default=0.0)
    else:
        scoring.done = _run_shards(client, tasks, show_progress, total=len(plan.todo))
    scoring.scan_seconds = time.perf_counter() - started
    return scoring


def _write_scan(
    plan: _ScanPlan,
    scoring: _Scoring,
    models: list[Path],
    data: Path,
    cfg: ScanConfig,
    stage: Stage,
    began_at: float,
) -> ScanResult:
    """Merge every shard into the ranked catalogue; write ``summary.json``; the result."""
    out, done = stage.out, scoring.done
    summaries = list(plan.reused.values()) + done
    skipped: Counter[str] = Counter()
    for s in summaries:
        skipped.update(s.get("skipped", {}))
    meta = _catalogue_meta(summaries, models, data, len(plan.source))
    merging = time.perf_counter()
    parquet_path, csv_path, n_rows = merge_shards(_shard_tables(plan.shards, out), out, meta)
    _remove_partial_shards(out)  # a worker killed mid-shard in this run (its shard was redone)

    import pyarrow.parquet as pq

    head = pq.read_table(parquet_path, columns=["rank", "id", "score"]).slice(0, 10).to_pylist()
    startup: dict[str, Any] = {}
    if done:
        startup = _startup(
            done, began_at, scoring.submitted_at, scoring.cluster_seconds, scoring.models_seconds
        )
        startup["onnx_files"] = scoring.onnx_files
    result = ScanResult(
        out=out,
        candidates=parquet_path,
        candidates_csv=csv_path,
        n_objects=len(plan.source),
        n_scored=n_rows,
        skipped=dict(skipped),
        source_problems=_count_problems(plan.source),
        shards_total=len(plan.shards),
        shards_done=len(done),
        shards_reused=len(plan.reused),
        wall_s=stage.seconds,
        rate=sum(_cutouts(s) for s in done) / scoring.scan_seconds
        if scoring.scan_seconds > 0
        else 0.0,
        top=head,
        shard_size=plan.shard_size,
        startup=startup,
        steady_rate=_steady_rate(done),
        runner=scoring.runner,
    )
    report = _scan_summary(result, plan, scoring, cfg, meta, time.perf_counter() - merging)
    atomic_write_text(out / SUMMARY, json.dumps(report, indent=2) + "\n")
    return result


def _catalogue_meta(
    summaries: list[dict[str, Any]], models: list[Path], data: Path, n_objects: int
) -> dict[str, Any]:
    """The catalogue's metadata: the models (as the workers described them), data, version."""
    models_info: list[dict[str, Any]] = next(
        (s["models"] for s in summaries if s.get("models")), []
    )
    return {
        "models": [
            {**info, "path": str(path)}
            for info, path in zip(models_info or [{}] * len(models), models, strict=False)
        ],
        "data": str(data),
        "lensfinder_version": __version__,
        "n_objects": n_objects,
    }


def _scan_summary(
    result: ScanResult,
    plan: _ScanPlan,
    scoring: _Scoring,
    cfg: ScanConfig,
    meta: dict[str, Any],
    merge_s: float,
) -> dict[str, Any]:
    """``summary.json``: counts, rates, start-up and where the catalogue is."""
    processed = sum(_cutouts(s) for s in scoring.done)
    cpu_s = sum(float(s.get("cpu_s", 0.0)) for s in scoring.done)
    task_cpu_s = sum(float(s.get("task_cpu_s", 0.0)) for s in scoring.done)
    wall = result.wall_s
    return {
        "n_objects": result.n_objects,
        "n_scored": result.n_scored,
        "n_skipped": sum(result.skipped.values()),
        "skipped": result.skipped,
        "source_problems": result.source_problems,  # by kind; from tiles: not cut from any
        **({"catalog": plan.manifest["catalog"]} if "catalog" in plan.manifest else {}),
        "shards": {
            "total": result.shards_total,
            "done": result.shards_done,
            "reused": result.shards_reused,
        },
        "shard_size": plan.shard_size,
        "shard_size_from": plan.shard_size_from,
        "backend": cfg.predict.backend,
        "runner": scoring.runner,  # in-process, local-cluster, scheduler; none: all reused
        "rate_cutouts_per_s": round(result.rate, 3),
        "steady_rate_cutouts_per_s": round(result.steady_rate, 3),
        "whole_rate_cutouts_per_s": round(processed / wall, 3) if wall > 0 else 0.0,
        # Worker CPU per cutout while scoring (exact with one thread per worker): the steady
        # cost, which other processes on shared cores do not change as they change rates.
        "steady_cpu_ms_per_cutout": round(1000 * cpu_s / processed, 3) if processed else None,
        # Of which the shards' own threads (reading, preprocessing, inference, Parquet).
        "steady_task_cpu_ms_per_cutout": round(1000 * task_cpu_s / processed, 3)
        if processed
        else None,
        "scan_seconds": round(scoring.scan_seconds, 3),
        "wall_s": round(wall, 3),
        "startup": result.startup,
        "shutdown_s": round(scoring.shutdown_s, 3),
        "merge_s": round(merge_s, 3),
        "candidates": str(result.candidates),
        "top": result.top,
        **{k: meta[k] for k in ("models", "data", "lensfinder_version")},
    }


def _timed(func: Any, *args: Any) -> tuple[Any, float]:
    began = time.perf_counter()
    return func(*args), time.perf_counter() - began


def _cutouts(summary: dict[str, Any]) -> int:
    """Cutouts a shard went through, scored or skipped."""
    return int(summary["n_scored"]) + sum(summary["skipped"].values())


def _steady_rate(done: list[dict[str, Any]]) -> float:
    """Cutouts/s of the cluster once started: each worker's cutouts over the time from the start
    of its first shard's scoring (its models loaded) to the end of its last shard, summed over
    the workers. Free of start-up, with every per-shard cost (reading, Parquet, Dask) in."""
    by_worker: dict[str, list[dict[str, Any]]] = {}
    for summary in done:
        if "began_at" in summary and "ended_at" in summary:
            by_worker.setdefault(str(summary.get("worker")), []).append(summary)
    total = 0.0
    for shards in by_worker.values():
        span = max(s["ended_at"] for s in shards) - min(s["began_at"] for s in shards)
        if span > 0:
            total += sum(_cutouts(s) for s in shards) / span
    return total


def _startup(
    done: list[dict[str, Any]],
    began_at: float,
    submitted_at: float,
    cluster_s: float,
    models_s: float,
) -> dict[str, Any]:
    """Where the time before steady scanning went (seconds): the cluster's start (with the
    workers' imports), the client's model preparation (ONNX export, quantisation or cache
    check; run during the cluster start), each worker's load of the data and models (once per
    worker), the first shard back, and the whole wait until the first shard was scoring."""
    loads: dict[str, float] = {}
    for summary in done:
        worker = str(summary.get("worker"))
        loads[worker] = max(loads.get(worker, 0.0), float(summary.get("load_s", 0.0)))
    first_scoring = min((s["began_at"] for s in done if "began_at" in s), default=submitted_at)
    first_back = min(s["received_at"] for s in done)
    return {
        "cluster_s": round(cluster_s, 3),
        "models_s": round(models_s, 3),
        "submit_after_s": round(submitted_at - began_at, 3),
        "worker_load_s": {w: round(v, 3) for w, v in sorted(loads.items())},
        "first_shard_s": round(first_back - submitted_at, 3),
        "until_scoring_s": round(first_scoring - began_at, 3),
    }
