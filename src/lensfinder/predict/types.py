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
