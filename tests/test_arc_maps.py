"""Arc maps: the simulator writes where each arc is, pack keeps it, training learns from it
(``TrainConfig.arc_map_weight``) while the saved model stays the plain classifier."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from lensfinder import layout
from lensfinder.config import InputConfig, ModelConfig, SimulateConfig, SplitConfig, TrainConfig
from lensfinder.data.cutouts import ARC_UNKNOWN, NISP_SHAPE, VIS_SHAPE, Cutouts, CutoutSource
from lensfinder.data.dataset import CutoutDataset
from lensfinder.data.graded import GradedSource
from lensfinder.data.source import open_source
from lensfinder.data.store import open_store, pack
from lensfinder.errors import ConfigError, DataError
from lensfinder.models.factory import create_model
from lensfinder.simulate import simulate, simulate_object
from lensfinder.train.arc_maps import ArcMapHead, split_arc
from lensfinder.train.datamodule import ConcatSource

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SIM = SimulateConfig(n=24, seed=5, workers=1, supersampling=1, arc_maps=True)
NATIVE_32 = InputConfig(size=32)  # stacked, native VIS sampling: the central 3.2"
TINY = ModelConfig(arch="test_efficientnet", pretrained=None)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> tuple[Path, Path]:
    """24 simulated objects with arc maps: (layout, store)."""
    root = tmp_path_factory.mktemp("arc_sim")
    simulate(SIM, root / "sim", progress=False)
    pack(root / "sim", root / "sim.zarr", progress=False)
    return root / "sim", root / "sim.zarr"


def catalogue(root: Path) -> dict[str, list[str]]:
    with layout.catalog_path(root).open() as handle:
        rows = list(csv.DictReader(line for line in handle if not line.startswith("#")))
    return {name: [row[name] for row in rows] for name in rows[0]}


def test_arc_maps_are_the_pixels_the_label_rule_counts_and_change_no_image(simulated):
    root, _ = simulated
    columns = catalogue(root)
    ids = [int(i) for i in columns["ID"]]
    source = open_source(root)
    maps = source.arc_maps(np.arange(len(ids)))
    assert maps is not None and maps.shape == (len(ids), *VIS_SHAPE)
    assert set(np.unique(maps).tolist()) <= {0, 1}
    np.testing.assert_array_equal(
        maps.reshape(len(ids), -1).sum(axis=1), [float(v) for v in columns["n_pix_source"]]
    )
    lenses = source.labels == 1
    assert lenses.any() and (maps[lenses].reshape(lenses.sum(), -1).sum(axis=1) > 20).all()
    # the same objects without arc maps: the same images, no arc map
    plain = dataclasses.replace(SIM, arc_maps=False)
    for object_id, lens in ((ids[0], True), (ids[1], False)):
        ours, theirs = (
            simulate_object(SIM, object_id, lens),
            simulate_object(plain, object_id, lens),
        )
        assert ours.arc_map is not None and theirs.arc_map is None
        for band, images in ours.bands.items():
            np.testing.assert_array_equal(images.image, theirs.bands[band].image)


def test_pack_keeps_the_arc_maps_and_a_mix_marks_the_rows_without(simulated, tmp_path):
    root, store_path = simulated
    store = open_store(store_path)
    rows = np.array([5, 0, 5, 17])
    from_layout = open_source(root).arc_maps(rows)
    np.testing.assert_array_equal(store.arc_maps(rows), from_layout)
    # a layout without arc maps (one file gone: none, not a partial set)
    bare = tmp_path / "bare"
    simulate(dataclasses.replace(SIM, n=4), bare, progress=False)
    next((bare / layout.ARC_MAP_DIR).iterdir()).unlink()
    pack(bare, tmp_path / "bare.zarr", progress=False)
    without = open_store(tmp_path / "bare.zarr")
    assert without.arc_maps([0, 1]) is None
    mixed = ConcatSource([without, store]).arc_maps([1, 4 + 5])
    assert mixed is not None
    assert (mixed[0] == ARC_UNKNOWN).all()
    np.testing.assert_array_equal(mixed[1], from_layout[0])
    # mined or graded rows appended to a training set (the second pass of hard negatives)
    replayed = GradedSource(without, store, np.array([17, 5]), np.array([1, 0]))
    maps = replayed.arc_maps([0, 4, 5])
    assert maps is not None and (maps[0] == ARC_UNKNOWN).all()
    np.testing.assert_array_equal(maps[1:], from_layout[[3, 0]])


class _ArcOnVis(CutoutSource):
    """VIS is bright exactly on a known arc map (a test of where the target plane goes)."""

    def __init__(self, maps: np.ndarray, labels: np.ndarray) -> None:
        self.path = Path("arc-on-vis")
        self.ids = np.arange(len(maps), dtype=np.int64)
        self.labels = labels.astype(np.int8)
        self.problems = []
        self.label_rule = None
        self.maps = maps
        noise = np.random.default_rng(0).normal(size=(len(maps), *VIS_SHAPE))
        self.vis = (noise + 50.0 * (maps == 1)).astype(np.float32)

    ra = dec = property(lambda self: np.zeros(len(self)))
    catalog = property(lambda self: {})

    def read(self, indices) -> Cutouts:
        rows = self._as_indices(indices)
        nisp = np.random.default_rng(1).normal(size=(len(rows), *NISP_SHAPE))
        return Cutouts(self.vis[rows], nisp.astype(np.float32), np.ones(len(rows), bool), [None])

    def arc_maps(self, indices) -> np.ndarray:
        return self.maps[self._as_indices(indices)]


def test_the_arc_target_moves_with_the_pixels_and_is_zero_for_non_lenses():
    maps = np.zeros((4, *VIS_SHAPE), np.uint8)
    maps[:, 92:96, 100:110] = 1  # an asymmetric arc inside the central 32 px
    maps[3] = ARC_UNKNOWN
    labels = np.array([1, 1, 0, 1])
    dataset = CutoutDataset(
        _ArcOnVis(maps, labels), input_cfg=NATIVE_32, augment=True, check=False, arc_maps=True
    )
    seen = set()
    for _ in range(6):
        x, _ = dataset.get_batch([0, 1, 2, 3])
        assert x.shape == (4, 5, 32, 32)  # 4 bands and the target plane
        image, target = split_arc(x, 4)
        assert image.shape == (4, 4, 32, 32) and target is not None
        for row in (0, 1):  # lenses: the target is 1 exactly where VIS is bright
            on = target[row, 0] == 1
            assert on.sum() == 40
            vis = image[row, 0]
            assert vis[on].min() > vis[~on].max()
            seen.add(tuple(on.nonzero()[0].tolist()))
        assert (target[2] == 0).all()  # a non-lens: no arc, whatever its map says
        assert (target[3] == -1).all()  # unknown
    assert len(seen) > 1  # the D4 elements differed, and the target followed each
    plain = CutoutDataset(_ArcOnVis(maps, labels), input_cfg=NATIVE_32, check=False)
    assert plain.get_batch([0])[0].shape == (1, 4, 32, 32)
    assert (plain.bytes_per_item, dataset.bytes_per_item) == (4 * 32 * 32 * 4, 5 * 32 * 32 * 4)
    with pytest.raises(ConfigError, match="native"):
        CutoutDataset(
            _ArcOnVis(maps, labels), input_cfg=InputConfig(size=32, vis_sampling="bin"),
            check=False, arc_maps=True,
        )  # fmt: skip


def test_the_arc_loss_learns_where_the_arc_is_and_ignores_unknown_objects():
    torch.manual_seed(0)
    model = create_model(TINY, NATIVE_32)
    head = ArcMapHead.attach(model, 8).train()
    model.train()
    x = torch.randn(3, 4, 32, 32)
    target = torch.zeros(3, 1, 32, 32)
    target[0, 0, 8:16, 8:16] = 1.0  # one cell of the 4x4 map at stride 8
    target[2] = -1.0  # unknown
    model(x)
    features = head.features
    assert features is not None and features.shape[-2:] == (4, 4)
    features.retain_grad()
    loss = head.loss(target)
    loss.backward()
    assert features.grad is not None
    assert features.grad[2].abs().max() == 0  # the unknown object adds nothing
    assert features.grad[:2].abs().max() > 0
    # with every object unknown the loss is exactly 0
    model(x)
    assert head.loss(torch.full((3, 1, 32, 32), -1.0)).item() == 0.0
    # a few steps on the one known arc: its cell rises above the others
    optimiser = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=3e-3)
    for _ in range(30):
        optimiser.zero_grad()
        model(x)
        head.loss(target).backward()
        optimiser.step()
    model(x)
    cells = torch.sigmoid(head.net(head.features))[0, 0]
    assert cells[1, 1] > 0.5 > cells.flatten()[[0, 2, 3, 15]].max()
    with pytest.raises(ConfigError, match="stride"):
        ArcMapHead.attach(model, 64)


def test_training_with_arc_maps_logs_its_loss_and_saves_the_plain_classifier(simulated, tmp_path):
    from safetensors.torch import load_file

    from lensfinder.train import train

    _, store = simulated
    config = TrainConfig(
        input=NATIVE_32,
        model=TINY,
        split=SplitConfig(seed=0, test_fraction=0.1, val_fraction=0.3),
        max_epochs=2,
        batch_size=4,
        batch_size_max=4,
        max_train_samples=8,
        time_budget_minutes=0,
        arc_map_weight=1.0,
    )
    result = train(config, store, tmp_path / "run", progress=False)
    with (result.run_dir / "metrics.csv").open() as handle:
        arc_losses = [
            float(r["train_arc_loss"]) for r in csv.DictReader(handle) if r.get("train_arc_loss")
        ]
    assert len(arc_losses) == 2 and all(np.isfinite(arc_losses))
    saved = load_file(result.run_dir / "model.safetensors")
    assert set(saved) == set(create_model(TINY, NATIVE_32).state_dict())  # no arc head in it
    # data without arc maps: one line, naming the fix
    plain = tmp_path / "plain"
    simulate(dataclasses.replace(SIM, arc_maps=False), plain, progress=False)
    pack(plain, tmp_path / "plain.zarr", progress=False)
    with pytest.raises(DataError, match="no arc maps"):
        train(config, tmp_path / "plain.zarr", tmp_path / "run2", progress=False)


def test_arc_settings_are_checked():
    with pytest.raises(ConfigError, match="arc_map_weight"):
        TrainConfig(arc_map_weight=-1.0)
    with pytest.raises(ConfigError, match="arc_map_stride"):
        TrainConfig(arc_map_stride=5)
