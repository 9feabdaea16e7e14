"""Ensembles in one command: N members that differ only in their seed, used as one model.

Member ``k`` trains with ``seed + k`` (initialisation, sampling, augmentation) but the same
``split`` settings, so every member holds out the same test objects and the ensemble can be
evaluated honestly on them. Members go to ``OUT/member-k`` as ordinary run directories, so each
resumes like any run and a re-run skips the finished ones; ``OUT/ensemble.json`` is written last,
when every member is done, so a half-trained ensemble is never used as a model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lensfinder.config import PredictConfig, TrainConfig, to_dict
from lensfinder.ensemble import ENSEMBLE_FILE, is_ensemble, member_dir, write_ensemble
from lensfinder.errors import ConfigError
from lensfinder.models.checkpoint import META_FILE
from lensfinder.safety import ENSEMBLE
from lensfinder.stages import report, run_stage
from lensfinder.train.adapt import AdaptResult, adapt_only
from lensfinder.train.training import TrainResult, check_config, train, train_inputs


@dataclass
class EnsembleResult:
    out: Path
    members: list[TrainResult]
    averaging: str

    def summary(self) -> str:
        parts = [m.summary() for m in self.members]
        aurocs = ", ".join(f"{m.best_val_auroc:.4f}" for m in self.members)
        parts.append(
            f"ensemble: {self.out / ENSEMBLE_FILE} ({len(self.members)} members, "
            f"{self.averaging} average; members' best val AUROC {aurocs}); pass {self.out} as "
            "the model to evaluate, scan or export"
        )
        return "\n".join(parts)


def member_config(config: TrainConfig, index: int) -> TrainConfig:
    """Member ``index``'s config: its own seed, the ensemble's split, one model, and an equal
    share of a time budget (which is the whole command's)."""
    budget = config.time_budget_minutes
    share = budget / config.members if budget else budget
    return dataclasses.replace(
        config, seed=config.seed + index, members=1, time_budget_minutes=share
    )


def train_models(
    config: TrainConfig,
    store: str | Path | Sequence[str | Path],
    out: str | Path,
    resume: bool = True,
    progress: bool = True,
) -> TrainResult | EnsembleResult | AdaptResult:
    """``train`` for ``members == 1``; else the ensemble of ``config.members`` into ``out``.
    ``store`` may be empty only for ``adapt.only`` (no labelled training)."""
    out = Path(out)
    check_config(config)
    if not store and not config.adapt.only:
        raise ConfigError("train: give --data, the labelled store or layout to train on")
    if config.adapt.only:  # no labelled training: the --init model (or ensemble) adapted
        return adapt_only(config, out, progress)
    if config.members == 1:
        if is_ensemble(out):
            raise ConfigError(
                f"{out}: holds an ensemble ({ENSEMBLE_FILE}); train one model into another --out"
            )
        return train(config, store, out, resume=resume, progress=progress)
    if (out / META_FILE).is_file():
        raise ConfigError(
            f"{out}: holds a single trained model; train the ensemble into another --out"
        )
    from lightning.pytorch.utilities import rank_zero_only

    follower = rank_zero_only.rank != 0  # type: ignore[attr-defined]  # DDP: rank 0 holds the lock
    stores = [store] if isinstance(store, str | Path) else list(store)
    inputs = train_inputs(config, stores)
    with run_stage("train", ENSEMBLE, out, inputs, progress=progress, follower=follower) as stage:
        return stage.finish(_train_members(config, store, stage.out, resume, stage.progress))


def _train_members(
    config: TrainConfig,
    store: str | Path | Sequence[str | Path],
    out: Path,
    resume: bool,
    progress: bool,
) -> EnsembleResult:
    """The members one by one into ``out/member-k``, then ``out/ensemble.json``."""
    results = []
    for index in range(config.members):
        if progress:
            report(f"ensemble member {index + 1} of {config.members} (seed {config.seed + index})")
        member = member_config(config, index)
        results.append(train(member, store, member_dir(out, index), resume, progress))
    averaging = PredictConfig().ensemble_average
    write_ensemble(
        out,
        [r.run_dir for r in results],
        averaging,
        {"seeds": [config.seed + i for i in range(config.members)], "split": to_dict(config.split)},
    )
    return EnsembleResult(out, results, averaging)
