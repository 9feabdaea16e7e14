"""The library's defaults are the recommended CPU recipe (cpu-small), and moving them there
changed no shipped config: each loads exactly the values recorded before the move."""

import json
from pathlib import Path

import pytest

from lensfinder.config import SHIPPED_CONFIGS, TrainConfig, load_config, to_dict

SNAPSHOT = Path(__file__).parent / "data" / "shipped_train_configs.json"
RECORDED = json.loads(SNAPSHOT.read_text())


def test_the_library_defaults_are_what_lensfinder_train_uses():
    """``train(TrainConfig())`` from Python and ``lensfinder train`` (cpu-small) agree."""
    assert load_config(TrainConfig, "cpu-small") == TrainConfig()
    assert to_dict(TrainConfig()) == RECORDED["cpu-small"]


def test_every_shipped_config_is_recorded():
    assert sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml")) == sorted(RECORDED)


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_shipped_config_loads_the_recorded_values(name):
    """Recorded from every shipped config before the defaults moved (model.head_hidden, added
    later, at the 128 units the two-branch head always had)."""
    assert to_dict(load_config(TrainConfig, name)) == RECORDED[name]
