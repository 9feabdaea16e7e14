"""Splits by hashed ID: stable under reordering and subsetting, disjoint, right proportions."""

from __future__ import annotations

import numpy as np
import pytest

from lensfinder.config import SplitConfig
from lensfinder.data.splits import split_indices
from lensfinder.errors import ConfigError

IDS = np.arange(200000, 210000)


def _by_id(ids: np.ndarray, cfg: SplitConfig) -> dict[int, str]:
    return {int(ids[i]): name for name, index in split_indices(ids, cfg).items() for i in index}


def test_disjoint_covering_with_configured_fractions() -> None:
    splits = split_indices(IDS, SplitConfig())
    together = np.concatenate(list(splits.values()))
    assert len(together) == len(IDS) and len(np.unique(together)) == len(IDS)
    assert abs(len(splits["test"]) / len(IDS) - 0.2) < 0.015
    assert abs(len(splits["val"]) / len(IDS) - 0.1) < 0.01
    assert all(np.all(np.diff(index) > 0) for index in splits.values())


def test_stable_under_reordering_and_subsetting() -> None:
    cfg = SplitConfig(seed=7)
    reference = _by_id(IDS, cfg)
    shuffled = np.random.default_rng(0).permutation(IDS)
    assert _by_id(shuffled, cfg) == reference
    subset = shuffled[:137]
    assert _by_id(subset, cfg) == {int(i): reference[int(i)] for i in subset}
    grown = np.concatenate([IDS, np.arange(300000, 301000)])
    assert {k: v for k, v in _by_id(grown, cfg).items() if k < 300000} == reference


def test_seed_changes_the_split() -> None:
    a, b = _by_id(IDS, SplitConfig(seed=0)), _by_id(IDS, SplitConfig(seed=1))
    changed = sum(a[k] != b[k] for k in a) / len(a)
    assert 0.3 < changed < 0.6  # independent draws disagree for ~46% of objects


def test_no_validation_set_and_bad_fractions() -> None:
    splits = split_indices(IDS, SplitConfig(val_fraction=0.0))
    assert len(splits["val"]) == 0
    with pytest.raises(ConfigError, match="fractions"):
        split_indices(IDS, SplitConfig(test_fraction=0.7, val_fraction=0.4))
