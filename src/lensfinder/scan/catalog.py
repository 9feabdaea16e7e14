"""Candidate tables: the Parquet schema of a shard, checking shards, and the merged catalogue.

One row per scored cutout: ``id``, ``score``, ``score_<member>`` for each member of an ensemble,
``theta_e`` and ``theta_e_sigma`` (the Einstein radius and its 1-sigma in arcsec; only when the
models have the Einstein-radius head), ``ra``, ``dec`` (NaN without WCS), for a scan from tiles
``tile_index``, ``tile_x``, ``tile_y`` (the object's VIS pixel on the tile it was cut from), and
``label`` (-1 unknown; only when the data has labels).
Provenance (models, lensfinder version, skip counts) lives in the Parquet key-value metadata under
``lensfinder``, so a catalogue file says how it was made.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lensfinder.einstein import THETA_E, THETA_E_SIGMA
from lensfinder.errors import DataError
from lensfinder.files import atomic_path, read_table

META_KEY = b"lensfinder"
CANDIDATES_PARQUET = "candidates.parquet"
CANDIDATES_CSV = "candidates.csv"
_STANDARD_COLUMNS = ("rank", "id", "score", "ra", "dec", "label")


def member_columns(names: Sequence[str]) -> list[str]:
    """``score_<name>`` per ensemble member, made column-safe and unique."""
    columns: list[str] = []
    for index, name in enumerate(names):
        safe = re.sub(r"[^A-Za-z0-9_]+", "_", str(name)).strip("_") or f"m{index}"
        column = f"score_{safe}"
        if column in columns or column == "score_":
            column = f"score_{safe}_{index}"
        columns.append(column)
    return columns


def shard_table(
    ids: np.ndarray,
    scores: np.ndarray,
    member_scores: np.ndarray | None,
    member_names: Sequence[str],
    ra: np.ndarray,
    dec: np.ndarray,
    labels: np.ndarray | None,
    meta: Mapping[str, Any],
    theta_e: np.ndarray | None = None,
    theta_e_sigma: np.ndarray | None = None,
    extra: Mapping[str, np.ndarray] | None = None,
):
    """The Arrow table of one shard, provenance attached as schema metadata; theta_E columns
    only when given (models without the head give none, not empty ones); ``extra`` columns
    (a scan from tiles: ``tile_index``, ``tile_x``, ``tile_y``) after the position."""
    import pyarrow as pa

    columns: dict[str, Any] = {
        "id": pa.array(np.asarray(ids, dtype=np.int64)),
        "score": pa.array(np.asarray(scores, dtype=np.float64)),
    }
    if member_scores is not None and len(member_names) > 1:
        member_scores = np.asarray(member_scores, dtype=np.float64).reshape(len(member_names), -1)
        for column, values in zip(member_columns(member_names), member_scores, strict=True):
            columns[column] = pa.array(values)
    for name, estimate in ((THETA_E, theta_e), (THETA_E_SIGMA, theta_e_sigma)):
        if estimate is not None:
            columns[name] = pa.array(np.asarray(estimate, dtype=np.float64))
    columns["ra"] = pa.array(np.asarray(ra, dtype=np.float64))
    columns["dec"] = pa.array(np.asarray(dec, dtype=np.float64))
    for name, values in (extra or {}).items():
        columns[name] = pa.array(np.asarray(values))
    if labels is not None:
        columns["label"] = pa.array(np.asarray(labels, dtype=np.int8))
    table = pa.table(columns)
    return table.replace_schema_metadata({META_KEY: json.dumps(dict(meta)).encode()})


def table_meta(table_or_schema) -> dict[str, Any]:
    schema = getattr(table_or_schema, "schema", table_or_schema)
    raw = (schema.metadata or {}).get(META_KEY)
    return json.loads(raw) if raw else {}


def write_parquet(table, path: Path) -> None:
    """Write atomically: a crash leaves the old file or none, never half of one."""
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_shard(path: Path, start: int, stop: int):
    """The shard table if ``path`` is complete and belongs to ``[start, stop)``, else None.

    Reads it fully (shards are small) so a truncated or corrupt file is caught here and redone,
    not discovered at merge time.
    """
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        meta = table_meta(table)
    except Exception:  # any unreadable file is simply redone
        return None
    if meta.get("start") != start or meta.get("stop") != stop:
        return None
    if meta.get("n_scored") != table.num_rows or "id" not in table.column_names:
        return None
    return table


def merge_shards(tables: Iterable, out: Path, meta: Mapping[str, Any]) -> tuple[Path, Path, int]:
    """Concatenate shard tables, rank by score (ties by ID), write Parquet and CSV.

    Holds the small per-row columns of the whole scan in memory (about 40 bytes a row), never
    images. Returns the two paths and the number of rows.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    tables = [t.replace_schema_metadata(None) for t in tables]
    if tables:
        merged = pa.concat_tables(tables, promote_options="default")
    else:
        merged = pa.table({"id": pa.array([], pa.int64()), "score": pa.array([], pa.float64())})
    if merged.num_rows and pc.count_distinct(merged["id"]).as_py() != merged.num_rows:
        counts = Counter(merged["id"].to_pylist())
        repeated = [i for i, c in counts.items() if c > 1][:5]
        raise DataError(
            f"{out}: the scanned data holds repeated IDs ({', '.join(map(str, repeated))}...); "
            "IDs must be unique to rank candidates"
        )
    merged = merged.sort_by([("score", "descending"), ("id", "ascending")])
    merged = merged.add_column(0, "rank", pa.array(np.arange(1, merged.num_rows + 1)))
    merged = merged.replace_schema_metadata({META_KEY: json.dumps(dict(meta)).encode()})
    parquet_path, csv_path = out / CANDIDATES_PARQUET, out / CANDIDATES_CSV
    write_parquet(merged, parquet_path)
    with atomic_path(csv_path) as tmp:
        pacsv.write_csv(merged, tmp)
    return parquet_path, csv_path, merged.num_rows


def read_candidates(path: str | Path):
    """A candidate table from a scan directory, a ``.parquet`` or a ``.csv`` catalogue.

    Adds ``rank`` (by score) when the file has none; needs at least ``id`` and ``score``.
    """
    import pyarrow as pa

    path = Path(path)
    if path.is_dir():
        path = path / CANDIDATES_PARQUET
    table = read_table(path, "candidate catalogue", "run 'lensfinder scan' first")
    lower = {c.lower(): c for c in table.column_names}
    missing = [c for c in ("id", "score") if c not in lower]
    if missing:
        raise DataError(f"{path}: candidate catalogue lacks column(s) {', '.join(missing)}")
    metadata = table.schema.metadata
    table = table.rename_columns(
        [c.lower() if c.lower() in _STANDARD_COLUMNS else c for c in table.column_names]
    ).replace_schema_metadata(metadata)
    if "rank" not in table.column_names:
        table = table.sort_by([("score", "descending"), ("id", "ascending")])
        table = table.add_column(0, "rank", pa.array(np.arange(1, table.num_rows + 1)))
    return table
