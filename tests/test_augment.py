"""Augmentations: shapes, reproducibility, and draws that do not depend on the batch."""

from __future__ import annotations

import pytest
import torch

from unrestrict.augment import AUGMENTATIONS, AugmentOptions, augment


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_shape_kept_and_same_draws_same_result(name):
    x = torch.rand(3, 3, 32, 30)
    a = augment(x, [name], torch.Generator().manual_seed(1))
    b = augment(x, [name], torch.Generator().manual_seed(1))
    assert a.shape == x.shape
    torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_an_image_is_transformed_alike_whatever_its_batch(name):
    # Draws are per batch, never per image: image 1 alone and image 1 inside a batch of three
    # see the same transform, so results do not depend on how a run is batched.
    x = torch.rand(3, 3, 32, 30)
    alone = augment(x[1:2], [name], torch.Generator().manual_seed(5))
    batched = augment(x, [name], torch.Generator().manual_seed(5))[1:2]
    torch.testing.assert_close(alone, batched, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_each_augmentation_changes_its_input_some_of_the_time(name):
    x = torch.rand(1, 3, 32, 30)
    g = torch.Generator().manual_seed(0)
    changed = sum(not torch.equal(augment(x, [name], g), x) for _ in range(20))
    assert changed >= 5


def test_scale_copies_are_powers_of_two():
    x = torch.rand(1, 3, 8, 8) + 0.5
    g = torch.Generator().manual_seed(0)
    factors = {round((augment(x, ["scale"], g) / x).mean().item(), 6) for _ in range(100)}
    assert factors == {1.0, 0.5, 0.25, 0.125, 0.0625}


def test_blocks_are_a_permutation_of_the_quadrants():
    x = torch.arange(16.0).view(1, 1, 4, 4).expand(1, 3, 4, 4).contiguous()
    y = augment(x, ["blocks"], torch.Generator().manual_seed(3))
    assert sorted(y.flatten().tolist()) == sorted(x.flatten().tolist())
    quads = {tuple(y[0, 0, i:i + 2, j:j + 2].flatten().tolist()) for i in (0, 2) for j in (0, 2)}
    assert quads == {tuple(x[0, 0, i:i + 2, j:j + 2].flatten().tolist())
                     for i in (0, 2) for j in (0, 2)}


def test_spectrum_without_noise_or_mask_is_the_identity():
    x = torch.rand(2, 3, 16, 18, dtype=torch.float64)
    opts = AugmentOptions(spectrum_rho=0.0, spectrum_sigma=0.0)
    y = augment(x, ["spectrum"], torch.Generator().manual_seed(0), opts)
    torch.testing.assert_close(y, x, atol=1e-12, rtol=0)
