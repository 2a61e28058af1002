"""Texture: a luminance change hidden among the original's own detail of the same scale.

Contrast masking is frequency specific: a change hides among details of its own scale and
shows anywhere else (grain on a sky, or on a blurred background that has contrast but no fine
detail). So the change is built per band. Each band has a coarse parameter grid (stride 2 for
the fine band, 4 for the mid band, 8 for the coarse one), high-passed on itself, upsampled
with a cubic B-spline and multiplied by that band's *visibility map* of the original,
computed once per image by :func:`visibility`. B-spline weights are non-negative and sum to
one (bicubic's are not, and overshoot by up to ~1.9x on a sign-step checkerboard), so the
bound below is exact. The map is

* the local RMS of the original's own band (a difference of Gaussians of its luminance);
* taken at two pooling scales, keeping the smaller: texture fills both windows, an isolated
  edge only the small one, so the map stays low along strong edges next to flat regions,
  where a change shows as a fringe;
* times ``(1 - coherence) ** edge_power`` of the structure tensor: a single orientation
  (an edge, a stripe) masks less than texture does;
* times, with ``range_margin``, a gate on where the pixel sits in its neighbourhood's
  luminance range: a plateau at the local extreme (white sky between dark branches, a dark
  gap between bright ones) shows any change of its level as a grey blotch, while pixels
  between the extremes (edges, continuous texture) hide it;
* times, with ``disorder``, the share of the original's fine detail that a median filter
  removes: an edge-preserving smoother keeps a clean outline (a dalmatian's spot), which the
  eye follows and sees move, and takes irregular texture (fur, grass, gravel), which hides a
  change;
* times a ramp of the pixel's own local contrast (luminance std over 7x7: 0 below
  ``flat_start``/255, 1 above ``flat_full``/255): pooling spreads a textured area's map a few
  pixels into the flat ones next to it, where a change shows as grain. With ``detail_sigma``
  the std is of the luminance's detail only (minus its blur), so smooth shading on a glossy
  or curved surface, where a change shows as mottling, counts as flat too.

Parameters are bounded by the band's ratio (``|p| <= ratio * level``), so the change in band
k is at most ``ratio_k * level * visibility_k`` at every pixel: near zero in flat and
blurred regions, a fraction of the original's own contrast in textured ones. With ``cap``,
each map is at most ``cap / ratio_k``, so no band changes a pixel by more than ``cap``
(0-255 units). The change is added to R, G and B alike (luminance only, hue kept) unless
``channels="rgb"``. With ``chroma_fine`` or ``chroma_mid``, that band also gets two
opponent-colour components (red-green, yellow-blue, with the luminance unchanged), bounded
by the ratio times the original's own *colour* detail of the band (:func:`chroma_visibility`):
colour hides among colour detail of its own scale, and shows as a coloured fringe on grey
branches against a white sky however much lightness detail they have.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import kornia.color as KC
import kornia.filters as KF
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..naturalness import BLOCK, structure_band
from .base import (
    Family,
    ParamSpec,
    blur_field,
    cached_constant,
    clamp_between,
    clamp_unit,
    highpass_and_plain_fields,
    highpass_upsample_field,
    register_family,
    upsample_field,
)

__all__ = ["TextureFamily", "TextureConfig", "visibility", "chroma_visibility", "opponent",
           "BANDS"]

# (name, DoG sigmas of the band in pixels, parameter stride)
BANDS: tuple[tuple[str, tuple[float, float], int], ...] = (
    ("fine", (0.7, 2.0), 2),
    ("mid", (2.0, 4.0), 4),
    ("coarse", (4.0, 8.0), 8),
)


def _blur(x: Tensor, sigma: float) -> Tensor:
    k = 2 * math.ceil(3 * sigma) + 1
    if min(x.shape[-2:]) <= k // 2:
        return KF.gaussian_blur2d(x, (k, k), (sigma, sigma), border_type="replicate")
    return KF.gaussian_blur2d(x, (k, k), (sigma, sigma), border_type="reflect")


UPSAMPLE = "bspline"
LUMA = (0.299, 0.587, 0.114)  # Rec. 601 weights, as kornia's rgb_to_grayscale
CHROMA_BANDS = ("fine", "mid")  # bands that may carry opponent-colour components
# structure_cap's window on the original's structure band: a Gaussian about as wide as the
# blocks reshaped structure is measured in.
STRUCTURE_WINDOW = BLOCK / 2
# Gaussian sigma (px) over which _disorder compares the median's residual with the detail.
DISORDER_POOL = 4.0
# Local 7x7 luminance std (/255) where a change starts to be allowed, and where in full.
FLAT_START, FLAT_FULL = 3.0, 8.0


@cached_constant
def _opponent_basis(device: torch.device, dtype: torch.dtype) -> Tensor:
    """(3, 2): the RGB change that moves one opponent component (:func:`opponent`) by one
    unit, the other by none, and the luminance (Rec. 601, as ``rgb_to_grayscale``) by none:
    colour only, measured in the units of :func:`chroma_visibility`'s maps."""
    to_opponent = torch.tensor([[1.0, -1.0, 0.0], [0.5, 0.5, -1.0], LUMA], dtype=torch.float64)
    return torch.linalg.inv(to_opponent)[:, :2].to(device, dtype)


def opponent(x: Tensor) -> Tensor:
    """(B, 3, H, W) RGB -> (B, 2, H, W) red minus green, and the mean of red and green minus
    blue."""
    r, g, b = x.unbind(1)
    return torch.stack([r - g, (r + g) / 2 - b], 1)


def _local_std(t: Tensor) -> Tensor:
    padded = F.pad(t, (3, 3, 3, 3), mode="replicate")
    mean = F.avg_pool2d(padded, 7, stride=1)
    return (F.avg_pool2d(padded * padded, 7, stride=1) - mean * mean).clamp_min(0).sqrt()


def _activity(luma: Tensor, lo: float, hi: float, detail_sigma: float = 0.0) -> Tensor:
    """0 where the 7x7 luminance std is below ``lo``, 1 above ``hi``, linear between. With
    ``detail_sigma``, the smaller of that std and the one of the luminance minus its Gaussian
    blur of that sigma: smooth shading (a gradient, a glossy highlight's flank) counts as flat,
    and the blur's spread of a strong edge does not wake the flat pixels beside it.
    (B, 1, H, W)."""
    std = _local_std(luma)
    if detail_sigma > 0:
        std = torch.minimum(std, _local_std(luma - _blur(luma, detail_sigma)))
    return ((std - lo) / max(hi - lo, 1e-6)).clamp(0, 1)  # hi == lo: a step


def _band_activities(luma: Tensor, flat: tuple[float, float], detail_sigma: float,
                     names: Sequence[str], detail_bands: Sequence[str] | None) -> list[Tensor]:
    """Each named band's flat ramp (:func:`_activity`): measured on detail for the bands in
    ``detail_bands`` (None: all), on the luminance for the others."""
    plain = _activity(luma, *flat)
    detail = _activity(luma, *flat, detail_sigma) if detail_sigma > 0 else plain
    return [detail if detail_bands is None or n in detail_bands else plain for n in names]


def _local_range(luma: Tensor, window: int) -> tuple[Tensor, Tensor]:
    """The smallest and the largest value of each pixel's ``window`` x ``window``
    neighbourhood (odd ``window``). Two (B, 1, H, W)."""
    pad = window // 2
    padded = F.pad(luma, (pad, pad, pad, pad), mode="replicate")

    def local_max(t: Tensor) -> Tensor:  # separable: rows, then columns
        return F.max_pool2d(F.max_pool2d(t, (1, window), stride=1), (window, 1), stride=1)

    return -local_max(-padded), local_max(padded)


def _range_position(luma: Tensor, window: int, margin: float) -> Tensor:
    """How far each pixel sits from the extremes of its ``window`` neighbourhood, as a gate:
    0 at the local minimum or maximum, 1 once ``margin`` of the local range away from both.
    (B, 1, H, W)."""
    lo, hi = _local_range(luma, window)
    pos = ((luma - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
    return (torch.minimum(pos, 1 - pos) / margin).clamp(max=1)


def _coherence(luma: Tensor, sigma: float, rho: float) -> Tensor:
    """Structure-tensor coherence ((l1 - l2) / (l1 + l2))^2 in [0, 1]: 1 on a straight edge,
    near 0 in isotropic texture and in flat regions. (B, 1, H, W)."""
    g = KF.spatial_gradient(_blur(luma, sigma), mode="diff", order=1)  # (B, 1, 2, H, W)
    gx, gy = g[:, :, 0], g[:, :, 1]
    jxx, jyy, jxy = (_blur(t, rho) for t in (gx * gx, gy * gy, gx * gy))
    trace = jxx + jyy
    diff = torch.sqrt((jxx - jyy) ** 2 + 4 * jxy * jxy)
    return (diff / trace.clamp_min(1e-10)).clamp(0, 1) ** 2


def _band(signal: Tensor, sigmas: tuple[float, float]) -> Tensor:
    """``signal``'s band between two Gaussian blurs (a difference of Gaussians)."""
    return _blur(signal, sigmas[0]) - _blur(signal, sigmas[1])


def _disorder(luma: Tensor, window: int, pool: float = DISORDER_POOL) -> Tensor:
    """The local share (RMS over a Gaussian of ``pool`` px) of the fine band of ``luma`` that
    its ``window`` x ``window`` median leaves out: near 1 in irregular texture, near 0 along
    clean edges and outlines, which the median keeps. (B, 1, H, W) in [0, 1]."""
    sigmas = BANDS[0][1]
    residual = _band(luma - KF.median_blur(luma, (window, window)), sigmas)
    share = _blur(residual * residual, pool) / _blur(_band(luma, sigmas) ** 2,
                                                     pool).clamp_min(1e-12)
    return share.sqrt().clamp(0, 1)


def _band_amplitude(signal: Tensor, sigmas: tuple[float, float],
                    density_scale: float) -> Tensor:
    """Local RMS of ``signal``'s band (difference of Gaussians), its channels' energies
    summed, pooled at two scales and the smaller kept: texture fills both windows, an
    isolated edge only the small one. (B, 1, H, W)."""
    band = _band(signal, sigmas)
    energy = (band * band).sum(1, keepdim=True)
    s1 = sigmas[1]
    return torch.minimum(_blur(energy, 2 * s1), _blur(energy, 2 * s1 * density_scale)).sqrt()


@torch.no_grad()
def visibility(x: Tensor, edge_power: float = 1.0, density_scale: float = 3.0,
               bands: tuple[tuple[str, tuple[float, float], int], ...] = BANDS,
               flat: tuple[float, float] = (FLAT_START / 255, FLAT_FULL / 255),
               range_margin: float = 0.0, detail_sigma: float = 0.0,
               detail_bands: tuple[str, ...] | None = None, disorder: int = 0) -> Tensor:
    """Per-band amplitude of a change that the original's own detail can hide (0-1 units).

    Args:
        x: (B, 3, H, W) in [0, 1].
        edge_power: how strongly an edge's coherence shrinks the map (0: not at all).
        density_scale: the larger pooling window, as a multiple of the smaller one.
        bands: the bands to map, as in :data:`BANDS`.
        flat: local 7x7 luminance std (0-1 units) below which the map is 0, and above which
            it is not reduced.
        range_margin: 0 (off) or the share of the local luminance range (over the band's
            window, ``2 * ceil(sigma_1) + 1``) a pixel must sit from both local extremes to get
            its band's full map; a pixel at either extreme gets none.
        detail_sigma: 0, or measure ``flat`` on the luminance minus its blur of this sigma
            (detail only), not on the luminance itself.
        detail_bands: the bands ``detail_sigma`` applies to (None: all); the others measure
            ``flat`` on the luminance.
        disorder: 0 (off) or an odd median window (px): every map times the share of the
            original's fine detail that median leaves out (:func:`_disorder`).

    Returns:
        (B, len(bands), H, W).
    """
    luma = KC.rgb_to_grayscale(x.float())
    actives = _band_activities(luma, flat, detail_sigma, [b[0] for b in bands], detail_bands)
    irregular = _disorder(luma, disorder) if disorder > 0 else None
    maps = []
    for (_, (s0, s1), _), active in zip(bands, actives, strict=True):
        amp = _band_amplitude(luma, (s0, s1), density_scale)
        if edge_power > 0:
            amp = amp * (1 - _coherence(luma, s0, 2 * s1)) ** edge_power
        if range_margin > 0:
            amp = amp * _range_position(luma, 2 * math.ceil(s1) + 1, range_margin)
        if irregular is not None:
            amp = amp * irregular
        maps.append(amp * active)
    return torch.cat(maps, 1).to(x.dtype)


@torch.no_grad()
def chroma_visibility(x: Tensor, density_scale: float = 3.0,
                      bands: tuple[tuple[str, tuple[float, float], int], ...] = BANDS,
                      flat: tuple[float, float] = (FLAT_START / 255, FLAT_FULL / 255)) -> Tensor:
    """Per-band amplitude of the original's own colour detail, in the units of the opponent
    components the texture family adds (:func:`opponent`): a colour change hides among colour
    detail of its own scale, not among lightness detail. Pooled as in :func:`visibility`,
    and 0 where the luminance is flat. (B, len(bands), H, W)."""
    xf = x.float()
    colour = opponent(xf)
    active = _activity(KC.rgb_to_grayscale(xf), *flat)
    maps = [_band_amplitude(colour, sigmas, density_scale) * active for _, sigmas, _ in bands]
    return torch.cat(maps, 1).to(x.dtype)


@dataclass(frozen=True)
class TextureConfig:
    """Bounds at full strength, as ratios of the original's own local band amplitude."""

    fine: float = 3.2  # 0 switches the band off
    mid: float = 8.0
    coarse: float = 8.0
    channels: Literal["luma", "rgb"] = "luma"
    # Ratios of the fine and mid bands' two opponent-colour components to the original's own
    # colour detail of that band (0: luminance only); "luma" channels only.
    chroma_fine: float = 0.0
    chroma_mid: float = 0.0
    edge_power: float = 1.0
    density_scale: float = 3.0
    flat_start: float = FLAT_START  # local 7x7 luminance std (/255): see FLAT_START
    flat_full: float = FLAT_FULL
    # Share of the local luminance range a pixel must sit from both extremes to keep its
    # band's full map (0: off): see visibility().
    range_margin: float = 0.2
    # Gaussian sigma (px) of the blur subtracted from the luminance before flat_start/flat_full
    # measure it (0: the plain std, which counts smooth shading as activity).
    detail_sigma: float = 0.0
    # The bands detail_sigma applies to, comma-separated; the others keep the plain std.
    detail_bands: str = "fine,mid,coarse"
    # Odd median window (px) that splits the original into outlines and texture (0: off):
    # every map times the share of its fine detail the median leaves out. A clean outline
    # (a dalmatian's spot) is followed by the eye and seen to move however strong it is;
    # irregular texture hides a change.
    disorder: int = 0
    # Each band's grid minus its Gaussian blur (sigma in grid cells; 0: off), so a band keeps
    # periods up to a few cells and no slow drift of brightness. The grid is bounded by
    # ratio / 2 then, and the band's field stays within +-ratio.
    highpass: float = 1.0
    # Gaussian sigma (px) of the local mean taken out of the luminance change (0: off), put
    # back in proportion to each pixel's bound. A band's map follows the texture under it, so
    # its product with a zero-mean field keeps a slow part that reads as a smudge on a
    # patterned wall. The change then may exceed its bound by the local mean it loses.
    lowcut: float = 0.0
    # Largest change (/255) any one band may make at a pixel (0: off). The ratios scale with
    # the original's band amplitude, so a high-contrast pattern (a dalmatian's spots, tile
    # motifs) would allow changes large enough to reshape its elements. Each band's colour
    # components are capped alike.
    cap: float = 0.0
    # Largest total change (all bands' bounds summed) as a multiple of the original's own
    # mid-scale structure there (its DoG 2/5 px luminance RMS over ~16 px, plus 1/255; 0: off):
    # fine grain over little mid-scale pattern would otherwise get a change that reshapes it.
    structure_cap: float = 0.0
    # Largest local gain of the original's own band of luminance (0: off): the change
    # gain(x) * band(x), with the gain a smooth field on the band's grid. It is zero wherever
    # the band crosses zero, where its edges lie, so it changes their contrast, not their
    # place (a local clarity or softening edit), however strong the edge.
    gain_fine: float = 0.0
    gain_mid: float = 0.0
    gain_coarse: float = 0.0
    # Share of the way to the darkest or brightest of its 3x3 neighbours in the original that
    # the luminance change may move a pixel (0: off). The range gate reads where a pixel
    # starts, not where it ends: without this an edge pixel is carried past the sky beside it
    # (a white fringe along a roof).
    overshoot: float = 0.0
    # Apply overshoot only within this many pixels of a flat one (the flat ramp at 0; 0: at
    # every pixel). An edge shows its fringe against a flat side (a roof against the sky);
    # inside texture the same overshoot hides, and carries much of what transfers.
    overshoot_reach: int = 0


def _grid_size(height: int, width: int, stride: int) -> tuple[int, int]:
    """A band's parameter grid: one node per ``stride`` pixels, plus one past the far edge."""
    return -(-height // stride) + 1, -(-width // stride) + 1


@register_family
class TextureFamily(Family):
    name = "texture"
    order = 10
    resolution_free = False
    prepare_on_original = True
    Config = TextureConfig
    config: TextureConfig

    def __init__(self, config: TextureConfig | None = None) -> None:
        super().__init__(config)
        if self.config.channels not in ("luma", "rgb"):
            raise ConfigError(f"texture channels must be 'luma' or 'rgb', got "
                             f"{self.config.channels!r}")
        if not 0 <= self.config.flat_start <= self.config.flat_full:
            raise ConfigError("texture needs 0 <= flat_start <= flat_full")
        if self.config.detail_sigma < 0:
            raise ConfigError("texture detail_sigma must be >= 0 (0: plain luminance std)")
        names = [b for b, *_ in BANDS]
        if not set(self._detail_bands()) <= set(names):
            raise ConfigError(f"texture detail_bands must name bands from {', '.join(names)}, "
                              f"comma-separated; got {self.config.detail_bands!r}")
        for band in CHROMA_BANDS:
            ratio = getattr(self.config, f"chroma_{band}")
            if ratio < 0 or (ratio > 0 and (self.config.channels != "luma"
                                            or getattr(self.config, band) <= 0)):
                raise ConfigError(f"texture chroma_{band} must be >= 0, and needs channels "
                                  f"'luma' and the {band} band")
        for band, *_ in BANDS:
            if getattr(self.config, f"gain_{band}") < 0:
                raise ConfigError(f"texture gain_{band} must be >= 0 (0: off)")
        if self.config.cap < 0:
            raise ConfigError("texture cap must be >= 0 (a change in 0-255 units; 0: off)")
        if self.config.structure_cap < 0:
            raise ConfigError("texture structure_cap must be >= 0 (a multiple of the original's "
                              "mid-scale structure; 0: off)")
        if self.config.lowcut < 0:
            raise ConfigError("texture lowcut must be >= 0 (a Gaussian sigma in pixels; 0: off)")
        if not 0 <= self.config.overshoot <= 1 or (self.config.overshoot > 0
                                                    and self.config.channels != "luma"):
            raise ConfigError("texture overshoot must be in [0, 1] (a share of the way to the "
                              "3x3 neighbours' luminance extremes; 0: off), and needs "
                              "channels 'luma'")
        if self.config.overshoot_reach < 0:
            raise ConfigError("texture overshoot_reach must be >= 0 (pixels from a flat one; "
                              "0: every pixel)")
        if self.config.disorder < 0 or (self.config.disorder and self.config.disorder % 2 == 0):
            raise ConfigError("texture disorder must be 0 (off) or an odd median window in "
                              "pixels")
        if not 0 <= self.config.range_margin <= 0.5:
            raise ConfigError("texture range_margin must be in [0, 0.5] (a share of the local "
                              "range from both extremes)")

    def _detail_bands(self) -> tuple[str, ...]:
        return tuple(b.strip() for b in self.config.detail_bands.split(",") if b.strip())

    def _bands(self) -> list[tuple[int, str, int, float]]:
        """(index into the visibility maps, name, stride, ratio) of each band switched on."""
        on = [b for b in BANDS if getattr(self.config, b[0]) > 0]
        return [(i, name, stride, getattr(self.config, name))
                for i, (name, _, stride) in enumerate(on)]

    def _grid_bound(self, ratio: float) -> float:
        return ratio / 2 if self.config.highpass > 0 else ratio

    def _chroma(self) -> dict[str, float]:
        """Opponent-colour ratio of each band that has one (parameter ``<band>_chroma``)."""
        ratios = {band: getattr(self.config, f"chroma_{band}") for band in CHROMA_BANDS}
        return {band: r for band, r in ratios.items() if r > 0}

    def _gains(self) -> dict[str, tuple[float, tuple[float, float], int]]:
        """(gain bound, DoG sigmas, stride) of each band with a gain (parameter
        ``<band>_gain``)."""
        return {name: (getattr(self.config, f"gain_{name}"), sigmas, stride)
                for name, sigmas, stride in BANDS if getattr(self.config, f"gain_{name}") > 0}

    def _fused(self) -> tuple[str, ...]:
        """Bands whose field and gain field share their products (see
        :func:`highpass_and_plain_fields`), in the order of ``_gains()``. Needs a high-passed
        luminance band with nothing between it and its gain (no lowcut)."""
        c = self.config
        if c.highpass <= 0 or c.lowcut > 0 or c.channels != "luma":
            return ()
        return tuple(name for name in self._gains() if getattr(c, name) > 0)

    def _ratio(self, name: str) -> float:
        if name.endswith("_gain"):
            return self._gains()[name.removesuffix("_gain")][0]
        if name.endswith("_chroma"):
            return self._chroma()[name.removesuffix("_chroma")]
        return getattr(self.config, name)

    def param_specs(self, height: int, width: int) -> dict[str, ParamSpec]:
        c = 1 if self.config.channels == "luma" else 3
        specs = {name: ParamSpec((c, *_grid_size(height, width, stride)),
                                 self._grid_bound(ratio))
                 for _, name, stride, ratio in self._bands()}
        for band, ratio in self._chroma().items():
            specs[f"{band}_chroma"] = ParamSpec((2, *specs[band].shape[1:]),
                                                self._grid_bound(ratio))
        for band, (gain, _, stride) in self._gains().items():
            specs[f"{band}_gain"] = ParamSpec((1, *_grid_size(height, width, stride)), gain)
        return specs

    def _field(self, grid: Tensor, h: int, w: int) -> Tensor:
        """A band's grid, high-passed on itself, as a (B, C, h, w) field."""
        # The grid's corners sit on the image's corners (align_corners upsampling).
        if self.config.highpass > 0:
            return highpass_upsample_field(grid, self.config.highpass, h, w, UPSAMPLE)
        return upsample_field(grid, h, w, UPSAMPLE)

    def prepare(self, x: Tensor) -> dict[str, Tensor]:
        on = tuple(b for b in BANDS if getattr(self.config, b[0]) > 0)
        c = self.config
        flat = (c.flat_start / 255, c.flat_full / 255)
        vis = (visibility(x, c.edge_power, c.density_scale, on, flat, c.range_margin,
                          c.detail_sigma, self._detail_bands(), c.disorder)
               if on else x.new_zeros(x.shape[0], 0, *x.shape[2:]))
        if c.cap > 0:  # band k's change is at most ratio_k * map_k: cap the map at cap / ratio_k
            vis = torch.minimum(vis, c.cap / 255 / self._band_ratios(vis))
        if c.structure_cap > 0 and self._bands():
            vis = vis * self._structure_share(x, vis)
        out = {"visibility": vis}
        chroma = self._chroma()
        if chroma:  # one map per band with colour, in the order of _chroma()
            cvis = chroma_visibility(x, c.density_scale,
                                     tuple(b for b in BANDS if b[0] in chroma), flat)
            if c.cap > 0:
                ratios = torch.tensor(list(chroma.values()), device=cvis.device,
                                      dtype=cvis.dtype)
                cvis = torch.minimum(cvis, (c.cap / 255 / ratios).view(1, -1, 1, 1))
            out["chroma_visibility"] = cvis
        luma = KC.rgb_to_grayscale(x.float())
        gains = self._gains()
        if gains:  # the original's signed bands, 0 where the luminance is flat
            actives = _band_activities(luma, flat, c.detail_sigma, list(gains),
                                       self._detail_bands())
            bands = {}
            for (name, (_, (s0, s1), _)), active in zip(gains.items(), actives, strict=True):
                band = _band(luma, (s0, s1)) * active
                if c.range_margin > 0:  # a plateau beside an edge keeps its level: no halo
                    band = band * _range_position(luma, 2 * math.ceil(s1) + 1, c.range_margin)
                bands[name] = band.to(x.dtype)
            if fused := self._fused():  # (B, bands, 1, 2, H, W): map, signed band
                index = {name: i for i, name, _, _ in self._bands()}
                out["fused_maps"] = torch.stack(
                    [torch.stack([vis[:, index[n]], bands[n][:, 0]], 1) for n in fused],
                    1).unsqueeze(2).to(x.dtype)
            if rest := [b for n, b in bands.items() if n not in fused]:
                out["bands"] = torch.cat(rest, 1)
        if c.overshoot > 0:  # how far each pixel may move, down and up
            lo, hi = _local_range(luma, 3)
            out["overshoot_down"] = (c.overshoot * (lo - luma)).to(x.dtype)
            out["overshoot_up"] = (c.overshoot * (hi - luma)).to(x.dtype)
            if c.overshoot_reach > 0:  # 1 within reach of a flat pixel, 0 deep in texture
                active = _activity(luma, *flat, c.detail_sigma)
                out["overshoot_weight"] = (
                    1 - _local_range(active, 2 * c.overshoot_reach + 1)[0]).to(x.dtype)
        if c.lowcut <= 0:
            return out
        # Normalised convolution with each pixel's bound as its weight: the mean goes back
        # where the bands may change the most, none to pixels they may not change at all.
        bound = (vis * self._band_ratios(vis)).sum(1, keepdim=True)
        return {**out, "lowcut_weight": bound,
                "lowcut_norm": blur_field(bound, c.lowcut).clamp_min(1e-6)}

    def _structure_share(self, x: Tensor, vis: Tensor) -> Tensor:
        """The share of every band's map kept so that their summed bounds stay within
        ``structure_cap`` times the original's local mid-scale structure (the band and window
        that :func:`unrestrict.naturalness.structure_change` measures against). (B, 1, H, W)."""
        band = structure_band(KC.rgb_to_grayscale(x.float()) * 255)
        allow = self.config.structure_cap / 255 * (_blur(band * band, STRUCTURE_WINDOW) + 1).sqrt()
        total = (vis * self._band_ratios(vis)).sum(1, keepdim=True)
        return (allow.to(vis.dtype) / total.clamp_min(1e-12)).clamp(max=1)

    def _band_ratios(self, like: Tensor) -> Tensor:
        """Each switched-on band's ratio, shaped (1, bands, 1, 1) to scale its map."""
        return torch.tensor([ratio for *_, ratio in self._bands()], device=like.device,
                            dtype=like.dtype).view(1, -1, 1, 1)

    def apply(
        self, x: Tensor, params: Mapping[str, Tensor],
        prepared: Mapping[str, Tensor] | None = None,
    ) -> Tensor:
        if prepared is None:
            prepared = self.prepare(x)
        vis = prepared["visibility"]
        h, w = x.shape[-2:]
        fused = self._fused()
        delta = None
        for i, name, _, _ in self._bands():
            if name not in fused:
                term = self._field(params[name], h, w) * vis[:, i : i + 1]
                delta = term if delta is None else delta + term
        if delta is not None and "lowcut_weight" in prepared:
            local_mean = blur_field(delta, self.config.lowcut) / prepared["lowcut_norm"]
            delta = delta - prepared["lowcut_weight"] * local_mean
        # The gains are not high-passed: a slow gain is an edit.
        for j, name in enumerate(n for n in self._gains() if n not in fused):
            term = upsample_field(params[f"{name}_gain"], h, w, UPSAMPLE) \
                * prepared["bands"][:, j : j + 1]
            delta = term if delta is None else delta + term
        pairs = None  # (B, 1, 2, H, W): each fused band's change, and its gain's
        for j, name in enumerate(fused):
            term = highpass_and_plain_fields(params[name], params[f"{name}_gain"],
                                             self.config.highpass, h, w, UPSAMPLE) \
                * prepared["fused_maps"][:, j]
            pairs = term if pairs is None else pairs + term
        if pairs is not None:
            delta = pairs.sum(2) if delta is None else delta + pairs.sum(2)
        if delta is not None and "overshoot_down" in prepared:
            delta = clamp_between(delta, prepared["overshoot_down"], prepared["overshoot_up"],
                                  prepared.get("overshoot_weight"))
        basis = _opponent_basis(x.device, x.dtype)  # (3, 2)
        for j, name in enumerate(self._chroma()):
            cvis = prepared["chroma_visibility"][:, j : j + 1]
            components = self._field(params[f"{name}_chroma"], h, w) * cvis
            colour = torch.einsum("kc,bchw->bkhw", basis, components)
            delta = colour if delta is None else delta + colour
        return x if delta is None else clamp_unit(x + delta)

    def penalty(self, params: Mapping[str, Tensor]) -> Tensor:
        return super().penalty(params)

    def _specs_like(self, params: Mapping[str, Tensor]) -> dict[str, ParamSpec]:
        # Bounds do not depend on the size; shapes are read off the parameters themselves.
        return {k: ParamSpec(tuple(p.shape[1:]), self._ratio(k) if k.endswith("_gain")
                             else self._grid_bound(self._ratio(k)))
                for k, p in params.items()}
