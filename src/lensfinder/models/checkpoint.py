"""Model files: ``model.safetensors`` (tensors only) + ``model.json`` (how to rebuild and feed it).

Model files get shared between people, so loading must be safe for a file from a stranger: only
safetensors is read, pickles (``.pt``, ``.pth``, ``.ckpt``, or a pickle renamed to
``model.safetensors``) are refused before anything parses them, and nothing is ever unpickled.
The JSON records the ``InputConfig`` the model was trained on, so a model is never fed inputs
made for other bands, sizes or normalisation; a hash of that description (``DESCRIBED``) is saved
beside it and checked on load, so an edited band order, size or label rule is refused rather
than silently changing every score (model files from before the hash load as they are).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lensfinder import __version__
from lensfinder.config import InputConfig, ModelConfig, to_dict
from lensfinder.errors import ConfigError, ModelFileError
from lensfinder.files import atomic_path, atomic_write_text
from lensfinder.models.factory import create_model
from lensfinder.models.meta import (  # the light half of model files, re-exported here
    FORMAT_VERSION,
    META_FILE,
    WEIGHTS_FILE,
    input_config,
    model_files,
    parse_section,
    read_meta,
    show_value,
)
from lensfinder.models.pretrained import brief_list

_PICKLE_STARTS = (b"PK\x03\x04", b"\x80")  # torch.save's zip archive; a raw pickle
_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header
# The sections of model.json that say how to rebuild, feed and read the model, and on what data
# it was trained (evaluate's split); their hash is saved under DESCRIPTION_KEY.
DESCRIBED = ("input", "model", "label_rule", "split", "data", "train")
DESCRIPTION_KEY = "description_sha256"


def description_hash(record: dict[str, Any]) -> str:
    """SHA-256 of the ``DESCRIBED`` sections as canonical JSON (a missing one counts as null)."""
    described = {key: record.get(key) for key in DESCRIBED}
    text = json.dumps(described, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()


def save_model(run_dir: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``run_dir/model.safetensors`` and ``run_dir/model.json`` atomically; returns run_dir.

    ``meta`` must hold ``input`` and ``model`` (dicts or the config dataclasses); other keys
    (``label_rule``, ``train``, ``metrics``, ``split``, ...) are stored as given. The format
    version, lensfinder and timm versions and an ``architecture`` description are added.
    """
    import timm
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    record = {k: to_dict(v) if dataclasses.is_dataclass(v) else v for k, v in meta.items()}
    for key in ("input", "model"):
        if not isinstance(record.get(key), dict):
            raise ValueError(f"save_model: meta[{key!r}] must be the {key} config (dict)")
    input_cfg = parse_section(InputConfig, record["input"], run_dir / META_FILE, "input")
    model_cfg = parse_section(ModelConfig, record["model"], run_dir / META_FILE, "model")
    record.setdefault("architecture", describe_architecture(model_cfg, input_cfg))
    record.update(
        format_version=FORMAT_VERSION,
        lensfinder_version=__version__,
        timm_version=timm.__version__,
    )
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    record.pop(DESCRIPTION_KEY, None)
    # Hashed as it will be read back (tuples as lists, numpy numbers as plain ones).
    plain = json.loads(json.dumps(record, default=_json_default))
    record[DESCRIPTION_KEY] = description_hash(plain)
    text = json.dumps(record, indent=2, sort_keys=False, default=_json_default) + "\n"
    with atomic_path(run_dir / WEIGHTS_FILE) as tmp:
        save_file(
            tensors, str(tmp), metadata={"format": "pt", "lensfinder_format": str(FORMAT_VERSION)}
        )
    atomic_write_text(run_dir / META_FILE, text)
    return run_dir


def describe_architecture(model_cfg: ModelConfig, input_cfg: InputConfig) -> str:
    """A human-readable name such as ``tf_efficientnet_lite0 (4 bands, instance norm)``."""
    two_branch = input_cfg.layout == "two_branch"
    parts = ["two-branch VIS + NISP" if two_branch else f"{len(input_cfg.bands)} bands"]
    if model_cfg.norm == "instance":
        parts.append("instance norm")
    if model_cfg.freeze_backbone:
        parts.append("frozen backbone")
    return f"{model_cfg.arch} ({', '.join(parts)})"


def load_model(
    run_dir: str | Path,
    expect_input: InputConfig | None = None,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of ``run_dir`` from its JSON, load its tensors, return ``(model, meta)``.

    The model is in eval mode on ``device``. With ``expect_input``, a model made for other input
    (bands, size, layout, normalisation) is refused rather than fed the wrong thing.
    """
    weights_path, meta_path = model_files(run_dir)
    meta = read_meta(meta_path.parent)
    input_cfg = input_config(meta, meta_path)
    model_cfg = parse_section(ModelConfig, meta["model"], meta_path, "model")
    check_description(meta, meta_path)
    if expect_input is not None:
        _check_input(input_cfg, expect_input, meta_path)
    tensors = read_safetensors(weights_path)
    try:
        model = create_model(dataclasses.replace(model_cfg, pretrained=None), input_cfg)
    except ConfigError as exc:
        raise ModelFileError(f"{meta_path}: cannot rebuild the model ({exc})") from None
    _check_tensors(model, tensors, weights_path)
    model.load_state_dict(tensors, strict=True)
    return model.to(device).eval(), meta


def check_description(meta: dict[str, Any], where: Path) -> None:
    """ModelFileError when the described sections differ from the hash saved with them."""
    saved = meta.get(DESCRIPTION_KEY)
    if saved is None:  # written before the hash existed
        return
    if saved != description_hash(meta):
        raise ModelFileError(
            f"{where}: edited after training (its {', '.join(DESCRIBED)} sections no longer "
            "match the hash saved with the weights); restore the file or retrain"
        )


def read_safetensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, after checking it is one (a renamed pickle is refused
    unread)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    with open(path, "rb") as handle:
        head = handle.read(9)
    if head.startswith(_PICKLE_STARTS):
        raise ModelFileError(
            f"{path}: a pickle (torch.save) file, not safetensors; refused without unpickling"
        )
    if len(head) < 9 or not 0 < struct.unpack("<Q", head[:8])[0] <= _MAX_HEADER or head[8:] != b"{":
        raise ModelFileError(f"{path}: not a safetensors file (bad header)")
    try:
        return load_file(path, device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: corrupt safetensors file ({exc})") from None


def _check_input(found: InputConfig, expected: InputConfig, where: Path) -> None:
    have, want = to_dict(found), to_dict(expected)
    differ = [k for k in want if have.get(k) != want[k]]
    if differ:
        detail = "; ".join(
            f"{k} {show_value(have.get(k))} (expected {show_value(want[k])})" for k in differ
        )
        raise ModelFileError(f"{where}: made for other input: {detail}")


def _check_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], where: Path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    misshapen = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in tensors.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = [
        f"{label} {brief_list(items)}"
        for label, items in (
            ("missing tensors", missing),
            ("unexpected tensors", unexpected),
            ("wrong shapes", misshapen),
        )
        if items
    ]
    if problems:
        raise ModelFileError(f"{where}: does not match its model.json: {'; '.join(problems)}")


def _json_default(value: Any) -> Any:
    """Numbers from numpy/torch in ``metrics`` become plain JSON numbers."""
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"save_model: cannot store {type(value).__name__} in model.json")
