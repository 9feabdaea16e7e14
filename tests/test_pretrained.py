"""Offline pretrained weights: the mapped lite0 is ImageNet-trained; bad files are refused."""

from __future__ import annotations

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
    LITE0_ARCH,
    imagenet_lite0_state_dict,
    lite0_weights_file,
    load_pretrained,
    read_state_dict,
)

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def imagenet_input(image: np.ndarray, net: torch.nn.Module) -> torch.Tensor:
    """Resize the short side to 256, centre-crop 224, scale with the network's own ImageNet
    mean and std (timm's pretrained_cfg: [-1, 1] for lite0)."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    height, width = x.shape[-2:]
    scale = 256 / min(height, width)
    x = F.interpolate(
        x, size=(round(height * scale), round(width * scale)), mode="bicubic", antialias=True
    )
    top, left = (x.shape[-2] - 224) // 2, (x.shape[-1] - 224) // 2
    x = x[..., top : top + 224, left : left + 224]
    mean = torch.tensor(net.pretrained_cfg["mean"])[:, None, None]
    std = torch.tensor(net.pretrained_cfg["std"])[:, None, None]
    return (x - mean) / std


def test_mapped_lite0_recognises_cat_and_espresso():
    from skimage import data

    net = create_timm(LITE0_ARCH)
    load_pretrained(net, imagenet_lite0_state_dict(), "imagenet")
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
    return read_state_dict(lite0_weights_file())


def test_packaged_file_is_the_expected_state_dict(packaged_lite0):
    assert sum(v.numel() for v in packaged_lite0.values()) == 4_694_073
    assert sum("num_batches_tracked" not in k for k in packaged_lite0) == 247


def test_shape_mismatch_in_mapping_is_refused(packaged_lite0, tmp_path):
    tampered = dict(packaged_lite0)
    tampered["_blocks.3._project_conv.weight"] = torch.zeros(7, 7, 1, 1)
    path = tmp_path / "lite0.pth"
    torch.save(tampered, path)
    with pytest.raises(ModelFileError, match=r"_blocks\.3\._project_conv\.weight has shape"):
        imagenet_lite0_state_dict(path)


def test_missing_tensor_in_mapping_is_refused(packaged_lite0, tmp_path):
    tampered = {k: v for k, v in packaged_lite0.items() if k != "_fc.bias"}
    path = tmp_path / "lite0.pth"
    torch.save(tampered, path)
    with pytest.raises(ModelFileError, match="246 tensors, but the target network has 247"):
        imagenet_lite0_state_dict(path)


def test_swapped_roles_in_mapping_are_refused(packaged_lite0, tmp_path):
    """Same shapes, wrong order (BN bias before weight): caught by the role check."""
    items = list(packaged_lite0.items())
    names = [k for k, _ in items]
    i, j = names.index("_bn0.weight"), names.index("_bn0.bias")
    items[i], items[j] = items[j], items[i]
    path = tmp_path / "lite0.pth"
    torch.save(dict(items), path)
    with pytest.raises(ModelFileError, match="role"):
        imagenet_lite0_state_dict(path)


def test_imagenet_only_for_lite0():
    with pytest.raises(ConfigError, match="only for tf_efficientnet_lite0"):
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
