"""The lens label rule: the one place that decides "lens or not" from catalogue quantities.

The challenge-2 catalogue has no is_lens column. The rule used by the winning team (Bom et al.
2022) and by Wilde et al. (2022) is the default; other teams used ``n_sources > 0 & mag_eff > 1.5``.
A rule is a conjunction of ``column OP number`` clauses, parsed (never ``eval``-ed), so it can be
stored in model files and config YAML as plain text.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from lensfinder.errors import DataError

DEFAULT_LABEL_RULE = "n_source_im > 0 & mag_eff > 1.6 & n_pix_source > 20"

_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq}
_CLAUSE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|==|>|<)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Clause:
    column: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.column} {self.op} {self.value:g}"


@dataclass(frozen=True)
class LabelRule:
    """A parsed rule; ``apply`` turns catalogue columns into 0/1 labels (missing values -> 0)."""

    clauses: tuple[Clause, ...]

    @classmethod
    def parse(cls, text: str) -> LabelRule:
        clauses = []
        for part in text.split("&"):
            match = _CLAUSE.match(part)
            if match is None:
                raise ValueError(
                    f"label rule {text!r}: cannot read clause {part.strip()!r}; "
                    "expected 'column OP number' joined by '&', OP one of > >= < <= =="
                )
            column, op, value = match.groups()
            try:
                number = float(value)
            except ValueError:
                raise ValueError(f"label rule {text!r}: {value!r} is not a number") from None
            clauses.append(Clause(column, op, number))
        return cls(tuple(clauses))

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.column for c in self.clauses))

    def apply(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """Labels as an int8 array; a NaN in any used column makes that row a non-lens."""
        missing = [c for c in self.columns if c not in columns]
        if missing:
            raise ValueError(f"label rule needs catalogue column(s) {', '.join(missing)}")
        result = None
        for clause in self.clauses:
            values = np.asarray(columns[clause.column], dtype=np.float64)
            with np.errstate(invalid="ignore"):
                ok = _OPS[clause.op](values, clause.value) & np.isfinite(values)
            result = ok if result is None else result & ok
        assert result is not None  # parse() never yields an empty rule
        return result.astype(np.int8)

    def __str__(self) -> str:
        return " & ".join(str(c) for c in self.clauses)


def label_rule(text: str | None = None) -> LabelRule:
    """Parse ``text``, or the default challenge-2 rule when None."""
    return LabelRule.parse(text or DEFAULT_LABEL_RULE)


def lenses_outside(
    rule_text: str,
    columns: Mapping[str, np.ndarray],
    labels: np.ndarray,
    rows: np.ndarray,
    where: object,
) -> np.ndarray:
    """Per row of ``rows``: whether it is a lens (label 1) that fails the rule ``rule_text``
    (``TrainConfig.train_lens_rule``: lenses whose arcs are too faint to learn from). A NaN
    fails the rule, as in ``LabelRule.apply``; a column the data ``where`` lacks is a one-line
    DataError naming it."""
    rows = np.asarray(rows, dtype=np.int64)
    rule = LabelRule.parse(rule_text)
    missing = [name for name in rule.columns if name not in columns]
    if missing:
        raise DataError(f"{where}: rule '{rule}' needs catalogue column(s) {', '.join(missing)}")
    kept = rule.apply({name: np.asarray(columns[name])[rows] for name in rule.columns})
    return (np.asarray(labels)[rows] == 1) & (kept == 0)
