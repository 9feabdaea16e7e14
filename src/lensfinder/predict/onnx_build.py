"""ONNX files built when ``onnx_cache`` finds none current: exported (checked against torch) or
quantised to int8, written atomically beside the model (else in the user cache, else kept in
memory) under a lock per cache key, so parallel workers neither read a half-written file nor
export the same model twice; and ONNX Runtime sessions opened from them (``onnx_runner``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from lensfinder.data.transforms import to_model_input
from lensfinder.files import atomic_path
from lensfinder.models.checkpoint import input_config, load_model
from lensfinder.predict.export import build_onnx
from lensfinder.predict.onnx_backend import OnnxRunner, cached_runner
from lensfinder.predict.onnx_cache import (
    CachedOnnx,
    Calibration,
    cache_dir,
    candidate_paths,
    find_current,
    key_hash,
    lookup,
    resolve,
    writable_dir,
)
from lensfinder.predict.onnx_files import META_CACHE_KEY, Precision
from lensfinder.predict.quantize import META_INT8_CHECK, int8_check, quantize_int8, with_metadata


@contextlib.contextmanager
def _build_lock(key: str) -> Iterator[None]:
    """One builder per key across processes (fcntl.flock, as ``safety``'s output locks)."""
    folder = cache_dir() / "locks"
    if not writable_dir(folder):
        yield
        return
    with open(folder / f"{key_hash(key)}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
    torch_model, meta = load_model(model)
    data, result = build_onnx(torch_model, meta, str(model), opset, props={META_CACHE_KEY: key})
    note = f"exported to ONNX, checked against torch: max |logit diff| {result.max_abs_diff:.1e}"
    return data, [note, *result.notes]


def _build_int8(
    model: Path, key: str, opset: int, calibration: Calibration
) -> tuple[bytes, list[str]]:
    """Quantise the model's float ONNX (cached first), calibrated on ``calibration``; record
    how far the int8 logits move from the float ones on those cutouts."""
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
    current = lookup(model, precision, calibration, opset)
    if current is not None:
        return current
    key, opset, calibration = resolve(model, precision, calibration, opset)
    with _build_lock(key):
        path = find_current(model, precision, key, warn=False)  # built by another meanwhile?
        if path is not None:
            seconds = time.perf_counter() - began
            return CachedOnnx(str(model), precision, "hit", path, seconds, key)
        if precision == "int8":
            assert calibration is not None  # resolve fills it in
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
    opens as ``onnx_backend.cached_runner`` opens it (no ``onnx`` import); else it is built."""
    began = time.perf_counter()
    found = cached_runner(model, precision, threads, calibration, opset)
    if found is not None:
        return found
    cached = prepare(Path(model), precision, calibration, opset)
    where = cached.path if cached.path is not None else cached.data
    assert where is not None  # prepare gives a path or the bytes
    runner = OnnxRunner(where, threads=threads, source=str(cached.path or model))
    cached.seconds = time.perf_counter() - began
    return runner, cached
