"""Perturbation families and their composition.

``compose(["color", "style"])`` gives a :class:`Composite`, the only object the attack loop
talks to. Its parameters are one flat dict keyed ``"family.param"``; every tensor is
``(B, *shape)`` with zero as the identity and a box bound scaled by a per-image strength.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..contract import check_images
from ..errors import ConfigError
from . import color, geometry, pixel, style, texture  # noqa: F401  (registers the families)
from .base import FAMILIES, FAMILY_ORDER, Family, ParamSpec, create_family, register_family

__all__ = [
    "FAMILIES",
    "FAMILY_ORDER",
    "NATURAL_FAMILIES",
    "DEFAULT_FAMILIES",
    "Composite",
    "Family",
    "ParamSpec",
    "compose",
    "parse_family_options",
    "create_family",
    "register_family",
]

NATURAL_FAMILIES: tuple[str, ...] = ("texture", "geometry", "color", "style")
# The default attack: texture hidden in the original's own detail, and a mild global grade.
# Style (spatial colour fields, dodge and burn) and geometry (LPIPS charges every shifted
# pixel) are opt-in.
DEFAULT_FAMILIES: tuple[str, ...] = ("texture", "color")

Params = dict[str, Tensor]


class Composite:
    """Families applied in :data:`FAMILY_ORDER`, with one flat parameter dict."""

    def __init__(self, families: Sequence[Family]) -> None:
        names = [f.name for f in families]
        if len(set(names)) != len(names):
            raise ConfigError(f"family listed twice: {names}")
        if not families:
            raise ConfigError("at least one perturbation family is needed")
        self.families = sorted(families, key=lambda f: f.order)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.families]

    @property
    def resolution_free(self) -> bool:
        return all(f.resolution_free for f in self.families)

    def specs(self, height: int, width: int) -> dict[str, ParamSpec]:
        return {
            f"{f.name}.{k}": s
            for f in self.families
            for k, s in f.param_specs(height, width).items()
        }

    def param_count(self, height: int, width: int) -> int:
        """Numbers per image in the parameters for images of this size."""
        return sum(math.prod(s.shape) for s in self.specs(height, width).values())

    def init_params(self, x: Tensor) -> Params:
        """Identity parameters for the batch ``x``, on its device, in float32.

        Parameters stay float32 even under mixed precision: sign steps of 1e-3 of a bound would
        vanish in bf16.
        """
        check_images(x)
        b, _, h, w = x.shape
        return {
            k: torch.zeros((b, *s.shape), device=x.device, dtype=torch.float32)
            for k, s in self.specs(h, w).items()
        }

    def _split(self, params: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
        out: dict[str, dict[str, Tensor]] = {f.name: {} for f in self.families}
        for key, value in params.items():
            fam, _, name = key.partition(".")
            out[fam][name] = value
        return out

    def _prepared_from_original(self) -> list[bool]:
        """Per family: are its constants computed once, from the composite's input?

        The first family's always are (its input is that image). A later one's are when they
        describe the original (``prepare_on_original``) and nothing before it moves pixels.
        """
        out, moved = [], False
        for i, f in enumerate(self.families):
            out.append(i == 0 or (f.prepare_on_original and not moved))
            moved = moved or f.moves_pixels
        return out

    @torch.no_grad()
    def prepare(self, x: Tensor) -> Params:
        """Input-only constants for the batch ``x``, keyed ``"family.name"``: the first
        family's, and those of later families that describe the original image.

        Index the result like the parameters when working on a subset of the batch.
        """
        check_images(x)
        return {
            f"{f.name}.{k}": v
            for f, once in zip(self.families, self._prepared_from_original(), strict=True)
            if once
            for k, v in f.prepare(x).items()
        }

    def _pointwise_tail(self) -> int:
        """Index of the first family of the run of pointwise ones that ends the chain."""
        i = len(self.families)
        while i > 0 and self.families[i - 1].pointwise:
            i -= 1
        return i

    def apply(
        self, x: Tensor, params: Mapping[str, Tensor], prepared: Mapping[str, Tensor] | None = None,
        resize: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor:
        """Shape: (B, 3, H, W) in [0, 1] -> same; per-pixel parameters must match H, W.

        ``prepared``: ``self.prepare(x)`` for this ``x``, to skip recomputing it; the result
        is the same either way. ``resize``: applied to the result, but before the pointwise
        families that end the chain (a global grade), so that they run on the resized
        pixels: the same up to the resize's averaging, and cheaper when it shrinks.
        """
        check_images(x)
        if prepared is None:
            prepared = self.prepare(x)
        split = self._split(params)
        mine = self._split(prepared)
        tail = self._pointwise_tail()
        for i, (f, once) in enumerate(zip(self.families, self._prepared_from_original(),
                                          strict=True)):
            if resize is not None and i == tail:
                x, resize = resize(x), None
            x = f.apply(x, {k: v.to(x.dtype) for k, v in split[f.name].items()},
                        mine[f.name] if once else None)
        return x if resize is None else resize(x)

    def penalty(self, params: Mapping[str, Tensor]) -> Tensor:
        split = self._split(params)
        return torch.stack([f.penalty(split[f.name]) for f in self.families]).sum(0)

    def localize(self, params: Mapping[str, Tensor], keep: Tensor) -> Params:
        """``params`` with each family's change shrunk where ``keep`` (B, 1, h, w), a map
        over the image in [0, 1], is below 1 (:meth:`Family.localize`)."""
        split = self._split(params)
        return {f"{f.name}.{k}": v for f in self.families
                for k, v in f.localize(split[f.name], keep).items()}

    def _family(self, key: str) -> Family:
        fam = key.partition(".")[0]
        return next(f for f in self.families if f.name == fam)

    def _bound(self, key: str, p: Tensor) -> float:
        h, w = (p.shape[-2], p.shape[-1]) if p.ndim >= 3 else (1, 1)
        return self._family(key).param_specs(h, w)[key.partition(".")[2]].bound

    def limits(self, params: Mapping[str, Tensor], level: Tensor) -> dict[str, Tensor]:
        """Per-image box half-widths at budget ``level`` (B,): ``bound * level ** power``,
        shaped to broadcast against each parameter."""
        out = {}
        for k, p in params.items():
            frac = level.clamp(0, 1) ** self._family(k).budget_power
            out[k] = (frac * self._bound(k, p)).view(-1, *([1] * (p.ndim - 1)))
        return out

    @torch.no_grad()
    def project_(self, params: Params, level: Tensor) -> None:
        """Clamp every parameter in place into its box at budget ``level`` (B,)."""
        for k, lim in self.limits(params, level).items():
            p = params[k]
            p.copy_(torch.maximum(torch.minimum(p, lim), -lim))

    @torch.no_grad()
    def relative_size(self, params: Mapping[str, Tensor]) -> Tensor:
        """(B,) the largest ``|p| / bound`` over all parameters: the strength actually used."""
        sizes = [
            (p.abs() / self._bound(k, p)).reshape(p.shape[0], -1).amax(1)
            for k, p in params.items()
        ]
        return torch.stack(sizes).amax(0)


def parse_family_options(items: Sequence[str]) -> dict[str, dict[str, str]]:
    """``["texture.fine=2.4", ...]`` -> ``{"texture": {"fine": "2.4"}}`` (typed later, by
    :func:`create_family`).

    Raises:
        ConfigError: an item not of the form FAMILY.OPTION=VALUE.
    """
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        fam, dot, name = key.partition(".")
        if not (eq and dot and fam.strip() and name.strip()):
            raise ConfigError(f"--set expects FAMILY.OPTION=VALUE, got {item!r}")
        out.setdefault(fam.strip(), {})[name.strip()] = value.strip()
    return out


def compose(
    names: Sequence[str], options: Mapping[str, Mapping[str, Any]] | None = None
) -> Composite:
    """Build the families named, each with optional ``Config`` overrides."""
    options = options or {}
    stray = set(options) - set(names)
    if stray:
        raise ConfigError(f"options given for families not selected: {sorted(stray)}")
    return Composite([create_family(n, options.get(n)) for n in names])
