"""Global colour: brightness, contrast, saturation, hue, gamma and per-channel tone curves.

This is the family of ACE and AdvCF: per-image global photo adjustments, the kind a camera or
a photo editor makes. Everything is per image, so one image never gets two looks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import kornia.enhance as KE
import torch
from torch import Tensor

from .base import Family, ParamSpec, register_family

__all__ = ["ColorFamily", "ColorConfig", "tone_curve", "adjust_color"]


def tone_curve(x: Tensor, curves: Tensor) -> Tensor:
    """Per-channel monotone piecewise-linear tone curves.

    Args:
        x: (B, 3, H, W) in [0, 1].
        curves: (B, 3, K) slope deviations; segment k of a channel's curve has slope
            proportional to ``1 + curves[..., k]``. Zero is the identity. Slopes are renormalised
            so every curve still maps 0 to 0 and 1 to 1, and kept positive so it is monotone.

    Returns:
        (B, 3, H, W) in [0, 1].
    """
    b, c, h, w = x.shape
    k = curves.shape[-1]
    slopes = (1.0 + curves).clamp_min(1e-3)
    inc = slopes / slopes.sum(-1, keepdim=True)  # (B, 3, K), sums to 1
    knots = torch.cumsum(inc, -1) - inc  # value at each segment's left end
    t = x.clamp(0, 1).reshape(b, c, h * w) * k
    idx = t.detach().floor().clamp(max=k - 1).long()
    frac = t - idx
    y = torch.gather(knots, 2, idx) + frac * torch.gather(inc, 2, idx)
    return y.reshape(b, c, h, w)


def _gamma(x: Tensor, log_gamma: Tensor) -> Tensor:
    # kornia.enhance.adjust_gamma is x ** gamma: its gradient is infinite at x = 0 for
    # gamma < 1 (and NaN w.r.t. gamma). Near-black pixels are passed through unchanged
    # instead, which keeps every gradient finite and the identity exact.
    eps = 1e-4
    g = torch.exp(log_gamma).view(-1, 1, 1, 1)
    return torch.where(x > eps, x.clamp(eps, 1.0) ** g, x)


def adjust_color(
    x: Tensor,
    brightness: Tensor,
    contrast: Tensor,
    saturation: Tensor,
    hue: Tensor,
    gamma: Tensor,
    curves: Tensor,
) -> Tensor:
    """Apply every global colour adjustment; each argument is per image and zero is identity.

    Args:
        x: (B, 3, H, W) in [0, 1].
        brightness: (B,) additive shift.
        contrast: (B,) log of the contrast factor around each image's mean.
        saturation: (B,) log of the saturation factor (blend with the grey image).
        hue: (B,) hue rotation in radians.
        gamma: (B,) log of the gamma exponent.
        curves: (B, 3, K) tone-curve slope deviations, see :func:`tone_curve`.
    """
    y = _gamma(x, gamma)
    y = tone_curve(y, curves)
    y = KE.adjust_brightness(y, brightness, clip_output=False)
    y = KE.adjust_contrast_with_mean_subtraction(y, torch.exp(contrast))
    y = KE.adjust_saturation_with_gray_subtraction(y.clamp(0, 1), torch.exp(saturation))
    y = KE.adjust_hue(y.clamp(0, 1), hue)
    return y.clamp(0, 1)


@dataclass(frozen=True)
class ColorConfig:
    """Bounds at full strength. Multiplicative factors are bounded in log space."""

    brightness: float = 0.06
    contrast: float = 0.15  # log factor: x0.86 .. x1.16
    saturation: float = 0.25  # log factor: x0.78 .. x1.28
    hue: float = 0.06  # radians, about 3.4 degrees
    gamma: float = 0.15  # log exponent: 0.86 .. 1.16
    curve_segments: int = 8
    curve: float = 0.35  # slope deviation per segment


@register_family
class ColorFamily(Family):
    name = "color"
    resolution_free = True
    Config = ColorConfig
    config: ColorConfig

    def param_specs(self, height: int, width: int) -> dict[str, ParamSpec]:
        c = self.config
        return {
            "brightness": ParamSpec((), c.brightness),
            "contrast": ParamSpec((), c.contrast),
            "saturation": ParamSpec((), c.saturation),
            "hue": ParamSpec((), c.hue),
            "gamma": ParamSpec((), c.gamma),
            "curves": ParamSpec((3, c.curve_segments), c.curve),
        }

    def apply(self, x: Tensor, params: Mapping[str, Tensor]) -> Tensor:
        return adjust_color(x, **params)
