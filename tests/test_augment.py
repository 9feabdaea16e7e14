"""D4: eight distinct symmetries of the square, closed under composition, same on numpy/torch."""

from __future__ import annotations

import numpy as np
import torch

from lensfinder.data.augment import (
    D4_ELEMENTS,
    apply_d4,
    compose,
    inverse,
    random_d4,
    random_d4_per_sample,
)

# An image with no symmetry of its own, so distinct group elements give distinct images.
IMAGE = torch.arange(20.0).reshape(4, 5)[:, :4] ** 1.5


def _which(image: torch.Tensor) -> int:
    matches = [k for k in range(8) if torch.equal(image, apply_d4(IMAGE, k))]
    assert len(matches) == 1
    return matches[0]


def test_eight_distinct_elements_with_identity_first() -> None:
    assert len(D4_ELEMENTS) == 8
    images = [element(IMAGE) for element in D4_ELEMENTS]
    assert torch.equal(images[0], IMAGE)
    assert len({tuple(im.flatten().tolist()) for im in images}) == 8


def test_closed_under_composition_with_inverses() -> None:
    for a in range(8):
        for b in range(8):
            both = apply_d4(apply_d4(IMAGE, b), a)
            assert _which(both) == compose(a, b)
        assert torch.equal(apply_d4(apply_d4(IMAGE, a), inverse(a)), IMAGE)
        assert compose(a, inverse(a)) == 0


def test_acts_on_last_two_axes_and_agrees_with_numpy() -> None:
    batch = torch.randn(3, 2, 6, 6)
    for k in range(8):
        out = apply_d4(batch, k)
        assert out.shape == batch.shape
        assert torch.equal(out[1, 0], apply_d4(batch[1, 0], k))
        np.testing.assert_array_equal(apply_d4(batch.numpy(), k), out.numpy())


def test_random_elements_are_reproducible_and_cover_the_group() -> None:
    seen_torch = {_which(random_d4(IMAGE, torch.Generator().manual_seed(s))) for s in range(64)}
    seen_numpy = {
        _which(torch.from_numpy(random_d4(IMAGE.numpy(), np.random.default_rng(s)).copy()))
        for s in range(64)
    }
    assert seen_torch == seen_numpy == set(range(8))
    a = random_d4(IMAGE, torch.Generator().manual_seed(5))
    b = random_d4(IMAGE, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_per_sample_draws_differ_within_a_batch() -> None:
    batch = IMAGE.expand(16, 1, 4, 4)
    out = random_d4_per_sample(batch, torch.Generator().manual_seed(0))
    assert len({_which(sample[0]) for sample in out}) > 3
