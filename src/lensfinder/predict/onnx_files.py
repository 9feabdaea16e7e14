"""What names an ONNX file: the content hash of the model it came from, the cache key, and the
file's metadata. Light on purpose (no torch, no ONNX Runtime): ``export`` stamps the key into a
checked export, ``onnx_cache`` looks files up by it, and a scan's client fingerprints models
with it before any heavy import.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Literal

from lensfinder.errors import ModelFileError
from lensfinder.predict.quantize import QUANT_METHOD

Precision = Literal["float32", "int8"]
META_CACHE_KEY = "lensfinder_cache_key"  # what a cached file was made from
DEFAULT_OPSET = 17
CACHE_FORMAT = 1  # bump when the way a cached file is made changes
MODEL_FILES = ("model.json", "model.safetensors")


@functools.lru_cache(maxsize=64)
def _hash_files(files: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, _, _ in files:
        path = Path(name)
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(functools.partial(handle.read, 1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def files_fingerprint(model: Path) -> str:
    """Content hash of a model (run directory or ``.onnx`` file): a retrained model at the same
    path is a different model. Memoised on the files' size and mtime, since a scan asks for it
    in the client, for the manifest and for the cache, more than once."""
    model = Path(model)
    if model.is_file():
        files = [model]
    elif model.is_dir():
        files = [model / name for name in MODEL_FILES if (model / name).is_file()]
        if not files:
            raise ModelFileError(f"{model}: no {' or '.join(MODEL_FILES)} in this run directory")
    else:
        raise ModelFileError(f"{model}: no such model run directory or file")
    stats = []
    for path in files:
        stat = path.stat()
        stats.append((str(path.resolve()), stat.st_size, stat.st_mtime_ns))
    return _hash_files(tuple(stats))


def cache_key(
    model: Path, precision: Precision, opset: int, calibration_spec: str | None = None
) -> str:
    """What a cached file must have been made from: the model's files, the opset, the precision
    and, for int8, the quantisation method and the calibration cutouts (their spec)."""
    parts = [
        f"lensfinder-onnx-{CACHE_FORMAT}",
        precision,
        f"opset{opset}",
        files_fingerprint(model),
    ]
    if precision == "int8":
        if calibration_spec is None:
            raise ValueError("an int8 cache key needs the calibration")
        parts += [QUANT_METHOD, calibration_spec]
    return "/".join(parts)


def same_model(key: str, other: str) -> bool:
    """Whether two cache keys were made from the same model files."""
    return key.split("/")[3:4] == other.split("/")[3:4]


def read_metadata(model_path: Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (without starting a session)."""
    import onnx

    try:
        proto = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # a truncated or foreign file
        raise ModelFileError(f"{model_path}: not a readable ONNX file ({exc})") from None
    return {p.key: p.value for p in proto.metadata_props}
