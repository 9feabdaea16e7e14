"""int8 ONNX models: static QDQ quantisation, calibrated on real-shaped cutouts.

Why static QDQ (per-channel int8 weights, uint8 activations, MinMax ranges): on the cpu-small
EfficientNet-Lite0 (2 CPU cores with VNNI) its inference ran 2.1x as fast as the float model's,
and the AUROC moved by +0.0009 on 2,000 domain-shift cutouts and by -0.0004 on the 1,574-object
test split of its training data (benchmarks/bench_scan.py --int8 measures the first). In a
one-off comparison on the same model, dynamic quantisation was 10x *slower* (ConvInteger
kernels) and lost 0.05 AUROC, and percentile calibration lost 0.009.

The ranges come from calibration cutouts, so the int8 model depends on them: the cache key
(``onnx_cache``) names them, and each int8 file records how far its logits move from the float
model's on those cutouts (``lensfinder_int8_check``).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lensfinder.errors import ModelFileError

QUANT_METHOD = "qdq-minmax-u8s8-perchannel"  # part of the cache key: change it with the settings
META_INT8_CHECK = "lensfinder_int8_check"
CALIBRATION_BATCH = 32


class _QuietRoot(logging.Filter):
    """Drops ONNX Runtime's advice logged on the root logger ("consider pre-processing")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


@contextlib.contextmanager
def _quiet_root() -> Iterator[None]:
    quiet = _QuietRoot()
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def _batches(inputs: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    n = len(next(iter(inputs.values())))
    return [
        {name: np.ascontiguousarray(a[i : i + CALIBRATION_BATCH]) for name, a in inputs.items()}
        for i in range(0, n, CALIBRATION_BATCH)
    ]


def quantize_int8(float_model: bytes, inputs: dict[str, np.ndarray], source: str) -> bytes:
    """The int8 (QDQ) version of ``float_model``, its activation ranges measured on ``inputs``
    (model input arrays by input name, prepared as for scoring). Metadata is not copied."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(_batches(inputs))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="lensfinder-int8-") as tmp, _quiet_root():
        folder = Path(tmp)
        (folder / "float.onnx").write_bytes(float_model)
        try:
            # Shape inference and graph fusions first, as ONNX Runtime advises for static QDQ.
            quant_pre_process(str(folder / "float.onnx"), str(folder / "pre.onnx"))
            quantize_static(
                str(folder / "pre.onnx"),
                str(folder / "int8.onnx"),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
        except Exception as exc:  # the quantiser raises many types for graphs it cannot handle
            raise ModelFileError(
                f"{source}: int8 quantisation failed ({type(exc).__name__}: {exc}); "
                "use the float backend 'onnx'"
            ) from None
        return (folder / "int8.onnx").read_bytes()


def int8_check(float_logits: np.ndarray, int8_logits: np.ndarray) -> dict[str, Any]:
    """How far int8 logits are from float ones (recorded in the file and reported)."""
    diff = np.abs(np.asarray(int8_logits) - np.asarray(float_logits))
    return {
        "rows": int(diff.size),
        "max_abs_logit_diff": round(float(diff.max()), 4) if diff.size else None,
        "median_abs_logit_diff": round(float(np.median(diff)), 4) if diff.size else None,
    }


def with_metadata(model: bytes, props: dict[str, str]) -> bytes:
    """``model`` with its ``metadata_props`` replaced by ``props``."""
    import onnx

    proto = onnx.load_from_string(model)
    onnx.helper.set_model_props(proto, props)  # replaces what was there
    return proto.SerializeToString()
