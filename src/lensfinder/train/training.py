"""``train``: a store and a TrainConfig in, a run directory out.

The run directory holds ``model.safetensors`` + ``model.json`` (the model file every later stage
reads), ``metrics.csv`` (Lightning's CSV log, one row per logged epoch value), ``config.yaml``
(the resolved config) and ``last.ckpt`` (Lightning's checkpoint, for resuming).

Resume: re-running the same command continues from ``last.ckpt``. That file is a torch pickle
archive (Lightning's format); it is loaded with ``weights_only=True``, which only accepts tensors
and plain containers and never runs code, and our callbacks keep their state in exactly those.
A run directory whose ``config.yaml`` differs from the requested config (other than
``max_epochs`` and where/how it runs: devices, nodes, accelerator, workers) is refused rather than
silently mixed. A finished run is not retrained: raise ``max_epochs`` to continue it, or pass
``resume=False`` to start afresh.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import signal
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from lensfinder import __version__, stages
from lensfinder.config import (
    TrainConfig,
    flat_settings,
    load_config,
    save_config,
    to_dict,
)
from lensfinder.data import open_source
from lensfinder.data.identity import data_record
from lensfinder.errors import ConfigError, ModelFileError
from lensfinder.files import atomic_path, torch_load_refusal
from lensfinder.models.checkpoint import save_model
from lensfinder.models.meta import read_meta
from lensfinder.safety import TRAIN
from lensfinder.stages import run_stage
from lensfinder.train import hard_negatives
from lensfinder.train.adapt import (
    UnpaintedHoldback,
    adabn_judgement,
    field_adaptation,
    finish_adaptation,
    paint_field,
    painted_record,
    painted_store_path,
)
from lensfinder.train.callbacks import (
    AtomicLastCheckpoint,
    AurocDropStopping,
    BatchSizeGrowth,
    EpochHistory,
)
from lensfinder.train.datamodule import LensDataModule
from lensfinder.train.devices import (
    check_devices,
    prepare_cpu_for_training,
    resolve_precision,
    uses_cuda,
)
from lensfinder.train.hard_negatives import MinedSet, check_hard_negatives
from lensfinder.train.module import LensClassifier, initial_model, regularisation
from lensfinder.train.time_budget import (
    PLAN_FILE,
    AfterFirstPass,
    EpochReplan,
    TimeBudget,
    mining_plan,
    replans,
)
from lensfinder.train.weight_averaging import (
    averaging_record,
    weight_averaging_callback,
)

CONFIG_FILE = "config.yaml"
CHECKPOINT_FILE = "last.ckpt"
METRICS_FILE = "metrics.csv"
# Fields that may change between an interrupted run and its resumption.
RESUMABLE_FIELDS = frozenset({"max_epochs", "num_workers", "devices", "num_nodes", "accelerator"})
# Files a run writes; only these are removed when starting afresh in an existing directory.
RUN_FILES = (
    CHECKPOINT_FILE, f"{CHECKPOINT_FILE}.tmp", METRICS_FILE, "hparams.yaml", CONFIG_FILE,
    "model.safetensors", "model.json", PLAN_FILE,
)  # fmt: skip


@dataclass
class TrainResult:
    """What a training run produced; ``summary()`` is what the CLI prints."""

    run_dir: Path
    epochs: int
    best_epoch: int
    best_val_auroc: float
    val_auroc_history: list[float]
    images_per_s: float
    stopped: str
    resumed_from_epoch: int | None = None
    already_trained: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)
    dropped: dict[str, Any] = field(default_factory=dict)  # ``LensDataModule.dropped``
    notes: list[str] = field(default_factory=list)  # further lines for the summary

    @classmethod
    def from_metrics(cls, run_dir: Path, metrics: dict[str, Any], **kwargs: Any) -> TrainResult:
        return cls(
            run_dir=run_dir,
            epochs=int(metrics["epochs"]),
            best_epoch=int(metrics["best_epoch"]),
            best_val_auroc=float(metrics["best_val_auroc"]),
            val_auroc_history=[float(v) for v in metrics["val_auroc_history"]],
            images_per_s=float(metrics["images_per_s"]),
            stopped=str(metrics["stopped"]),
            metrics=metrics,
            **kwargs,
        )

    def summary(self) -> str:
        if self.already_trained:
            head = "already trained (raise max_epochs to continue, --no-resume to start afresh)"
        else:
            head = f"trained {self.epochs} epochs"
            if self.resumed_from_epoch is not None:
                head += f" (resumed after epoch {self.resumed_from_epoch})"
        history = " ".join(f"{v:.3f}" for v in self.val_auroc_history)
        lines = [
            f"{self.run_dir}: {head}",
            f"  best val AUROC {self.best_val_auroc:.4f} at epoch {self.best_epoch}; "
            f"stopped: {self.stopped}",
            f"  val AUROC per epoch: {history}",
            f"  training rate: {self.images_per_s:.1f} images/s",
            f"  model: {self.run_dir / 'model.safetensors'} (+ model.json, metrics.csv)",
        ]
        dropped = describe_dropped(self.dropped)
        lines += [f"  left out: {dropped}"] if dropped else []
        return "\n".join(lines + [f"  {note}" for note in self.notes])


def describe_dropped(dropped: dict[str, Any]) -> str:
    """ "3 unreadable objects (unreadable store chunk: 3); 10 the data reader skipped (...)",
    or "" when nothing was left out of training."""

    def counts(reasons: dict[str, int]) -> str:
        return ", ".join(f"{kind}: {n}" for kind, n in reasons.items())

    parts = []
    if dropped.get("n_unreadable"):
        parts.append(
            f"{dropped['n_unreadable']} unusable objects of the training and validation splits "
            f"({counts(dropped.get('unreadable_reasons', {}))})"
        )
    if dropped.get("n_data_problems"):
        parts.append(
            f"{dropped['n_data_problems']} objects the data reader skipped "
            f"({counts(dropped.get('data_problem_reasons', {}))})"
        )
    if dropped.get("n_lenses_outside_rule"):
        parts.append(
            f"{dropped['n_lenses_outside_rule']} lenses outside train_lens_rule "
            f"'{dropped['train_lens_rule']}' (not trained on)"
        )
    return "; ".join(parts)


# -- settings ----------------------------------------------------------------------------------
def check_config(config: TrainConfig) -> None:
    """What the config's own checks (``TrainConfig.validate``, run when it is made) cannot see:
    the devices against this machine and the files it names, in one line before any work."""
    problems = [check_devices(config.devices, config.accelerator)]
    problems += check_hard_negatives(config.hard_negatives)
    if any(problems):
        raise ConfigError(f"train config: {'; '.join(p for p in problems if p)}")


def plateau_callback(config: TrainConfig) -> Any:
    """The one owner of plateau decisions, or None when nothing should happen on a plateau.

    Batch growth on: the batch doubles at each plateau up to ``batch_size_max``. The lr drops by
    ``lr_factor`` at each plateau when ``lr_schedule`` is ``"plateau"``; with ``"cosine"`` or
    ``"constant"`` the lr follows its schedule and plateaus only grow the batch.
    """
    lr_factor = config.lr_factor if config.lr_schedule == "plateau" else 1.0
    max_batch = config.batch_size_max if config.batch_growth else config.batch_size
    if lr_factor == 1.0 and max_batch == config.batch_size:
        return None
    return BatchSizeGrowth(max_batch, config.plateau_patience, lr_factor, lr_min=config.lr_min)


# -- run directory -----------------------------------------------------------------------------
def config_differences(saved: TrainConfig, wanted: TrainConfig) -> list[str]:
    """``key: old -> new`` for every setting that differs, except ``RESUMABLE_FIELDS``."""
    old, new = flat_settings(saved), flat_settings(wanted)
    return [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if key not in RESUMABLE_FIELDS and old.get(key) != new.get(key)
    ]


def _is_finished(out: Path, config: TrainConfig) -> dict[str, Any] | None:
    """The metrics of a finished run in ``out`` that ``config`` would not extend, else None."""
    if not (out / "model.json").is_file():
        return None
    try:
        metrics = read_meta(out).get("metrics") or {}
    except ModelFileError:
        return None
    if "epochs" not in metrics:
        return None
    if metrics.get("stopped_early") or int(metrics["epochs"]) >= config.max_epochs:
        return metrics
    return None


def prepare_run_dir(config: TrainConfig, out: Path, resume: bool) -> Path | None:
    """Check ``out`` against ``config``; returns the checkpoint to resume from, or None.

    ``resume=False`` removes a previous run's files (and only those) first.
    """
    if not resume:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        return None
    saved_path = out / CONFIG_FILE
    checkpoint = out / CHECKPOINT_FILE
    has_run = checkpoint.is_file() or (out / "model.json").is_file()
    if has_run and saved_path.is_file():
        differences = config_differences(load_config(TrainConfig, saved_path), config)
        if differences:
            raise ConfigError(
                f"{out}: holds a run made with another config ({'; '.join(differences)}); use "
                "another --out, or --no-resume to start afresh"
            )
    return checkpoint if checkpoint.is_file() else None


def checkpoint_epoch(checkpoint: Path) -> int:
    """The last finished epoch recorded in a Lightning checkpoint (read with weights_only)."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
        return int(state["epoch"])
    except Exception as exc:  # any unreadable file: a clear message, not a traceback
        raise ModelFileError(
            f"{checkpoint}: cannot resume from it ({torch_load_refusal(exc)}); delete it or "
            "pass --no-resume"
        ) from None


def keep_csv_rows_through(path: Path, last_epoch: int | None) -> list[str]:
    """Trim a previous ``metrics.csv`` to the epochs a checkpoint covers (all of it is dropped
    for a fresh run); returns its header, for the logger to append under."""
    if not path.is_file():
        return []
    if last_epoch is None:
        path.unlink()
        return []
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        header = list(reader.fieldnames or [])
        rows = [r for r in reader if not r.get("epoch") or int(float(r["epoch"])) <= last_epoch]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return header


def make_loggers(out: Path, header: list[str]) -> list[Any]:
    """Lightning's CSV logger writing ``out/metrics.csv`` (appending after a resume) and, when
    tensorboard is installed, a TensorBoard logger in ``out/tensorboard``."""

    class KeepingWriter(ExperimentWriter):
        # Lightning's writer deletes an existing metrics.csv; the caller already trimmed it.
        def _check_log_dir_exists(self) -> None:
            self.metrics_keys = list(header)

    class ResumableCSVLogger(CSVLogger):
        @property
        @rank_zero_experiment
        def experiment(self) -> Any:  # Lightning types it as fabric's writer
            if self._experiment is None:
                self._fs.makedirs(self.root_dir, exist_ok=True)
                self._experiment = KeepingWriter(log_dir=self.log_dir)
            return self._experiment

    loggers: list[Any] = [ResumableCSVLogger(out, name="", version="")]
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        loggers.append(
            TensorBoardLogger(out, name="tensorboard", version="", default_hp_metric=False)
        )
    return loggers


# -- training ----------------------------------------------------------------------------------
def train_inputs(config: TrainConfig, stores: Sequence[str | Path]) -> list[str | Path]:
    """What a training run reads: no output may lie inside or above any of it."""
    extra = (config.init, config.graded, config.graded_data, config.adapt.field)
    return [*stores, *(path for path in extra if path)]


def train(
    config: TrainConfig,
    store: str | Path | Sequence[str | Path],
    out: str | Path,
    resume: bool = True,
    progress: bool = True,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Train a classifier on ``store`` with ``config``; writes the run directory ``out``.

    Accelerator, devices, nodes and precision come from ``config``, so ``devices: 4`` (or
    ``--devices 4 --num-nodes 2``) gives DDP over several GPUs with no other change. Rank 0
    holds the lock of ``out`` for the whole run: a second training into it is refused.
    ``callbacks`` are further Lightning callbacks, run after ours (a benchmark times the bare
    model between epochs with one); they must not change what is trained.
    """
    check_config(config)
    late_flush = prepare_cpu_for_training()  # before torch's threads start: they inherit it
    stores = [Path(store)] if isinstance(store, str | Path) else [Path(s) for s in store]
    # DDP's other processes: rank 0 holds the lock and made the painted field before they start
    follower = rank_zero_only.rank != 0  # type: ignore[attr-defined]  # set by Lightning at import
    inputs = train_inputs(config, stores)
    budget = TimeBudget.start(config)  # counted from here: painting is part of the run
    with run_stage("train", TRAIN, out, inputs, progress=progress, follower=follower) as stage:
        if follower:
            painted = painted_store_path(config, stage.out)
        else:
            painted = paint_field(config, stage.out, stage.progress)
        stores += [painted] if painted else []
        result = _train_locked(
            config, stores, stage.out, resume, stage.progress, callbacks, budget=budget
        )
        if budget is not None and not result.already_trained:
            result.notes.append(budget.describe(budget.elapsed_s()))
        if late_flush and not uses_cuda(config.accelerator):
            result.notes.append(late_flush)
        return stage.finish(result)


@dataclass
class _Fitted:
    """A fitted run: the trainer, the module (best weights restored) and what watched it."""

    trainer: Any
    module: LensClassifier
    stopping: AurocDropStopping
    history: EpochHistory
    precision: str
    field: Any  # the adaptation field's cutouts, or None
    last_epoch: int | None  # the checkpoint's epoch it resumed from


def _train_locked(
    config: TrainConfig,
    store: list[Path],
    out: Path,
    resume: bool,
    progress: bool,
    extra_callbacks: Sequence[Any] = (),
    replay: MinedSet | None = None,
    budget: TimeBudget | None = None,
) -> TrainResult:
    """One training run into ``out``; with ``hard_negatives`` on, its two passes (the second
    one gets the mined ``replay``, added to its training split). With a ``budget`` the (first)
    pass trains the epochs planned for it (``train/time_budget.py``)."""
    if config.hard_negatives.enabled and replay is None:
        return train_with_hard_negatives(
            config, store, out, resume, progress, extra_callbacks, budget
        )

    # Under DDP the other processes re-run this function after rank 0 has prepared ``out``.
    is_rank_zero = rank_zero_only.rank == 0  # type: ignore[attr-defined]
    if is_rank_zero:
        checkpoint = prepare_run_dir(config, out, resume)
    else:
        checkpoint = out / CHECKPOINT_FILE if (out / CHECKPOINT_FILE).is_file() else None
    planner = budget if replay is None else None  # the second pass's epochs are fixed
    planned = planner.reuse(config, out) if planner is not None else None
    if planner is not None and planned is None and not is_rank_zero:
        raise ConfigError(f"{out}: no time plan from rank 0 (time_budget_minutes)")
    config = planned or config
    finished = _is_finished(out, config) if resume else None
    if finished is not None:
        return TrainResult.from_metrics(out, finished, already_trained=True)
    datamodule = _prepared_datamodule(config, store, replay)
    if planner is not None and planned is None:
        done = checkpoint_epoch(checkpoint) + 1 if checkpoint is not None else 0
        config = datamodule.config = planner.make(config, datamodule, out, done)
    if planner is not None and planner.plan is not None and replans(config):
        decides = is_rank_zero and planner.fresh
        extra_callbacks = [EpochReplan(planner, out, decides), *extra_callbacks]
    fitted = _fit(config, out, datamodule, checkpoint, progress, extra_callbacks, is_rank_zero)
    if fitted.module.config.max_epochs != config.max_epochs:  # re-planned as it trained
        config = fitted.module.config  # the datamodule's was changed with it
        if is_rank_zero:
            save_config(config, out / CONFIG_FILE)
    metrics = _metrics(
        fitted.trainer, fitted.stopping, fitted.history, datamodule, fitted.precision
    )
    adapted = None
    if fitted.trainer.is_global_zero:
        plan = budget.plan if budget is not None else None
        adapted = _save_run(config, out, fitted, datamodule, metrics, replay, plan)
    result = TrainResult.from_metrics(
        out, metrics, resumed_from_epoch=fitted.last_epoch, dropped=datamodule.dropped
    )
    judged = adabn_judgement((adapted or {}).get("adabn"))
    result.notes += [judged] if judged else []
    return result


def _prepared_datamodule(
    config: TrainConfig, store: list[Path], replay: MinedSet | None = None
) -> LensDataModule:
    """The data of a pass: split, with the mined ``replay`` added and the field's likeliest
    real lenses held back from its non-lenses."""
    datamodule = LensDataModule(config, store)
    datamodule.prepare()
    if replay is not None:
        replay.add_to(datamodule)
    datamodule.train_label_filter = UnpaintedHoldback.of(config, datamodule)
    return datamodule


def _fit(
    config: TrainConfig,
    out: Path,
    datamodule: LensDataModule,
    checkpoint: Path | None,
    progress: bool,
    extra_callbacks: Sequence[Any],
    is_rank_zero: bool,
) -> _Fitted:
    """Fit the model (from ``checkpoint`` when resuming) and restore its best weights."""
    import lightning.pytorch as pl

    last_epoch = checkpoint_epoch(checkpoint) if checkpoint is not None else None
    header = keep_csv_rows_through(out / METRICS_FILE, last_epoch) if is_rank_zero else []
    out.mkdir(parents=True, exist_ok=True)
    if is_rank_zero:
        save_config(config, out / CONFIG_FILE)
    pl.seed_everything(config.seed, workers=True, verbose=False)
    module = LensClassifier(config, initial_model(config))
    field, module.adaptation = field_adaptation(config, module.model, progress and is_rank_zero)
    stopping = AurocDropStopping(
        config.stop_auroc_drop, config.stop_patience, first_epoch=first_candidate_epoch(config)
    )
    history = EpochHistory()
    precision = resolve_precision(config)
    trainer = _make_trainer(
        config, out, header, precision, [stopping, history], progress, extra_callbacks
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint, weights_only=True)
        except SystemExit:
            # Lightning turns Ctrl-C into sys.exit(1) after a graceful stop (last.ckpt kept);
            # give the CLI its KeyboardInterrupt back so it can say how to resume.
            if trainer.interrupted:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                raise KeyboardInterrupt from None
            raise
    stopping.restore_best(module)
    return _Fitted(trainer, module, stopping, history, precision, field, last_epoch)


def _save_run(
    config: TrainConfig,
    out: Path,
    fitted: _Fitted,
    datamodule: LensDataModule,
    metrics: dict[str, Any],
    replay: MinedSet | None,
    time_plan: dict[str, Any] | None,
) -> dict[str, Any] | None:
    """Adapt to the field when asked (AdaBN runs here), then write the model and model.json;
    returns model.json's ``adapt`` record."""
    adapted = finish_adaptation(config, fitted.module, fitted.field, datamodule)
    if painted_store_path(config, out) is not None:  # the painted field is the last part
        adapted = {
            **(adapted or {"field": config.adapt.field}),
            **painted_record(config, datamodule.parts[-1]),
        }
        holdback = datamodule.train_label_filter
        if isinstance(holdback, UnpaintedHoldback):
            adapted["unpainted_holdback"] = holdback.record()
    meta = _model_meta(config, datamodule, metrics, adapted, replay, time_plan)
    save_model(out, fitted.module.model, meta)
    return adapted


def _make_trainer(
    config: TrainConfig,
    out: Path,
    header: list[str],
    precision: str,
    ours: list[Any],
    progress: bool,
    extra_callbacks: Sequence[Any],
) -> Any:
    """The Lightning Trainer of a run: ``ours`` (early stopping first), the checkpoint, weight
    averaging, batch growth, the progress bar, then the caller's callbacks."""
    callbacks: list[Any] = [*ours, AtomicLastCheckpoint(out)]
    averaging = weight_averaging_callback(config)
    if averaging is not None:  # after early stopping: it keeps the averaged weights as the best
        callbacks.append(averaging)
    growth = plateau_callback(config)
    if growth is not None:
        callbacks.append(growth)
    show_progress = stages.show_progress(progress)
    if show_progress:
        callbacks.append(TQDMProgressBar())
    callbacks.extend(extra_callbacks)
    return pl.Trainer(
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        precision=precision,  # type: ignore[arg-type]
        max_epochs=config.max_epochs,
        callbacks=callbacks,
        logger=make_loggers(out, header),
        default_root_dir=out,
        reload_dataloaders_every_n_epochs=1,
        use_distributed_sampler=False,  # the datamodule shards per rank itself
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        enable_progress_bar=show_progress,
        enable_model_summary=show_progress,
    )


def _model_meta(
    config: TrainConfig,
    datamodule: LensDataModule,
    metrics: dict[str, Any],
    adapted: dict[str, Any] | None,
    replay: MinedSet | None,
    time_plan: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """model.json: how the saved model was made (inputs, settings, data, what it learnt)."""
    return {
        "input": to_dict(config.input),
        "model": to_dict(config.model),
        "label_rule": getattr(datamodule.source, "label_rule", None),
        "train": to_dict(config),
        "regularisation": regularisation(config),
        "split": to_dict(config.split),
        "metrics": metrics,
        "data": {
            **data_record(datamodule.parts[0]),  # evaluate tells its data from others
            "n_train": len(datamodule.train_indices),
            "n_val": len(datamodule.val_indices),
            "n_test": len(datamodule.test_indices),
            "samples_per_epoch": datamodule.samples_per_epoch,
            # ``--data A --data B``: every set (each split by its own IDs); "data" above is A
            "data_sets": [data_record(p) for p in datamodule.parts]
            if len(datamodule.parts) > 1
            else None,
            "dropped": datamodule.dropped,  # left out of training, and why
        },
        "graded": datamodule.graded_record,  # which people's grades were learnt, or None
        "init": str(Path(config.init).resolve()) if config.init else None,
        "adapt": adapted,  # what was learnt from the unlabelled field, or None
        "weight_averaging": averaging_record(config),
        "hard_negatives": replay.record if replay is not None else None,
        # time_budget_minutes: the epochs planned for this machine (of the first pass, when
        # mining), from what was measured before the first epoch
        "time_plan": time_plan,
        "lensfinder_version": __version__,
    }


# -- hard negatives: two passes (train/hard_negatives.py mines between them) -----------------
def train_with_hard_negatives(
    config: TrainConfig,
    store: list[Path],
    out: Path,
    resume: bool,
    progress: bool,
    callbacks: Sequence[Any] = (),
    budget: TimeBudget | None = None,
) -> TrainResult:
    """First pass, mining, second pass (see ``train/hard_negatives.py``); the second pass's
    result. With a time budget that cannot hold both the configured epochs and mining and
    ``short_budget: epochs``, one pass without mining, into ``out`` (``_mining_fits``)."""
    first_dir = out / hard_negatives.FIRST_PASS_DIR
    is_rank_zero = rank_zero_only.rank == 0  # type: ignore[attr-defined]
    if budget is not None and not _mining_fits(config, store, out, budget, resume):
        one_pass = hard_negatives.first_pass_config(config)
        return _train_locked(one_pass, store, out, resume, progress, callbacks, budget=budget)
    second = hard_negatives.second_pass_config(config, first_dir)
    pool = None
    if is_rank_zero:  # refuses another config's run in OUT before anything is trained
        prepare_run_dir(second, out, resume)
        parts = [open_source(path) for path in store]
        pool = hard_negatives.open_pool(config, parts, out, progress)
    first_config = hard_negatives.first_pass_config(config)
    first = _train_locked(
        first_config, store, first_dir, resume, progress, callbacks, budget=budget
    )
    digest = hard_negatives.model_digest(first_dir)
    first_pass = {
        "run_dir": str(first_dir.resolve()),
        "weights_sha256": digest,
        "best_val_auroc": first.best_val_auroc,
        "best_epoch": first.best_epoch,
        "epochs": first.epochs,
    }
    if pool is not None:
        record = hard_negatives.previous_mining(out, config, digest, pool) if resume else None
        if record is not None:
            mined = hard_negatives.mined_set(pool.source, out, record, fresh=False)
        else:
            for name in RUN_FILES:  # a second pass of other negatives must not resume
                (out / name).unlink(missing_ok=True)
            mined = hard_negatives.mine(config, pool, first_dir, out, progress, first_pass)
    else:
        mined = hard_negatives.wait_for_rank_zero(out, digest)
    result = _train_locked(
        second, store, out, resume, progress, callbacks, replay=mined, budget=budget
    )
    record = mined.record
    result.notes.append(
        f"hard negatives: {record['n_nonlenses']} non-lenses (score >= "
        f"{_score_text(record['nonlens_score_min'])}) and {record['n_lenses']} lenses "
        f"(score <= {_score_text(record['lens_score_max'])}) of "
        f"{record['pool']['n_candidates']} pool cutouts, each replayed "
        f"{mined.copies}x; first pass best val AUROC {first.best_val_auroc:.4f} "
        f"({first_dir}); IDs in {out / hard_negatives.MINED_CSV}"
    )
    return result


def _mining_fits(
    config: TrainConfig, store: list[Path], out: Path, budget: TimeBudget, resume: bool
) -> bool:
    """Whether a budgeted run mines (``hard_negatives.short_budget``): rank 0 decides before
    the pool is made (``TimeBudget.plan_mining``, from this machine's rates and a few of the
    pool's objects timed); the plan it chose, saved in ``out`` (one pass) or its first pass's
    directory, answers for a resumed run and for DDP's other processes."""
    one_pass = hard_negatives.first_pass_config(config)
    is_rank_zero = rank_zero_only.rank == 0  # type: ignore[attr-defined]
    if resume or not is_rank_zero:
        if mining_plan(out, one_pass) is False:
            return False
        if mining_plan(out / hard_negatives.FIRST_PASS_DIR, one_pass):
            return True
    if not is_rank_zero:
        raise ConfigError(f"{out}: no time plan from rank 0 (time_budget_minutes)")
    datamodule = _prepared_datamodule(one_pass, store)
    hn = config.hard_negatives
    pool_rows, simulate_s = hard_negatives.planned_pool(config, datamodule.parts, out)
    mining = AfterFirstPass(
        pool_rows=pool_rows,
        views=8 if hn.tta else 1,
        epochs=hn.epochs,
        replayed=(hn.top_nonlenses + hn.bottom_lenses) * hn.replay_copies,
        simulate_s=simulate_s,
    )
    return budget.plan_mining(one_pass, datamodule, mining, hn.short_budget)


def _score_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def first_candidate_epoch(config: TrainConfig) -> int:
    """The first epoch early stopping judges and may keep: after the learning-rate warm-up (its
    validation AUROC swings by 0.1 at a high peak lr, which the drop rule took for a collapse)
    and after progressive resizing's low-resolution epochs; the last epoch always counts."""
    return min(max(config.warmup_epochs, config.low_res_epochs()), config.max_epochs - 1)


def _metrics(
    trainer: Any, stopping: Any, history: Any, datamodule: Any, precision: str
) -> dict[str, Any]:
    """The ``metrics`` section of model.json: best/final values and per-epoch histories."""
    aurocs = history.column("val_auroc")
    return {
        "best_val_auroc": stopping.best,
        "best_epoch": stopping.best_epoch,
        "final_val_auroc": aurocs[-1] if aurocs else None,
        "epochs": len(history.rows),
        "stopped": stopping.stopped_reason or f"max_epochs ({trainer.max_epochs})",
        "stopped_early": stopping.stopped_reason is not None,
        "images_per_s": history.images_per_s(),
        "val_auroc_history": aurocs,
        "val_loss_history": history.column("val_loss"),
        "train_loss_history": history.column("train_loss"),
        "lr_history": history.column("lr"),
        "batch_size_history": history.column("batch_size"),
        "images_per_s_history": history.column("images_per_s"),
        # Seconds spent once computing the model inputs at setup (not in images_per_s), or
        # None where they did not fit in memory and every batch was normalised as drawn.
        "precompute_s": datamodule.precompute_seconds,
        "hardware": {
            "accelerator": type(trainer.accelerator).__name__,
            "devices": trainer.num_devices,
            "nodes": trainer.num_nodes,
            "precision": precision,
            "cpu_count": os.cpu_count(),
        },
    }
