"""Models: timm architectures as one-logit lens classifiers, offline pretrained weights, the
paper's batch-norm methods, and safe model files (safetensors + JSON, never pickles)."""

from lensfinder.models.base import OneLogitModel
from lensfinder.models.checkpoint import load_model, read_meta, save_model
from lensfinder.models.factory import create_model

__all__ = ["OneLogitModel", "create_model", "load_model", "read_meta", "save_model"]
