"""One self-contained HTML page per evaluation: metrics table, plots, extra tables, notes.

Images are embedded as base64 data URIs and the CSS is inline, so the page still works when
moved, archived or mailed; there is no JavaScript and nothing is fetched.
"""

from __future__ import annotations

import base64
import datetime
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lensfinder import __version__
from lensfinder.files import atomic_write_text

REPORT_NAME = "report.html"
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}

_MAX_LIST = 20  # longer lists (e.g. skipped IDs) are cut in the page; the JSON has them all

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       margin: 2rem auto; max-width: 72rem; padding: 0 1.5rem; color: #1d2330;
       background: #fbfbfd; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #d6dae3;
     padding-bottom: 0.2rem; }
.meta { color: #5b6475; font-size: 0.9rem; }
table { border-collapse: collapse; margin: 0.6rem 0; font-size: 0.92rem; }
th, td { padding: 0.3rem 0.7rem; border-bottom: 1px solid #e3e6ed; text-align: right; }
th { background: #eef1f6; font-weight: 600; }
td:first-child, th:first-child { text-align: left; }
tr.main td { font-weight: 600; }
td.none { color: #9aa2b1; font-style: italic; }
.scroll { overflow-x: auto; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; border: 1px solid #e3e6ed; background: white; }
figcaption { color: #5b6475; font-size: 0.85rem; }
.notes { white-space: pre-wrap; background: #f1f3f8; padding: 0.6rem 0.9rem;
         border-radius: 4px; }
ul.small { font-size: 0.88rem; color: #5b6475; }
"""


def _format(value: Any) -> str:
    """A table cell: 4 significant decimals for fractions, plain ints, blanks for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "unresolved"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.4g}"
    if isinstance(value, list | tuple):
        shown = ", ".join(_format(v) for v in value[:_MAX_LIST])
        return shown if len(value) <= _MAX_LIST else f"{shown}, … ({len(value)} in all)"
    return str(value)


def _cell(value: Any) -> str:
    text = html.escape(_format(value))
    css = ' class="none"' if text == "unresolved" else ""
    return f"<td{css}>{text}</td>"


def _is_metrics(value: Any) -> bool:
    return isinstance(value, Mapping) and "auroc" in value


def metric_rows(metrics: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """``(row name, metrics dict)`` pairs from the shapes ``write_report`` accepts:
    one ``compute_metrics`` dict; an evaluation dict with ``overall`` (and ``members``);
    or a mapping of name -> metrics dict."""
    if _is_metrics(metrics):
        return [("model", metrics)]
    if _is_metrics(metrics.get("overall")):
        members = metrics.get("members") or {}
        name = metrics.get("overall_name") or ("ensemble" if members else "model")
        return [(str(name), metrics["overall"])] + [(str(k), v) for k, v in members.items()]
    rows = [(str(k), v) for k, v in metrics.items() if _is_metrics(v)]
    if not rows:
        raise ValueError("metrics holds no metrics dict (one with an 'auroc' entry)")
    return rows


def _metrics_table(rows: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    fprs = list(dict.fromkeys(k for _, row in rows for k in row.get("tpr_at_fpr", {})))
    tops = list(dict.fromkeys(k for _, row in rows for k in row.get("purity_top", {})))
    level = rows[0][1].get("auroc_ci_level", 0.95)
    head = ["", "objects", "lenses", "AUROC", f"{level:.0%} CI", "TPR0", "TPR10"]
    head += [f"TPR @ FPR {k}" for k in fprs] + [f"purity top {k}" for k in tops]
    lines = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for index, (name, row) in enumerate(rows):
        ci = row.get("auroc_ci")
        values = [row.get("n"), row.get("n_lenses"), row.get("auroc"),
                  "–" if ci is None else f"{ci[0]:.4f} – {ci[1]:.4f}",
                  row.get("tpr0"), row.get("tpr10")]  # fmt: skip
        values += [row.get("tpr_at_fpr", {}).get(k) for k in fprs]
        values += [row.get("purity_top", {}).get(k) for k in tops]
        css = ' class="main"' if index == 0 and len(rows) > 1 else ""
        cells = f"<td>{html.escape(name)}</td>" + "".join(_cell(v) for v in values)
        lines.append(f"<tr{css}>{cells}</tr>")
    return '<div class="scroll"><table>' + "\n".join(lines) + "</table></div>"


def survey_rows(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The survey terms of one metrics dict: a row per prevalence and completeness."""
    rows = []
    for prevalence, levels in (metrics.get("survey") or {}).items():
        for level, point in levels.items():
            if point is not None:
                rows.append(
                    {
                        "prevalence": prevalence,
                        "completeness wanted": level,
                        "completeness": point["completeness"],
                        "FPR": point["fpr"],
                        "expected purity": point["purity"],
                        "candidates per million": point["per_million"],
                    }
                )
    return rows


def _generic_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "<p class='meta'>(empty)</p>"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["<tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in columns) + "</tr>"]
    for row in rows:
        lines.append("<tr>" + "".join(_cell(row.get(c)) for c in columns) + "</tr>")
    return '<div class="scroll"><table>' + "\n".join(lines) + "</table></div>"


def _run_info(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Top-level settings of an evaluation dict (data, split, counts...) as key/value rows;
    a flat mapping is shown as ``key: value`` pairs, deeper structures are left to the JSON."""
    rows = []
    for key, value in metrics.items():
        if key in ("overall", "members", "overall_name"):
            continue
        if isinstance(value, Mapping):
            if any(isinstance(v, Mapping | list | tuple) for v in value.values()):
                continue
            value = ", ".join(f"{k}: {_format(v)}" for k, v in value.items()) or "none"
        rows.append({"setting": key, "value": value})
    return rows


def _image(path: Path) -> str:
    mime = _MIME.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"{path}: cannot embed a {path.suffix or 'suffix-less'} file as an image")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = html.escape(path.stem.replace("_", " "))
    return (
        f'<figure><img alt="{caption}" src="data:{mime};base64,{data}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _head(title: str) -> list[str]:
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">lensfinder {__version__} · {html.escape(stamp)}</p>',
    ]


def _metrics_section(rows: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """The metrics table, its rows' notes, what the metrics mean, and the survey estimate."""
    parts = ["<h2>Metrics</h2>", _metrics_table(rows)]
    row_notes = list(dict.fromkeys(n for _, row in rows for n in row.get("notes", ())))
    if row_notes:
        parts.append(
            '<ul class="small">'
            + "".join(f"<li>{html.escape(n)}</li>" for n in row_notes)
            + "</ul>"
        )
    parts.append(
        '<p class="meta">AUROC: Mann-Whitney estimate (ties count 1/2), CI by stratified '
        "bootstrap. TPR0 / TPR10: highest true positive rate with no / fewer than ten false "
        "positives, tied scores taken together (Metcalf et al. 2019). Purity: fraction of lenses "
        "among the top N.</p>"
    )
    survey = survey_rows(rows[0][1])
    if survey:
        parts += [
            "<h2>At survey prevalence</h2>",
            _generic_table(survey),
            '<p class="meta">The threshold that reaches each completeness on this set, applied '
            "to a survey where lenses are this rare: expected purity of the candidate list and "
            "how many candidates people must inspect per million galaxies.</p>",
        ]
    return parts


def _gallery_section(title: str, image: str | Path | None, rows: Sequence[Mapping[str, Any]]):
    parts = [f"<h2>{html.escape(title)}</h2>"]
    if image is not None:
        parts.append(_image(Path(image)))
    return [*parts, _generic_table(rows)]


def write_report(
    out_dir: str | Path,
    title: str,
    metrics: Mapping[str, Any],
    images: Iterable[str | Path],
    tables: Iterable[tuple[str, Sequence[Mapping[str, Any]]]] = (),
    notes: str = "",
    galleries: Iterable[tuple[str, str | Path | None, Sequence[Mapping[str, Any]]]] = (),
) -> Path:
    """Write ``out_dir/report.html`` and return its path.

    ``metrics``: one ``compute_metrics`` dict, an evaluation dict (``overall`` + optional
    ``members`` + top-level settings shown as a table), or a mapping name -> metrics dict.
    ``images`` are embedded (PNG, JPEG or SVG); ``tables`` are extra ``(title, rows)`` tables;
    ``galleries`` are ``(title, mosaic image or None, rows)`` sections (e.g. failure galleries).
    """
    parts = [*_head(title), *_metrics_section(metric_rows(metrics))]
    info = _run_info(metrics) if not _is_metrics(metrics) else []
    if info:
        parts += ["<h2>Run</h2>", _generic_table(info)]
    if notes:
        parts += ["<h2>Notes</h2>", f'<div class="notes">{html.escape(notes)}</div>']
    figures = [_image(Path(p)) for p in images]
    if figures:
        parts += ["<h2>Plots</h2>", *figures]
    for table_title, table_rows in tables:
        parts += [f"<h2>{html.escape(table_title)}</h2>", _generic_table(table_rows)]
    for gallery in galleries:
        parts += _gallery_section(*gallery)
    parts.append("</body></html>\n")
    path = Path(out_dir) / REPORT_NAME
    atomic_write_text(path, "\n".join(parts))
    return path
