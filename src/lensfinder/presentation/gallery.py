"""The candidate gallery's pictures and page: colour stamps, an HTML page of cards, a mosaic.

``scan.gallery.make_gallery`` chooses the candidates and opens the data the scan read; this
module draws them: colour composites (by default VIS as luminance, NISP for colour, arcsinh
stretch; ``--view`` picks another of ``presentation.composite.VIEWS``), one card per candidate
(rank, score, position, label, known-lens badge, so new ones stand out) and a PNG mosaic.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lensfinder.config import ColourViewConfig
from lensfinder.data.cutouts import CutoutSource
from lensfinder.einstein import format_theta_e
from lensfinder.files import atomic_path, atomic_write_text
from lensfinder.presentation.composite import draw_view, resize_square, save_grid
from lensfinder.stages import progress_bar

STAMP_DIR = "stamps"
READ_CHUNK = 64  # cutouts read at once: the gallery never holds more images than this
PAGE_NAME = "index.html"
MOSAIC_NAME = "mosaic.png"
MIN_CARD_PIXELS = 200  # cards are never narrower than this on the page


@dataclass
class Stamps:
    """What was drawn for each shown candidate (one entry per row of the selection)."""

    paths: list[str | None]  # the stamp's PNG, relative to the gallery; None where not drawn
    problems: list[str | None]  # why not: not in the data, or unreadable
    mosaic_images: list[np.ndarray] = field(default_factory=list)  # drawn with origin='lower'
    mosaic_titles: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class StampStyle:
    softening: float  # asinh softening, in noise sigmas
    pixels: int  # stamp side on the page
    colour: ColourViewConfig = field(default_factory=ColourViewConfig)  # which view, how


def draw_stamps(
    source: CutoutSource,
    index: np.ndarray,
    rows: dict[str, list],
    known: Sequence[str | None],
    out: Path,
    style: StampStyle,
    progress: bool = True,
) -> Stamps:
    """One PNG per candidate under ``out/stamps``: row ``i`` of ``rows`` (``rank``, ``id``,
    ``score``) is ``source`` row ``index[i]`` (-1: not in the data). Reads ``READ_CHUNK``
    cutouts at a time."""
    found = index >= 0
    stamps = Stamps(
        paths=[None] * len(index),
        problems=[None if f else "ID not in the data" for f in found],
    )
    (out / STAMP_DIR).mkdir(parents=True, exist_ok=True)
    positions = np.flatnonzero(found)
    chunks = [positions[i : i + READ_CHUNK] for i in range(0, len(positions), READ_CHUNK)]
    for chunk in progress_bar(chunks, desc="gallery", unit="chunk") if progress else chunks:
        cutouts = source.read(index[chunk])
        for j, pos in enumerate(chunk):
            if not cutouts.valid[j]:
                stamps.problems[pos] = f"unreadable: {cutouts.reasons[j] or 'invalid'}"
                continue
            image = _stamp(cutouts.vis[j], cutouts.nisp[j], style)
            name = f"{STAMP_DIR}/rank{rows['rank'][pos]:06d}-{rows['id'][pos]}.png"
            _save_png(image, out / name)
            stamps.paths[pos] = name
            stamps.mosaic_images.append(np.flipud(image))  # save_grid draws origin='lower'
            mark = " *" if known[pos] else ""
            stamps.mosaic_titles.append(
                f"#{rows['rank'][pos]} {rows['id'][pos]} {rows['score'][pos]:.3f}{mark}"
            )
    return stamps


def _stamp(vis: np.ndarray, nisp: np.ndarray, style: StampStyle) -> np.ndarray:
    image = draw_view(vis, nisp, style.colour.view, style.colour, style.softening)
    # Row 0 of a FITS image is its bottom: flip so the PNG shows it as the mosaic does.
    image = np.ascontiguousarray(np.flipud(image), dtype=np.uint8)
    return resize_square(image, style.pixels)


def write_page(out: Path, title: str, subtitle: str, cards: list[dict[str, Any]], pixels: int):
    """``out/index.html``: one card per row of ``cards`` (keys: rank, id, score, ra, dec, label,
    stamp, problem, known, separation); ``subtitle`` is HTML. Returns its path."""
    path = out / PAGE_NAME
    card_pixels = max(pixels, MIN_CARD_PIXELS)
    atomic_write_text(path, _page(title, subtitle, [_card(c) for c in cards], card_pixels))
    return path


def write_mosaic(stamps: Stamps, out: Path, columns: int) -> Path | None:
    """``out/mosaic.png`` of every drawn stamp, titled; None when none was drawn."""
    if not stamps.mosaic_images:
        return None
    return save_grid(stamps.mosaic_images, stamps.mosaic_titles, out / MOSAIC_NAME, columns)


def _save_png(image: np.ndarray, path: Path) -> None:
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


def _einstein_line(row: dict[str, Any]) -> str:
    """theta_E +- sigma when the scan's models estimated it, else nothing."""
    text = format_theta_e(row.get("theta_e"), row.get("theta_e_sigma"))
    return f'<div class="line">{html.escape(text)}</div>' if text else ""


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
        f'<div class="line">ID {row["id"]}</div>{_einstein_line(row)}'
        f'<div class="line">{_format_coords(row["ra"], row["dec"])}</div>{label}</div>'
    )


def _page(title: str, subtitle: str, cards: list[str], card_pixels: int) -> str:
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE % {'card': card_pixels}}</style>"
        f"</head><body><h1>{html.escape(title)}</h1><div class='meta'>{subtitle}</div>"
        f"<div class='grid'>\n" + "\n".join(cards) + "\n</div></body></html>\n"
    )
