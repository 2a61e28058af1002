"""Input transforms that make an attack transfer: each step the loop shows the models several
augmented copies of the current result and averages their losses.

Every augmentation is a function ``(x, generators, options) -> x`` of a batch (B, 3, H, W),
registered by name, where image ``i`` draws from its own CPU generator ``generators[i]``: an
image then sees the same sequence of transforms whichever images share its batch, and a fixed
number of draws per call keeps runs reproducible on any device. Where it can, one draws per
image and transforms the batch at once (on a GPU each operation is a kernel launch);
:func:`rowwise` makes one from a transform of a single image.

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

from .perturb.base import cached_constant

__all__ = [
    "AUGMENTATIONS",
    "AugmentOptions",
    "register_augmentation",
    "rowwise",
    "augment",
    "input_diversity",
]


@dataclass(frozen=True)
class AugmentOptions:
    di_prob: float = 0.7  # chance that a copy is resized and padded
    di_min_scale: float = 0.9
    spectrum_rho: float = 0.5  # frequency gains drawn from [1 - rho, 1 + rho]
    spectrum_sigma: float = 16 / 255  # noise added before the spectral mask


Augmentation = Callable[[Tensor, Sequence[torch.Generator], AugmentOptions], Tensor]
RowAugmentation = Callable[[Tensor, torch.Generator, AugmentOptions], Tensor]
AUGMENTATIONS: dict[str, Augmentation] = {}


def register_augmentation(name: str) -> Callable[[Augmentation], Augmentation]:
    """Register ``fn(x, generators, options)``, which transforms a batch, drawing for image
    ``i`` from ``generators[i]`` alone and the same number of times whatever it draws."""
    def deco(fn: Augmentation) -> Augmentation:
        if name in AUGMENTATIONS:
            raise ValueError(f"augmentation {name!r} is already registered")
        AUGMENTATIONS[name] = fn
        return fn

    return deco


def rowwise(fn: RowAugmentation) -> Augmentation:
    """A batch augmentation from ``fn(row, generator, options)``, applied image by image."""
    def batch(x: Tensor, generators: Sequence[torch.Generator], o: AugmentOptions) -> Tensor:
        return torch.cat([fn(row, g, o) for row, g in zip(x.split(1), generators, strict=True)])

    batch.__name__ = fn.__name__
    return batch


@cached_constant
def _di_lines(size: int, smallest: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Where each of ``size`` output samples reads its input, in ``grid_sample``'s normalised
    units (align_corners=False), for every size ``placed`` from ``smallest`` to ``size`` and
    every offset from 0 to ``size - placed``, in that order (:func:`_di_line`): the
    ``placed`` samples from the offset on as ``F.interpolate(mode="bilinear",
    align_corners=False)`` reads them when it shrinks ``size`` samples to ``placed``, the
    others far outside (zero). (lines, size)."""
    lines = []
    for placed in range(smallest, size + 1):
        dst = torch.arange(size, dtype=torch.float64) - torch.arange(size - placed + 1)[:, None]
        src = ((dst + 0.5) * (size / placed) - 0.5).clamp_min(0)
        inside = (dst >= 0) & (dst < placed)
        lines.append(torch.where(inside, (2 * src + 1) / size - 1, -3.0))
    return torch.cat(lines).to(device, dtype)


def _di_line(size: int, smallest: int, placed: int, offset: int) -> int:
    """The row of :func:`_di_lines` that places ``placed`` samples at ``offset``."""
    before = placed - smallest  # sizes before this one, with size - q + 1 offsets each
    return before * (size + 1) - (smallest + placed - 1) * before // 2 + offset


def input_diversity(x: Tensor, prob: float, min_scale: float,
                    generators: Sequence[torch.Generator]) -> Tensor:
    """DI: with probability ``prob`` per image, shrink it to a random scale in
    [min_scale, 1) and place it at a random whole-pixel offset on a zero background;
    otherwise pass it through. Four draws per image from its own generator.

    Bilinear, as ``F.interpolate(mode="bilinear", align_corners=False)`` then ``F.pad``, not
    the paper's nearest-neighbour resize, which fooled held-out models less often. The whole
    batch is resampled by one ``grid_sample``, each image on its own grid of precomputed
    lines: a resize and a pad per image were four kernel launches an image with their
    backward passes, and on a GPU the launches set a step's time. Images passed through are
    left exactly as they were.
    """
    if prob <= 0:
        return x
    h, w = x.shape[-2:]
    low_h, low_w = max(1, round(h * min_scale)), max(1, round(w * min_scale))
    moved, rows, cols = [], [], []
    for g in generators:
        apply, scale, top, left = torch.rand(4, generator=g).tolist()
        scale = min_scale + (1 - min_scale) * scale
        sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
        moved.append(apply < prob and (sh, sw) != (h, w))
        if not moved[-1]:
            sh, sw = low_h, low_w  # any line: the image is passed through
        rows.append(_di_line(h, low_h, sh, int(top * (h - sh + 1))))
        cols.append(_di_line(w, low_w, sw, int(left * (w - sw + 1))))
    if not any(moved):
        return x
    b, device = len(moved), x.device
    index = torch.tensor(rows + cols).to(device, non_blocking=True)
    ys = _di_lines(h, low_h, device, x.dtype).index_select(0, index[:b])
    xs = _di_lines(w, low_w, device, x.dtype).index_select(0, index[b:])
    grid = torch.stack([xs[:, None, :].expand(-1, h, -1), ys[:, :, None].expand(-1, -1, w)], -1)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if all(moved):
        return out
    return torch.where(torch.tensor(moved).to(device, non_blocking=True).view(-1, 1, 1, 1),
                       out, x)


@register_augmentation("di")
def _di(x: Tensor, generators: Sequence[torch.Generator], o: AugmentOptions) -> Tensor:
    return input_diversity(x, o.di_prob, o.di_min_scale, generators)


@register_augmentation("scale")
def _scale(x: Tensor, generators: Sequence[torch.Generator], o: AugmentOptions) -> Tensor:
    k = torch.cat([torch.randint(0, 5, (1,), generator=g) for g in generators])
    return x * torch.pow(2.0, -k.double()).to(x.device, x.dtype).view(-1, 1, 1, 1)


def _device_generator(x: Tensor, generator: torch.Generator) -> torch.Generator:
    """A generator on ``x``'s device, seeded by one draw from the CPU ``generator``."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=x.device).manual_seed(seed)


@register_augmentation("spectrum")
@rowwise
def _spectrum(x: Tensor, generator: torch.Generator, o: AugmentOptions) -> Tensor:
    g = _device_generator(x, generator)
    shape = (1, *x.shape[1:])  # one draw shared by the batch
    noise = torch.randn(shape, generator=g, device=x.device, dtype=x.dtype) * o.spectrum_sigma
    freq = torch.fft.rfft2(x + noise)
    mask = 1 + o.spectrum_rho * (2 * torch.rand((1, *freq.shape[1:]), generator=g,
                                              device=x.device, dtype=x.dtype) - 1)
    return torch.fft.irfft2(freq * mask, s=x.shape[-2:])


@register_augmentation("flip")
def _flip(x: Tensor, generators: Sequence[torch.Generator], o: AugmentOptions) -> Tensor:
    flip = [float(torch.rand(1, generator=g)) < 0.5 for g in generators]
    if not any(flip):
        return x
    if all(flip):
        return x.flip(-1)
    keep = torch.tensor(flip).to(x.device, non_blocking=True).view(-1, 1, 1, 1)
    return torch.where(keep, x.flip(-1), x)


@register_augmentation("blocks")
@rowwise
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
    """Apply the named augmentations in order, each image drawing from its own generator
    (``generators[i]`` for ``x[i]``): an image sees the same transforms whatever its batch."""
    if len(generators) != x.shape[0]:
        raise ValueError(f"{len(generators)} generators for {x.shape[0]} images")
    for name in names:
        x = AUGMENTATIONS[name](x, generators, options)
    return x
