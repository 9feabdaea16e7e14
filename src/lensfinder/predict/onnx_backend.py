"""The ONNX Runtime backend (CPU): often about twice as fast as eager torch on CPU for these CNNs.

A run directory needs no manual step: its first use exports the model to ``model.onnx`` next to
it (checked against torch to 1e-4), and backend "onnx-int8" quantises that to
``model.int8.onnx``; both are cached and checked for staleness by ``onnx_cache``.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lensfinder.errors import ModelFileError
from lensfinder.predict.model_io import META_MODEL, ModelInput, output_columns
from lensfinder.predict.onnx_cache import CachedOnnx, Calibration, candidate_paths, resolve
from lensfinder.predict.onnx_files import META_CACHE_KEY, Precision


class OnnxRunner:
    """One ONNX Runtime session on CPU; called with a prepared batch, returns ``(n,)`` logits
    (``outputs``: with theta_E too, when the file has it)."""

    def __init__(self, model: bytes | Path, threads: int | None = None, source: str = "") -> None:
        import onnxruntime as ort

        self.source = source or str(model)[:80]
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: its warnings are about graph rewrites
        try:
            self.session = ort.InferenceSession(
                model if isinstance(model, bytes) else str(model),
                options,
                providers=["CPUExecutionProvider"],
            )
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise ModelFileError(f"{self.source}: ONNX Runtime cannot load it ({exc})") from None
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)

    @property
    def meta(self) -> dict[str, Any]:
        """The lensfinder model meta stored at export (ModelFileError for a foreign file)."""
        if META_MODEL not in self.metadata:
            raise ModelFileError(
                f"{self.source}: no lensfinder metadata; export it with `lensfinder export`"
            )
        return json.loads(self.metadata[META_MODEL])

    @property
    def theta_e_head(self) -> bool:
        """Whether the file has the Einstein-radius output (``theta_e``) beside ``logit``."""
        return len(self.session.get_outputs()) > 1

    def __call__(self, x: ModelInput) -> np.ndarray:
        """``(n,)`` logits."""
        return self.outputs(x)[:, 0]

    def outputs(self, x: ModelInput) -> np.ndarray:
        """``(n, k)``: the logit, then theta_E's mean and sigma (arcsec) when the file has them;
        a file exported before the head existed has one output and gives ``(n, 1)``."""
        tensors = x if isinstance(x, tuple) else (x,)
        if len(tensors) != len(self.input_names):
            raise ModelFileError(
                f"{self.source}: expects inputs {self.input_names}, got {len(tensors)} tensor(s)"
            )
        feeds = {
            name: np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32)
            if isinstance(t, torch.Tensor)
            else np.ascontiguousarray(t, dtype=np.float32)
            for name, t in zip(self.input_names, tensors, strict=True)
        }
        out = self.session.run(None, feeds)
        return output_columns(tuple(out[:2]), len(tensors[0]), self.source)


def cached_runner(
    model: Path | str,
    precision: Precision,
    threads: int | None,
    calibration: Calibration | None = None,
    opset: int | None = None,
) -> tuple[OnnxRunner, CachedOnnx] | None:
    """A session on ``model``'s current ONNX file at ``precision`` (an ``.onnx`` model given
    as float32 is its own file), and how it was found; None when the file beside the model is
    missing, unreadable or stale (``onnx_build.onnx_runner`` then builds it). The file is
    checked on the session's own metadata: one parse of it, and neither ``onnx`` nor the
    exporter (timm) imported, which a scan whose client prepared the file never needs."""
    began = time.perf_counter()
    model = Path(model)
    if precision == "float32" and model.suffix == ".onnx" and model.is_file():
        return OnnxRunner(model, threads=threads), CachedOnnx(
            str(model), precision, "given", model, time.perf_counter() - began
        )
    key, _, _ = resolve(model, precision, calibration, opset)
    path = candidate_paths(model, precision, key)[0]
    if path.is_file():
        with contextlib.suppress(ModelFileError):  # unreadable: the builder replaces it
            runner = OnnxRunner(path, threads=threads, source=str(path))
            if runner.metadata.get(META_CACHE_KEY) == key:
                seconds = time.perf_counter() - began
                return runner, CachedOnnx(str(model), precision, "hit", path, seconds, key)
    return None
