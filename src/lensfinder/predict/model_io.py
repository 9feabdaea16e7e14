"""What the scoring modules share: the model input type, the one way to call a model on it,
and the keys of the metadata an exported ONNX file carries.

``predictor``, ``onnx_backend`` and ``export`` all import this module, and it imports none of them.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from lensfinder.data.transforms import ModelInput
from lensfinder.errors import ModelFileError

Average = Literal["probability", "logit"]

# Metadata keys of an exported ONNX file.
META_VERSION = "lensfinder_version"
META_INPUT = "lensfinder_input"
META_MODEL = "lensfinder_meta"
META_FINGERPRINT = "lensfinder_fingerprint"
META_BN = "lensfinder_bn_inference"


def forward(model: torch.nn.Module, x: ModelInput) -> torch.Tensor:
    """Call a model on a stacked tensor or a two-branch ``(vis, nisp)`` tuple."""
    return model(*x) if isinstance(x, tuple) else model(x)


def has_theta_e(model: torch.nn.Module) -> bool:
    """Whether a model (or an exported ensemble of them) has the Einstein-radius head."""
    return bool(getattr(model, "theta_e_head", False))


def forward_outputs(model: torch.nn.Module, x: ModelInput) -> Any:
    """``forward``, or ``(logit, theta_E (n, 2))`` in one pass for a model with the head."""
    if not has_theta_e(model):
        return forward(model, x)
    head: Any = model  # a OneLogitModel (or an exported ensemble) with ``with_theta_e``
    return head.with_theta_e(*x) if isinstance(x, tuple) else head.with_theta_e(x)


def output_columns(out: Any, n: int, source: str) -> np.ndarray:
    """A model's output as ``(n, k)`` float64: column 0 the logit, then (with the Einstein-radius
    head, ``out`` = ``(logit, theta_E (n, 2))``) theta_E's mean and sigma in arcsec."""
    if not isinstance(out, tuple | list):
        return flat_logits(out, n, source)[:, None]
    if len(out) == 1:
        return flat_logits(out[0], n, source)[:, None]
    logit, theta = out
    theta = theta.detach().float().cpu().numpy() if isinstance(theta, torch.Tensor) else theta
    theta = np.asarray(theta, dtype=np.float64)
    if theta.shape != (n, 2):
        raise ModelFileError(
            f"{source}: the model returned theta_E of shape {theta.shape} for {n} cutouts; "
            "expected (n, 2): mean and sigma per cutout"
        )
    return np.column_stack([flat_logits(logit, n, source), theta])


def flat_logits(out: Any, n: int, source: str) -> np.ndarray:
    """A model output as ``(n,)`` float64 logits; a clear error when it is not one per object."""
    array = out.detach().float().cpu().numpy() if isinstance(out, torch.Tensor) else out
    array = np.asarray(array, dtype=np.float64)
    if array.size != n:
        raise ModelFileError(
            f"{source}: the model returned output of shape {array.shape} for {n} cutouts; "
            "expected one logit per cutout"
        )
    return array.reshape(n)
