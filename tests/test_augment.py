"""Augmentations: shapes, reproducibility, and draws that do not depend on the batch."""

from __future__ import annotations

import pytest
import torch

from unrestrict.augment import AUGMENTATIONS, AugmentOptions, augment


def gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_shape_kept_and_same_draws_same_result(name):
    x = torch.rand(3, 3, 32, 30)
    a = augment(x, [name], gens(1, 2, 3))
    b = augment(x, [name], gens(1, 2, 3))
    assert a.shape == x.shape
    torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_an_image_is_transformed_alike_whatever_its_batch(name):
    # Each image draws from its own generator: image 1 alone and image 1 inside a batch of
    # three see the same transform, so results do not depend on how a run is batched.
    x = torch.rand(3, 3, 32, 30)
    alone = augment(x[1:2], [name], gens(5))
    batched = augment(x, [name], gens(7, 5, 9))[1:2]
    torch.testing.assert_close(alone, batched, atol=0, rtol=0)


def test_images_of_one_batch_draw_independently():
    x = torch.rand(1, 3, 32, 30).expand(8, -1, -1, -1)
    y = augment(x, ["di"], gens(*range(8)), AugmentOptions(di_prob=1.0, di_min_scale=0.5))
    assert len({tuple(r.flatten()[:2000].tolist()) for r in y}) > 1


def test_one_generator_per_image():
    with pytest.raises(ValueError, match="2 generators for 3 images"):
        augment(torch.rand(3, 3, 8, 8), ["di"], gens(1, 2))


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_each_augmentation_changes_its_input_some_of_the_time(name):
    x = torch.rand(1, 3, 32, 30)
    g = torch.Generator().manual_seed(0)
    changed = sum(not torch.equal(augment(x, [name], [g]), x) for _ in range(20))
    assert changed >= 5


def test_scale_copies_are_powers_of_two():
    x = torch.rand(1, 3, 8, 8) + 0.5
    g = torch.Generator().manual_seed(0)
    factors = {round((augment(x, ["scale"], [g]) / x).mean().item(), 6) for _ in range(100)}
    assert factors == {1.0, 0.5, 0.25, 0.125, 0.0625}


def test_blocks_are_a_permutation_of_the_quadrants():
    x = torch.arange(16.0).view(1, 1, 4, 4).expand(1, 3, 4, 4).contiguous()
    y = augment(x, ["blocks"], gens(3))
    assert sorted(y.flatten().tolist()) == sorted(x.flatten().tolist())
    quads = {tuple(y[0, 0, i:i + 2, j:j + 2].flatten().tolist()) for i in (0, 2) for j in (0, 2)}
    assert quads == {tuple(x[0, 0, i:i + 2, j:j + 2].flatten().tolist())
                     for i in (0, 2) for j in (0, 2)}


def test_spectrum_without_noise_or_mask_is_the_identity():
    x = torch.rand(2, 3, 16, 18, dtype=torch.float64)
    opts = AugmentOptions(spectrum_rho=0.0, spectrum_sigma=0.0)
    y = augment(x, ["spectrum"], gens(0, 1), opts)
    torch.testing.assert_close(y, x, atol=1e-12, rtol=0)
