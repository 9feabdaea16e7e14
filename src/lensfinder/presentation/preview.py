"""A PNG grid of sample cutouts of a challenge layout, to look at what was simulated.

Works on any layout (simulated or the real challenge data): images are read back from the FITS
files, labels come from the catalogue through the label rule, and the simulator's truth (object
type, Einstein radius) is shown when its row files are there.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lensfinder import layout
from lensfinder.labels import label_rule as parse_rule
from lensfinder.presentation.composite import colour_composite, save_grid
from lensfinder.surveys import EUCLID, Survey


def read_catalogue(path: Path) -> dict[int, dict[str, float]]:
    """Rows of a challenge catalogue by ID (empty or unreadable fields become NaN)."""
    rows: dict[int, dict[str, float]] = {}
    with open(path, newline="") as handle:
        lines = (line for line in handle if not line.lstrip().startswith("#"))
        reader = csv.reader(lines)
        header = next(reader, None)
        if header is None:
            return rows
        names = [h.strip() for h in header]
        for fields in reader:
            values: dict[str, float] = {}
            for name, text in zip(names, fields, strict=False):
                if not name:
                    continue
                try:
                    values[name] = float(text)
                except ValueError:
                    values[name] = math.nan
            if math.isfinite(values.get("ID", math.nan)):
                rows[int(values["ID"])] = values
    return rows


def _listed_ids(root: Path, survey: Survey) -> list[int]:
    reference = survey.band(survey.reference_band)
    ids = []
    for path in layout.band_dir(root, reference).glob("*.fits"):
        parsed = layout.parse_image_name(path.name)
        if parsed is not None:
            ids.append(parsed[1])
    return sorted(ids)


def _title(object_id: int, label: int | None, row: dict[str, float], meta: dict) -> str:
    status = {1: "LENS", 0: "non-lens", None: "?"}[label]
    kind = meta.get("kind")
    if kind == "lens":
        kind = f"lens/{meta.get('central_type')}"
    theta_e = meta.get("theta_e")
    if theta_e is None and math.isfinite(row.get("ein_area", math.nan)):
        theta_e = math.sqrt(row["ein_area"] / math.pi)
    second = " ".join(
        part
        for part in (
            kind,
            f'θE={theta_e:.2f}"' if theta_e is not None and math.isfinite(theta_e) else "",
            f"μ={row['mag_eff']:.1f}" if math.isfinite(row.get("mag_eff", math.nan)) else "",
        )
        if part
    )
    return f"{object_id} {status}\n{second}"


def write_preview(
    layout_dir: str | Path,
    out_png: str | Path,
    n: int = 24,
    label_rule: str | None = None,
    survey: Survey = EUCLID,
    truth: Callable[[int], dict[str, Any] | None] | None = None,
) -> Path | None:
    """Write a grid of up to ``n`` colour composites (half lenses where labels are known);
    returns the PNG path, or None when the layout has no complete objects. ``truth``: an
    object's simulator record (``{"row": ..., "meta": ...}``), for titles with what was drawn."""
    from astropy.io import fits

    root = Path(layout_dir)
    catalogue_file = layout.catalog_path(root)
    catalogue = read_catalogue(catalogue_file) if catalogue_file.is_file() else {}
    rule = parse_rule(label_rule)
    ids = [
        i
        for i in _listed_ids(root, survey)
        if all(layout.image_path(root, b, i).is_file() for b in survey.bands)
    ]
    labels: dict[int, int | None] = {}
    for object_id in ids:
        row = catalogue.get(object_id)
        if row is None or any(c not in row for c in rule.columns):
            labels[object_id] = None
        else:
            labels[object_id] = int(rule.apply({c: np.array([row[c]]) for c in rule.columns})[0])
    lenses = [i for i in ids if labels[i] == 1]
    others = [i for i in ids if labels[i] != 1]
    chosen = lenses[: n // 2]
    chosen += others[: n - len(chosen)]
    chosen += [i for i in lenses[n // 2 :]][: n - len(chosen)]
    chosen.sort()
    if not chosen:
        return None

    images, titles = [], []
    reference = survey.reference_band
    colour_bands = [b for b in survey.bands if b.name != reference]
    for object_id in chosen:
        vis = fits.getdata(layout.image_path(root, survey.band(reference), object_id))
        nisp = np.stack([fits.getdata(layout.image_path(root, b, object_id)) for b in colour_bands])
        images.append(colour_composite(vis.astype(np.float32), nisp.astype(np.float32)))
        record = (truth(object_id) if truth else None) or {}
        row = catalogue.get(object_id) or record.get("row", {})
        titles.append(_title(object_id, labels[object_id], row, record.get("meta", {})))
    return save_grid(images, titles, out_png, columns=6)
