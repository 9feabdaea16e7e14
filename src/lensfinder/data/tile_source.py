"""A catalogue's objects read straight from mosaic tiles, behind the ``CutoutSource`` interface.

Why: ``scan --tiles`` scores a survey without writing a store first, and its gallery reads the
candidates back by ID from the same tiles. Both go through the reader every other stage uses
(``Predictor.predict_source``, ``presentation.gallery.draw_stamps``), so a cutout scored from a
tile is the one ``cutouts`` would have packed: ``plan_cutouts`` chooses each object's tile, and
``cut_tile`` cuts it from the memory-mapped files on every ``read`` (no pixels are kept).

Objects no tile can give whole (outside every tile, on an edge, a broken tile) are the plan's
``problems``, counted by whoever opens the source; objects whose pixels fail on reading (too
many NaN or flagged pixels, a damaged file) come back invalid with the reason, as from a store.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from lensfinder.config import CutoutsConfig, to_dict
from lensfinder.data.cutouts import Cutouts, CutoutSource, Indices
from lensfinder.data.tiles import (
    TilePlan,
    TileTask,
    cut_tile,
    find_tiles,
    plan_cutouts,
    read_catalog,
    validate,
)
from lensfinder.errors import DataError

_NOT_CUTTING = ("chunk", "workers")  # CutoutsConfig fields that change no cutout


class TileSource(CutoutSource):
    """The objects of a ``TilePlan`` (tile by tile, in plan order), cut on every read."""

    def __init__(self, plan: TilePlan, config: CutoutsConfig, catalog_path: Path) -> None:
        self.plan, self.config, self.catalog_path = plan, config, Path(catalog_path)
        self.path = plan.root
        self.ids = plan.ids
        self.labels = plan.labels
        self.problems = list(plan.problems)
        self.label_rule = None
        self._stops = np.array([t.stop for t in plan.tasks], dtype=np.int64)

    @property
    def ra(self) -> np.ndarray:
        return self.plan.ra

    @property
    def dec(self) -> np.ndarray:
        return self.plan.dec

    @property
    def catalog(self) -> dict[str, np.ndarray]:
        return self.plan.catalog

    def read(self, indices: Indices) -> Cutouts:
        """Each tile's objects among ``indices`` cut together (its files opened once)."""
        positions = self._as_indices(indices)
        out = Cutouts.empty(len(positions))
        task_of = np.searchsorted(self._stops, positions, side="right")
        for t in np.unique(task_of).tolist():
            rows = np.flatnonzero(task_of == t)
            where = positions[rows]
            cut = cut_tile(self.plan.tasks[t].tile, self.ra[where], self.dec[where], self.config)
            out.vis[rows], out.nisp[rows] = cut.cutouts.vis, cut.cutouts.nisp
            out.valid[rows] = cut.cutouts.valid
            for row, reason in zip(rows.tolist(), cut.cutouts.reasons, strict=True):
                out.reasons[row] = reason
        return out

    def tile_starts(self) -> list[int]:
        """Plan positions where a tile's run of objects begins: scan shards never cross them,
        so a shard is rows of one tile."""
        starts, previous = [], None
        for task in self.plan.tasks:
            if task.tile.index != previous:
                starts.append(task.start)
                previous = task.tile.index
        return starts

    def rows(self, start: int, stop: int) -> TileSource:
        """Positions ``[start, stop)`` (of one tile) as a source of their own: what a scan
        shard sends its worker, a few arrays of ``stop - start`` values and the tile's paths,
        so no worker reads the catalogue or plans again."""
        first, last = np.searchsorted(self._stops, [start, stop - 1], side="right").tolist()
        tile = self.plan.tasks[first].tile
        if any(task.tile.index != tile.index for task in self.plan.tasks[first : last + 1]):
            raise ValueError(f"rows {start}-{stop} span more than one tile")
        span = slice(start, stop)
        plan = replace(
            self.plan,
            ids=self.plan.ids[span],
            ra=self.plan.ra[span],
            dec=self.plan.dec[span],
            catalog={name: values[span] for name, values in self.plan.catalog.items()},
            problems=[],
            tasks=[TileTask(tile, 0, stop - start)],
            labels=self.plan.labels[span],
        )
        return TileSource(plan, self.config, self.catalog_path)

    def content_fingerprint(self) -> str:
        """The objects, their tiles, the cutting settings, and each file's name, size and
        modification time: a rewritten tile or catalogue gives another key (hashing the pixels
        of 19,200^2 mosaics at every scan start would cost minutes)."""
        digest = hashlib.sha256(self.plan.digest().encode())
        cutting = {k: v for k, v in to_dict(self.config).items() if k not in _NOT_CUTTING}
        digest.update(json.dumps(cutting, sort_keys=True).encode())
        files = [self.catalog_path]
        for task in self.plan.tasks:
            files += [*task.tile.science.values(), *task.tile.flags.values()]
        for path in dict.fromkeys(files):
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
        return digest.hexdigest()[:16]


def open_tiles(
    tiles_dir: str | Path, catalog: str | Path, config: CutoutsConfig | None = None
) -> TileSource:
    """The catalogue's objects (those passing ``config.select``) on the tiles under
    ``tiles_dir``, planned as ``cutouts`` plans them; DataError naming the file for a missing
    directory, catalogue or column."""
    config = config or CutoutsConfig()
    validate(config)
    tiles_dir, catalog = Path(tiles_dir), Path(catalog)
    if not catalog.exists():
        raise DataError(f"{catalog}: no such catalogue file")
    tiles = find_tiles(tiles_dir)
    rows = read_catalog(catalog, config)
    return TileSource(plan_cutouts(tiles, rows, tiles_dir), config, catalog.resolve())
