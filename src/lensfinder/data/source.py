"""One reading interface over a packed store and an unpacked challenge layout.

Training, prediction and scanning all take a ``CutoutSource``: ``ids``, ``labels``, ``ra``,
``dec``, ``catalog``, ``problems`` and ``read(indices) -> Cutouts``. A row that cannot be read
(possible only for a layout read on the fly) comes back zero-filled with ``valid=False`` and a
reason, so a scan of millions of files counts bad ones instead of stopping.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lensfinder.data.challenge import BadImage, ChallengeLayout, Problem, read_layout
from lensfinder.errors import DataError
from lensfinder.labels import LabelRule
from lensfinder.surveys import EUCLID

VIS_SHAPE: tuple[int, int] = (EUCLID.bands[0].cutout_pixels,) * 2
NISP_SHAPE: tuple[int, int, int] = (
    len(EUCLID.bands) - 1,
    EUCLID.bands[1].cutout_pixels,
    EUCLID.bands[1].cutout_pixels,
)

Indices = Sequence[int] | np.ndarray | slice | range


@dataclass
class Cutouts:
    """A batch of objects: pixels in native float32, and which rows are usable."""

    vis: np.ndarray  # (n, 200, 200) float32
    nisp: np.ndarray  # (n, 3, 66, 66) float32, Y J H
    valid: np.ndarray  # (n,) bool
    reasons: list[str | None]  # why a row is invalid (None for valid rows)

    def __len__(self) -> int:
        return len(self.valid)

    @classmethod
    def empty(cls, n: int) -> Cutouts:
        return cls(
            np.zeros((n, *VIS_SHAPE), np.float32),
            np.zeros((n, *NISP_SHAPE), np.float32),
            np.ones(n, dtype=bool),
            [None] * n,
        )


def mark_blank(cutouts: Cutouts, where: Path) -> None:
    """Mark valid rows with a constant (e.g. all-zero) band invalid, with the reason: such an
    image holds no information and its score would mean nothing."""
    for name, images in (("VIS", cutouts.vis), ("NISP", cutouts.nisp)):
        flat = images.reshape(len(images), -1) if len(images) else images.reshape(0, 1)
        with np.errstate(invalid="ignore"):
            blank = np.flatnonzero((flat.max(axis=1) == flat.min(axis=1)) & cutouts.valid)
        for row in blank.tolist():
            cutouts.valid[row] = False
            cutouts.reasons[row] = f"{where}: blank image ({name} constant)"


class CutoutSource(ABC):
    """Objects with pixels, labels and positions; subclasses say where the pixels come from."""

    path: Path
    ids: np.ndarray  # int64
    labels: np.ndarray  # int8, -1 where unknown
    problems: list[Problem]
    label_rule: str | None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    @abstractmethod
    def ra(self) -> np.ndarray: ...

    @property
    @abstractmethod
    def dec(self) -> np.ndarray: ...

    @property
    @abstractmethod
    def catalog(self) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def read(self, indices: Indices) -> Cutouts:
        """Pixels of the objects at these positions (0..len-1), in the order given."""

    def validate(self, indices: Indices | None = None, progress: bool = True) -> np.ndarray:
        """Which of ``indices`` (default all) can be read; a store holds only valid objects."""
        return np.ones(
            len(self._as_indices(range(len(self)) if indices is None else indices)), bool
        )

    def _as_indices(self, indices: Indices) -> np.ndarray:
        """Positions as int64, checked against the length (a clear IndexError, not garbage)."""
        if isinstance(indices, slice):
            return np.arange(len(self), dtype=np.int64)[indices]
        array = np.asarray(indices, dtype=np.int64).reshape(-1)
        if array.size and (array.min() < 0 or array.max() >= len(self)):
            raise IndexError(
                f"{self.path}: index out of range (valid 0..{len(self) - 1}, got "
                f"{int(array.min())}..{int(array.max())})"
            )
        return array

    def content_fingerprint(self) -> str:
        """A short hash that changes when the pixels or labels change, even with the same IDs
        (what a resumed scan checks before reusing old results). Sources that cannot tell
        (this default) hash their IDs and labels only."""
        import hashlib

        digest = hashlib.sha256(np.ascontiguousarray(self.ids, dtype="<i8").tobytes())
        digest.update(np.ascontiguousarray(self.labels, dtype="i1").tobytes())
        return digest.hexdigest()[:16]

    def summary(self) -> str:
        lenses, non = int((self.labels == 1).sum()), int((self.labels == 0).sum())
        unknown = len(self) - lenses - non
        return (
            f"{self.path}: {len(self)} objects ({lenses} lenses, {non} non-lenses, {unknown} "
            f"unlabelled), {len(self.problems)} skipped"
        )


class LayoutSource(CutoutSource):
    """A challenge layout read on the fly (for scanning data that was never packed).

    ``threads`` > 1 reads files concurrently, which helps on high-latency (network) disks only:
    astropy's parsing holds the GIL. Failures are remembered, so ``validate`` followed by
    ``read`` does not report the same file twice.
    """

    def __init__(self, layout: ChallengeLayout, threads: int = 1) -> None:
        self.layout = layout
        self.path = layout.root
        self.ids = layout.ids
        self.labels = layout.labels
        self.problems = list(layout.problems)
        self.label_rule = layout.label_rule
        self.threads = threads
        self.failures: dict[int, str] = {}
        self.repaired_pixels = 0

    @property
    def ra(self) -> np.ndarray:
        return self.layout.ra

    @property
    def dec(self) -> np.ndarray:
        return self.layout.dec

    @property
    def catalog(self) -> dict[str, np.ndarray]:
        return self.layout.catalog

    def content_fingerprint(self) -> str:
        from lensfinder.safety import layout_fingerprint

        files = [self.layout.path(i, band) for i in range(len(self)) for band in EUCLID.bands]
        return layout_fingerprint(self.path, files)

    def _load(self, index: int):
        if index in self.failures:
            return None
        try:
            return self.layout.load(index, want_position=False)
        except BadImage as exc:
            self.failures[index] = f"{exc.path}: {exc.reason}"
            return None

    def read(self, indices: Indices) -> Cutouts:
        positions = self._as_indices(indices)
        out = Cutouts.empty(len(positions))
        if self.threads > 1 and len(positions) > 1:
            with ThreadPoolExecutor(self.threads) as pool:
                loaded = list(pool.map(self._load, positions.tolist()))
        else:
            loaded = [self._load(i) for i in positions.tolist()]
        for row, (index, obj) in enumerate(zip(positions.tolist(), loaded, strict=True)):
            if obj is None:
                out.valid[row] = False
                out.reasons[row] = self.failures[index]
                continue
            out.vis[row] = obj.vis
            out.nisp[row] = obj.nisp
            self.repaired_pixels += obj.repaired_pixels
        return out

    def validate(self, indices: Indices | None = None, progress: bool = True) -> np.ndarray:
        """Read every object once (with a progress bar) to find those that cannot be used."""
        from lensfinder.utils import progress as progress_bar

        positions = self._as_indices(range(len(self)) if indices is None else indices)
        valid = np.ones(len(positions), dtype=bool)
        step = 64
        starts = range(0, len(positions), step)
        if progress:
            starts = progress_bar(starts, total=len(starts), desc="checking files")
        for start in starts:
            valid[start : start + step] = self.read(positions[start : start + step]).valid
        return valid


def is_store(path: str | Path) -> bool:
    """True for a directory that looks like a Zarr store (checked in full by ``open_store``)."""
    return (Path(path) / "zarr.json").is_file()


def open_source(
    path: str | Path, label_rule: str | LabelRule | None = None, keep_unlisted: bool = False
) -> CutoutSource:
    """A packed store or a challenge layout, behind one interface.

    ``keep_unlisted``: a layout keeps objects without a catalogue row, unlabelled (scanning).
    ``label_rule`` applies to layouts (a store keeps the rule it was packed with; asking for a
    different one is an error rather than a silent mismatch).
    """
    from lensfinder.data.store import open_store

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if is_store(path) or path.name.endswith(".partial"):
        source = open_store(path)
        if label_rule is not None and str(label_rule).strip():
            from lensfinder.labels import label_rule as parse

            wanted = str(label_rule if isinstance(label_rule, LabelRule) else parse(label_rule))
            if source.label_rule is not None and wanted != source.label_rule:
                raise DataError(
                    f"{path}: store was packed with label rule '{source.label_rule}', not "
                    f"'{wanted}'; re-pack the layout with the rule you want"
                )
        return source
    return LayoutSource(read_layout(path, label_rule=label_rule, keep_unlisted=keep_unlisted))
