"""A gallery of candidates for inspection by eye: an HTML page of colour stamps and a PNG mosaic.

The top candidates (or those in a score range, to look at borderline cases and false positives)
are read back from the data by ID and drawn as colour composites: VIS as luminance, NISP for
colour, arcsinh stretch (``lensfinder.visual``). Known lenses get a badge, so new ones stand out.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lensfinder.config import GalleryConfig
from lensfinder.data import open_source
from lensfinder.data.cutouts import CutoutSource
from lensfinder.data.identity import index_of_ids
from lensfinder.errors import ConfigError, DataError
from lensfinder.safety import GALLERY
from lensfinder.scan.catalog import read_candidates, table_meta
from lensfinder.scan.crossmatch import flag_known_lenses
from lensfinder.stages import progress_bar, run_stage
from lensfinder.utils import atomic_path, atomic_write_text
from lensfinder.visual import colour_composite, resize_square, save_grid

STAMP_DIR = "stamps"
READ_CHUNK = 64  # cutouts read at once: the gallery never holds more images than this
SCAN_MANIFEST = "scan.json"  # what 'lensfinder scan' records beside its catalogue


def open_scanned_data(candidates: str | Path, data: str | Path) -> CutoutSource:
    """The data a scan scored, opened as the scan opened it (objects without a catalogue row
    kept). Refused when the scan's ``scan.json`` records other content: another layout with the
    same IDs would put other objects' images beside the scan's scores."""
    candidates, data = Path(candidates), Path(data)
    source = open_source(data, keep_unlisted=True)
    manifest = (candidates if candidates.is_dir() else candidates.parent) / SCAN_MANIFEST
    if not manifest.is_file():
        return source  # a catalogue made elsewhere: nothing records what it scored
    try:
        recorded = json.loads(manifest.read_text())
        scored = recorded.get("data_content") if isinstance(recorded, dict) else None
    except (OSError, ValueError) as exc:
        raise DataError(f"{manifest}: unreadable scan manifest ({exc})") from None
    if not scored:
        return source  # a scan older than content fingerprints
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
    import pyarrow.compute as pc

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


def _save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def _format_coords(ra: float, dec: float) -> str:
    if not (np.isfinite(ra) and np.isfinite(dec)):
        return "no coordinates"
    return f"RA {ra:.5f}&deg; Dec {dec:+.5f}&deg;"


_LABELS = {1: "lens", 0: "non-lens"}

_STYLE = """
body { background:#111418; color:#d8dee9; font-family:system-ui,sans-serif; margin:24px; }
h1 { font-weight:500; margin:0 0 4px 0; } .meta { color:#8a94a6; margin-bottom:20px; }
.grid { display:grid; grid-template-columns:repeat(auto-fill,minmax(%(card)dpx,1fr)); gap:14px; }
.card { background:#1b2028; border-radius:8px; padding:8px; position:relative; }
.card img { width:100%%; image-rendering:auto; border-radius:4px; display:block; }
.none { aspect-ratio:1; display:flex; align-items:center; justify-content:center;
  background:#000; color:#bf616a; border-radius:4px; text-align:center; padding:4px; }
.rank { font-size:1.1em; font-weight:600; color:#ebcb8b; } .score { float:right; color:#a3be8c; }
.line { font-size:0.85em; color:#aeb6c4; margin-top:3px; }
.badge { position:absolute; top:14px; left:14px; background:#b48eadee; color:#fff;
  font-size:0.8em; padding:2px 6px; border-radius:4px; }
.lens { color:#88c0d0; } .nonlens { color:#8a94a6; }
"""


def _card(row: dict[str, Any]) -> str:
    esc = html.escape
    if row["stamp"]:
        image = (
            f'<a href="{esc(row["stamp"])}"><img src="{esc(row["stamp"])}" alt="{row["id"]}"></a>'
        )
    else:
        image = f'<div class="none">{esc(row["problem"] or "no image")}</div>'
    badge = ""
    if row["known"]:
        badge = (
            f'<span class="badge" title="{row["separation"]:.2f} arcsec">'
            f"known: {esc(row['known'])}</span>"
        )
    label = ""
    if row["label"] in _LABELS:
        kind = "lens" if row["label"] == 1 else "nonlens"
        label = f'<div class="line {kind}">label: {_LABELS[row["label"]]}</div>'
    return (
        f'<div class="card">{image}{badge}'
        f'<div class="line"><span class="rank">#{row["rank"]}</span>'
        f'<span class="score">{row["score"]:.4f}</span></div>'
        f'<div class="line">ID {row["id"]}</div>'
        f'<div class="line">{_format_coords(row["ra"], row["dec"])}</div>{label}</div>'
    )


def _page(title: str, subtitle: str, cards: list[str], card_pixels: int) -> str:
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE % {'card': card_pixels}}</style>"
        f"</head><body><h1>{html.escape(title)}</h1><div class='meta'>{subtitle}</div>"
        f"<div class='grid'>\n" + "\n".join(cards) + "\n</div></body></html>\n"
    )


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


def _write_gallery(
    candidates: str | Path,
    data: str | Path,
    out: Path,
    cfg: GalleryConfig | None,
    progress: bool,
) -> GalleryResult:
    """``make_gallery`` once it holds the lock of ``out``."""
    cfg = cfg or GalleryConfig()
    score_range, known_lenses, radius_arcsec = cfg.score_range, cfg.known_lenses, cfg.radius_arcsec
    out = Path(out)
    catalogue = read_candidates(candidates)
    chosen, n_matched = select_candidates(catalogue, cfg.top, score_range)
    rows = chosen.to_pydict()
    n = chosen.num_rows
    ids = np.asarray(rows["id"], dtype=np.int64)
    ra = np.asarray(_column(rows, "ra", n, np.nan), dtype=np.float64)
    dec = np.asarray(_column(rows, "dec", n, np.nan), dtype=np.float64)
    labels = [(-1 if v is None else int(v)) for v in _column(rows, "label", n, -1)]

    known_names: list[str | None] = [None] * n
    separation = np.full(n, np.nan)
    if known_lenses is not None:
        _, known_names, separation = flag_known_lenses(ra, dec, known_lenses, radius_arcsec)

    source = open_scanned_data(candidates, data)
    index = index_of_ids(np.asarray(source.ids, dtype=np.int64), ids)
    found = index >= 0

    stamps: list[str | None] = [None] * n
    problems: list[str | None] = [None if f else "ID not in the data" for f in found]
    images: list[np.ndarray] = []
    titles: list[str] = []
    (out / STAMP_DIR).mkdir(parents=True, exist_ok=True)
    positions = np.flatnonzero(found)
    chunks = [positions[i : i + READ_CHUNK] for i in range(0, len(positions), READ_CHUNK)]
    for chunk in progress_bar(chunks, desc="gallery", unit="chunk") if progress else chunks:
        cutouts = source.read(index[chunk])
        for j, pos in enumerate(chunk):
            if not cutouts.valid[j]:
                problems[pos] = f"unreadable: {cutouts.reasons[j] or 'invalid'}"
                continue
            image = colour_composite(cutouts.vis[j], cutouts.nisp[j], cfg.asinh_softening)
            # Row 0 of a FITS image is its bottom: flip so the PNG shows it as the mosaic does.
            image = np.ascontiguousarray(np.flipud(image), dtype=np.uint8)
            image = resize_square(image, cfg.stamp_pixels)
            name = f"{STAMP_DIR}/rank{rows['rank'][pos]:06d}-{ids[pos]}.png"
            _save_png(image, out / name)
            stamps[pos] = name
            images.append(np.flipud(image))  # save_grid draws with origin='lower'
            mark = " *" if known_names[pos] else ""
            titles.append(f"#{rows['rank'][pos]} {ids[pos]} {rows['score'][pos]:.3f}{mark}")

    cards = [
        _card(
            {
                "rank": rows["rank"][i],
                "id": int(ids[i]),
                "score": float(rows["score"][i]),
                "ra": float(ra[i]),
                "dec": float(dec[i]),
                "label": labels[i],
                "stamp": stamps[i],
                "problem": problems[i],
                "known": known_names[i],
                "separation": float(separation[i]),
            }
        )
        for i in range(n)
    ]
    models = table_meta(catalogue).get("models", [])
    model_text = ", ".join(m.get("name", "?") for m in models) if models else "unknown models"
    what = (
        f"score in [{score_range[0]:g}, {score_range[1]:g}]: {n_matched} candidates, "
        f"showing the top {n}"
        if score_range is not None
        else f"top {n} of {catalogue.num_rows} scored cutouts"
    )
    subtitle = html.escape(f"{what} · models: {model_text} · data: {data}")
    if known_lenses is not None:
        subtitle += html.escape(
            f" · known lenses from {known_lenses} within {radius_arcsec:g} arcsec: "
            f"{sum(k is not None for k in known_names)}"
        )
    html_path = out / "index.html"
    card_pixels = max(cfg.stamp_pixels, 200)
    atomic_write_text(html_path, _page("lensfinder candidates", subtitle, cards, card_pixels))

    mosaic = None
    if images:
        mosaic = out / "mosaic.png"
        save_grid(images, titles, mosaic, columns=cfg.columns)
    shown = [
        {
            "rank": int(rows["rank"][i]),
            "id": int(ids[i]),
            "score": float(rows["score"][i]),
            "stamp": stamps[i],
            "known_lens": known_names[i],
            "problem": problems[i],
        }
        for i in range(n)
    ]
    atomic_write_text(out / "gallery.json", json.dumps(shown, indent=1) + "\n")
    return GalleryResult(
        out=out,
        html=html_path,
        mosaic=mosaic,
        n_selected=n_matched,
        n_shown=n,
        n_missing=int((~found).sum()),
        n_unreadable=sum(1 for p in problems if p and p.startswith("unreadable")),
        n_known=sum(k is not None for k in known_names),
        score_range=None if score_range is None else (float(score_range[0]), float(score_range[1])),
    )
