"""Configs: defaults in one place, YAML round trip, unknown keys and bad values refused."""

import re

import pytest

from lensfinder.config import (
    TABLE1_BUDGETS,
    BnStudyConfig,
    EvaluateConfig,
    GalleryConfig,
    InputConfig,
    ModelConfig,
    PredictConfig,
    ScanConfig,
    SimulateConfig,
    SplitConfig,
    Table1Budget,
    TrainConfig,
    from_dict,
    load_config,
    resolve_config_path,
    save_config,
    to_dict,
)
from lensfinder.errors import ConfigError


def test_nested_override_and_round_trip(tmp_path):
    cfg = from_dict(TrainConfig, {"input": {"size": 64, "bands": ["Y", "J", "H"]}, "lr": 1})
    assert cfg.input.bands == ("Y", "J", "H") and cfg.input.size == 64
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert (cfg.optimizer, cfg.weight_decay, cfg.decoupled_weight_decay) == ("adamw", 0.0, 1e-4)
    path = tmp_path / "c.yaml"
    save_config(cfg, path)
    assert load_config(TrainConfig, path) == cfg
    assert to_dict(load_config(TrainConfig, path)) == to_dict(cfg)


def test_unknown_key_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("input:\n  sise: 100\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*unknown key\(s\) sise"):
        load_config(TrainConfig, path)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"optimizer": "rmsprop"}, "not one of"),
        ({"max_epochs": "ten"}, "not a int"),
        ({"input": 3}, "expected a mapping"),
        ({"balanced_sampler": 1}, "not a bool"),
    ],
)
def test_bad_values(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(TrainConfig, data)


def test_unknown_config_name_lists_shipped_ones():
    with pytest.raises(ConfigError, match="not a shipped config"):
        resolve_config_path("no-such-config")


def test_overrides_win_over_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("max_epochs: 3\nlr: 0.01\n")
    cfg = load_config(TrainConfig, path, max_epochs=7)
    assert (cfg.max_epochs, cfg.lr) == (7, 0.01)


def test_nested_overrides_merge_with_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("input:\n  bands: [Y, J, H]\n  size: 200\n")
    cfg = load_config(TrainConfig, path, input={"size": 64})
    assert cfg.input.size == 64 and cfg.input.bands == ("Y", "J", "H")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: TrainConfig(optimizer="adam"),
            "decoupled_weight_decay 0.0001 needs optimizer adamw",
        ),
        (lambda: TrainConfig(batch_size=64), "batch_size_max 32 < batch_size 64"),
        (
            lambda: TrainConfig(split=SplitConfig(val_fraction=0.0)),
            "split.val_fraction must be > 0",
        ),
        (lambda: SplitConfig(test_fraction=0.6, val_fraction=0.5), "their sum < 1"),
        (lambda: ModelConfig(bn_reinit=True, freeze_backbone=True), "choose one"),
        (lambda: ModelConfig(bn_reinit_affine=True), "needs model.bn_reinit"),
        (lambda: InputConfig(size=4), "input size 4"),
        (lambda: InputConfig(vis_sampling="nearest"), "vis_sampling 'nearest' is not one of"),  # type: ignore[arg-type]
        (
            lambda: PredictConfig(backend="onnx", torch_precision="bfloat16"),
            "for the torch backend",
        ),
        (lambda: EvaluateConfig(calibration_bins=1), "calibration_bins must be >= 2, got 1"),
        (lambda: ScanConfig(shard_size=0), "shard_size must be >= 1, got 0"),
        (lambda: GalleryConfig(score_min=0.8, score_max=0.2), "score range [0.8, 0.2] is empty"),
        (lambda: SimulateConfig(lens_fraction=1.5), "lens_fraction must be in [0, 1], got 1.5"),
        (lambda: SimulateConfig(group_members=(3, 2)), "group_members"),
        (lambda: BnStudyConfig(sizes=(0, 4)), "batch sizes must be >= 1"),
        (lambda: BnStudyConfig(split="everything"), "split 'everything' is not one of"),  # type: ignore[arg-type]
        (
            lambda: Table1Budget(name="x", why="y", eval_batch_size=0),
            "eval_batch_size must be >= 1, got 0",
        ),
    ],
)
def test_a_config_refuses_bad_values_when_made_in_python(make, message):
    """The checks live on the config classes, so a config made in Python (not only one read
    from YAML) fails at once, in one line naming the field."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        make()


def test_every_problem_is_listed_in_one_line_and_an_edit_is_checked_on_validate():
    with pytest.raises(ConfigError) as info:
        TrainConfig(lr=0.0, max_epochs=0)
    text = str(info.value)
    assert text.startswith("train config: ") and "\n" not in text
    assert "max_epochs 0 < 1" in text and "lr 0.0 must be > 0" in text
    cfg = TrainConfig()
    cfg.members = 0  # an edit after the config was made
    with pytest.raises(ConfigError, match="members 0 < 1"):
        cfg.validate()


def test_yaml_values_are_checked_as_they_are_read(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optimizer: sgd\n")  # keeps AdamW's default decay: a bad mix
    with pytest.raises(ConfigError, match=r"c.yaml: train config: decoupled_weight_decay"):
        load_config(TrainConfig, path)


def test_experiment_defaults_come_from_the_stage_configs():
    """The Table 1 budgets and the BN study resample and batch as evaluate does by default."""
    assert BnStudyConfig().bootstrap == EvaluateConfig().bootstrap
    for budget in TABLE1_BUDGETS.values():
        assert budget.bootstrap == EvaluateConfig().bootstrap
        assert budget.eval_batch_size == PredictConfig().batch_size
