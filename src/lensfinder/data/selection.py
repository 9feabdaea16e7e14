"""Which objects a measurement uses: a split of the models' training data, or all of it.

``evaluate`` and the BN study score the same objects for the same model: the test split
recomputed from the split settings every member recorded in ``model.json`` (``splits``: a hash
of ID and seed), or every object of independent data; ``auto`` decides by the data's
fingerprint (``identity``). Only labelled objects can be measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lensfinder.config import SplitConfig, from_dict, to_dict
from lensfinder.data.cutouts import CutoutSource
from lensfinder.data.identity import same_data
from lensfinder.data.splits import split_indices
from lensfinder.errors import ConfigError, DataError


def _split_config(meta: dict[str, Any], run_dir: Path) -> SplitConfig:
    try:
        recorded = meta["train"]["split"]
    except (KeyError, TypeError):
        raise ConfigError(
            f"{run_dir}: model.json records no train.split settings, so its test split is "
            "unknown; evaluate a separate labelled set with --split all"
        ) from None
    return from_dict(SplitConfig, recorded, f"{run_dir} train.split")


def select_indices(
    ids: np.ndarray, split: str, metas: Sequence[dict[str, Any]], run_dirs: Sequence[Path]
) -> np.ndarray:
    """Indices of the objects to evaluate: one split of the members' common split, or all.

    Members split with different settings would see each other's test objects in training, so
    that is refused unless the whole set is independent data (``all``).
    """
    if split == "all":
        return np.arange(len(ids))
    configs = [_split_config(meta, run_dir) for meta, run_dir in zip(metas, run_dirs, strict=True)]
    for config, run_dir in zip(configs[1:], run_dirs[1:], strict=True):
        if config != configs[0]:
            raise ConfigError(
                f"{run_dir}: trained with split {to_dict(config)}, but {run_dirs[0]} with "
                f"{to_dict(configs[0])}: one member's {split} objects are another's training "
                "objects; use members with the same split, or --split all on independent data"
            )
    return np.sort(np.asarray(split_indices(ids, configs[0])[split], dtype=np.int64))


def resolve_split(
    split: str, source: CutoutSource, metas: Sequence[dict[str, Any]]
) -> tuple[str, str]:
    """The split to score and why: ``auto`` becomes ``test`` on the models' training data (or
    when an older model file cannot tell) and ``all`` on data none of them was trained on."""
    if split != "auto":
        return split, ""
    verdicts = [_trained_on(source, meta.get("data") or {}) for meta in metas]
    if all(v is False for v in verdicts):
        return "all", "auto: not the models' training data, so every object is unseen"
    if any(v is True for v in verdicts):
        return "test", "auto: the models' training data, so only its held-out test split"
    return "test", "auto: the model files do not record their training data; test split to be safe"


def _trained_on(source: CutoutSource, data: dict[str, Any]) -> bool | None:
    """``same_data`` against every training set a model records (``train --data A --data B``)."""
    verdicts = [same_data(source, record) for record in data.get("data_sets") or [data]]
    if any(v is True for v in verdicts):
        return True
    return False if all(v is False for v in verdicts) else None


def labelled_only(
    labels: np.ndarray, indices: np.ndarray, data: Path, split: str
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(indices, labels)`` of the labelled objects and how many had no label; a DataError when
    none has one (metrics on unlabelled data cannot mean anything)."""
    chosen = "the data set" if split == "all" else f"the {split} split"
    if len(indices) == 0:
        raise DataError(f"{data}: {chosen} holds no objects")
    labels = labels[indices]
    known = labels != -1
    if not known.any():
        raise DataError(
            f"{data}: none of the {len(indices)} objects in {chosen} has a label "
            "(no catalogue, or a catalogue without the label rule's columns): the data has no "
            "labels, so it can be scanned but not evaluated"
        )
    return indices[known], labels[known], int((~known).sum())
