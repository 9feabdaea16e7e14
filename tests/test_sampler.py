"""Balanced batches: exactly half lenses whatever the class ratio; reproducible; resizable."""

from __future__ import annotations

import numpy as np
import pytest
from torch.utils.data import DataLoader

from lensfinder.data.sampler import BalancedBatchSampler
from lensfinder.errors import DataError
from lensfinder.train.datamodule import ShuffledBatchSampler, epoch_seed

LABELS = np.array([1] * 10 + [0] * 90)  # 9:1 non-lenses to lenses


def test_batches_are_exactly_half_lenses_from_a_9_to_1_set() -> None:
    sampler = BalancedBatchSampler(LABELS, batch_size=16, num_batches=20, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 20
    for batch in batches:
        assert len(batch) == 16
        assert LABELS[batch].sum() == 8
    drawn = np.concatenate(batches)
    lens_counts = np.bincount(drawn[LABELS[drawn] == 1], minlength=10)[:10]
    assert lens_counts.min() >= 15 and lens_counts.max() <= 17  # minority cycled evenly
    first_pass = np.concatenate(batches[:11])  # 88 of the 90 non-lenses
    others = first_pass[LABELS[first_pass] == 0]
    assert len(others) == 88 and len(set(others.tolist())) == 88  # no repeats within a pass


def test_epochs_reshuffle_but_are_reproducible() -> None:
    sampler = BalancedBatchSampler(LABELS, batch_size=8, num_batches=5, seed=3)
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    other_seed = BalancedBatchSampler(LABELS, batch_size=8, num_batches=5, seed=4)
    assert list(other_seed) != first


def test_batch_size_can_grow_between_epochs() -> None:
    sampler = BalancedBatchSampler(LABELS, batch_size=8, num_batches=None, seed=0)
    assert len(sampler) == 23  # one pass over the 90 non-lenses at 4 per batch
    sampler.batch_size = 32
    assert len(sampler) == 6
    assert all(len(b) == 32 and LABELS[b].sum() == 16 for b in sampler)
    with pytest.raises(ValueError, match="batch_size"):
        sampler.batch_size = 1


def test_unknown_labels_are_never_drawn() -> None:
    labels = np.array([1, 0, -1, -1, 1, 0, -1])
    drawn = np.concatenate(list(BalancedBatchSampler(labels, 4, num_batches=10)))
    assert set(drawn.tolist()) == {0, 1, 4, 5}


def test_missing_class_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="no lenses"):
        BalancedBatchSampler(np.zeros(10), batch_size=4)
    with pytest.raises(DataError, match="no non-lenses"):
        BalancedBatchSampler(np.ones(10), batch_size=4)


@pytest.mark.parametrize(("world_size", "batch_size"), [(2, 10), (3, 12)])
def test_ranks_partition_each_epoch(world_size: int, batch_size: int) -> None:
    """At these sizes the ranks together make exactly one pass over the 90 non-lenses per
    epoch: every non-lens goes to exactly one rank, and the 10 lenses are cycled evenly."""
    first_epoch = None
    for epoch in (0, 1):
        drawn = []
        for rank in range(world_size):
            sampler = BalancedBatchSampler(
                LABELS, batch_size, seed=0, rank=rank, world_size=world_size
            )
            sampler.set_epoch(epoch)
            batches = list(sampler)
            assert all(LABELS[b].sum() == batch_size // 2 for b in batches)
            drawn.append(np.concatenate(batches))
        others = np.concatenate([d[LABELS[d] == 0] for d in drawn])
        assert sorted(others.tolist()) == list(range(10, 100))  # disjoint, and all of them
        lenses = np.concatenate([d[LABELS[d] == 1] for d in drawn])
        assert np.bincount(lenses, minlength=10).tolist() == [len(lenses) // 10] * 10
        first_epoch = first_epoch or drawn[0].tolist()
    assert drawn[0].tolist() != first_epoch  # and the next epoch is another partition


def test_unbalanced_batches_partition_each_pass_between_ranks() -> None:
    seed = epoch_seed(0, 1, 0)
    drawn = [list(ShuffledBatchSampler(30, 5, 3, seed, rank, 2)) for rank in range(2)]
    assert all(len(batches) == 3 and all(len(b) == 5 for b in batches) for batches in drawn)
    assert sorted(i for batches in drawn for b in batches for i in b) == list(range(30))


def test_unbalanced_batches_draw_only_the_positions_given() -> None:
    """A label filter's held-back positions (e.g. the painted field's likeliest lenses) are
    never drawn; given every position, the stream is the one ``n`` gives."""
    seed = epoch_seed(0, 1, 0)
    allowed = np.array([2, 3, 5, 7, 11, 13, 17, 19, 23, 29])
    drawn = [i for b in ShuffledBatchSampler(allowed, 5, 4, seed) for i in b]
    assert set(drawn) <= set(allowed.tolist()) and len(drawn) == 20
    assert sorted(drawn[:10]) == allowed.tolist()  # each pass covers them all
    every = list(ShuffledBatchSampler(np.arange(30), 5, 3, seed))
    assert every == list(ShuffledBatchSampler(30, 5, 3, seed))


def test_works_as_a_dataloader_batch_sampler() -> None:
    loader = DataLoader(list(range(100)), batch_sampler=BalancedBatchSampler(LABELS, 6, 3))
    batches = list(loader)
    assert len(batches) == 3 and all(LABELS[b.numpy()].sum() == 3 for b in batches)
