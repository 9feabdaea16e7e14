"""Small shared helpers: atomic file writes, tables read with one-line errors, the machine."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from lensfinder.errors import DataError

T = TypeVar("T")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only on success.

    A crash mid-write leaves either the old file or nothing, never a half-written one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600, and so do some writers (safetensors replaces the file with a 0600
        # one): set the mode the umask asks for after writing, so results are shareable.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def read_table(path: str | Path, what: str, hint: str) -> Any:
    """A pyarrow table from a ``.csv`` or Parquet file; DataError naming the file (with ``hint``
    on how to make one when it is missing) instead of pyarrow's traceback."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no {what} here ({hint})")
    try:
        return pacsv.read_csv(path) if path.suffix.lower() == ".csv" else pq.read_table(path)
    except Exception as exc:
        raise DataError(f"{path}: cannot read {what} ({exc})") from None


def torch_load_refusal(exc: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused a file, in a few words for a one-line
    error. Never torch's own several-line text: it advises passing ``weights_only=False``, which
    would let a stranger's file run code."""
    text = str(exc)
    if "WeightsUnpickler error" in text or "Weights only load failed" in text:
        detail = text.partition("WeightsUnpickler error:")[2].strip().split("\n\n")[0]
        detail = " ".join(detail.split()).split(". ")[0].rstrip(".")
        detail = re.sub(r"\bGLOBAL\s+", "", detail)
        found = f": {detail}" if detail else ""
        return f"it holds more than tensors{found}; refused, since unpickling it could run code"
    first = " ".join(text.split()).split(". ")[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
