"""Hard-negative mining: train, score a fresh labelled pool, fine-tune on its worst mistakes.

Why: a network trained on simulations fails in the extreme tail (TPR at FPR 1e-3) on a few kinds
of non-lens it takes for arcs (neighbours, companions, nearby background galaxies); at the
balanced sampling of training those are too rare to shape the decision boundary there. Mining
them and replaying them is the standard cure (Lines et al. 2025, arXiv:2512.05899, with real
false positives; here from our own simulator or any labelled pool).

With ``hard_negatives.enabled`` one ``train`` run does, in ``OUT``:

1. a first pass, an ordinary run (the config without its ``hard_negatives`` block) in
   ``OUT/first_pass``; it resumes and is skipped when finished like any run;
2. mining: the first pass's model (``lensfinder.predict.Predictor``, D4 TTA optional) scores the
   pool (``hard_negatives.pool``, or ``pool_size`` cutouts simulated into
   ``OUT/hard_negative_pool-<settings>``); its ``top_nonlenses`` highest-scoring non-lenses and
   ``bottom_lenses`` lowest-scoring lenses go to ``OUT/hard_negatives.csv`` and what was mined to
   ``OUT/hard_negatives.json`` (written last: the mark that mining finished);
3. a second pass into ``OUT`` itself, fine-tuned from the first pass (``init``) for
   ``epochs`` at ``lr x lr_scale``, with every mined cutout added ``replay_copies`` times to the
   training split (validation and test stay the training data's); model.json records the mining.

A crash in the second pass resumes the second pass: the first pass is finished and the mined set
is reused while the first pass's weights and the mining settings are unchanged (when either
changed, mining and the second pass start again).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lensfinder.config import (
    HardNegativeConfig,
    PredictConfig,
    SimulateConfig,
    TrainConfig,
    load_config,
    resolve_config_path,
    to_dict,
)
from lensfinder.data import open_source
from lensfinder.data.cutouts import CutoutSource
from lensfinder.data.graded import GradedSource
from lensfinder.data.identity import data_record, fingerprint, same_data
from lensfinder.data.splits import split_indices
from lensfinder.errors import ConfigError, DataError
from lensfinder.files import atomic_path, atomic_write_text
from lensfinder.labels import lenses_outside
from lensfinder.models.checkpoint import WEIGHTS_FILE
from lensfinder.predict import Predictor
from lensfinder.simulate import simulate
from lensfinder.simulate.simulation import planned_seconds
from lensfinder.train.datamodule import ConcatSource

FIRST_PASS_DIR = "first_pass"
MINED_CSV = "hard_negatives.csv"
MINED_RECORD = "hard_negatives.json"
POOL_DIR = "hard_negative_pool"
CSV_COLUMNS = ("id", "pool_row", "label", "score", "role", "rank", "kind")
RANK_WAIT_S = 5.0  # DDP: how often other processes look for rank 0's mined set


def check_hard_negatives(hn: HardNegativeConfig) -> list[str]:
    """The files ``hard_negatives`` names that are missing (its values check themselves)."""
    if not hn.enabled:
        return []
    problems = []
    if hn.pool is not None and not Path(hn.pool).exists():
        problems.append(f"hard_negatives.pool {hn.pool}: no such store or layout")
    if hn.pool_simulate is not None:
        try:
            resolve_config_path(hn.pool_simulate)
        except ConfigError as exc:
            problems.append(f"hard_negatives.pool_simulate: {exc}")
    return problems


# -- the two passes' configs -------------------------------------------------------------------
def first_pass_config(config: TrainConfig) -> TrainConfig:
    """The first pass: the config without mining (so mining settings never touch it)."""
    return dataclasses.replace(config, hard_negatives=HardNegativeConfig())


def second_pass_config(config: TrainConfig, first_dir: Path) -> TrainConfig:
    """The second pass: fine-tuned from the first pass, shorter, at a lower lr, no warm-up,
    full size."""
    hn = config.hard_negatives
    return dataclasses.replace(
        config,
        init=str(first_dir),
        max_epochs=hn.epochs,
        lr=config.lr * hn.lr_scale,
        warmup_epochs=0,
        low_res_size=None,  # a fine-tune of a finished model: at full size throughout
    )


# -- mining ------------------------------------------------------------------------------------
def select_hard(
    labels: np.ndarray, scores: np.ndarray, top_nonlenses: int, bottom_lenses: int
) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the ``top_nonlenses`` highest-scoring non-lenses (highest first) and the
    ``bottom_lenses`` lowest-scoring lenses (lowest first); ties keep input order.

    Only label 0 can be a negative and only label 1 a lens; unlabelled rows (-1) and rows
    without a finite score (unreadable cutouts) are never picked.
    """
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(scores)
    nonlenses = np.flatnonzero((labels == 0) & finite)
    lenses = np.flatnonzero((labels == 1) & finite)
    top = nonlenses[np.argsort(-scores[nonlenses], kind="stable")][:top_nonlenses]
    bottom = lenses[np.argsort(scores[lenses], kind="stable")][:bottom_lenses]
    return top, bottom


def score_rows(
    run_dir: Path, source: CutoutSource, rows: np.ndarray, tta: bool, progress: bool
) -> np.ndarray:
    """The model's scores of ``rows`` of ``source`` (NaN where a cutout could not be read)."""
    predictor = Predictor(run_dir, PredictConfig(tta=tta))
    return np.asarray(predictor.predict_source(source, rows, progress=progress).score)


def model_digest(run_dir: Path) -> str:
    """SHA-256 of a run's weights file: tells whether the mined set belongs to these weights."""
    digest = hashlib.sha256()
    with open(run_dir / WEIGHTS_FILE, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Pool:
    """The data mined: its source, the rows that may be mined, and what model.json says."""

    source: CutoutSource
    candidates: np.ndarray  # labelled rows that are not in the validation or test split
    record: dict[str, Any]


def pool_simulate_config(
    config: TrainConfig, training: CutoutSource, label_rule: str | None
) -> SimulateConfig:
    """The pool's simulation: the population of ``pool_simulate`` (default the simulator's),
    ``pool_size`` objects, IDs after the training data's (fresh objects whatever the seed,
    since each object is drawn from (seed, ID)), and the training data's label rule."""
    hn = config.hard_negatives
    base = load_config(SimulateConfig, hn.pool_simulate) if hn.pool_simulate else SimulateConfig()
    ids = np.asarray(training.ids)
    return dataclasses.replace(
        base,
        n=hn.pool_size,
        seed=hn.pool_seed,
        lens_fraction=hn.pool_lens_fraction,
        workers=hn.pool_workers,
        first_id=int(ids.max()) + 1 if len(ids) else base.first_id,
        label_rule=label_rule or base.label_rule,
    )


def _pool_simulation(
    config: TrainConfig, training: CutoutSource, out: Path
) -> tuple[SimulateConfig, Path, dict[str, Any]]:
    """The pool's simulation, the folder it goes to (named by its settings, so changed
    settings never mix with an earlier pool) and its settings as recorded."""
    sim = pool_simulate_config(config, training, getattr(training, "label_rule", None))
    settings = {k: v for k, v in to_dict(sim).items() if k != "workers"}
    tag = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return sim, out / f"{POOL_DIR}-{tag}", settings


def _training(parts: Sequence[CutoutSource]) -> CutoutSource:
    return parts[0] if len(parts) == 1 else ConcatSource(parts)


def planned_pool(
    config: TrainConfig, parts: Sequence[CutoutSource], out: Path
) -> tuple[int, float]:
    """The cutouts mining will score and the seconds the pool's simulation will take here (0
    for a given pool or one already made): what a time budget weighs mining with, before the
    pool is made."""
    hn = config.hard_negatives
    if hn.pool is not None:
        return len(open_pool(config, parts, out, progress=False).candidates), 0.0
    sim, path, _ = _pool_simulation(config, _training(parts), out)
    return sim.n, planned_seconds(sim, path)


def open_pool(
    config: TrainConfig, parts: Sequence[CutoutSource], out: Path, progress: bool
) -> Pool:
    """The given pool, or a freshly simulated one (resumable: finished objects are kept); a
    training set as a pool is mined only in its training split (its validation and test
    objects must stay unseen). ``parts``: the training sets (``train --data A --data B``)."""
    training = _training(parts)
    hn = config.hard_negatives
    simulation = None
    if hn.pool is None:
        sim, path, simulation = _pool_simulation(config, training, out)
        simulate(sim, path, progress=progress)
    else:
        path = Path(hn.pool)  # check_config made sure it exists
    source = open_source(path)
    labels = np.asarray(source.labels)
    rule, training_rule = getattr(source, "label_rule", None), getattr(training, "label_rule", None)
    if rule and training_rule and str(rule) != str(training_rule):
        raise DataError(
            f"{path}: labelled by rule '{rule}', the training data by '{training_rule}'; a "
            "hard-negative pool must use the training data's label rule"
        )
    is_training = any(same_data(source, data_record(part)) for part in parts)
    rows = np.arange(len(source), dtype=np.int64)
    if is_training:
        rows = split_indices(np.asarray(source.ids), config.split)["train"]
    candidates = rows[labels[rows] >= 0]
    if config.train_lens_rule is not None:  # its lenses too faint to learn from are not mined
        rule = config.train_lens_rule
        candidates = candidates[~lenses_outside(rule, source.catalog, labels, candidates, path)]
    if len(candidates) == 0:
        raise DataError(f"{path}: no labelled objects to mine hard negatives from")
    record = {
        "path": str(path.resolve()),
        "fingerprint": fingerprint(source),
        "simulated": simulation,  # the simulation settings, or None for a given pool
        "is_training_data": is_training,
        "n_objects": len(source),
        "n_candidates": len(candidates),
        "n_lenses": int((labels[candidates] == 1).sum()),
        "n_nonlenses": int((labels[candidates] == 0).sum()),
    }
    return Pool(source, candidates, record)


@dataclass
class MinedSet:
    """Mined pool rows and their labels, replayed into the second pass's training split."""

    pool: CutoutSource
    rows: np.ndarray
    labels: np.ndarray
    copies: int
    record: dict[str, Any]
    fresh: bool  # mined in this run (not read back from a previous one)

    def add_to(self, datamodule: Any) -> None:
        """Append ``copies`` of every mined cutout to a prepared datamodule's training split."""
        positions = np.repeat(self.rows, self.copies)
        base = datamodule.source
        datamodule.source = GradedSource(
            base, self.pool, positions, np.repeat(self.labels, self.copies)
        )
        added = len(base) + np.arange(len(positions), dtype=np.int64)
        datamodule.train_indices = np.concatenate([datamodule.train_indices, added])


def mine(
    config: TrainConfig,
    pool: Pool,
    first_dir: Path,
    out: Path,
    progress: bool,
    first_pass: dict[str, Any],
) -> MinedSet:
    """Score the pool with the first pass's model, keep the hardest, write CSV + record.

    ``first_pass`` describes the first pass (its ``weights_sha256`` ties the mined set to it).
    """
    hn = config.hard_negatives
    began = time.perf_counter()
    (out / MINED_RECORD).unlink(missing_ok=True)  # the record is written last, when complete
    scores = score_rows(first_dir, pool.source, pool.candidates, hn.tta, progress)
    labels = np.asarray(pool.source.labels)[pool.candidates]
    top, bottom = select_hard(labels, scores, hn.top_nonlenses, hn.bottom_lenses)
    rows_out = _mined_rows(pool, labels, scores, top, bottom)
    with atomic_path(out / MINED_CSV) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows_out)
    pool_labels_finite = labels[np.isfinite(scores)]
    has_kinds = pool.source.catalog.get("kind") is not None
    record = {
        "settings": to_dict(hn),
        "first_pass": first_pass,
        "pool": pool.record | {"n_scored": int(np.isfinite(scores).sum())},
        "tta": hn.tta,
        "n_nonlenses": len(top),
        "n_lenses": len(bottom),
        # Score thresholds: every mined non-lens scored >= the first, every mined lens <= the
        # second (None when none was mined).
        "nonlens_score_min": float(scores[top].min()) if len(top) else None,
        "lens_score_max": float(scores[bottom].max()) if len(bottom) else None,
        # The share of the pool's non-lenses (lenses) mined: the tail the second pass targets.
        "nonlens_fraction": len(top) / max(int((pool_labels_finite == 0).sum()), 1),
        "lens_fraction": len(bottom) / max(int((pool_labels_finite == 1).sum()), 1),
        "nonlens_kinds": dict(Counter(r["kind"] for r in rows_out if r["role"] == "nonlens"))
        if has_kinds
        else None,
        "replay_copies": hn.replay_copies,
        "ids_file": MINED_CSV,
        "mining_s": round(time.perf_counter() - began, 1),
    }
    atomic_write_text(out / MINED_RECORD, json.dumps(record, indent=1) + "\n")
    return mined_set(pool.source, out, record, fresh=True)


def _mined_rows(
    pool: Pool, labels: np.ndarray, scores: np.ndarray, top: np.ndarray, bottom: np.ndarray
) -> list[dict[str, Any]]:
    """The CSV's rows: the mined non-lenses (highest score first), then the mined lenses."""
    kinds = pool.source.catalog.get("kind")
    ids = np.asarray(pool.source.ids)
    rows_out = []
    for role, picked in (("nonlens", top), ("lens", bottom)):
        for rank, position in enumerate(picked):
            row = int(pool.candidates[position])
            rows_out.append(
                {
                    "id": int(ids[row]),
                    "pool_row": row,
                    "label": int(labels[position]),
                    "score": float(scores[position]),
                    "role": role,
                    "rank": rank,
                    "kind": "" if kinds is None else str(kinds[row]),
                }
            )
    return rows_out


def mined_set(pool: CutoutSource, out: Path, record: dict[str, Any], fresh: bool) -> MinedSet:
    """The mined set as written in ``out`` (the CSV's pool rows and labels)."""
    with open(out / MINED_CSV, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return MinedSet(
        pool=pool,
        rows=np.asarray([int(r["pool_row"]) for r in rows], dtype=np.int64),
        labels=np.asarray([int(r["label"]) for r in rows], dtype=np.int8),
        copies=int(record["replay_copies"]),
        record=record,
        fresh=fresh,
    )


def previous_mining(
    out: Path, config: TrainConfig, first_digest: str, pool: Pool
) -> dict[str, Any] | None:
    """The record of a previous mining in ``out`` that still holds (same first-pass weights,
    settings and pool content), or None."""
    path = out / MINED_RECORD
    if not path.is_file() or not (out / MINED_CSV).is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except ValueError:
        return None
    holds = (
        record.get("settings") == to_dict(config.hard_negatives)
        and record.get("first_pass", {}).get("weights_sha256") == first_digest
        and record.get("pool", {}).get("fingerprint") == pool.record["fingerprint"]
    )
    return record if holds else None


def wait_for_rank_zero(out: Path, digest: str) -> MinedSet:
    """DDP's other processes: wait until rank 0 has mined for these first-pass weights."""
    path = out / MINED_RECORD
    while True:
        if path.is_file():
            try:
                record = json.loads(path.read_text())
            except ValueError:
                record = {}
            if record.get("first_pass", {}).get("weights_sha256") == digest:
                pool = open_source(Path(record["pool"]["path"]))
                return mined_set(pool, out, record, fresh=False)
        time.sleep(RANK_WAIT_S)
