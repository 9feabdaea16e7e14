"""One reading interface over a packed store and an unpacked challenge layout.

Training, prediction and scanning all take a ``CutoutSource`` (``data.cutouts``); ``open_source``
picks the packed store or a layout read on the fly. A row that cannot be read (a bad file, a
damaged store chunk) comes back zero-filled with ``valid=False`` and a reason, so a scan of
millions of files counts bad ones instead of stopping.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from lensfinder.data.challenge import BadImage, ChallengeLayout, read_arc_maps, read_layout
from lensfinder.data.cutouts import VIS_SHAPE, Cutouts, CutoutSource, Indices
from lensfinder.data.store import open_store
from lensfinder.errors import DataError
from lensfinder.labels import LabelRule
from lensfinder.labels import label_rule as parse_label_rule
from lensfinder.safety import layout_fingerprint
from lensfinder.surveys import EUCLID


class LayoutSource(CutoutSource):
    """A challenge layout read on the fly (for scanning data that was never packed).

    ``threads`` > 1 reads files concurrently, which helps on high-latency (network) disks only:
    astropy's parsing holds the GIL. Failures are remembered, so ``check`` (which reads every
    object once) followed by ``read`` does not read a bad file twice.
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

    def arc_maps(self, indices: Indices) -> np.ndarray | None:
        """The layout's arc maps (``SimulateConfig.arc_maps``) of these objects, or None."""
        return read_arc_maps(self.path, self.ids[self._as_indices(indices)], VIS_SHAPE)

    def content_fingerprint(self) -> str:
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
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if is_store(path) or path.name.endswith(".partial"):
        source = open_store(path)
        if label_rule is not None and str(label_rule).strip():
            wanted = str(
                label_rule if isinstance(label_rule, LabelRule) else parse_label_rule(label_rule)
            )
            if source.label_rule is not None and wanted != source.label_rule:
                raise DataError(
                    f"{path}: store was packed with label rule '{source.label_rule}', not "
                    f"'{wanted}'; re-pack the layout with the rule you want"
                )
        return source
    return LayoutSource(read_layout(path, label_rule=label_rule, keep_unlisted=keep_unlisted))


class UnlabelledSource(CutoutSource):
    """``source`` with its labels and catalogue taken away: pixels and positions only."""

    def __init__(self, source: CutoutSource) -> None:
        self._source = source
        self.path = source.path
        self.ids = source.ids
        self.labels = np.full(len(source.ids), -1, dtype=np.int8)
        self.problems = list(source.problems)
        self.label_rule = None

    @property
    def ra(self) -> np.ndarray:
        return self._source.ra

    @property
    def dec(self) -> np.ndarray:
        return self._source.dec

    @property
    def catalog(self) -> dict[str, np.ndarray]:
        return {}

    def read(self, indices: Indices) -> Cutouts:
        return self._source.read(indices)

    def content_fingerprint(self) -> str:
        return self._source.content_fingerprint()

    def to_memory(self) -> None:
        if hasattr(self._source, "to_memory"):
            self._source.to_memory()


def open_unlabelled(path: str | Path) -> UnlabelledSource:
    """A survey field without its labels (``train --adapt``, ``inject``): a store wrapped in
    ``UnlabelledSource``, or a layout listed from its images alone (its catalogue is never
    opened, so a field whose catalogue lacks label columns works too)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such field (expected a packed store or a challenge layout)")
    if is_store(path):
        return UnlabelledSource(open_store(path))
    return UnlabelledSource(LayoutSource(read_layout(path, use_catalog=False)))
