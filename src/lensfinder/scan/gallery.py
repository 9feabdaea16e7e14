"""The ``gallery`` verb: candidates of a scan chosen, checked against the data, and drawn.

The top candidates (or those in a score range, to look at borderline cases and false positives)
are read back by ID from the data the scan read (refused when it is other data) and drawn by
``presentation.gallery``; known lenses are flagged by ``scan.crossmatch``. The drawing lives in
the presentation layer, the choice here: it needs the scan's catalogue and manifest.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from lensfinder.config import CutoutsConfig, GalleryConfig, from_dict
from lensfinder.data import open_source
from lensfinder.data.cutouts import CutoutSource
from lensfinder.data.identity import index_of_ids
from lensfinder.data.tile_source import open_tiles
from lensfinder.einstein import THETA_E, THETA_E_SIGMA
from lensfinder.errors import ConfigError, DataError
from lensfinder.files import atomic_write_text
from lensfinder.presentation.gallery import (
    Stamps,
    StampStyle,
    draw_stamps,
    write_mosaic,
    write_page,
)
from lensfinder.safety import GALLERY
from lensfinder.scan.catalog import read_candidates, table_meta
from lensfinder.scan.crossmatch import flag_known_lenses
from lensfinder.stages import run_stage

SCAN_MANIFEST = "scan.json"  # what 'lensfinder scan' records beside its catalogue
PAGE_TITLE = "lensfinder candidates"


def _recorded_scan(candidates: Path) -> tuple[Path, dict[str, Any] | None]:
    """The scan's ``scan.json`` beside the catalogue and what it holds (None: no such file)."""
    manifest = (candidates if candidates.is_dir() else candidates.parent) / SCAN_MANIFEST
    if not manifest.is_file():
        return manifest, None  # a catalogue made elsewhere: nothing records what it scored
    try:
        recorded = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{manifest}: unreadable scan manifest ({exc})") from None
    return manifest, recorded if isinstance(recorded, dict) else {}


def _open_as_scanned(data: Path, recorded: dict[str, Any] | None) -> CutoutSource:
    """``data`` opened as the scan opened it: a store or layout with objects without a
    catalogue row kept; for a scan from tiles, ``data`` is the tiles directory and the
    catalogue and its settings (columns, selection, flag mask) are the recorded ones, so
    the candidates are cut again exactly as they were scored."""
    if recorded is None or "catalog" not in recorded:
        return open_source(data, keep_unlisted=True)
    settings = (recorded.get("config") or {}).get("cutouts") or {}
    cutouts = from_dict(CutoutsConfig, settings, "scan.json config.cutouts")
    return open_tiles(data, recorded["catalog"], cutouts)


def open_scanned_data(candidates: str | Path, data: str | Path) -> CutoutSource:
    """The data a scan scored, opened as the scan opened it (objects without a catalogue row
    kept; a scan from tiles reads its tiles, ``data``, with the catalogue it recorded).
    Refused when the scan's ``scan.json`` records other content: another layout with the
    same IDs would put other objects' images beside the scan's scores."""
    candidates, data = Path(candidates), Path(data)
    manifest, recorded = _recorded_scan(candidates)
    source = _open_as_scanned(data, recorded)
    scored = (recorded or {}).get("data_content")
    if not scored or recorded is None:
        return source  # made elsewhere, or a scan older than content fingerprints
    actual = source.content_fingerprint()
    if scored != actual:
        raise DataError(
            f"{data}: not the data this scan scored ({manifest} records content {scored}, "
            f"this data has {actual}: other objects, pixels, catalogue or "
            f"labels under the same IDs, or files rewritten since); give the data it read, "
            f"{recorded.get('data', '?')}"
        )
    return source


@dataclass
class GalleryResult:
    out: Path
    html: Path
    mosaic: Path | None
    n_selected: int  # candidates that passed the selection (top N, or in the score range)
    n_shown: int
    n_missing: int  # IDs not found in the data
    n_unreadable: int
    n_known: int  # matched to a known lens
    score_range: tuple[float, float] | None = None

    def summary(self) -> str:
        what = (
            f"score in [{self.score_range[0]:g}, {self.score_range[1]:g}]"
            if self.score_range
            else "top candidates"
        )
        lines = [f"gallery of {self.n_shown} candidates ({what}) -> {self.html}"]
        if self.score_range and self.n_selected > self.n_shown:
            lines.append(f"{self.n_selected} candidates matched; showing the highest-scoring ones")
        if self.mosaic:
            lines.append(f"mosaic: {self.mosaic}")
        if self.n_known:
            lines.append(f"{self.n_known} shown candidates are known lenses")
        if self.n_missing or self.n_unreadable:
            lines.append(
                f"{self.n_missing} IDs not in the data, {self.n_unreadable} cutouts unreadable"
            )
        return "\n".join(lines)


def select_candidates(table, top: int, score_range: tuple[float, float] | None = None):
    """Rows to show, best first: the top ``top``, or (up to ``top``) those in ``score_range``.

    Returns ``(rows, n_matched)`` where ``rows`` is a pyarrow table.
    """
    if top < 1:
        raise ConfigError(f"gallery top must be at least 1, got {top}")
    if score_range is not None:
        low, high = float(score_range[0]), float(score_range[1])
        if not low <= high:
            raise ConfigError(f"gallery score range [{low}, {high}] is empty")
        keep = pc.and_(pc.greater_equal(table["score"], low), pc.less_equal(table["score"], high))
        table = table.filter(keep)
    table = table.sort_by([("score", "descending"), ("rank", "ascending")])
    return table.slice(0, top), table.num_rows


def _column(rows: dict[str, list], name: str, n: int, fill: Any) -> list:
    return rows[name] if name in rows else [fill] * n


def make_gallery(
    candidates: str | Path,
    data: str | Path,
    out: str | Path,
    cfg: GalleryConfig | None = None,
    progress: bool = True,
) -> GalleryResult:
    """Write ``out/index.html`` (cards with stamp, rank, score, position, label, known-lens badge),
    ``out/stamps/*.png`` and ``out/mosaic.png`` for the candidates ``cfg`` chooses."""
    with run_stage("gallery", GALLERY, out, [candidates, data], progress=progress) as stage:
        return stage.finish(_write_gallery(candidates, data, stage.out, cfg, stage.progress))


@dataclass
class _Chosen:
    """The candidates to show, as columns, with their known-lens matches."""

    rows: dict[str, list]  # rank, id, score, ...: the catalogue's columns
    n_matched: int  # candidates that passed the selection
    n_scored: int  # rows of the whole catalogue
    ids: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    labels: list[int]
    known: list[str | None]
    separation: np.ndarray
    # The Einstein-radius estimate, when the scan's models had the head (None otherwise).
    theta_e: list[float | None]
    theta_e_sigma: list[float | None]

    @property
    def n(self) -> int:
        return len(self.ids)


def _choose(catalogue: Any, cfg: GalleryConfig) -> _Chosen:
    """The rows ``cfg`` selects, and which of them are known lenses."""
    chosen, n_matched = select_candidates(catalogue, cfg.top, cfg.score_range)
    rows = chosen.to_pydict()
    n = chosen.num_rows
    ra = np.asarray(_column(rows, "ra", n, np.nan), dtype=np.float64)
    dec = np.asarray(_column(rows, "dec", n, np.nan), dtype=np.float64)
    known: list[str | None] = [None] * n
    separation = np.full(n, np.nan)
    if cfg.known_lenses is not None:
        _, known, separation = flag_known_lenses(ra, dec, cfg.known_lenses, cfg.radius_arcsec)
    return _Chosen(
        rows=rows,
        n_matched=n_matched,
        n_scored=catalogue.num_rows,
        ids=np.asarray(rows["id"], dtype=np.int64),
        ra=ra,
        dec=dec,
        labels=[(-1 if v is None else int(v)) for v in _column(rows, "label", n, -1)],
        known=known,
        separation=separation,
        theta_e=_column(rows, THETA_E, n, None),
        theta_e_sigma=_column(rows, THETA_E_SIGMA, n, None),
    )


def _cards(chosen: _Chosen, stamps: Stamps) -> list[dict[str, Any]]:
    return [
        {
            "rank": chosen.rows["rank"][i],
            "id": int(chosen.ids[i]),
            "score": float(chosen.rows["score"][i]),
            "ra": float(chosen.ra[i]),
            "dec": float(chosen.dec[i]),
            "label": chosen.labels[i],
            "stamp": stamps.paths[i],
            "problem": stamps.problems[i],
            "known": chosen.known[i],
            "separation": float(chosen.separation[i]),
            "theta_e": chosen.theta_e[i],
            "theta_e_sigma": chosen.theta_e_sigma[i],
        }
        for i in range(chosen.n)
    ]


def _subtitle(chosen: _Chosen, catalogue: Any, data: str | Path, cfg: GalleryConfig) -> str:
    """The page's subtitle (HTML): what was selected, by which models, from which data."""
    models = table_meta(catalogue).get("models", [])
    model_text = ", ".join(m.get("name", "?") for m in models) if models else "unknown models"
    score_range = cfg.score_range
    what = (
        f"score in [{score_range[0]:g}, {score_range[1]:g}]: {chosen.n_matched} candidates, "
        f"showing the top {chosen.n}"
        if score_range is not None
        else f"top {chosen.n} of {chosen.n_scored} scored cutouts"
    )
    subtitle = html.escape(f"{what} · models: {model_text} · data: {data}")
    if cfg.known_lenses is not None:
        subtitle += html.escape(
            f" · known lenses from {cfg.known_lenses} within {cfg.radius_arcsec:g} arcsec: "
            f"{sum(k is not None for k in chosen.known)}"
        )
    return subtitle


def _finite(value: Any) -> float | None:
    """A JSON-safe number: None for a missing or non-finite one."""
    return float(value) if value is not None and np.isfinite(value) else None


def _theta_e_record(chosen: _Chosen, i: int) -> dict[str, float | None]:
    """theta_E and its sigma for gallery.json; nothing when the models had no head."""
    if chosen.theta_e[i] is None:
        return {}
    return {THETA_E: _finite(chosen.theta_e[i]), THETA_E_SIGMA: _finite(chosen.theta_e_sigma[i])}


def _write_record(out: Path, chosen: _Chosen, stamps: Stamps) -> None:
    """``out/gallery.json``: what each shown candidate is and where its stamp is."""
    shown = [
        {
            "rank": int(chosen.rows["rank"][i]),
            "id": int(chosen.ids[i]),
            "score": float(chosen.rows["score"][i]),
            "stamp": stamps.paths[i],
            "known_lens": chosen.known[i],
            "problem": stamps.problems[i],
            **_theta_e_record(chosen, i),
        }
        for i in range(chosen.n)
    ]
    atomic_write_text(out / "gallery.json", json.dumps(shown, indent=1) + "\n")


def _write_gallery(
    candidates: str | Path,
    data: str | Path,
    out: Path,
    cfg: GalleryConfig | None,
    progress: bool,
) -> GalleryResult:
    """``make_gallery`` once it holds the lock of ``out``."""
    cfg = cfg or GalleryConfig()
    out = Path(out)
    catalogue = read_candidates(candidates)
    chosen = _choose(catalogue, cfg)
    source = open_scanned_data(candidates, data)
    index = index_of_ids(np.asarray(source.ids, dtype=np.int64), chosen.ids)
    style = StampStyle(softening=cfg.asinh_softening, pixels=cfg.stamp_pixels, colour=cfg.colour)
    stamps = draw_stamps(source, index, chosen.rows, chosen.known, out, style, progress)
    subtitle = _subtitle(chosen, catalogue, data, cfg)
    html_path = write_page(out, PAGE_TITLE, subtitle, _cards(chosen, stamps), cfg.stamp_pixels)
    mosaic = write_mosaic(stamps, out, cfg.columns)
    _write_record(out, chosen, stamps)
    score_range = cfg.score_range
    return GalleryResult(
        out=out,
        html=html_path,
        mosaic=mosaic,
        n_selected=chosen.n_matched,
        n_shown=chosen.n,
        n_missing=int((index < 0).sum()),
        n_unreadable=sum(1 for p in stamps.problems if p and p.startswith("unreadable")),
        n_known=sum(k is not None for k in chosen.known),
        score_range=None if score_range is None else (float(score_range[0]), float(score_range[1])),
    )
