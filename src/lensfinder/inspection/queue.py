"""The blind grading queue: candidates in order of expected information, hidden sentinels mixed
in, every item behind an opaque token.

A sentinel is a known lens or known non-lens from a labelled layout or store (best one that
``lensfinder inject`` painted onto the field's own galaxies, so its pixels look like the field's).
The page never learns what an item is: it gets a random token per (grader, item), pictures drawn
the same way, and no ID, score or catalogue value in the queue; the truth stays in this process
and in the ``sentinel_grades`` table.
"""

from __future__ import annotations

import random
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from lensfinder.data import open_source
from lensfinder.data.cutouts import CutoutSource
from lensfinder.errors import DataError

TOKEN_BYTES = 12  # 16 URL-safe characters: not guessable
MAX_TOKEN = 64  # longer strings are refused before any lookup


@dataclass(frozen=True)
class Item:
    """What a token stands for: a candidate (its ID) or a sentinel (its row in the set)."""

    kind: Literal["candidate", "sentinel"]
    key: int


class SentinelSet:
    """The labelled objects of ``path`` usable as sentinels next to ``data``'s cutouts."""

    def __init__(self, path: str | Path, data: CutoutSource) -> None:
        self.path = Path(path)
        self.source = open_source(self.path)
        labels = np.asarray(self.source.labels)
        rows = np.flatnonzero(labels >= 0)
        n_lens = int((labels[rows] == 1).sum())
        if n_lens == 0 or n_lens == len(rows):
            raise DataError(
                f"{path}: sentinels need known lenses and known non-lenses (labelled objects); "
                f"found {n_lens} lenses and {len(rows) - n_lens} non-lenses"
            )
        self._check_shape(data, int(rows[0]))
        self.rows = rows
        self.is_lens = {int(r): bool(labels[r] == 1) for r in rows}
        self.ids = {int(r): int(self.source.ids[r]) for r in rows}

    def _check_shape(self, data: CutoutSource, row: int) -> None:
        """Sentinels must be cutouts of the scanned data's size: a different size would show."""
        theirs, ours = self.source.read([row]), data.read([0])
        shapes = (theirs.vis.shape[1:], theirs.nisp.shape[1:])
        wanted = (ours.vis.shape[1:], ours.nisp.shape[1:])
        if shapes != wanted:
            raise DataError(
                f"{self.path}: sentinel cutouts are VIS {shapes[0]}, NISP {shapes[1]}; the "
                f"scanned data's are VIS {wanted[0]}, NISP {wanted[1]}: they would stand out"
            )

    def __len__(self) -> int:
        return len(self.rows)


def pick(
    rate: float,
    candidates: Sequence[int],
    unseen_sentinels: Sequence[int],
    rng: random.Random,
) -> Item | None:
    """The next item: a random unseen sentinel with probability ``rate`` (while there are
    candidates left: an empty queue never serves sentinels alone), else the first candidate."""
    if not candidates:
        return None
    if unseen_sentinels and rng.random() < rate:
        return Item("sentinel", int(rng.choice(list(unseen_sentinels))))
    return Item("candidate", int(candidates[0]))


class TokenBook:
    """Opaque per-(grader, item) tokens and each grader's pending item (so a reload shows the
    same item: a sentinel never vanishes on reload while a candidate stays)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.SystemRandom()
        self._items: dict[str, Item] = {}
        self._tokens: dict[tuple[str, Item], str] = {}
        self._pending: dict[str, str] = {}
        self.lock = threading.Lock()

    def token(self, grader: str, item: Item) -> str:
        key = (grader, item)
        if key not in self._tokens:
            token = secrets.token_urlsafe(TOKEN_BYTES)
            self._tokens[key], self._items[token] = token, item
        return self._tokens[key]

    def item(self, token: str) -> Item:
        item = self._items.get(token) if len(token) <= MAX_TOKEN else None
        if item is None:
            raise DataError("unknown item (the server was restarted? reload the page)")
        return item

    def pending(self, grader: str) -> str | None:
        return self._pending.get(grader)

    def hold(self, grader: str, token: str | None) -> None:
        if token is None:
            self._pending.pop(grader, None)
        else:
            self._pending[grader] = token

    def release(self, grader: str, token: str) -> None:
        """``grader`` graded ``token``: it is no longer their pending item."""
        if self._pending.get(grader) == token:
            del self._pending[grader]
