"""Model files: exact round trip, and refusal (never unpickling) of anything unsafe or unfit."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lensfinder.config import InputConfig, ModelConfig, TrainConfig, to_dict
from lensfinder.errors import ModelFileError
from lensfinder.labels import DEFAULT_LABEL_RULE
from lensfinder.models.batchnorm import batchnorm_layers
from lensfinder.models.checkpoint import (
    DESCRIPTION_KEY,
    FORMAT_VERSION,
    META_FILE,
    WEIGHTS_FILE,
    load_model,
    save_model,
)
from lensfinder.models.factory import create_model
from lensfinder.models.meta import read_meta

INPUT = InputConfig(bands=("VIS", "J"), size=32)
MODEL = ModelConfig(pretrained=None, bn_reinit=True)


def saved_run(run_dir: Path, input_cfg: InputConfig = INPUT) -> tuple[torch.nn.Module, Path]:
    model = create_model(MODEL, input_cfg)
    with torch.no_grad():  # non-default statistics, so a dropped buffer would show
        for layer in batchnorm_layers(model):
            layer.running_mean.normal_(0, 0.2)
    model.to(memory_format=torch.channels_last).eval()
    meta = {
        "input": input_cfg,
        "model": MODEL,
        "label_rule": DEFAULT_LABEL_RULE,
        "train": to_dict(TrainConfig()),
        "metrics": {"val_auroc": np.float32(0.91)},
        "split": {"seed": 0},
    }
    save_model(run_dir, model, meta)
    return model, run_dir


class Trap:
    """Unpickling this creates ``path``: proof that a loader did unpickle."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize(
    "input_cfg", [INPUT, InputConfig(size=64, layout="two_branch")], ids=["stacked", "two_branch"]
)
def test_round_trip_gives_identical_predictions(tmp_path, input_cfg):
    model, run_dir = saved_run(tmp_path / "run", input_cfg)
    loaded, meta = load_model(run_dir, expect_input=input_cfg)
    generator = torch.Generator().manual_seed(1)
    if input_cfg.layout == "two_branch":
        x = (
            torch.randn(4, 1, 64, 64, generator=generator),
            torch.randn(4, 3, 66, 66, generator=generator),
        )
    else:
        x = torch.randn(4, 2, 32, 32, generator=generator)
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    loaded.to(memory_format=torch.channels_last)  # as saved, so the same kernels run
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert not loaded.training
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["input"] == to_dict(input_cfg)
    assert meta["label_rule"] == DEFAULT_LABEL_RULE
    assert meta["metrics"]["val_auroc"] == pytest.approx(0.91)
    assert meta["architecture"].startswith("tf_efficientnet_lite0")
    assert read_meta(run_dir / WEIGHTS_FILE) == meta


@pytest.mark.parametrize("kind", ["torch.save", "raw pickle"])
def test_pickle_named_safetensors_is_refused_unread(tmp_path, kind):
    _, run_dir = saved_run(tmp_path / "run")
    marker = tmp_path / "code-ran"
    weights = run_dir / WEIGHTS_FILE
    if kind == "torch.save":
        torch.save({"backbone.conv_stem.weight": Trap(marker)}, weights)
    else:
        weights.write_bytes(pickle.dumps({"w": Trap(marker)}))
    with pytest.raises(ModelFileError, match=r"model\.safetensors: a pickle .*without unpickling"):
        load_model(run_dir)
    assert not marker.exists()
    pickle.loads(pickle.dumps(Trap(marker)))  # the trap is armed: unpickling runs it
    assert marker.exists()


def test_pickle_files_are_refused_by_name(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "model.pth"
    torch.save({"w": Trap(marker)}, path)
    with pytest.raises(ModelFileError, match=r"model\.pth: a pickle-based \.pth file"):
        load_model(path)
    lightning_dir = tmp_path / "lightning"
    lightning_dir.mkdir()
    torch.save({"w": Trap(marker)}, lightning_dir / "last.ckpt")
    with pytest.raises(ModelFileError, match=r"missing \(found last\.ckpt: pickles are refused\)"):
        load_model(lightning_dir)
    assert not marker.exists()


def test_model_made_for_other_bands_or_size_is_refused(tmp_path):
    _, run_dir = saved_run(tmp_path / "run")
    with pytest.raises(ModelFileError, match=r"model\.json: made for other input: bands VIS,J"):
        load_model(run_dir, expect_input=InputConfig(bands=("VIS", "Y", "J", "H"), size=32))
    with pytest.raises(ModelFileError, match=r"size 32 \(expected 100\)"):
        load_model(run_dir, expect_input=InputConfig(bands=("VIS", "J"), size=100))


def test_corrupt_or_missing_json_is_refused(tmp_path):
    _, run_dir = saved_run(tmp_path / "run")
    meta_path = run_dir / META_FILE
    text = meta_path.read_text()
    meta_path.write_text(text[: len(text) // 2])
    with pytest.raises(ModelFileError, match=r"model\.json: not valid JSON"):
        load_model(run_dir)
    meta_path.write_text(json.dumps({**json.loads(text), "model": {"arch": "x", "colour": 1}}))
    with pytest.raises(ModelFileError, match=r"bad 'model' section .*unknown key\(s\) colour"):
        load_model(run_dir)
    meta_path.unlink()
    with pytest.raises(ModelFileError, match=r"model\.json: missing"):
        load_model(run_dir)


def test_newer_format_version_is_refused(tmp_path):
    _, run_dir = saved_run(tmp_path / "run")
    meta_path = run_dir / META_FILE
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(ModelFileError, match="newer lensfinder"):
        load_model(run_dir)


def test_missing_or_foreign_tensors_are_refused(tmp_path):
    _, run_dir = saved_run(tmp_path / "run")
    weights = run_dir / WEIGHTS_FILE
    tensors = load_file(weights)
    complete = dict(tensors)
    del tensors["backbone.blocks.2.0.conv_pw.weight"]
    tensors["backbone.extra.weight"] = torch.zeros(3)
    save_file(tensors, str(weights))
    with pytest.raises(ModelFileError, match=r"missing tensors backbone\.blocks\.2\.0\.conv_pw"):
        load_model(run_dir)
    complete["backbone.conv_stem.weight"] = torch.zeros(32, 4, 3, 3)  # made for 4 bands
    save_file(complete, str(weights))
    with pytest.raises(ModelFileError, match=r"wrong shapes backbone\.conv_stem\.weight"):
        load_model(run_dir)


def test_truncated_safetensors_is_refused(tmp_path):
    _, run_dir = saved_run(tmp_path / "run")
    weights = run_dir / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(ModelFileError, match=r"model\.safetensors: corrupt safetensors"):
        load_model(run_dir)
    weights.write_bytes(b"hello, not a model")
    with pytest.raises(ModelFileError, match="not a safetensors file"):
        load_model(run_dir)


def test_a_model_file_from_before_vis_sampling_and_head_hidden_loads_as_made(tmp_path):
    """model.json written before ``input.vis_sampling`` and ``model.head_hidden`` existed: read
    with the values it was made with (binned VIS, a 128-unit head), not today's defaults."""
    binned = InputConfig(size=32, layout="two_branch", vis_sampling="bin")
    model_cfg = ModelConfig(arch="test_efficientnet", pretrained=None)
    model = create_model(model_cfg, binned).eval()
    run_dir = tmp_path / "old"
    save_model(run_dir, model, {"input": binned, "model": model_cfg, "train": {}})
    meta_path = run_dir / META_FILE
    meta = json.loads(meta_path.read_text())
    del meta["input"]["vis_sampling"], meta["model"]["head_hidden"], meta[DESCRIPTION_KEY]
    meta_path.write_text(json.dumps(meta))

    loaded, _ = load_model(run_dir, expect_input=binned)  # native would be refused here
    assert [m.out_features for m in loaded.head if isinstance(m, torch.nn.Linear)] == [128, 1]
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
