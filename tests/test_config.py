"""Configs: defaults in one place, YAML round trip, unknown keys and bad values refused."""

import pytest

from lensfinder.config import (
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
    assert cfg.weight_decay == 1e-4  # the paper's L2 stays the default
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
