"""The contract every perturbation family follows, and the registry that names them.

A family is a differentiable, batched image transform with per-image parameters. All
parameters share one convention so that the attack loop can treat them alike:

* zero is the identity (``init`` is ``zeros``);
* each parameter tensor has a box bound: ``|p| <= bound * strength`` elementwise, where
  ``strength`` in [0, 1] is per image (the per-image budget the loop grows in stages);
* the family is a pure function of ``(x, params)``: parameters are kept apart from applying
  them, so they can be saved per image and replayed;
* what a family computes from its input alone (no parameter involved) may be computed once
  by :meth:`Family.prepare` and handed back to :meth:`Family.apply`: the loop runs a hundred
  steps on the same batch, and the first family's input is the same image in every one. A
  family whose constants describe the *original* image (a visibility map, a detail layer)
  sets ``prepare_on_original`` and gets them from the original wherever it stands, unless a
  family that moves pixels comes before it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import kornia.filters as KF
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError

__all__ = [
    "ParamSpec",
    "Family",
    "FAMILIES",
    "FAMILY_ORDER",
    "register_family",
    "create_family",
    "cached_constant",
    "cubic_weights",
    "interpolation_weights",
    "clamp_unit",
    "clamp_between",
    "upsample_field",
    "highpass_upsample_field",
    "upsample_field_adjoint",
    "grid_tv",
]


@dataclass(frozen=True)
class ParamSpec:
    """One parameter tensor of a family: its per-image shape and its box bound at strength 1."""

    shape: tuple[int, ...]
    bound: float


class Family(ABC):
    """A perturbation family. Subclasses set ``name``, ``resolution_free`` and ``Config``."""

    name: ClassVar[str]
    # True when the parameters mean the same thing at any image size (global colour, coarse
    # grids, normalised flows). The loop may then optimise at the models' input size and
    # render the result at full size; a per-pixel family forces full-size optimisation.
    resolution_free: ClassVar[bool]
    Config: ClassVar[type]
    # Its prepared constants describe the original image, not its exact input: they are
    # computed once from the original even when other families come first.
    prepare_on_original: ClassVar[bool] = False
    # It moves pixels (a warp): constants of the original no longer line up after it.
    moves_pixels: ClassVar[bool] = False
    # Each output pixel depends only on the same input pixel and image-wide statistics (a
    # global grade): the family commutes with resizing, up to the resize's averaging.
    pointwise: ClassVar[bool] = False
    # Place in a composite, lowest first: texture (its visibility map is the original's, and a
    # warp after it carries the change along with the content), geometry (it moves pixels),
    # local style, the global colour grade (local edits before the final grade, as an editor
    # works), the pixel baseline on top.
    order: ClassVar[float]

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    @abstractmethod
    def param_specs(self, height: int, width: int) -> dict[str, ParamSpec]:
        """Parameter shapes (without the batch dimension) and bounds for images of this size."""

    @abstractmethod
    def apply(
        self, x: Tensor, params: Mapping[str, Tensor],
        prepared: Mapping[str, Tensor] | None = None,
    ) -> Tensor:
        """Shape: (B, 3, H, W) in [0, 1] -> (B, 3, H, W) in [0, 1].

        ``prepared``, when given, is ``self.prepare(x)`` for this very ``x``; the result must
        be the same as without it.
        """

    def prepare(self, x: Tensor) -> dict[str, Tensor]:
        """Per-image work that depends on the input ``x`` only (each value (B, ...)).

        The loop calls it once per batch, without gradients, for the first family (whose
        input is fixed). ``apply`` calls it itself for any other input, so what it returns
        must stay differentiable wherever ``apply`` needs gradients through it. Default: none.
        """
        return {}

    @property
    def budget_power(self) -> float:
        """How this family's share of a stage's budget grows: ``level ** budget_power``.

        Above 1 the family is spent late: small stages go to the other families first.
        """
        return float(getattr(self.config, "budget_power", 1.0))

    def localize(self, params: Mapping[str, Tensor], keep: Tensor) -> dict[str, Tensor]:
        """``params`` with the change shrunk to the share ``keep`` ((B, 1, h, w) in [0, 1], a
        map over the image) wherever it is below 1. Default: parameters shaped (B, C, h, w)
        are fields over the image, corner to corner, and are multiplied by the map resampled
        to them; the others (global) are kept. Shrinking stays inside the bounds."""
        return {k: p * F.interpolate(keep.to(p), size=p.shape[-2:], mode="bilinear",
                                     align_corners=True) if p.ndim == 4 else p
                for k, p in params.items()}

    def penalty(self, params: Mapping[str, Tensor]) -> Tensor:
        """A (B,) regulariser; zero at the identity. Default: mean squared bound-normalised size."""
        specs = self._specs_like(params)
        terms = [
            ((p / specs[k].bound) ** 2).reshape(p.shape[0], -1).mean(1) for k, p in params.items()
        ]
        return torch.stack(terms).sum(0)

    def _specs_like(self, params: Mapping[str, Tensor]) -> dict[str, ParamSpec]:
        # Bounds never depend on the size for resolution-free families; for per-pixel ones the
        # shape is read off the parameter itself.
        some = next(iter(params.values()))
        h, w = (some.shape[-2], some.shape[-1]) if some.ndim == 4 else (1, 1)
        return self.param_specs(h, w)


FAMILIES: dict[str, type[Family]] = {}
# Registered names sorted by their ``order``: the order in which a composite applies them.
FAMILY_ORDER: list[str] = []

F_ = TypeVar("F_", bound=type[Family])
T = TypeVar("T")


def register_family(cls: F_) -> F_:
    """Make a family available by its ``name``, placed in :data:`FAMILY_ORDER` by its ``order``."""
    if cls.name in FAMILIES and FAMILIES[cls.name] is not cls:
        raise ValueError(f"a family named {cls.name!r} is already registered")
    FAMILIES[cls.name] = cls
    FAMILY_ORDER[:] = sorted(FAMILIES, key=lambda n: FAMILIES[n].order)
    return cls


def create_family(name: str, options: Mapping[str, Any] | None = None) -> Family:
    """Instantiate a registered family, overriding fields of its ``Config`` by name.

    Raises:
        ValueError: unknown family or option (the message lists the valid ones).
    """
    if name not in FAMILIES:
        raise ConfigError(f"unknown family {name!r}; choose from {', '.join(FAMILY_ORDER)}")
    cls = FAMILIES[name]
    options = dict(options or {})
    fields = {f.name: f for f in dataclasses.fields(cls.Config)}
    unknown = set(options) - set(fields)
    if unknown:
        raise ConfigError(
            f"unknown option(s) {sorted(unknown)} for family {name!r}; valid: {sorted(fields)}"
        )
    try:
        typed = {k: _coerce(fields[k].type, v) for k, v in options.items()}
        return cls(cls.Config(**typed))
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"family {name!r}: {e}") from e


def _coerce(annotation: Any, value: Any) -> Any:
    # Config modules use postponed annotations, so the type usually arrives as a string.
    key = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    conv: Callable[[Any], Any] = {"int": int, "float": float, "bool": _to_bool}.get(
        key, lambda v: v
    )
    return conv(value)


def _to_bool(v: Any) -> bool:
    if isinstance(v, str):
        if v.lower() in {"1", "true", "yes", "on"}:
            return True
        if v.lower() in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"not a boolean: {v!r}")
    return bool(v)


class _ClampUnit(torch.autograd.Function):
    """``x.clamp(0, 1)`` with the same gradient, computed in one pass.

    Autograd's clamp backward builds its mask from two comparisons, a logical and and a
    ``where``, through boolean tensors that are slow on the CPU; ``hardtanh_backward`` is one
    float pass. Every family ends with this clamp, so that is paid once per family per step.
    ``hardtanh_backward`` passes the gradient where ``0 < x < 1``, exactly as clamp's backward
    does (values at exactly 0 or 1 get none from either).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x.clamp(0, 1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return torch.ops.aten.hardtanh_backward(grad, x, 0.0, 1.0)


def clamp_unit(x: Tensor) -> Tensor:
    """``x.clamp(0, 1)``, with a faster backward pass; see :class:`_ClampUnit`."""
    return _ClampUnit.apply(x) if torch.is_grad_enabled() and x.requires_grad else x.clamp(0, 1)


class _ClampBetween(torch.autograd.Function):
    """``x.clamp(low, high)`` for tensor bounds that take no gradient, the gradient passed
    where ``low <= x <= high`` by a mask kept in the forward pass: one kernel backward, where
    ``minimum(maximum(...))``'s takes a dozen. Autograd halves the gradient at a bound; here
    it passes whole, so a change that starts on its bound (zero where a pixel is already its
    neighbours' extreme) gets the full gradient to move inward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, low: Tensor, high: Tensor) -> Tensor:
        out = x.clamp(low, high)
        ctx.save_for_backward(out == x)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None


class _ClampPartly(torch.autograd.Function):
    """``torch.lerp(x, x.clamp(low, high), weight)``, the gradient to ``x`` alone: whole
    where ``low <= x <= high`` (as :class:`_ClampBetween`), times ``1 - weight`` elsewhere.
    Five kernels with the backward pass, where the clamp, the blend and their backward
    passes take ten."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, low: Tensor, high: Tensor, weight: Tensor) -> Tensor:
        clamped = x.clamp(low, high)
        ctx.save_for_backward(weight.masked_fill(clamped == x, 0))  # the weight outside
        return torch.lerp(x, clamped, weight)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        (outside,) = ctx.saved_tensors
        return torch.addcmul(grad, grad, outside, value=-1), None, None, None


def clamp_between(x: Tensor, low: Tensor, high: Tensor, weight: Tensor | None = None) -> Tensor:
    """``x.clamp(low, high)`` with tensor bounds, the gradient to ``x`` alone; see
    :class:`_ClampBetween`. With ``weight`` (in [0, 1], broadcast against ``x``), only that
    share of the way from ``x`` to its clamp (:class:`_ClampPartly`)."""
    grad = torch.is_grad_enabled() and x.requires_grad
    if weight is not None:
        return (_ClampPartly.apply(x, low, high, weight) if grad
                else torch.lerp(x, x.clamp(low, high), weight))
    return _ClampBetween.apply(x, low, high) if grad else x.clamp(low, high)


def cached_constant(fn: Callable[..., T]) -> Callable[..., T]:
    """Memoise a builder of constant tensors (arguments: hashables such as sizes, device, dtype).

    The loop needs the same small constants (interpolation matrices, colour-space bases) at
    every step; building them is a handful of tiny ops each, and dispatch is a visible share
    of a CPU step at small batches. Built outside inference mode, so a tensor
    first made under ``torch.inference_mode`` can still be used where gradients are recorded.
    Callers must not modify the result in place.
    """

    @functools.lru_cache(maxsize=128)
    def build(*args: Any) -> T:
        with torch.inference_mode(False), torch.no_grad():
            return fn(*args)

    return functools.wraps(fn)(build)


def _bspline_weights(steps: int, size: int) -> Tensor:
    """(size, steps) cubic B-spline weights, grid points on the first and last samples (as
    ``align_corners``), borders clamped. Non-negative and summing to one in every row."""
    t = torch.arange(size, dtype=torch.float64) * ((steps - 1) / max(size - 1, 1))
    i = t.floor().clamp(max=steps - 1)
    f = t - i
    taps = torch.stack([(1 - f) ** 3, 3 * f**3 - 6 * f**2 + 4, -3 * f**3 + 3 * f**2 + 3 * f + 1,
                        f**3], 1) / 6
    w = torch.zeros(size, steps, dtype=torch.float64)
    for k in range(4):
        w.scatter_add_(1, (i.long() + k - 1).clamp(0, steps - 1)[:, None], taps[:, k : k + 1])
    return w


@cached_constant
def interpolation_weights(steps: int, size: int, device: torch.device, dtype: torch.dtype,
                          mode: str = "bicubic") -> Tensor:
    """(size, steps) matrix that upsamples a 1-D signal exactly as torch's ``mode`` does, or
    by a cubic B-spline (``mode="bspline"``: smooth like bicubic, but never outside the range
    of its grid values, since its weights are non-negative).

    torch's modes are read off its own kernel by upsampling the identity basis, so the values
    are the same as ``F.interpolate(..., mode=mode, align_corners=True)``.
    """
    if mode == "bspline":
        return _bspline_weights(steps, size).to(device, dtype)
    eye = torch.eye(steps, device=device, dtype=dtype).view(steps, 1, steps, 1)
    up = torch.nn.functional.interpolate(eye, size=(size, 1), mode=mode, align_corners=True)
    return up.view(steps, size).t().contiguous()


def cubic_weights(steps: int, size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(size, steps) matrix of torch's bicubic upsampling; see :func:`interpolation_weights`."""
    return interpolation_weights(steps, size, device, dtype, "bicubic")


# Output samples per block of a banded matrix product (see banded_matrix).
BLOCK = 32


def banded_matrix(w: Tensor) -> tuple[Tensor, Tensor] | None:
    """A (size, steps) matrix cut into blocks of BLOCK output samples, each with the L
    consecutive input samples it reads: (K, BLOCK, L) weights and (K * L,) input indices.
    ``None`` when a block would read more than half the input (small inputs, wide kernels),
    or off the CPU: a dense product is then cheaper (on a GPU it is one kernel, where the
    blocks' gather and its scatter-add backward are several launches, and launches set a
    step's time there)."""
    if w.device.type != "cpu":
        return None
    size, steps = w.shape
    k = -(-size // BLOCK)
    padded = w.new_zeros(k * BLOCK, steps)
    padded[:size] = w
    used = padded.view(k, BLOCK, steps).ne(0).any(1)  # (K, steps): what each block reads
    first = used.float().argmax(1)
    last = steps - 1 - used.flip(1).float().argmax(1)
    span = int((last - first).max()) + 1
    if 2 * span > steps:
        return None
    start = first.clamp(max=steps - span)
    index = (start[:, None] + torch.arange(span, device=w.device)).flatten()
    blocks = padded.view(k, BLOCK, steps).gather(2, index.view(k, 1, span).expand(-1, BLOCK, -1))
    return blocks.contiguous(), index


def matmul_rows(w: Tensor, banded: tuple[Tensor, Tensor] | None, x: Tensor) -> Tensor:
    """``w @ x`` for x (N, steps, C) -> (N, size, C), by the blocks of ``banded``
    (``banded_matrix(w)``) when there are any: a dense product would mostly multiply zeros,
    and its backward is a matrix product too (a convolution's is slow on the CPU)."""
    if banded is None:
        return torch.matmul(w, x)
    blocks, index = banded
    k, block, span = blocks.shape
    windows = x.index_select(1, index).view(x.shape[0], k, span, x.shape[2])
    return torch.matmul(blocks, windows).view(x.shape[0], k * block, x.shape[2])[:, :w.shape[0]]


@cached_constant
def _banded_weights(steps: int, size: int, device: torch.device, dtype: torch.dtype,
                    mode: str) -> tuple[Tensor, Tensor] | None:
    return banded_matrix(interpolation_weights(steps, size, device, dtype, mode))


def _interpolate_rows(x: Tensor, size: int, mode: str) -> Tensor:
    """(N, steps, C) -> (N, size, C): the interpolation along the middle axis."""
    steps = x.shape[1]
    return matmul_rows(interpolation_weights(steps, size, x.device, x.dtype, mode),
                       _banded_weights(steps, size, x.device, x.dtype, mode), x)


def upsample_field(grid: Tensor, height: int, width: int, mode: str = "bicubic") -> Tensor:
    """A dense field from a coarse per-image grid: (B, C, g, h) -> (B, C, H, W).

    Through the grid points (``align_corners``), so a constant grid stays exactly constant.
    Bicubic (the default) is C1-smooth but overshoots between points of opposite sign;
    ``"bilinear"`` and ``"bspline"`` never leave the range of the grid's values, so a bound on
    the grid is a bound on the field (the B-spline is C2-smooth: no kinks at the grid points,
    so no fine detail of its own). All are separable and applied as matrix products, one
    axis at a time: on the CPU the backward of ``F.interpolate(mode="bicubic")`` costs more
    than the rest of a colour step. Each output sample reads only four grid samples, so on a
    large grid the matrix is cut into blocks of consecutive outputs, each multiplying only
    the grid samples it reads (a dense product would mostly multiply zeros).
    """
    if grid.shape[-2:] == (height, width):
        return grid
    b, c, gh, gw = grid.shape
    g = grid.reshape(b * c, gh, gw)
    cols = _interpolate_rows(g.transpose(1, 2), width, mode)  # (N, W, gh)
    return _interpolate_rows(cols.transpose(1, 2), height, mode).view(b, c, height, width)


@cached_constant
def _gaussian_weights(size: int, sigma: float, border: str, device: torch.device,
                      dtype: torch.dtype) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """(size, size) matrix of kornia's 1-D Gaussian (kernel ``2 * ceil(3 sigma) + 1``) with
    ``border`` padding, read off by filtering the identity basis, and its banded form."""
    k = 2 * math.ceil(3 * sigma) + 1
    taps = KF.get_gaussian_kernel1d(k, sigma, dtype=torch.float64).view(1, 1, k)
    eye = torch.eye(size, dtype=torch.float64).unsqueeze(1)  # (size, 1, size): row i = e_i
    cols = F.conv1d(F.pad(eye, (k // 2, k // 2), mode=border), taps)[:, 0]  # row i: blur(e_i)
    w = cols.t().contiguous().to(device, dtype)
    return w, banded_matrix(w)


def _blur_border(gh: int, gw: int, sigma: float) -> str:
    """:func:`blur_field`'s padding: reflected, replicated on grids too small to reflect."""
    return "replicate" if min(gh, gw) <= math.ceil(3 * sigma) else "reflect"


def blur_field(grid: Tensor, sigma: float) -> Tensor:
    """``kornia.filters.gaussian_blur2d`` of a (B, C, h, w) grid with kernel
    ``2 * ceil(3 sigma) + 1``: reflected borders, replicated on grids too small to reflect.
    As banded matrix products, one axis at a time: on the CPU a single-channel convolution's
    backward is far slower than a product's."""
    b, c, gh, gw = grid.shape
    border = _blur_border(gh, gw, sigma)
    rows = _gaussian_weights(gh, sigma, border, grid.device, grid.dtype)
    cols = _gaussian_weights(gw, sigma, border, grid.device, grid.dtype)
    g = matmul_rows(*rows, grid.reshape(b * c, gh, gw))  # (N, gh, gw)
    return matmul_rows(*cols, g.transpose(1, 2)).transpose(1, 2).reshape(b, c, gh, gw)


def _upsample_axis(steps: int, size: int, sigma: float, border: str,
                   mode: str) -> tuple[Tensor, Tensor]:
    """One axis's upsampling ``U`` (size, steps) and ``U G``, with ``G`` its grid's blur: in
    float64 on the CPU, for the dense forms' matrices."""
    cpu, f64 = torch.device("cpu"), torch.float64
    up = interpolation_weights(steps, size, cpu, f64, mode)
    return up, up @ _gaussian_weights(steps, sigma, border, cpu, f64)[0]


@cached_constant
def _highpass_upsample_weights(steps: tuple[int, int], size: tuple[int, int], sigma: float,
                               border: str, mode: str, device: torch.device,
                               dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The two matrices of :func:`highpass_upsample_field`'s dense form. With ``U`` an axis's
    upsampling and ``G`` its blur, the field is ``Uh g Uw' - (Uh Gh) g (Uw Gw)'``: columns
    (gw, 2 W) hold ``[Uw' | (Uw Gw)']``, rows (H, 2 gh) interleave ``Uh`` and ``-(Uh Gh)``
    so that they read the column pass's (gh, 2, W) output as it lies."""
    (gh, gw), (height, width) = steps, size
    uw, uw_blur = _upsample_axis(gw, width, sigma, border, mode)
    uh, uh_blur = _upsample_axis(gh, height, sigma, border, mode)
    cols = torch.cat([uw.t(), uw_blur.t()], 1)
    rows = torch.stack([uh, -uh_blur], 2).reshape(height, 2 * gh)
    return rows.to(device, dtype), cols.to(device, dtype)


def highpass_upsample_field(grid: Tensor, sigma: float, height: int, width: int,
                            mode: str = "bicubic") -> Tensor:
    """``upsample_field(grid - blur_field(grid, sigma), height, width, mode)``: a grid's own
    high-pass, upsampled. (B, C, g, h) -> (B, C, H, W).

    On the CPU as written there (banded products). Elsewhere both linear maps are folded into
    two dense products, one per axis: four kernels a step with the backward pass, where the
    blur, the difference and the upsampling take twelve, and at the batch sizes a GPU is
    given the launches, not the arithmetic, set a step's time.
    """
    if grid.device.type == "cpu" or grid.shape[-2:] == (height, width):
        return upsample_field(grid - blur_field(grid, sigma), height, width, mode)
    return _highpass_upsample_dense(grid, sigma, height, width, mode)


def _highpass_upsample_dense(grid: Tensor, sigma: float, height: int, width: int,
                             mode: str) -> Tensor:
    b, c, gh, gw = grid.shape
    border = _blur_border(gh, gw, sigma)
    rows, cols = _highpass_upsample_weights((gh, gw), (height, width), sigma, border, mode,
                                            grid.device, grid.dtype)
    both = torch.matmul(grid.reshape(b * c, gh, gw), cols)  # (N, gh, 2 W) = (N, gh, 2, W)
    return torch.matmul(rows, both.view(b * c, 2 * gh, width)).view(b, c, height, width)


@cached_constant
def _highpass_and_plain_weights(steps: tuple[int, int], size: tuple[int, int], sigma: float,
                                border: str, mode: str, device: torch.device,
                                dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The two matrices of :func:`highpass_and_plain_fields`'s dense form (as in
    :func:`_highpass_upsample_weights`). Columns (2 gw, 3 W) send the first grid to
    ``[Uw' | (Uw Gw)' | 0]`` and the second to ``[0 | 0 | Uw']``; rows (2 H, 3 gh) read the
    column pass's (gh, 3, W) output as it lies: the first H rows the high-pass, the last H
    the plain upsampling."""
    (gh, gw), (height, width) = steps, size
    uw, uw_blur = _upsample_axis(gw, width, sigma, border, mode)
    uh, uh_blur = _upsample_axis(gh, height, sigma, border, mode)
    cols = torch.zeros(2 * gw, 3 * width, dtype=torch.float64)
    cols[:gw, :width], cols[:gw, width : 2 * width], cols[gw:, 2 * width :] = (
        uw.t(), uw_blur.t(), uw.t())
    zero = torch.zeros_like(uh)
    rows = torch.cat([torch.stack([uh, -uh_blur, zero], 2).reshape(height, 3 * gh),
                      torch.stack([zero, zero, uh], 2).reshape(height, 3 * gh)])
    return rows.to(device, dtype), cols.to(device, dtype)


def highpass_and_plain_fields(grid: Tensor, other: Tensor, sigma: float, height: int,
                              width: int, mode: str = "bicubic") -> Tensor:
    """``highpass_upsample_field(grid, ...)`` and ``upsample_field(other, ...)`` of two grids
    of one shape, stacked: (B, C, g, h) twice -> (B, C, 2, H, W).

    On the CPU the high-pass is taken on the grid and both grids share one upsampling's
    banded products. Elsewhere both linear maps of both grids are folded into two dense
    products: five kernels a step with the backward pass (the grids' concatenation
    included), where apart they take eight. Half of each product's entries are zeros; at the
    batch sizes a GPU is given the launches, not the arithmetic, set a step's time.
    """
    if grid.device.type == "cpu" or grid.shape[-2:] == (height, width):
        b, c, gh, gw = grid.shape
        both = torch.stack([grid - blur_field(grid, sigma), other], 2).view(b, 2 * c, gh, gw)
        return upsample_field(both, height, width, mode).view(b, c, 2, height, width)
    return _highpass_and_plain_dense(grid, other, sigma, height, width, mode)


def _highpass_and_plain_dense(grid: Tensor, other: Tensor, sigma: float, height: int,
                              width: int, mode: str) -> Tensor:
    b, c, gh, gw = grid.shape
    rows, cols = _highpass_and_plain_weights((gh, gw), (height, width), sigma,
                                             _blur_border(gh, gw, sigma), mode, grid.device,
                                             grid.dtype)
    both = torch.cat([grid, other], -1).reshape(b * c, gh, 2 * gw)
    three = torch.matmul(both, cols)  # (N, gh, 3 W) = (N, gh, 3, W)
    return torch.matmul(rows, three.view(b * c, 3 * gh, width)).view(b, c, 2, height, width)


def upsample_field_adjoint(field_grad: Tensor, grid_size: tuple[int, int]) -> Tensor:
    """The gradient of :func:`upsample_field` for its grid: (B, C, H, W) -> (B, C, g, h).

    For hand-written backward passes: the upsampling is linear, so its backward is the
    transposed pair of matrix products.
    """
    height, width = field_grad.shape[-2:]
    if tuple(grid_size) == (height, width):
        return field_grad
    rows = cubic_weights(grid_size[0], height, field_grad.device, field_grad.dtype)
    cols = cubic_weights(grid_size[1], width, field_grad.device, field_grad.dtype)
    return torch.matmul(torch.matmul(rows.t(), field_grad), cols)


def grid_tv(grid: Tensor) -> Tensor:
    """Squared total variation of a (B, C, g, g) grid, per image: (B,)."""
    dh = (grid[..., 1:, :] - grid[..., :-1, :]).pow(2).flatten(1).mean(1)
    dw = (grid[..., :, 1:] - grid[..., :, :-1]).pow(2).flatten(1).mean(1)
    return dh + dw
