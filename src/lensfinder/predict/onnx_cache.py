"""ONNX files made from a model once and kept beside it: the float export and its int8 version.

Why: an export (checked against torch) takes seconds, a quantisation more; a scan's workers,
and every later scan, should not pay for it again. ``onnx_runner`` gives a session from the
cached file when that file is this model's, else builds the file and caches it:

- where: ``RUN_DIR/model.onnx`` and ``RUN_DIR/model.int8.onnx`` (for an ``.onnx`` file given as
  the model: ``NAME.int8.onnx`` beside it). Where that cannot be written (a read-only model
  directory), the user cache (``$LENSFINDER_CACHE``, else ``~/.cache/lensfinder/onnx``, else the
  temporary directory), with a warning; where nothing can, in memory.
- when it is current: each file carries a key in its metadata (``lensfinder_cache_key``): a
  hash of the model's files (``model.json`` + ``model.safetensors``, as a scan fingerprints
  them), the opset, the precision and, for int8, the method and the calibration cutouts. A file
  with another key is stale (retrained in place, other calibration) and rebuilt, never used.
- races: files are written atomically, and built under a lock per key, so parallel workers
  neither read a half-written file nor export the same model twice.

This module looks files up and names them; it imports neither torch nor onnx, so checking a
cache hit costs a file hash and reading the ONNX metadata, and a scan's client stays light.
``onnx_build`` makes a missing file (``prepare``) and opens sessions (``onnx_runner``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lensfinder.data.cutouts import repair_rows, synthetic_cutouts
from lensfinder.errors import DataError, ModelFileError
from lensfinder.predict.onnx_files import (
    DEFAULT_OPSET,
    META_CACHE_KEY,
    Precision,
    cache_key,
    read_metadata,
    same_model,
)

PRECISION_OF_BACKEND: dict[str, Precision] = {"onnx": "float32", "onnx-int8": "int8"}
CACHE_ENV = "LENSFINDER_CACHE"
CALIBRATION_ROWS = 256  # cutouts whose activations set the int8 ranges
_FILE_NAMES: dict[Precision, str] = {"float32": "model.onnx", "int8": "model.int8.onnx"}


# -- int8 calibration ------------------------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    """Raw cutouts that set an int8 model's activation ranges, loaded only when a model must be
    quantised. ``spec`` names them in the cache key: the same spec must mean the same cutouts."""

    spec: str
    load: Callable[[], tuple[np.ndarray, np.ndarray]] = field(compare=False, repr=False)


def synthetic_calibration(rows: int = CALIBRATION_ROWS) -> Calibration:
    """Synthetic challenge-like cutouts: for int8 scoring without data at hand (measured: AUROC
    within 0.001 of data-calibrated, but larger single-logit moves; prefer the data)."""
    return Calibration(f"synthetic:{rows}:seed0", lambda: synthetic_cutouts(rows, seed=0))


def source_calibration(source: Any, content_key: str, rows: int = CALIBRATION_ROWS) -> Calibration:
    """``rows`` cutouts spread evenly over ``source`` (invalid ones left out). ``content_key``
    identifies the data (``source.content_fingerprint()``), so the spec is the same in a scan's
    client and in its workers without reading a pixel."""
    n = len(source)
    indices = np.unique(np.linspace(0, n - 1, min(rows, n)).round().astype(np.int64))

    def load() -> tuple[np.ndarray, np.ndarray]:
        cut = source.read(indices)
        repair_rows(cut)
        ok = np.asarray(cut.valid, dtype=bool)
        if not ok.any():
            raise DataError(f"{getattr(source, 'path', 'data')}: no valid cutout to calibrate on")
        return cut.vis[ok], cut.nisp[ok]

    return Calibration(f"data:{content_key}:{n}:{len(indices)}", load)


# -- where the files go ------------------------------------------------------------------------
def writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def cache_dir() -> Path:
    """The user cache for ONNX files that cannot live beside their model (and for the locks)."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    user = Path(base) / "lensfinder" / "onnx"
    if writable_dir(user):
        return user
    return (
        Path(tempfile.gettempdir())
        / f"lensfinder-onnx-{os.getuid() if hasattr(os, 'getuid') else 0}"
    )


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def candidate_paths(model: Path, precision: Precision, key: str) -> list[Path]:
    """Where the file may be, in order of preference: beside the model, then the user cache."""
    if model.is_dir():
        beside = model / _FILE_NAMES[precision]
    else:
        beside = model.with_name(f"{model.stem}.int8.onnx")
    return [beside, cache_dir() / f"{key_hash(key)}.onnx"]


# -- looking up ----------------------------------------------------------------------------------
@dataclass
class CachedOnnx:
    """A model's ONNX file as ``onnx_runner`` found or made it (for reports: start-up costs)."""

    model: str
    precision: Precision
    status: Literal["given", "hit", "built", "memory"]  # memory: built, but nowhere to cache it
    path: Path | None
    seconds: float
    key: str = ""
    notes: list[str] = field(default_factory=list)
    data: bytes | None = field(default=None, repr=False)

    def info(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "precision": self.precision,
            "cache": self.status,
            "path": str(self.path) if self.path else None,
            "seconds": round(self.seconds, 3),
            "notes": list(self.notes),
        }


def read_key(path: Path) -> str | None:
    """The cache key recorded in an ONNX file; None for a file without one or not ONNX."""
    try:
        return read_metadata(path).get(META_CACHE_KEY)
    except ModelFileError:
        return None


def find_current(model: Path, precision: Precision, key: str, warn: bool) -> Path | None:
    """The first candidate file made from exactly ``key``. When there is none, a stale file
    beside the model is reported (it is about to be replaced); one in the user cache cannot be
    stale (it is named by its key)."""
    stale: list[tuple[Path, str | None]] = []
    for path in candidate_paths(model, precision, key):
        if not path.is_file():
            continue
        found = read_key(path)
        if found == key:
            return path
        stale.append((path, found))
    if warn and stale:
        path, found = stale[0]
        warnings.warn(f"{path}: {_stale_reason(found, key)}; building it afresh", stacklevel=3)
    return None


def _stale_reason(found: str | None, key: str) -> str:
    if found is None:
        return "no cache key in it (made by an older lensfinder, or by hand)"
    if same_model(found, key):
        return "made with other settings (opset, precision or calibration)"
    return "not made from this model's weights"


def resolve(
    model: Path, precision: Precision, calibration: Calibration | None, opset: int | None
) -> tuple[str, int, Calibration | None]:
    """The cache key, opset and calibration a request stands for (defaults filled in)."""
    opset = opset or DEFAULT_OPSET
    if precision == "int8":
        calibration = calibration or synthetic_calibration()
    spec = calibration.spec if calibration is not None else None
    return cache_key(model, precision, opset, spec), opset, calibration


def lookup(
    model: Path,
    precision: Precision,
    calibration: Calibration | None = None,
    opset: int | None = None,
) -> CachedOnnx | None:
    """The model's current ONNX file at ``precision`` (an ``.onnx`` model given as float32 is
    its own file), or None when it must be built (``onnx_build.prepare``)."""
    began = time.perf_counter()
    model = Path(model)
    if precision == "float32" and model.suffix == ".onnx" and model.is_file():
        return CachedOnnx(str(model), precision, "given", model, 0.0)
    key, _, _ = resolve(model, precision, calibration, opset)
    path = find_current(model, precision, key, warn=True)
    if path is None:
        return None
    return CachedOnnx(str(model), precision, "hit", path, time.perf_counter() - began, key)
