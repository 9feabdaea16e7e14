"""Scoring with trained models: one place for batching, TTA, ensembles, BN mode and backends.

``Predictor(run_dirs, PredictConfig)`` scores raw cutouts (``predict_arrays``) or a whole
CutoutSource (``predict_source``); ``export_onnx`` writes a checked ONNX file.
"""

from lensfinder.data.cutouts import synthetic_cutouts
from lensfinder.predict.export import ExportResult, export_onnx
from lensfinder.predict.predictor import (
    Member,
    Predictor,
    Scores,
    average_logits,
    ensemble_score,
)

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
