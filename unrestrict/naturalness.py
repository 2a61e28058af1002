"""How edited a result looks to a person, beyond LPIPS: five measures with known blind spots.

Each takes the original and the result as (B, 3, H, W) floats in [0, 1] and returns per-image
values (B,); identical images score exactly 0.

* :func:`color_drift` -- colour change that no global grade explains: the result against the
  best per-image quadratic colour map of the original (10 terms per channel, least squares),
  both low-passed (Gaussian, sigma 6 px), as CIELAB delta E. Colour clouds, drifting casts,
  recoloured objects and local dodge-and-burn score high; a global grade about 0.
* :func:`flat_noise` -- the change minus its Gaussian blur (sigma 2 px), in 0-255 units, RMS
  over the pixels where the original is flat (luminance std over 7x7 below 4/255): grain on
  a sky or a wall.
* :func:`detail_excess` -- fine-band (difference of Gaussians, sigma 0.7 and 2 px) energy of
  the change's luminance against the original's own, per 16x16 block:
  ``sqrt(E_change / (E_original + 1))``. Grain where the original has little fine detail of its
  own (blurred backgrounds, bokeh), which flat-region noise misses.
* :func:`tone_shift` -- lightness change at large scale: mean CIELAB |delta L*| between the
  result and the original, both low-passed (Gaussian, sigma 8 px). A global grade's exposure,
  contrast and tone-curve change (which colour drift leaves out by design) and dodge and burn
  score high; grain and fine texture about 0.
* :func:`structure_change` -- the original's mid-scale pattern reshaped: per 16x16 block, the
  mid band (difference of Gaussians, sigma 2 and 5 px) of the luminance change, less its part
  proportional to the original's own band (a local contrast edit keeps the pattern), against
  the original's band energy. Mottling on a dark cap, smeared spots, restructured feathers and
  halos along a silhouette score high; sharpening and a global grade low.

:data:`LIMITS` holds the level at which each starts to be visible as an edit; ``score`` ranks
results by the worst ratio to it (:func:`worst_ratio`). A new measure is one function plus
:func:`register_measure`; ``score``, its CSV, JSON and report pick it up from the registry.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import kornia.color as KC
import kornia.filters as KF
import torch
import torch.nn.functional as F
from torch import Tensor

from .contract import check_images

__all__ = [
    "MEASURES",
    "LIMITS",
    "LABELS",
    "register_measure",
    "naturalness",
    "color_drift",
    "flat_noise",
    "detail_excess",
    "tone_shift",
    "structure_change",
    "structure_band",
    "global_color_fit",
    "worst_ratio",
    "block_excess",
    "clip_share",
]

Measure = Callable[[Tensor, Tensor], "Tensor | tuple[Tensor, ...]"]

# Per-image keys in the order they are reported, and where each starts to show as an edit (a
# global grade plus JPEG q95 stays well under each): both filled by register_measure.
MEASURES: list[str] = []
LIMITS: dict[str, float] = {}
_REGISTRY: dict[str, tuple[Measure, tuple[str, ...]]] = {}
# How the summary names a key; others are shown by their key.
LABELS: dict[str, str] = {
    "color_drift": "colour drift (dE)", "color_drift_p95": "colour drift p95",
    "flat_noise": "flat-region noise (/255)", "detail_excess": "added fine detail",
    "detail_excess_p95": "added fine detail p95",
    "tone_shift": "tone shift (dL*)", "structure_change": "reshaped structure",
    "structure_change_p99": "reshaped structure p99",
}


def register_measure(**limits: float) -> Callable[[Measure], Measure]:
    """Register a measure ``fn(orig, result)`` returning one (B,) tensor per keyword, in the
    keywords' order; each keyword names a reported key and gives its visibility limit."""
    if not limits:
        raise ValueError("register_measure needs at least one key=limit")

    def deco(fn: Measure) -> Measure:
        clash = [k for k in limits if k in LIMITS]
        if clash:
            raise ValueError(f"naturalness keys already registered: {clash}")
        _REGISTRY[fn.__name__] = (fn, tuple(limits))
        MEASURES.extend(limits)
        LIMITS.update(limits)
        return fn

    return deco


DRIFT_SIGMA = 6.0
TONE_SIGMA = 8.0
NOISE_SIGMA = 2.0
FLAT_WINDOW = 7
FLAT_STD = 4 / 255
BAND_SIGMAS = (0.7, 2.0)
BLOCK = 16
STRUCTURE_SIGMAS = (2.0, 5.0)
# The block quantiles added detail and reshaped structure report beside their means.
DETAIL_QUANTILE = 0.95
STRUCTURE_QUANTILE = 0.99


def _blur(x: Tensor, sigma: float) -> Tensor:
    """Gaussian blur with reflected borders (kernel 2*ceil(3 sigma) + 1)."""
    k = 2 * math.ceil(3 * sigma) + 1
    pad = k // 2
    if min(x.shape[-2:]) <= pad:  # reflect padding needs more pixels than the kernel's reach
        x = F.pad(x, (pad, pad, pad, pad), mode="replicate")
        return KF.gaussian_blur2d(x, (k, k), (sigma, sigma), border_type="constant")[
            ..., pad:-pad, pad:-pad]
    return KF.gaussian_blur2d(x, (k, k), (sigma, sigma), border_type="reflect")


def _area_averaged(orig: Tensor, result: Tensor, factor: int) -> tuple[Tensor, Tensor, int]:
    """The pair area-averaged by ``factor`` (1: unchanged, also for images under 64 px a
    step), and the factor used, to scale a low-pass to match."""
    if factor > 1 and min(orig.shape[-2:]) >= 64 * factor:
        return F.avg_pool2d(orig, factor), F.avg_pool2d(result, factor), factor
    return orig, result, 1


def _quadratic_features(x: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B, H*W, 10): 1, R, G, B, R^2, G^2, B^2, RG, RB, GB, of the values
    centred at 0.5 (the same quadratic polynomials, better conditioned)."""
    r, g, b = (x - 0.5).flatten(2).unbind(1)
    return torch.stack([torch.ones_like(r), r, g, b, r * r, g * g, b * b, r * g, r * b, g * b], -1)


def global_color_fit(orig: Tensor, result: Tensor) -> Tensor:
    """The best global quadratic colour map of ``orig`` towards ``result`` (least squares over
    each image's pixels, per output channel), clipped to [0, 1]. Shape: (B, 3, H, W).

    The 10x10 normal equations are solved in float64 with a pseudo-inverse, so flat or grey
    images (collinear terms) still get the minimum-norm fit; the terms are nearly collinear on
    photos, too ill-conditioned for a float32 Gram matrix.
    """
    b, _, h, w = orig.shape
    out = torch.empty_like(result)
    for i in range(b):  # one image at a time: the feature matrix is H*W x 10
        phi = _quadratic_features(orig[i : i + 1].double())[0]
        y = result[i].double().flatten(1).t()
        coef = torch.linalg.pinv(phi.t() @ phi, hermitian=True) @ (phi.t() @ y)
        out[i] = (phi @ coef).t().reshape(3, h, w).clamp(0, 1).to(result.dtype)
    return out


@register_measure(color_drift=1.5, color_drift_p95=3.0)
def color_drift(orig: Tensor, result: Tensor, downsample: int = 2) -> tuple[Tensor, Tensor]:
    """Delta E (CIE76) between ``result`` and its best global colour map of ``orig``, both
    low-passed (Gaussian, sigma 6 px) first. Returns (mean, 95th percentile) over pixels,
    each (B,).

    ``downsample``: the pair is first area-averaged by this factor and the low-pass scaled to
    match (sigma 3 at half size): the result is smooth at that scale anyway, and it costs a
    quarter of the full-size computation (tests hold the two within a few percent).
    """
    orig, result, downsample = _area_averaged(orig, result, downsample)
    fitted = global_color_fit(orig, result)
    # Low-pass before Lab: after it, Lab's curvature (and clipping at 0 and 1) would turn
    # zero-mean pixel noise into a smooth offset that reads as drift.
    pair = _blur(torch.cat([result.clamp(0, 1), fitted]), DRIFT_SIGMA / downsample)
    lab = KC.rgb_to_lab(pair.clamp(0, 1))
    diff = lab[: len(orig)] - lab[len(orig):]
    de = diff.mul_(diff).sum(1).sqrt_().flatten(1)  # faster than norm(dim=1) on the CPU
    # An unchanged image scores exactly 0, not the float rounding of its identity fit.
    same = (result == orig).flatten(1).all(1, keepdim=True)
    de = de.masked_fill(same, 0.0)
    return de.mean(1), torch.quantile(de, 0.95, dim=1)


def _luma255(x: Tensor) -> Tensor:
    return KC.rgb_to_grayscale(x) * 255


@register_measure(flat_noise=1.2)
def flat_noise(orig: Tensor, result: Tensor) -> Tensor:
    """RMS (0-255 units, over channels) of the change minus its Gaussian blur (sigma 2 px),
    over the pixels where the original is flat; 0 for an image without flat pixels. (B,)."""
    change = (result - orig) * 255
    high = change - _blur(change, NOISE_SIGMA)
    luma = KC.rgb_to_grayscale(orig)
    pad = FLAT_WINDOW // 2
    padded = F.pad(luma, (pad, pad, pad, pad), mode="replicate")
    mean = F.avg_pool2d(padded, FLAT_WINDOW, stride=1)
    var = (F.avg_pool2d(padded * padded, FLAT_WINDOW, stride=1) - mean * mean).clamp_min(0)
    flat = (var.sqrt() < FLAT_STD).to(change.dtype)  # (B, 1, H, W)
    energy = (high.pow(2).mean(1, keepdim=True) * flat).flatten(1).sum(1)
    count = flat.flatten(1).sum(1)
    return torch.where(count > 0, (energy / count.clamp_min(1)).sqrt(), torch.zeros_like(count))


def _fine_band(luma: Tensor) -> Tensor:
    return _blur(luma, BAND_SIGMAS[0]) - _blur(luma, BAND_SIGMAS[1])


@register_measure(detail_excess=0.3, detail_excess_p95=0.6)
def detail_excess(orig: Tensor, result: Tensor) -> tuple[Tensor, Tensor]:
    """Per 16x16 block, ``sqrt(E_change / (E_original + 1))`` of the fine-band (DoG 0.7/2 px)
    luminance energy (mean square, 0-255 units); (mean, 95th percentile) over blocks, each (B,).
    A partial block at the right or bottom edge is left out."""
    if min(orig.shape[-2:]) < BLOCK:
        raise ValueError(f"detail_excess needs images of at least {BLOCK}x{BLOCK} pixels")
    ratio = _detail_blocks(orig, result).flatten(1)
    return ratio.mean(1), torch.quantile(ratio, DETAIL_QUANTILE, dim=1)


def _detail_blocks(orig: Tensor, result: Tensor) -> Tensor:
    """:func:`detail_excess`'s value per block. (B, H // BLOCK, W // BLOCK)."""
    lo = _luma255(orig)
    band_change = _fine_band(_luma255(result) - lo)
    band_orig = _fine_band(lo)
    e_change = F.avg_pool2d(band_change.pow(2), BLOCK)
    e_orig = F.avg_pool2d(band_orig.pow(2), BLOCK)
    return (e_change / (e_orig + 1)).sqrt()[:, 0]


# 3 L* is about a sixth of a stop at mid-grey: beside the original, a larger shift reads as
# another exposure or a grade.
@register_measure(tone_shift=3.0)
def tone_shift(orig: Tensor, result: Tensor, downsample: int = 2) -> Tensor:
    """Mean |delta L*| (CIELAB lightness) between ``result`` and ``orig``, both low-passed
    (Gaussian, sigma 8 px) first, so that grain and fine texture average out. (B,).

    ``downsample``: as :func:`color_drift`, the pair is area-averaged by this factor first
    and the low-pass scaled to match.
    """
    orig, result, downsample = _area_averaged(orig, result, downsample)
    pair = _blur(torch.cat([orig, result.clamp(0, 1)]), TONE_SIGMA / downsample)
    lightness = KC.rgb_to_lab(pair.clamp(0, 1))[:, :1]
    shift = (lightness[len(orig):] - lightness[: len(orig)]).abs().flatten(1).mean(1)
    same = (result == orig).flatten(1).all(1)
    return shift.masked_fill(same, 0.0)


def structure_band(luma255: Tensor) -> Tensor:
    """The band reshaped structure is measured in: difference of Gaussians (sigma 2 and 5 px)
    of a luminance in 0-255 units. Same shape."""
    s0, s1 = STRUCTURE_SIGMAS
    return _blur(luma255, s0) - _blur(luma255, s1)


def _structure_residual(orig255: Tensor, result255: Tensor) -> Tensor:
    """Per block, the mid-band luminance change not proportional to ``orig255``'s own band,
    as ``sqrt(residual energy / (band energy + 1))``. (B, H // BLOCK, W // BLOCK)."""
    o = structure_band(orig255)
    d = structure_band(result255 - orig255)
    e_oo, e_do, e_dd = (F.avg_pool2d(t, BLOCK) for t in (o * o, d * o, d * d))
    # Least-squares gain of the original's band in the change: what a local contrast edit
    # (sharpening, clarity, a softer shadow) makes, however strong.
    residual = (e_dd - e_do * e_do / (e_oo + 1e-6)).clamp_min(0)
    return (residual / (e_oo + 1)).sqrt()[:, 0]


# Limits: a global grade, sharpening (unsharp mask) and JPEG q85 stay under 0.11 mean and 0.38
# p99 on the sample photos; the attack's mottling shows at about 0.5 p99 (benchmarks/).
@register_measure(structure_change=0.2, structure_change_p99=0.5)
def structure_change(orig: Tensor, result: Tensor) -> tuple[Tensor, Tensor]:
    """The mid band (DoG 2/5 px) of the luminance change, less the original's own band times
    the best gain per 16x16 block, as ``sqrt(E_residual / (E_original + 1))`` (0-255 units);
    (mean, 99th percentile) over blocks, each (B,).

    Measured twice, against the original and against its best global colour map
    (:func:`global_color_fit`), and each value the smaller of the two: a saturation boost moves each
    pixel's luminance by its hue, a pattern that no gain per block explains but the global
    map does; a sharpened image is explained best by the original itself.
    """
    if min(orig.shape[-2:]) < BLOCK:
        raise ValueError(f"structure_change needs images of at least {BLOCK}x{BLOCK} pixels")
    out = []
    for r in _structure_residuals(orig, result):
        r = r.flatten(1)
        out.append(torch.stack([r.mean(1), torch.quantile(r, STRUCTURE_QUANTILE, dim=1)]))
    mean, p99 = torch.minimum(*out)
    return mean, p99


def _structure_residuals(orig: Tensor, result: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`structure_change`'s residual per block against the original and against its
    global colour map. Each (B, H // BLOCK, W // BLOCK)."""
    res = _luma255(result)
    return (_structure_residual(_luma255(orig), res),
            _structure_residual(_luma255(global_color_fit(orig, result)), res))


def _structure_blocks(orig: Tensor, result: Tensor) -> Tensor:
    """Per block, the smaller of :func:`structure_change`'s two residuals."""
    return torch.minimum(*_structure_residuals(orig, result))


# The measures that are statistics over 16x16 blocks, each with its per-block values.
_BLOCKWISE: tuple[tuple[Measure, Callable[[Tensor, Tensor], Tensor]], ...] = (
    (detail_excess, _detail_blocks), (structure_change, _structure_blocks))


@torch.no_grad()
def block_excess(orig: Tensor, result: Tensor) -> Tensor:
    """Per 16x16 block, how much the result shows there as an edit: the largest of the
    blockwise measures (added fine detail, reshaped structure) past their limits, each as a
    multiple of the limit of its mean (all of them where none is past). Each scales with the
    change in its block. (B, 1, H // BLOCK, W // BLOCK)."""
    check_images(orig, "orig")
    check_images(result, "result")
    orig, result = orig.float(), result.float()
    parts, past = [], []
    for measure, blocks in _BLOCKWISE:
        keys = _REGISTRY[measure.__name__][1]
        past.append(torch.stack([value > LIMITS[key] for key, value in
                                 zip(keys, measure(orig, result), strict=True)]).any(0))
        parts.append(blocks(orig, result) / LIMITS[keys[0]])
    over = torch.stack(past)  # (measures, B)
    over = over | ~over.any(0)
    return torch.stack(parts).mul(over.view(*over.shape, 1, 1).to(orig.dtype)).amax(0)[:, None]


def clip_share(excess: Tensor, level: Tensor) -> Tensor:
    """The share of the change each block keeps so that no block's :func:`block_excess`
    passes ``level`` ((B,), per image): ``level / excess`` where that is below 1, averaged
    over each block's 3x3 neighbourhood, as a neighbour's change reaches into its bands.
    (B, 1, h, w) in [0, 1]."""
    share = (level.view(-1, 1, 1, 1) / excess.clamp_min(1e-12)).clamp(max=1)
    return F.avg_pool2d(F.pad(share, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


@torch.no_grad()
def naturalness(orig: Tensor, result: Tensor) -> list[dict[str, float]]:
    """Every registered measure for a batch of pairs (two (B, 3, H, W) in [0, 1]): one dict per
    image, keyed by :data:`MEASURES`."""
    check_images(orig, "orig")
    check_images(result, "result")
    if orig.shape != result.shape:
        raise ValueError(f"naturalness needs equal shapes, got {tuple(orig.shape)} and "
                         f"{tuple(result.shape)}")
    orig, result = orig.float(), result.float()
    cols: dict[str, list[float]] = {}
    for fn, keys in _REGISTRY.values():
        out = fn(orig, result)
        values = out if isinstance(out, tuple) else (out,)
        if len(values) != len(keys):
            raise ValueError(f"measure {fn.__name__} returned {len(values)} values for the "
                             f"keys {keys}")
        cols.update({k: v.tolist() for k, v in zip(keys, values, strict=True)})
    return [{k: cols[k][i] for k in MEASURES} for i in range(len(orig))]


def worst_ratio(values: dict[str, float]) -> float:
    """The largest measure-to-limit ratio of one image: above 1, some measure shows an edit."""
    return max(values[k] / LIMITS[k] for k in MEASURES)
