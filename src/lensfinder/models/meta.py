"""The light half of model files: where they are and what ``model.json`` says, without torch.

``checkpoint`` loads and saves the models themselves (torch, timm); what only reads the JSON (an
ONNX scan finding how to prepare its input, a report naming the model) imports this module and
so starts without the network code: timm alone costs ~2 s of a scan's start-up on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lensfinder.config import MODEL_FILE_LEGACY, InputConfig, from_dict
from lensfinder.ensemble import ENSEMBLE_FILE, is_ensemble
from lensfinder.errors import ConfigError, ModelFileError

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")


def run_directory(path: str | Path) -> Path:
    """The run directory of ``path`` (itself, or the directory of its model.safetensors or
    model.json). Pickle-based files are refused here, by name, before anything opens them."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelFileError(
            f"{path}: a pickle-based {path.suffix} file; lensfinder loads only model.safetensors "
            "+ model.json (a pickle can run code when opened, so it is never unpickled)"
        )
    if path.is_file() and path.name in (WEIGHTS_FILE, META_FILE):
        path = path.parent
    if not path.is_dir():
        raise ModelFileError(f"{path}: no such run directory")
    return path


def model_files(path: str | Path) -> tuple[Path, Path]:
    """``(model.safetensors, model.json)`` of a run; the weights file must exist."""
    run_dir = run_directory(path)
    weights = run_dir / WEIGHTS_FILE
    if not weights.is_file():
        if is_ensemble(run_dir):
            raise ModelFileError(
                f"{run_dir}: an ensemble directory ({ENSEMBLE_FILE}); this step takes one model: "
                f"pass one member (e.g. {run_dir / 'member-0'})"
            )
        pickles = sorted(p.name for p in run_dir.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        hint = f" (found {', '.join(pickles)}: pickles are refused)" if pickles else ""
        raise ModelFileError(f"{weights}: missing{hint}")
    return weights, run_dir / META_FILE


def read_meta(run_dir: str | Path) -> dict[str, Any]:
    """The checked ``model.json`` of a run: readable, ours, not newer than this lensfinder."""
    meta_path = run_directory(run_dir) / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise ModelFileError(f"{meta_path}: missing (it says how to rebuild the model)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{meta_path}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{meta_path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{meta_path}: expected a JSON object")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ModelFileError(f"{meta_path}: not a lensfinder model file (no format_version)")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{meta_path}: written by a newer lensfinder (format {version}; this one reads up to "
            f"{FORMAT_VERSION}): upgrade lensfinder"
        )
    for key in ("input", "model"):
        if not isinstance(meta.get(key), dict):
            raise ModelFileError(f"{meta_path}: no {key!r} section")
    return meta


def input_config(meta: dict[str, Any], where: str | Path = META_FILE) -> InputConfig:
    """The ``InputConfig`` a model was trained with (how to prepare its inputs)."""
    return parse_section(InputConfig, meta["input"], where, "input")


def parse_section(cls: type, data: dict[str, Any], where: str | Path, section: str) -> Any:
    try:
        return from_dict(cls, MODEL_FILE_LEGACY.get(section, {}) | data, section)
    except (ConfigError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{where}: bad {section!r} section ({exc})") from None


def show_value(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
