"""CutoutDataset: shapes for each input layout, labels, augmentation, skipping bad objects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lensfinder.config import InputConfig
from lensfinder.data import open_source
from lensfinder.data.augment import apply_d4
from lensfinder.data.dataset import CutoutDataset, collate, tensors
from lensfinder.data.sampler import BalancedBatchSampler
from lensfinder.data.splits import split_indices
from lensfinder.data.transforms import to_model_input

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("size", [100, 200])
def test_stacked_items(tiny_store: Path, size: int) -> None:
    source = open_source(tiny_store)
    dataset = CutoutDataset(source, np.array([2, 5, 7]), InputConfig(size=size))
    assert len(dataset) == 3 and dataset.skipped == 0
    x, y = dataset[1]
    assert x.shape == (4, size, size) and x.dtype == torch.float32
    assert y.dtype == torch.float32 and float(y) == float(source.labels[5])
    assert dataset.ids.tolist() == source.ids[[2, 5, 7]].tolist()


def test_two_branch_items_and_batches(tiny_store: Path) -> None:
    binned = InputConfig(layout="two_branch", vis_sampling="bin", size=100)  # NISP: all 66 px
    dataset = CutoutDataset(open_source(tiny_store), None, binned)
    (vis, nisp), _ = dataset[0]
    assert vis.shape == (1, 100, 100) and nisp.shape == (3, 66, 66)
    loader = DataLoader(dataset, batch_size=5)
    (vis_b, nisp_b), y_b = next(iter(loader))
    assert vis_b.shape == (5, 1, 100, 100) and nisp_b.shape == (5, 3, 66, 66)
    assert y_b.shape == (5,)


def test_items_equal_the_shared_transform(tiny_store: Path) -> None:
    source = open_source(tiny_store)
    cfg = InputConfig(size=100)
    dataset = CutoutDataset(source, None, cfg)
    cutouts = source.read([4])
    expected = to_model_input(cutouts.vis, cutouts.nisp, cfg)[0]
    assert torch.allclose(dataset[4][0], expected)


def test_augmentation_is_a_d4_element_applied_to_both_branches(tiny_store: Path) -> None:
    source = open_source(tiny_store)
    cfg = InputConfig(layout="two_branch", size=100)
    plain = CutoutDataset(source, None, cfg)
    augmented = CutoutDataset(source, None, cfg, augment=True, seed=1)
    found = set()
    for position in range(6):
        (vis, nisp), _ = plain[position]
        (vis_a, nisp_a), _ = augmented[position]
        ks = [k for k in range(8) if torch.equal(apply_d4(vis, k), vis_a)]
        assert len(ks) == 1 and torch.equal(apply_d4(nisp, ks[0]), nisp_a)
        found.add(ks[0])
    assert len(found) > 1


def test_unreadable_objects_are_excluded_and_counted(layout_factory) -> None:
    root = layout_factory("ds_broken", n=4, seed=2)
    (root / "Public" / "EUC_Y" / "imageEUC_Y-200001.fits").write_bytes(b"junk")
    dataset = CutoutDataset(open_source(root), None, InputConfig(size=100))
    assert dataset.skipped == 1 and len(dataset) == 3
    assert 200001 not in dataset.ids.tolist()


def test_balanced_loader_over_a_split(tiny_store: Path) -> None:
    from lensfinder.config import SplitConfig

    source = open_source(tiny_store)
    train = split_indices(source.ids, SplitConfig(test_fraction=0.2, val_fraction=0.0))["train"]
    dataset = CutoutDataset(source, train, InputConfig(size=100), augment=True)
    sampler = BalancedBatchSampler(dataset.labels, batch_size=4, num_batches=3, seed=0)
    for x, y in DataLoader(dataset, batch_sampler=sampler):
        assert x.shape == (4, 4, 100, 100) and float(y.sum()) == 2.0


def _per_item_reference(source, indices, cfg: InputConfig) -> list:
    """Each object's model input made alone, straight from ``to_model_input``."""
    out = []
    for index in indices:
        cutouts = source.read([int(index)])
        x = to_model_input(cutouts.vis, cutouts.nisp, cfg)
        out.append(tuple(t[0] for t in x) if isinstance(x, tuple) else (x[0],))
    return out


def _element(sample: tuple, reference: tuple) -> int:
    """The D4 element that maps ``reference`` onto ``sample`` (all branches alike)."""
    ks = [
        k
        for k in range(8)
        if all(
            torch.allclose(apply_d4(r, k), s, atol=1e-6)
            for r, s in zip(reference, sample, strict=True)
        )
    ]
    assert len(ks) == 1, ks
    return ks[0]


@pytest.mark.parametrize("vis_sampling", ["native", "bin"])
@pytest.mark.parametrize("layout", ["stacked", "two_branch"])
def test_batches_equal_the_per_item_reference_precomputed_or_not(
    tiny_store: Path, vis_sampling: str, layout: str
) -> None:
    """Per-batch and precomputed inputs are the per-item ``to_model_input`` to float tolerance;
    with the same seed both paths draw the same D4 element for every image."""
    source = open_source(tiny_store)
    cfg = InputConfig(size=64, vis_sampling=vis_sampling, layout=layout)
    indices = np.array([1, 3, 4, 8, 9, 15, 20, 23])
    reference = _per_item_reference(source, indices, cfg)
    positions = [5, 0, 7, 7, 2]
    for augment in (False, True):
        per_batch = CutoutDataset(source, indices, cfg, augment=augment, seed=3)
        precomputed = CutoutDataset(source, indices, cfg, augment=augment, seed=3)
        precomputed.precompute()
        for dataset in (per_batch, precomputed):
            assert (dataset.inputs is None) == (dataset is per_batch)
        for _ in range(2):
            x, y = per_batch.get_batch(positions)
            x_pre, y_pre = precomputed.get_batch(positions)
            branches, branches_pre = tensors(x), tensors(x_pre)
            assert torch.equal(y, y_pre)
            assert y.tolist() == source.labels[indices[positions]].astype(float).tolist()
            for a, b in zip(branches, branches_pre, strict=True):
                assert torch.allclose(a, b, atol=1e-6, rtol=0)
            for row, position in enumerate(positions):
                sample = tuple(t[row] for t in branches)
                k = _element(sample, reference[position])
                assert k == 0 or augment


def test_d4_is_drawn_per_image_covers_the_group_and_keeps_labels(tiny_store: Path) -> None:
    source = open_source(tiny_store)
    cfg = InputConfig(size=64)
    indices = np.arange(8)
    reference = _per_item_reference(source, indices, cfg)
    dataset = CutoutDataset(source, indices, cfg, augment=True, seed=0)
    dataset.precompute()
    seen = set()
    for _ in range(4):
        positions = [0, 1, 2, 3, 4, 5, 6, 7] * 2
        x, y = dataset.get_batch(positions)
        assert y.tolist() == source.labels[indices[positions]].astype(float).tolist()
        ks = [_element((x[row],), reference[p]) for row, p in enumerate(positions)]
        assert len(set(ks)) > 1  # one element per image, not one for the whole batch
        seen.update(ks)
    assert seen == set(range(8))


def test_loader_batches_come_whole_and_match_default_collation(tiny_store: Path) -> None:
    """``collate`` passes the dataset's batch on; torch's default collation of the same items
    gives the same tensors (two-branch included)."""
    source = open_source(tiny_store)
    for cfg in (InputConfig(size=64), InputConfig(size=64, layout="two_branch")):
        dataset = CutoutDataset(source, None, cfg)
        sampler = [[3, 1, 2], [0, 5, 4]]
        ours = list(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate))
        default = list(DataLoader(dataset, batch_sampler=sampler))
        for (x, y), (x_d, y_d) in zip(ours, default, strict=True):
            assert torch.equal(y, y_d)
            x_d = tuple(x_d) if isinstance(x_d, list) else x_d  # default_collate makes lists
            for a, b in zip(tensors(x), tensors(x_d), strict=True):
                assert torch.equal(a, b)


@pytest.mark.slow
def test_a_small_cnn_learns_the_fixture(layout_factory, tiny_store: Path) -> None:
    """The fixture is useful for the whole pipeline only if lenses can be told apart: a
    three-layer CNN trained on 96 fresh objects separates tiny_store's 24 (AUROC > 0.85)."""
    from sklearn.metrics import roc_auc_score

    torch.manual_seed(0)
    cfg = InputConfig(size=50)
    train = CutoutDataset(open_source(layout_factory("learn", n=96, seed=1)), None, cfg)
    test = CutoutDataset(open_source(tiny_store), None, cfg)
    x_train, y_train = train.get_batch(np.arange(len(train)))
    x_test, y_test = test.get_batch(np.arange(len(test)))
    net = torch.nn.Sequential(
        torch.nn.Conv2d(4, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 1),
    )  # fmt: skip
    optimizer = torch.optim.Adam(net.parameters(), 3e-3)
    generator = torch.Generator().manual_seed(0)
    sampler = BalancedBatchSampler(y_train.numpy(), batch_size=16, num_batches=200, seed=0)
    for batch in sampler:
        ks = torch.randint(8, (len(batch),), generator=generator).tolist()
        x = torch.stack([apply_d4(x_train[i], k) for i, k in zip(batch, ks, strict=True)])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            net(x).squeeze(1), y_train[batch]
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        scores = net(x_test).squeeze(1)
    assert roc_auc_score(y_test.numpy(), scores.numpy()) > 0.85


def test_shift_cuts_each_sample_off_centre_within_its_range(tiny_store: Path) -> None:
    """``shift``: an augmented sample is a D4 element of a window of the wider input at most
    ``shift`` pixels off centre (windows vary per sample); unaugmented ones are the centred
    input itself, as without shift (validation and prediction never see a translation)."""
    source = open_source(tiny_store)
    cfg, shift = InputConfig(size=64), 3
    indices = np.arange(6)
    centred = _per_item_reference(source, indices, cfg)
    wide = _per_item_reference(source, indices, InputConfig(size=64 + 2 * shift))
    plain = CutoutDataset(source, indices, cfg, shift=shift)
    x, _ = plain.get_batch(list(range(6)))
    assert x.shape == (6, 4, 64, 64)
    for row in range(6):
        assert torch.allclose(x[row], centred[row][0], atol=1e-5, rtol=0)
    windows = set()
    for precompute in (False, True):
        dataset = CutoutDataset(source, indices, cfg, augment=True, seed=2, shift=shift)
        if precompute:
            dataset.precompute()
        x, _ = dataset.get_batch([0, 1, 2, 3, 4, 5] * 2)
        for row, position in enumerate([0, 1, 2, 3, 4, 5] * 2):
            reference = wide[position][0]
            found = [
                (top, left, k)
                for top in range(2 * shift + 1)
                for left in range(2 * shift + 1)
                for k in range(8)
                if torch.allclose(
                    apply_d4(reference[:, top : top + 64, left : left + 64], k), x[row], atol=1e-6
                )
            ]
            assert len(found) == 1, found
            windows.add(found[0][:2])
    assert len(windows) > 3


def test_shift_is_refused_where_it_is_not_whole_pixels() -> None:
    from lensfinder.config import TrainConfig
    from lensfinder.errors import ConfigError

    TrainConfig(augment_shift=4).validate()
    for bad in (
        {"augment_shift": 4, "input": InputConfig(vis_sampling="bin")},
        {"augment_shift": 4, "input": InputConfig(layout="two_branch")},
        {"augment_shift": 51, "input": InputConfig(size=100)},  # beyond the 200 px cutout
        {"augment_shift": 2, "augment_d4": False},
        {"augment_shift": -1},
    ):
        with pytest.raises(ConfigError, match="augment_shift"):
            TrainConfig(**bad).validate()
