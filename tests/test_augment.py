"""D4: eight distinct symmetries of the square, closed under composition, per-sample batches."""

from __future__ import annotations

import pytest
import torch

from lensfinder.data.augment import N_ELEMENTS, apply_d4, apply_d4_per_sample

# An image with no symmetry of its own, so distinct group elements give distinct images.
IMAGE = torch.arange(20.0).reshape(4, 5)[:, :4] ** 1.5


def _which(image: torch.Tensor) -> int:
    matches = [k for k in range(N_ELEMENTS) if torch.equal(image, apply_d4(IMAGE, k))]
    assert len(matches) == 1
    return matches[0]


def test_eight_distinct_elements_with_identity_first() -> None:
    images = [apply_d4(IMAGE, k) for k in range(N_ELEMENTS)]
    assert torch.equal(images[0], IMAGE)
    assert len({tuple(im.flatten().tolist()) for im in images}) == 8


def test_closed_under_composition_and_every_element_has_an_inverse() -> None:
    for a in range(N_ELEMENTS):
        # _which fails unless the composite is exactly one of the eight elements.
        composites = {_which(apply_d4(apply_d4(IMAGE, b), a)) for b in range(N_ELEMENTS)}
        assert composites == set(range(N_ELEMENTS))  # a permutes the group (Cayley table row)
        assert any(torch.equal(apply_d4(apply_d4(IMAGE, a), b), IMAGE) for b in range(8))
    # Rotations by 90 degrees generate a cyclic subgroup of order 4; a flip is an involution.
    assert torch.equal(apply_d4(apply_d4(IMAGE, 1), 3), IMAGE)
    assert torch.equal(apply_d4(apply_d4(IMAGE, 4), 4), IMAGE)


def test_acts_on_last_two_axes() -> None:
    batch = torch.randn(3, 2, 6, 6)
    for k in range(N_ELEMENTS):
        out = apply_d4(batch, k)
        assert out.shape == batch.shape
        assert torch.equal(out[1, 0], apply_d4(batch[1, 0], k))


def test_rejects_elements_outside_the_group() -> None:
    with pytest.raises(ValueError, match=r"0\.\.7"):
        apply_d4(IMAGE, 8)


def test_per_sample_applies_each_samples_own_element() -> None:
    batch = IMAGE.expand(8, 1, 4, 4)
    ks = [3, 0, 7, 5, 1, 2, 6, 4]
    out = apply_d4_per_sample(batch, ks)
    assert [_which(sample[0]) for sample in out] == ks
    with pytest.raises(ValueError):
        apply_d4_per_sample(batch, ks[:-1])


def test_per_sample_rows_pick_and_transform_in_one_step() -> None:
    source = torch.stack([IMAGE * (i + 1) for i in range(5)])[:, None]
    rows, ks = [4, 0, 4, 2], [1, 6, 3, 0]
    out = apply_d4_per_sample(source, ks, rows)
    assert torch.equal(out, apply_d4_per_sample(source[rows], ks))
    with pytest.raises(ValueError):
        apply_d4_per_sample(source, ks, rows[:-1])
