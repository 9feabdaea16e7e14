"""Training data plus the candidates people graded: X as non-lenses, A/B as lenses.

``GradedSource`` appends graded cutouts (from the training data itself or from the scanned data
they were found in) to a training source, with labels from their consensus grades; the split,
validation and test sets stay those of the training data, so an evaluation stays comparable.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lensfinder.data.cutouts import Cutouts, CutoutSource, Indices, combined_arc_maps
from lensfinder.data.grades import GRADES
from lensfinder.data.identity import index_of_ids
from lensfinder.errors import ConfigError, DataError

MISSING_SHOWN = 10  # graded IDs not in the data: how many are named in the message and record
log = logging.getLogger(__name__)


def graded_labels(
    grades: Mapping[int, str], lens: Sequence[str], nonlens: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(IDs, labels 1/0) of the graded candidates whose grade is in ``lens`` or ``nonlens``;
    other grades (C by default) are left out."""
    unknown = sorted((set(lens) | set(nonlens)) - set(GRADES))
    if unknown or set(lens) & set(nonlens):
        raise ConfigError(
            f"graded grades: lens {list(lens)} and non-lens {list(nonlens)} must be disjoint "
            f"subsets of {', '.join(GRADES)}"
        )
    fractional = [i for i in grades if not isinstance(i, int | np.integer) or isinstance(i, bool)]
    if fractional:  # an ID such as 200017.5 would otherwise become object 200017
        raise DataError(f"graded ID {fractional[0]!r} is not a whole number")
    kept = sorted((i, g) for i, g in grades.items() if g in lens or g in nonlens)
    ids = np.asarray([i for i, _ in kept], dtype=np.int64)
    labels = np.asarray([1 if g in lens else 0 for _, g in kept], dtype=np.int8)
    return ids, labels


class GradedSource(CutoutSource):
    """``base`` followed by rows ``positions`` of ``extra`` labelled ``labels``."""

    def __init__(
        self, base: CutoutSource, extra: CutoutSource, positions: np.ndarray, labels: np.ndarray
    ) -> None:
        self.base, self.extra = base, extra
        self.positions = np.asarray(positions, dtype=np.int64)
        self.path = base.path
        self.ids = np.concatenate([base.ids, extra.ids[self.positions]]).astype(np.int64)
        self.labels = np.concatenate([base.labels, labels]).astype(np.int8)
        self.problems = list(base.problems)
        self.label_rule = base.label_rule

    def _pad(self, values: np.ndarray, extra_values: np.ndarray | None) -> np.ndarray:
        if extra_values is None:
            extra_values = np.full(len(self.positions), np.nan)
        else:
            extra_values = np.asarray(extra_values)[self.positions]
        return np.concatenate([np.asarray(values, dtype=np.float64), extra_values])

    @property
    def ra(self) -> np.ndarray:
        return self._pad(self.base.ra, self.extra.ra)

    @property
    def dec(self) -> np.ndarray:
        return self._pad(self.base.dec, self.extra.dec)

    @property
    def catalog(self) -> dict[str, np.ndarray]:
        extra = self.extra.catalog
        return {
            name: self._pad(values, extra.get(name))
            for name, values in self.base.catalog.items()
            if np.asarray(values).dtype.kind in "fiub"
        }

    def to_memory(self) -> None:
        for part in (self.base, self.extra):
            if hasattr(part, "to_memory"):
                part.to_memory()

    def _parts(self, indices: Indices) -> tuple[np.ndarray, np.ndarray]:
        rows = self._as_indices(indices)
        return rows, rows >= len(self.base)

    def read(self, indices: Indices) -> Cutouts:
        rows, from_extra = self._parts(indices)
        out = Cutouts.empty(len(rows))
        for mask, source, where in (
            (~from_extra, self.base, rows),
            (from_extra, self.extra, self.positions[np.maximum(rows - len(self.base), 0)]),
        ):
            if mask.any():
                part = source.read(where[mask])
                out.vis[mask], out.nisp[mask], out.valid[mask] = part.vis, part.nisp, part.valid
                for slot, reason in zip(np.flatnonzero(mask), part.reasons, strict=True):
                    out.reasons[slot] = reason
        return out

    def arc_maps(self, indices: Indices) -> np.ndarray | None:
        rows, from_extra = self._parts(indices)
        extra_rows = self.positions[rows[from_extra] - len(self.base)]
        pieces = ((~from_extra, self.base, rows[~from_extra]), (from_extra, self.extra, extra_rows))
        return combined_arc_maps(len(rows), pieces)

    def validate(self, indices: Indices | None = None, progress: bool = True) -> np.ndarray:
        rows, from_extra = self._parts(range(len(self)) if indices is None else indices)
        valid = np.ones(len(rows), bool)
        if (~from_extra).any():
            valid[~from_extra] = self.base.validate(rows[~from_extra], progress)
        if from_extra.any():
            extra_rows = self.positions[rows[from_extra] - len(self.base)]
            valid[from_extra] = self.extra.validate(extra_rows, progress)
        return valid


def add_graded(
    base: CutoutSource,
    train_indices: np.ndarray,
    grades: Mapping[int, str],
    extra: CutoutSource,
    lens: Sequence[str],
    nonlens: Sequence[str],
) -> tuple[GradedSource, np.ndarray, dict[str, object]]:
    """The combined source, its training indices, and the record for model.json.

    Graded IDs missing from ``extra`` are counted and reported (logged warnings, as they are found);
    when ``extra`` is the training data, graded objects of its validation or test split are left
    out (they must not leak into training), and reported too.
    """
    ids, labels = graded_labels(grades, lens, nonlens)
    positions = index_of_ids(np.asarray(extra.ids, dtype=np.int64), ids)
    found = positions >= 0
    if ids.size and not found.any():
        raise DataError(f"{extra.path}: none of the {ids.size} graded IDs are in this data")
    in_eval = np.zeros(len(ids), bool)
    if extra is base:
        in_eval = found & ~np.isin(positions, train_indices)
    keep = found & ~in_eval
    source = GradedSource(base, extra, positions[keep], labels[keep])
    added = len(base) + np.arange(int(keep.sum()), dtype=np.int64)
    missing = ids[~found]
    if missing.size:
        shown = ", ".join(str(i) for i in missing[:MISSING_SHOWN].tolist())
        more = ", ..." if missing.size > MISSING_SHOWN else ""
        log.warning(
            "graded: %d of %d graded IDs are not in %s and were left out: %s%s",
            missing.size, ids.size, extra.path, shown, more,
        )  # fmt: skip
    if in_eval.any():
        log.warning(
            "graded: %d graded objects are in the validation or test split of %s and were left "
            "out of training",
            int(in_eval.sum()), extra.path,
        )  # fmt: skip
    record = {
        "data": str(Path(extra.path).resolve()),
        "lens_grades": list(lens),
        "nonlens_grades": list(nonlens),
        "n_lenses": int(labels[keep].sum()),
        "n_nonlenses": int((labels[keep] == 0).sum()),
        "n_missing": int(missing.size),
        "missing_ids": missing[:MISSING_SHOWN].tolist(),
        "n_in_eval_splits": int(in_eval.sum()),
        "n_other_grades": len(grades) - len(ids),
    }
    return source, np.concatenate([train_indices, added]), record
