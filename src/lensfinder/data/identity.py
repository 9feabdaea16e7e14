"""Which data set is this? A record written into model.json at train time, compared at evaluate.

Why: a model's recorded test split is only honest on the data it was trained on; on any other
data (another simulation, real images) every object is unseen and should be scored. Paths alone
cannot tell: a store gets moved, and a new simulation can reuse the same IDs. So the record holds
the store's path, the layout it was packed from, and a fingerprint of its content (IDs, labels
and catalogue values), which is the same for a store and for its copy anywhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lensfinder.data.cutouts import CutoutSource


def fingerprint(source: CutoutSource) -> str:
    """SHA-256 (first 16 hex digits) of IDs, labels and every catalogue column, by name."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(source.ids, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(source.labels, dtype=np.int8).tobytes())
    for name, values in sorted(source.catalog.items()):
        digest.update(name.encode())
        values = np.asarray(values)
        if values.dtype.kind in "US":
            digest.update("\x1f".join(values.tolist()).encode())
        else:
            digest.update(np.ascontiguousarray(values, dtype=np.float64).tobytes())
    return digest.hexdigest()[:16]


def data_record(source: CutoutSource) -> dict[str, Any]:
    """What model.json keeps about its training data: paths and the content fingerprint."""
    attrs = getattr(source, "attrs", {}) or {}
    return {
        "store": str(Path(source.path).resolve()),
        "layout": attrs.get("source"),  # the layout a store was packed from
        "fingerprint": fingerprint(source),
    }


def same_data(source: CutoutSource, recorded: Mapping[str, Any]) -> bool | None:
    """True when ``source`` is the recorded training data (or its layout, or a copy), False when
    it is not, None when the record (from an older model file) cannot tell."""
    path = str(Path(source.path).resolve())
    if path in {recorded.get("store"), recorded.get("layout")}:
        return True
    if recorded.get("fingerprint"):
        return fingerprint(source) == recorded["fingerprint"]
    return None  # a path alone may be a moved copy: not proof of other data


def index_of_ids(source_ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Position of each wanted ID in ``source_ids`` (-1 where absent), without a Python dict."""
    result = np.full(len(wanted), -1, dtype=np.int64)
    if len(source_ids) == 0 or len(wanted) == 0:
        return result
    order = np.argsort(source_ids, kind="stable")
    slot = np.minimum(np.searchsorted(source_ids, wanted, sorter=order), len(order) - 1)
    hit = source_ids[order[slot]] == wanted
    result[hit] = order[slot[hit]]
    return result
