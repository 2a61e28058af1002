"""Global colour: brightness, contrast, saturation, hue, gamma and tone curves.

This is the family of ACE and AdvCF: per-image global photo adjustments, the kind a camera or
a photo editor makes. Everything is per image, so one image never gets two looks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kornia.color as KC
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .base import Family, ParamSpec, cached_constant, clamp_unit, register_family

__all__ = ["ColorFamily", "ColorConfig", "lookup", "tone_curve", "tone_lut", "adjust_color"]


class _Lookup(torch.autograd.Function):
    """Forward and backward of :func:`lookup` written out, each with as few passes over the
    pixels as it takes (this is most of the colour family's step).

    The table's gradient is two scatters (of the gradient, and of it times the position
    within the segment), the input's one product with the slopes kept from the forward:
    fewer passes than autograd of a gather-gather-lerp form.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, lut: Tensor) -> Tensor:
        b, c, h, w = x.shape
        n = lut.shape[-1] - 1
        flat = x.reshape(b, c, h * w)
        # No clamp of x: the segment is clamped instead, so values outside [0, 1] follow the
        # end segments' lines. The segment is found in floating point and converted once:
        # arithmetic mixing int64 and float tensors was the slowest pass of the lookup.
        seg = (flat * n).floor_().clamp_(0, n - 1)
        offset = torch.add(flat, seg, alpha=-1 / n)  # x minus the segment's left knot
        idx = seg.long()
        slope = torch.gather(lut.diff(dim=-1) * n, 2, idx)
        out = torch.gather(lut, 2, idx).addcmul_(offset, slope)
        ctx.save_for_backward(idx, offset, slope)
        ctx.n = n
        return out.view(b, c, h, w)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        idx, offset, slope = ctx.saved_tensors
        n = ctx.n
        g = grad.reshape(idx.shape)
        grad_x = grad_lut = None
        if ctx.needs_input_grad[0]:
            grad_x = g.mul(slope).view(grad.shape)
        if ctx.needs_input_grad[1]:
            # Knot k gets (1 - frac) of the gradient of segment k and frac of segment k - 1,
            # with frac = n * offset, the position within the segment.
            total = g.new_zeros(*idx.shape[:2], n).scatter_add_(2, idx, g)
            upper = g.new_zeros(*idx.shape[:2], n).scatter_add_(2, idx, g * offset).mul_(n)
            grad_lut = F.pad(total - upper, (0, 1)) + F.pad(upper, (1, 0))
        return grad_x, grad_lut


def lookup(x: Tensor, lut: Tensor) -> Tensor:
    """Piecewise-linear per-channel lookup table through ``N + 1`` evenly spaced knots.

    Args:
        x: (B, C, H, W) in [0, 1]; values outside follow the end segments' lines.
        lut: (B, C, N + 1) curve values at ``0, 1/N, ..., 1``.
    Returns:
        (B, C, H, W).
    """
    return _Lookup.apply(x, lut)


def curve_knots(curves: Tensor) -> Tensor:
    """Knot values (B, 3, K + 1) of the monotone curves of :func:`tone_curve`."""
    slopes = (1.0 + curves).clamp_min(1e-3)
    inc = slopes / slopes.sum(-1, keepdim=True)  # (B, 3, K), sums to 1
    return F.pad(torch.cumsum(inc, -1), (1, 0))


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
    return lookup(x, curve_knots(curves))


def _gamma(x: Tensor, log_gamma: Tensor) -> Tensor:
    # kornia.enhance.adjust_gamma is x ** gamma: its gradient is infinite at x = 0 for
    # gamma < 1 (and NaN w.r.t. gamma). Near-black values are passed through unchanged
    # instead, which keeps every gradient finite and the identity exact.
    eps = 1e-4
    g = torch.exp(log_gamma).view(-1, *([1] * (x.ndim - 1)))
    return torch.where(x > eps, x.clamp(eps, 1.0) ** g, x)


@cached_constant
def _knot_interpolation(segments: int, samples: int, device: torch.device,
                        dtype: torch.dtype) -> Tensor:
    """(K + 1, N + 1): the piecewise-linear curve through K + 1 knots at N + 1 even samples.

    Read off :func:`lookup` itself, applied to the identity basis of knot values.
    """
    t = torch.linspace(0, 1, samples, device=device, dtype=dtype)
    eye = torch.eye(segments + 1, device=device, dtype=dtype)
    return lookup(t.expand(1, segments + 1, samples).unsqueeze(-1), eye.unsqueeze(0))[0, ..., 0]


def tone_lut(curves: Tensor, log_gamma: Tensor, segments: int = 32) -> Tensor:
    """The tone curves followed by gamma, sampled as one (B, 3, N + 1) lookup table.

    Both are per-channel monotone maps of [0, 1], so their composition is one too: applying
    it to the pixels as a single lookup costs a third of a curve plus a pixel-wise ``pow``
    (whose forward and backward were ~60% of a colour step on the CPU). The table has a
    knot on every kink of the curves (N is a multiple of their segment count), so only
    gamma's curvature is approximated: within 0.003 everywhere (worst near black), under
    one JPEG code value. Sampling the curves at fixed points is linear in their knots: one
    product with a cached matrix.
    """
    k = curves.shape[-1]
    n = k * max(1, -(-segments // k))
    on_curve = curve_knots(curves) @ _knot_interpolation(k, n + 1, curves.device, curves.dtype)
    return _gamma(on_curve, log_gamma.to(curves.dtype))


@cached_constant
def _chroma_basis(device: torch.device, dtype: torch.dtype) -> Tensor:
    """(3, 3, 3): the identity, the projection of RGB onto YUV chroma, and that chroma turned
    by 90 degrees, as RGB matrices read off kornia's YUV conversions."""
    basis = torch.eye(3, device=device, dtype=dtype).view(3, 3, 1, 1)
    yuv = KC.rgb_to_yuv(basis)[..., 0, 0]  # (3 basis colours, YUV)
    _, u, v = yuv.unbind(1)
    zero = torch.zeros_like(u)
    parts = torch.stack([torch.stack([zero, u, v], 1), torch.stack([zero, -v, u], 1)])
    rgb = KC.yuv_to_rgb(parts.reshape(6, 3, 1, 1))[..., 0, 0]
    chroma, turned = rgb.view(2, 3, 3).transpose(1, 2)  # column j = image of basis colour j
    return torch.stack([torch.eye(3, device=device, dtype=dtype), chroma, turned])


def chroma_matrix(saturation: Tensor, hue: Tensor) -> Tensor:
    """Per-image RGB 3x3 matrices that scale and rotate the chroma plane of YUV.

    The map is linear, so it is built once per image, and then applied to every pixel with
    one batched matmul (two full-image colour-space conversions per step cost ~3x more on
    the CPU). Scaling by ``s`` and turning by ``h`` sends chroma ``c`` to
    ``s cos(h) c + s sin(h) c_90`` and keeps luma, so the matrix is a fixed combination of
    three constant ones, read off kornia once per device and dtype. It is written as the
    identity plus changes, so that no change is exactly the identity and grey stays grey.

    Args:
        saturation: (B,) log of the chroma scale.
        hue: (B,) rotation of the chroma plane in radians.

    Returns:
        (B, 3, 3) matrices acting on RGB column vectors.
    """
    eye, chroma, turned = _chroma_basis(hue.device, hue.dtype)
    scale = torch.exp(saturation)
    cos, sin = (torch.cos(hue) * scale).view(-1, 1, 1), (torch.sin(hue) * scale).view(-1, 1, 1)
    return eye + (cos - 1) * chroma + sin * turned


def adjust_chroma(x: Tensor, saturation: Tensor, hue: Tensor) -> Tensor:
    """Scale and rotate the chroma plane of YUV: saturation and hue in one linear map.

    Luma is untouched, so brightness stays where it was. Unlike a trip through HSV this is
    linear and smooth everywhere (no hue wrap-around or max/min switches in the gradient).

    Args:
        x: (B, 3, H, W) RGB.
        saturation: (B,) log of the chroma scale.
        hue: (B,) rotation of the chroma plane in radians.
    """
    b, c, h, w = x.shape
    m = chroma_matrix(saturation.to(x.dtype), hue.to(x.dtype))
    return torch.bmm(m, x.reshape(b, c, h * w)).view(b, c, h, w)


def adjust_color(
    x: Tensor,
    brightness: Tensor,
    contrast: Tensor,
    saturation: Tensor,
    hue: Tensor,
    gamma: Tensor,
    curves: Tensor,
    channel_curves: Tensor | None = None,
) -> Tensor:
    """Apply every global colour adjustment; each argument is per image and zero is identity.

    Order: tone curves, gamma, brightness, contrast around the grayscale mean, then
    saturation and hue; the result is clipped to [0, 1].

    Args:
        x: (B, 3, H, W) in [0, 1].
        brightness: (B,) additive shift.
        contrast: (B,) log of the contrast factor around each image's mean.
        saturation: (B,) log of the saturation (chroma) factor.
        hue: (B,) hue rotation in radians (of the YUV chroma plane).
        gamma: (B,) log of the gamma exponent.
        curves: (B, 3, K) or (B, 1, K) tone-curve slope deviations, see :func:`tone_curve`;
            one row is shared by R, G and B.
        channel_curves: (B, 3, K) per-channel deviations added to ``curves``, or ``None``.
    """
    b, c, h, w = x.shape
    if channel_curves is not None:
        curves = curves + channel_curves
    # A curve shared by R, G and B is sampled once and broadcast, so grey stays exactly grey
    # (a matrix product may round its rows differently).
    y = lookup(x, tone_lut(curves, gamma).expand(b, c, -1))
    # Brightness, contrast and chroma are affine per image, so they are folded into one
    # 3x3 matrix and offset applied in a single pass (as kornia's adjust_brightness, then
    # adjust_contrast_with_mean_subtraction around the grayscale mean, then the chroma map,
    # but clipped once at the end instead of after the contrast too).
    factor = torch.exp(contrast).to(x.dtype)
    mean = KC.rgb_to_grayscale(y.mean((2, 3), keepdim=True)).flatten() + brightness
    shift = factor * brightness + (1 - factor) * mean  # same for R, G and B
    m = chroma_matrix(saturation.to(x.dtype), hue.to(x.dtype))
    bias = m.sum(2) * shift[:, None]  # the chroma map of the grey (shift, shift, shift)
    out = torch.baddbmm(bias.unsqueeze(2), m * factor.view(-1, 1, 1), y.reshape(b, c, h * w))
    return clamp_unit(out.view(b, c, h, w))


@dataclass(frozen=True)
class ColorConfig:
    """Bounds at full strength: a mild global grade. Multiplicative factors are bounded in log
    space. Kept small: a stronger grade reads as a regraded photo (README: tone shift)."""

    brightness: float = 0.0075
    contrast: float = 0.02  # log factor: x0.98 .. x1.02
    saturation: float = 0.03  # log chroma factor: x0.97 .. x1.03
    hue: float = 0.0075  # chroma rotation in radians, about 0.43 degrees
    gamma: float = 0.02  # log exponent: 0.98 .. 1.02
    curve_segments: int = 8
    curve: float = 0.0375  # slope deviation per segment of the curve shared by R, G and B
    # Per-channel deviation on top (0: off). Sign steps pin every segment of every channel at
    # the bound, in opposite directions: whole backgrounds turn green or pink.
    channel_curve: float = 0.0


@register_family
class ColorFamily(Family):
    name = "color"
    order = 40
    resolution_free = True
    pointwise = True
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
            "curves": ParamSpec((1, c.curve_segments), c.curve),
        } | ({"channel_curves": ParamSpec((3, c.curve_segments), c.channel_curve)}
             if c.channel_curve > 0 else {})

    def apply(
        self, x: Tensor, params: Mapping[str, Tensor],
        prepared: Mapping[str, Tensor] | None = None,
    ) -> Tensor:
        return adjust_color(x, **params)
