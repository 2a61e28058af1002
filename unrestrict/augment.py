"""Input transforms that make an attack transfer: each step the loop shows the models several
augmented copies of the current result and averages their losses.

Every augmentation is a function ``(x, generator, options) -> x`` of a batch (B, 3, H, W) that
shares its draws, registered by name. :func:`augment` gives each image its own CPU generator:
an image then sees the same sequence of transforms whichever images share its batch, and a
fixed number of draws per call keeps runs reproducible on any device.

* ``di``: resize to a random scale and pad back at a random offset (input diversity, DI-FGSM).
* ``scale``: multiply intensities by 2^-k, k uniform in 0..4 (the scale copies of SI-NI-FGSM).
* ``spectrum``: add Gaussian noise, then scale every spatial frequency by a random factor in
  [1 - rho, 1 + rho] (the spectrum simulation of SSA, with an FFT in place of the DCT).
* ``flip``: mirror left-right with probability 1/2.
* ``blocks``: cut the image into 2x2 blocks and put them back in a random order (the block
  shuffle of BSR, without its rotations).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "AUGMENTATIONS",
    "AugmentOptions",
    "register_augmentation",
    "augment",
    "input_diversity",
]


@dataclass(frozen=True)
class AugmentOptions:
    di_prob: float = 0.7  # chance that a copy is resized and padded
    di_min_scale: float = 0.9
    spectrum_rho: float = 0.5  # frequency gains drawn from [1 - rho, 1 + rho]
    spectrum_sigma: float = 16 / 255  # noise added before the spectral mask


Augmentation = Callable[[Tensor, torch.Generator, AugmentOptions], Tensor]
AUGMENTATIONS: dict[str, Augmentation] = {}


def register_augmentation(name: str) -> Callable[[Augmentation], Augmentation]:
    def deco(fn: Augmentation) -> Augmentation:
        if name in AUGMENTATIONS:
            raise ValueError(f"augmentation {name!r} is already registered")
        AUGMENTATIONS[name] = fn
        return fn

    return deco


def input_diversity(
    x: Tensor, prob: float, min_scale: float, generator: torch.Generator
) -> Tensor:
    """DI: with probability ``prob``, shrink the batch to a random scale in [min_scale, 1) and
    place it at a random whole-pixel offset on a zero background; otherwise pass it through.

    One draw per batch, as in the DI paper's code: the batch is resized by one
    ``F.interpolate`` and padded, or left alone. Bilinear, not the paper's nearest-neighbour
    resize, which fooled held-out models less often. Always four draws per call.
    """
    if prob <= 0:
        return x
    apply, scale, top, left = torch.rand(4, generator=generator).tolist()
    if apply >= prob:
        return x
    h, w = x.shape[-2:]
    scale = min_scale + (1 - min_scale) * scale
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    if (sh, sw) == (h, w):
        return x
    top, left = int(top * (h - sh + 1)), int(left * (w - sw + 1))
    small = F.interpolate(x, size=(sh, sw), mode="bilinear", align_corners=False)
    return F.pad(small, (left, w - sw - left, top, h - sh - top))


@register_augmentation("di")
def _di(x: Tensor, generator: torch.Generator, o: AugmentOptions) -> Tensor:
    return input_diversity(x, o.di_prob, o.di_min_scale, generator)


@register_augmentation("scale")
def _scale(x: Tensor, generator: torch.Generator, o: AugmentOptions) -> Tensor:
    k = int(torch.randint(0, 5, (1,), generator=generator))
    return x * 2.0**-k


def _device_generator(x: Tensor, generator: torch.Generator) -> torch.Generator:
    """A generator on ``x``'s device, seeded by one draw from the CPU ``generator``."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=x.device).manual_seed(seed)


@register_augmentation("spectrum")
def _spectrum(x: Tensor, generator: torch.Generator, o: AugmentOptions) -> Tensor:
    g = _device_generator(x, generator)
    shape = (1, *x.shape[1:])  # one draw shared by the batch
    noise = torch.randn(shape, generator=g, device=x.device, dtype=x.dtype) * o.spectrum_sigma
    freq = torch.fft.rfft2(x + noise)
    mask = 1 + o.spectrum_rho * (2 * torch.rand((1, *freq.shape[1:]), generator=g,
                                              device=x.device, dtype=x.dtype) - 1)
    return torch.fft.irfft2(freq * mask, s=x.shape[-2:])


@register_augmentation("flip")
def _flip(x: Tensor, generator: torch.Generator, o: AugmentOptions) -> Tensor:
    return x.flip(-1) if float(torch.rand(1, generator=generator)) < 0.5 else x


@register_augmentation("blocks")
def _blocks(x: Tensor, generator: torch.Generator, o: AugmentOptions) -> Tensor:
    order = torch.randperm(4, generator=generator).tolist()
    h, w = x.shape[-2:]
    h2, w2 = h // 2, w // 2
    tiles = [x[..., :h2, :w2], x[..., :h2, w2 : 2 * w2], x[..., h2 : 2 * h2, :w2],
             x[..., h2 : 2 * h2, w2 : 2 * w2]]
    tiles = [tiles[i] for i in order]
    out = torch.cat([torch.cat(tiles[:2], -1), torch.cat(tiles[2:], -1)], -2)
    return F.pad(out, (0, w - 2 * w2, 0, h - 2 * h2), mode="replicate")


def augment(x: Tensor, names: Sequence[str], generators: Sequence[torch.Generator],
            options: AugmentOptions = AugmentOptions()) -> Tensor:
    """Apply the named augmentations in order to each image, drawing from its own generator
    (``generators[i]`` for ``x[i]``)."""
    if len(generators) != x.shape[0]:
        raise ValueError(f"{len(generators)} generators for {x.shape[0]} images")
    rows = []
    for row, g in zip(x.split(1), generators, strict=True):
        for name in names:
            row = AUGMENTATIONS[name](row, g, options)
        rows.append(row)
    return torch.cat(rows)
