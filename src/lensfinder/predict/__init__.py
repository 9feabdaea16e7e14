"""Scoring with trained models: one place for batching, TTA, ensembles, BN mode and backends.

``Predictor(run_dirs, PredictConfig)`` scores raw cutouts (``predict_arrays``) or a whole
CutoutSource (``predict_source``); ``export_onnx`` writes a checked ONNX file.

The names below are imported on first use: a scan's client needs ``predict.onnx_cache`` (to
check the ONNX cache) without paying for torch and timm, about 3 s of start-up on 2 cores.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lensfinder.data.cutouts import synthetic_cutouts
    from lensfinder.predict.export import ExportResult, export_onnx
    from lensfinder.predict.predictor import (
        Member,
        Predictor,
        Scores,
        average_logits,
        ensemble_score,
    )

_HOMES = {
    "synthetic_cutouts": "lensfinder.data.cutouts",
    "ExportResult": "lensfinder.predict.export",
    "export_onnx": "lensfinder.predict.export",
    "Member": "lensfinder.predict.predictor",
    "Predictor": "lensfinder.predict.predictor",
    "Scores": "lensfinder.predict.predictor",
    "average_logits": "lensfinder.predict.predictor",
    "ensemble_score": "lensfinder.predict.predictor",
}

__all__ = [
    "ExportResult",
    "Member",
    "Predictor",
    "Scores",
    "average_logits",
    "ensemble_score",
    "export_onnx",
    "synthetic_cutouts",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'lensfinder.predict' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # once imported, a plain attribute
    return value
