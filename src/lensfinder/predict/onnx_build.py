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

Nothing here imports torch until a file must be built: checking a cache hit costs a file hash
and reading the ONNX metadata, so a scan's client process stays light.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from lensfinder.errors import DataError, ModelFileError
from lensfinder.predict.onnx_files import (
    DEFAULT_OPSET,
    META_CACHE_KEY,
    Precision,
    cache_key,
    read_metadata,
    same_model,
)
from lensfinder.utils import atomic_path

if TYPE_CHECKING:
    from lensfinder.predict.onnx_backend import OnnxRunner

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
    from lensfinder.data.cutouts import synthetic_cutouts

    return Calibration(f"synthetic:{rows}:seed0", lambda: synthetic_cutouts(rows, seed=0))


def source_calibration(source: Any, content_key: str, rows: int = CALIBRATION_ROWS) -> Calibration:
    """``rows`` cutouts spread evenly over ``source`` (invalid ones left out). ``content_key``
    identifies the data (``source.content_fingerprint()``), so the spec is the same in a scan's
    client and in its workers without reading a pixel."""
    n = len(source)
    indices = np.unique(np.linspace(0, n - 1, min(rows, n)).round().astype(np.int64))

    def load() -> tuple[np.ndarray, np.ndarray]:
        from lensfinder.data.cutouts import repair_rows

        cut = source.read(indices)
        repair_rows(cut)
        ok = np.asarray(cut.valid, dtype=bool)
        if not ok.any():
            raise DataError(f"{getattr(source, 'path', 'data')}: no valid cutout to calibrate on")
        return cut.vis[ok], cut.nisp[ok]

    return Calibration(f"data:{content_key}:{n}:{len(indices)}", load)


# -- where the files go ------------------------------------------------------------------------
def _writable_dir(path: Path) -> bool:
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
    if _writable_dir(user):
        return user
    return (
        Path(tempfile.gettempdir())
        / f"lensfinder-onnx-{os.getuid() if hasattr(os, 'getuid') else 0}"
    )


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def candidate_paths(model: Path, precision: Precision, key: str) -> list[Path]:
    """Where the file may be, in order of preference: beside the model, then the user cache."""
    if model.is_dir():
        beside = model / _FILE_NAMES[precision]
    else:
        beside = model.with_name(f"{model.stem}.int8.onnx")
    return [beside, cache_dir() / f"{_key_hash(key)}.onnx"]


@contextlib.contextmanager
def _build_lock(key: str) -> Iterator[None]:
    """One builder per key across processes (fcntl.flock; none where there is no fcntl)."""
    try:
        import fcntl
    except ImportError:  # Windows: atomic writes still keep readers safe
        yield
        return
    folder = cache_dir() / "locks"
    if not _writable_dir(folder):
        yield
        return
    with open(folder / f"{_key_hash(key)}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# -- looking up and building ---------------------------------------------------------------------
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


def _find(model: Path, precision: Precision, key: str, warn: bool) -> Path | None:
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


def _store(data: bytes, paths: list[Path]) -> Path | None:
    """Write ``data`` to the first path that takes it (atomically); None when none does."""
    failures: list[str] = []
    for path in paths:
        try:
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
        except OSError as exc:
            failures.append(f"{path}: {exc}")
            continue
        if failures:
            warnings.warn(
                f"cannot cache the ONNX file beside the model ({failures[0]}); cached in {path}",
                stacklevel=3,
            )
        return path
    warnings.warn(
        f"cannot cache the ONNX file ({'; '.join(failures)}); using it from memory", stacklevel=3
    )
    return None


def _build_float(model: Path, key: str, opset: int) -> tuple[bytes, list[str]]:
    """Export the run directory's model (checked against torch), with the cache key inside."""
    from lensfinder.models.checkpoint import load_model
    from lensfinder.predict.export import build_onnx

    torch_model, meta = load_model(model)
    data, result = build_onnx(torch_model, meta, str(model), opset, props={META_CACHE_KEY: key})
    note = f"exported to ONNX, checked against torch: max |logit diff| {result.max_abs_diff:.1e}"
    return data, [note, *result.notes]


def _build_int8(
    model: Path, key: str, opset: int, calibration: Calibration
) -> tuple[bytes, list[str]]:
    """Quantise the model's float ONNX (cached first), calibrated on ``calibration``; record
    how far the int8 logits move from the float ones on those cutouts."""
    from lensfinder.data.transforms import to_model_input
    from lensfinder.models.checkpoint import input_config
    from lensfinder.predict.onnx_backend import OnnxRunner
    from lensfinder.predict.quantize import (
        META_INT8_CHECK,
        int8_check,
        quantize_int8,
        with_metadata,
    )

    float_file = prepare(model, "float32", opset=opset)
    float_bytes = float_file.path.read_bytes() if float_file.path else float_file.data
    assert float_bytes is not None  # prepare gives a path or the bytes
    float_runner = OnnxRunner(float_bytes, source=str(float_file.path or model))
    vis, nisp = calibration.load()
    x = to_model_input(vis, nisp, input_config(float_runner.meta, str(model)))
    tensors = x if isinstance(x, tuple) else (x,)
    inputs = {name: t.numpy() for name, t in zip(float_runner.input_names, tensors, strict=True)}
    int8 = quantize_int8(float_bytes, inputs, str(model))
    check = int8_check(float_runner(x), OnnxRunner(int8, source=f"{model} (int8)")(x))
    props = {
        **float_runner.metadata,
        META_CACHE_KEY: key,
        META_INT8_CHECK: json.dumps({**check, "calibration": calibration.spec}, sort_keys=True),
    }
    note = (
        f"quantised to int8, calibrated on {check['rows']} cutouts ({calibration.spec}): "
        f"|logit diff| to float median {check['median_abs_logit_diff']}, "
        f"max {check['max_abs_logit_diff']}"
    )
    return with_metadata(int8, props), [note]


def _resolve(
    model: Path, precision: Precision, calibration: Calibration | None, opset: int | None
) -> tuple[str, int, Calibration | None]:
    """The cache key, opset and calibration a request stands for (defaults filled in)."""
    opset = opset or DEFAULT_OPSET
    if precision == "int8":
        calibration = calibration or synthetic_calibration()
    spec = calibration.spec if calibration is not None else None
    return cache_key(model, precision, opset, spec), opset, calibration


def prepare(
    model: Path,
    precision: Precision,
    calibration: Calibration | None = None,
    opset: int | None = None,
) -> CachedOnnx:
    """The model's ONNX file at ``precision``: the cached one when current, else built now (under
    a lock per key) and cached. A scan's client calls this once per model before its workers
    start, so they load the file and never export. ``calibration``: for int8 (default:
    synthetic cutouts)."""
    began = time.perf_counter()
    model = Path(model)
    if precision == "float32" and model.suffix == ".onnx" and model.is_file():
        return CachedOnnx(str(model), precision, "given", model, 0.0)
    key, opset, calibration = _resolve(model, precision, calibration, opset)

    def found(path: Path) -> CachedOnnx:
        return CachedOnnx(str(model), precision, "hit", path, time.perf_counter() - began, key)

    path = _find(model, precision, key, warn=True)
    if path is not None:
        return found(path)
    with _build_lock(key):
        path = _find(model, precision, key, warn=False)  # built by another process meanwhile?
        if path is not None:
            return found(path)
        if precision == "int8":
            assert calibration is not None  # _resolve fills it in
            data, notes = _build_int8(model, key, opset, calibration)
        else:
            data, notes = _build_float(model, key, opset)
        path = _store(data, candidate_paths(model, precision, key))
    return CachedOnnx(
        str(model),
        precision,
        "built" if path else "memory",
        path,
        time.perf_counter() - began,
        key,
        notes,
        data=None if path else data,
    )


def onnx_runner(
    model: Path,
    precision: Precision,
    threads: int | None,
    calibration: Calibration | None = None,
    opset: int | None = None,
) -> tuple[OnnxRunner, CachedOnnx]:
    """An ONNX Runtime session for ``model`` (run directory or ``.onnx`` file) at ``precision``,
    from ``prepare``'s file; and how that file was got (for start-up reports). A current file
    is checked on the session's own metadata: one parse of the file, no ``onnx`` import (a scan
    worker's usual case, its client having prepared the file)."""
    from lensfinder.predict.onnx_backend import OnnxRunner

    began = time.perf_counter()
    model = Path(model)
    if not (precision == "float32" and model.suffix == ".onnx"):
        key, opset, calibration = _resolve(model, precision, calibration, opset)
        path = candidate_paths(model, precision, key)[0]
        if path.is_file():
            with contextlib.suppress(ModelFileError):  # unreadable: prepare replaces it
                runner = OnnxRunner(path, threads=threads, source=str(path))
                if runner.metadata.get(META_CACHE_KEY) == key:
                    seconds = time.perf_counter() - began
                    return runner, CachedOnnx(str(model), precision, "hit", path, seconds, key)
    cached = prepare(model, precision, calibration, opset)
    where = cached.path if cached.path is not None else cached.data
    assert where is not None  # prepare gives a path or the bytes
    runner = OnnxRunner(where, threads=threads, source=str(cached.path or model))
    cached.seconds = time.perf_counter() - began
    return runner, cached
