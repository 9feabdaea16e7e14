"""ONNX export of a trained model, checked against torch, with its input config inside the file.

The graph has a dynamic batch axis; its inputs are ``x`` (stacked layout) or ``vis`` and ``nisp``
(two-branch layout), exactly what ``to_model_input`` returns, and its output is ``logit``; a
model with the Einstein-radius head has a second output, ``theta_e`` ``(n, 2)``: theta_E's mean
and 1-sigma in arcsec (files without it, older ones included, score as before). The file's
``metadata_props`` hold the lensfinder version, the input config and the whole model meta (JSON),
so the ONNX backend can prepare input for it with nothing else at hand.

BN method 2 (batch-norm layers in training mode at inference) cannot be expressed in a frozen
graph: such models are refused unless ``allow_bn_batch=True``, which exports them in eval mode
(running statistics) and records that in the metadata, because their scores would then differ
from what lensfinder's torch backend gives.

The check compares logits on a real-shaped batch (synthetic challenge-like cutouts through
``to_model_input``, at a batch size other than the traced one, so the dynamic axis is exercised
too). Tolerance: ``|onnx - torch| <= 1e-4 * max(1, |logit|)`` - absolute where the probability is
sensitive, relative for large logits, where float32 kernels that sum in another order differ by
more than 1e-4 but the probability does not move. theta_E (arcsec) is checked the same way.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lensfinder import __version__
from lensfinder.config import InputConfig, to_dict
from lensfinder.data.cutouts import synthetic_cutouts
from lensfinder.data.transforms import to_model_input
from lensfinder.ensemble import is_ensemble, read_ensemble
from lensfinder.errors import ConfigError, ModelFileError
from lensfinder.files import atomic_path
from lensfinder.models.checkpoint import META_FILE, WEIGHTS_FILE, input_config, load_model
from lensfinder.predict.model_io import (
    META_BN,
    META_FINGERPRINT,
    META_INPUT,
    META_MODEL,
    META_VERSION,
    forward_outputs,
    has_theta_e,
    output_columns,
)
from lensfinder.predict.onnx_backend import OnnxRunner
from lensfinder.predict.onnx_files import DEFAULT_OPSET, META_CACHE_KEY, cache_key
from lensfinder.predict.onnx_files import read_metadata as read_metadata  # its old home
from lensfinder.predict.quantize import with_metadata
from lensfinder.stages import file_stage

TOLERANCE = 1e-4
CHECK_ROWS = 3  # differs from the traced batch (2), so the dynamic batch axis is tested
ONNX_WRITTEN = "an ONNX file lensfinder wrote"  # the only file ``export`` replaces


@dataclass
class ExportResult:
    path: Path | None  # None when exported to memory only
    opset: int
    input_names: tuple[str, ...]
    max_abs_diff: float | None  # on logits (and theta_E), onnx vs torch; None when not checked
    max_scaled_diff: float | None  # max |diff| / max(1, |value|), the checked quantity
    checked_rows: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        where = str(self.path) if self.path else "memory"
        inputs = ", ".join(self.input_names)
        text = f"exported ONNX (opset {self.opset}, inputs {inputs}) to {where}"
        if self.max_abs_diff is not None:
            text += (
                f"; checked on {self.checked_rows} cutouts: max |logit diff| "
                f"{self.max_abs_diff:.2e} (relative {self.max_scaled_diff:.2e} <= {TOLERANCE:g})"
            )
        else:
            text += "; not checked against torch"
        return "\n".join([text, *(f"note: {n}" for n in self.notes)])


def input_names(input_cfg: InputConfig) -> tuple[str, ...]:
    return ("vis", "nisp") if input_cfg.layout == "two_branch" else ("x",)


def example_input(input_cfg: InputConfig, n: int, seed: int = 0) -> Any:
    """Model input for ``n`` synthetic challenge-like cutouts, prepared the way predict does."""
    vis, nisp = synthetic_cutouts(n, seed)
    return to_model_input(vis, nisp, input_cfg)


def fingerprint(model: torch.nn.Module, meta: dict[str, Any]) -> str:
    """SHA-256 of the weights and the meta: tells whether a cached ONNX file is still this model."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps(meta, sort_keys=True, default=str).encode())
    return digest.hexdigest()


class WithThetaE(torch.nn.Module):
    """A model with the Einstein-radius head as a graph of two outputs: ``(logit, theta_E)``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model: Any = model  # a OneLogitModel or EnsembleModel with the head

    def forward(self, *x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.with_theta_e(*x)


def output_names(model: torch.nn.Module) -> list[str]:
    return ["logit", "theta_e"] if has_theta_e(model) else ["logit"]


def build_onnx(
    model: torch.nn.Module,
    meta: dict[str, Any],
    source: str,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    allow_bn_batch: bool = False,
    props: dict[str, str] | None = None,
) -> tuple[bytes, ExportResult]:
    """The serialised ONNX model for ``model`` (not written anywhere) and what was checked;
    ``props``: more metadata for the file (the ONNX cache's key)."""
    input_cfg = input_config(meta, source)
    notes = _bn_notes(meta, source, allow_bn_batch)
    model_fingerprint = fingerprint(model, meta)
    model = copy.deepcopy(model).cpu().float().eval()
    names = input_names(input_cfg)
    traced = _trace(model, input_cfg, names, opset, source)
    metadata = {
        META_VERSION: __version__,
        META_INPUT: json.dumps(to_dict(input_cfg), sort_keys=True),
        META_MODEL: json.dumps(meta, sort_keys=True, default=str),
        META_FINGERPRINT: model_fingerprint,
        META_BN: "eval",
        **(props or {}),
    }
    data = with_metadata(traced, metadata)
    result = ExportResult(None, opset, names, None, None, notes=notes)
    if check:
        result.max_abs_diff, result.max_scaled_diff = compare_with_torch(model, data, input_cfg)
        result.checked_rows = CHECK_ROWS
        if result.max_scaled_diff > TOLERANCE:
            raise ModelFileError(
                f"{source}: ONNX outputs differ from torch by up to {result.max_abs_diff:.2e} "
                f"(relative {result.max_scaled_diff:.2e} > {TOLERANCE:g}); not exported"
            )
    return data, result


def _bn_notes(meta: dict[str, Any], source: str, allow_bn_batch: bool) -> list[str]:
    """A BN method 2 model is refused (ONNX cannot reproduce batch statistics at inference),
    or with ``allow_bn_batch`` exported in eval mode, with a note saying so."""
    model_cfg = meta.get("model") or {}
    if not isinstance(model_cfg, dict):
        model_cfg = to_dict(model_cfg)
    if model_cfg.get("bn_inference", "eval") != "batch":
        return []
    if not allow_bn_batch:
        raise ModelFileError(
            f"{source}: this model uses BN method 2 (batch statistics at inference), which an "
            "ONNX graph cannot reproduce; its ONNX scores would differ from lensfinder's. "
            "Use the torch backend, or export with allow_bn_batch=True for eval-mode BN"
        )
    return ["BN method 2 model exported with eval-mode BN (running statistics)"]


def _trace(
    model: torch.nn.Module, input_cfg: InputConfig, names: tuple[str, ...], opset: int, source: str
) -> bytes:
    """The TorchScript exporter's ONNX bytes, batch axis dynamic."""
    example = example_input(input_cfg, n=2, seed=0)
    args = example if isinstance(example, tuple) else (example,)
    buffer = io.BytesIO()
    outputs = output_names(model)
    dynamic = {name: {0: "batch"} for name in (*names, *outputs)}
    graph = WithThetaE(model) if has_theta_e(model) else model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notices
        try:
            torch.onnx.export(
                graph,
                args,
                buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to a file object
                input_names=list(names),
                output_names=outputs,
                dynamic_axes=dynamic,
                opset_version=opset,
                dynamo=False,  # the TorchScript exporter: fast, and handles opset 17 for timm
            )
        except Exception as exc:  # exporter errors come in many types; report them plainly
            raise ModelFileError(
                f"{source}: ONNX export failed ({type(exc).__name__}: {exc})"
            ) from None
    return buffer.getvalue()


def compare_with_torch(
    model: torch.nn.Module, onnx_model: bytes | Path, input_cfg: InputConfig
) -> tuple[float, float]:
    """(max |diff|, max |diff| / max(1, |value|)) of ONNX vs torch outputs (the logit, and
    theta_E's mean and sigma with the head) on a real-shaped batch."""
    x = example_input(input_cfg, n=CHECK_ROWS, seed=1)
    with torch.inference_mode():
        expected = output_columns(forward_outputs(model.eval(), x), CHECK_ROWS, "torch")
    got = OnnxRunner(onnx_model, threads=1, source="export check").outputs(x)
    if got.shape != expected.shape:
        raise ModelFileError(
            f"export check: the ONNX graph gives {got.shape[1]} output column(s), torch "
            f"{expected.shape[1]}"
        )
    diff = np.abs(got - expected)
    return float(diff.max()), float((diff / np.maximum(1.0, np.abs(expected))).max())


def export_onnx(
    run_dir: Path | str,
    out_path: Path | str,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    allow_bn_batch: bool = False,
) -> ExportResult:
    """Export the model in ``run_dir`` to ``out_path`` (written atomically, only after the check
    passed); dynamic batch axis; ModelFileError if ONNX and torch logits differ beyond 1e-4.
    An ensemble directory becomes one graph that averages its members (``EnsembleModel``)."""
    check_onnx_path(out_path)
    with file_stage(out_path, "export", is_lensfinder_onnx, ONNX_WRITTEN) as stage:
        ensemble = is_ensemble(run_dir)
        model, meta = load_ensemble(run_dir) if ensemble else load_model(Path(run_dir))
        # A checked export of one run carries the cache key, so it serves as the ONNX backend's
        # cache when written to RUN_DIR/model.onnx (as the README shows) instead of being redone.
        cacheable = check and not ensemble and not allow_bn_batch
        props = {META_CACHE_KEY: cache_key(Path(run_dir), "float32", opset)} if cacheable else None
        data, result = build_onnx(model, meta, str(run_dir), opset, check, allow_bn_batch, props)
        result.path = write_onnx(data, stage.out)
        return stage.finish(result)


def check_onnx_path(out_path: Path | str) -> None:
    """Refuse, before any work, an ONNX path that would replace a model file (of this run or
    any other); where an export may go at all (any file but an ONNX export lensfinder wrote,
    or a place inside another output but a run directory, are refused) is the output rule's,
    which ``file_stage`` applies."""
    out_path = Path(out_path)
    if out_path.is_dir():
        raise ConfigError(f"{out_path}: is a directory; give a file path such as model.onnx")
    if out_path.name in (WEIGHTS_FILE, META_FILE):
        raise ConfigError(
            f"{out_path}: is a model file name; writing the ONNX export there would destroy the "
            "model (choose e.g. model.onnx)"
        )


def is_lensfinder_onnx(path: Path) -> bool:
    """Whether ``path`` is a regular ONNX file that lensfinder exported (its metadata names
    the lensfinder version): the only file ``export`` may replace."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        return META_VERSION in read_metadata(path)
    except ModelFileError:
        return False


class EnsembleModel(torch.nn.Module):
    """Members run on the same input, combined into one logit by the Predictor's rule
    (``predictor.average_logits``): the mean logit, or the logit of the mean probability.
    theta_E, when members have the head, is their mixture (``einstein.mixture``), over the
    members that have it, as the Predictor combines it."""

    def __init__(self, members: list[torch.nn.Module], average: str) -> None:
        super().__init__()
        if average not in ("probability", "logit"):
            raise ModelFileError(f"ensemble averaging {average!r}: expected probability or logit")
        self.members = torch.nn.ModuleList(members)
        self.average = average
        self.theta_e_head = any(has_theta_e(m) for m in members)

    def forward(self, *x: torch.Tensor) -> torch.Tensor:
        return self._combine([member(*x).reshape(-1) for member in self.members])

    def with_theta_e(self, *x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, means, sigmas = [], [], []
        member: Any
        for member in self.members:
            if has_theta_e(member):
                logit, theta = member.with_theta_e(*x)
                means.append(theta[:, 0])
                sigmas.append(theta[:, 1])
            else:
                logit = member(*x)
            logits.append(logit.reshape(-1))
        mean, sigma = torch.stack(means), torch.stack(sigmas)
        mu = mean.mean(dim=0)
        variance = (sigma**2 + mean**2).mean(dim=0) - mu**2
        return self._combine(logits), torch.stack([mu, variance.clamp(min=0).sqrt()], dim=1)

    def _combine(self, member_logits: list[torch.Tensor]) -> torch.Tensor:
        logits = torch.stack(member_logits)
        if self.average == "logit":
            return logits.mean(dim=0)
        log_k = math.log(len(self.members))
        log_p = torch.logsumexp(torch.nn.functional.logsigmoid(logits), dim=0) - log_k
        log_q = torch.logsumexp(torch.nn.functional.logsigmoid(-logits), dim=0) - log_k
        return log_p - log_q


def load_ensemble(path: Path | str) -> tuple[EnsembleModel, dict[str, Any]]:
    """The members of an ensemble directory as one model, and a meta for it: the first member's,
    plus an ``ensemble`` section. Members must take the same input (one graph, one input)."""
    record = read_ensemble(path)
    loaded = [load_model(member) for member in record["members"]]
    first = loaded[0][1]

    def settings(meta: dict[str, Any]) -> dict[str, Any]:
        """What must agree: one input, one label rule, one BN mode (build_onnx checks it)."""
        bn_mode = (meta.get("model") or {}).get("bn_inference", "eval")
        return {"input": meta.get("input"), "label_rule": meta.get("label_rule"), "BN": bn_mode}

    for member, (_, meta) in zip(record["members"], loaded, strict=True):
        differ = [k for k, v in settings(meta).items() if v != settings(first)[k]]
        if differ:
            raise ModelFileError(
                f"{member}: its {', '.join(differ)} differ from {record['members'][0]}'s; one "
                "ONNX graph needs members that agree (export them one by one instead)"
            )
    average = str(record.get("averaging") or "probability")
    meta = {
        **first,
        "ensemble": {"members": [str(m) for m in record["members"]], "averaging": average},
    }
    return EnsembleModel([model for model, _ in loaded], average), meta


def write_onnx(data: bytes, out_path: Path | str) -> Path:
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(data)
    return out_path
