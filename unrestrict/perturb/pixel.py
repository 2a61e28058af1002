"""The classic L-infinity pixel perturbation: the DI-MI-FGSM / TI baseline of the contest.

Not natural (it is high-frequency noise, which LPIPS and human judges punish), but it is the
reference every natural family is measured against.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from .base import Family, ParamSpec, clamp_unit, register_family

__all__ = ["PixelFamily", "PixelConfig"]


@dataclass(frozen=True)
class PixelConfig:
    eps: float = 16 / 255


@register_family
class PixelFamily(Family):
    name = "pixel"
    order = 50
    resolution_free = False
    Config = PixelConfig
    config: PixelConfig

    def param_specs(self, height: int, width: int) -> dict[str, ParamSpec]:
        return {"delta": ParamSpec((3, height, width), self.config.eps)}

    def apply(
        self, x: Tensor, params: Mapping[str, Tensor],
        prepared: Mapping[str, Tensor] | None = None,
    ) -> Tensor:
        return clamp_unit(x + params["delta"])
