"""Backward-pass surrogates: change what the attack models' gradients say, never their outputs.

Gradients of one model overfit its own rectifiers and residual wiring; two transfer tricks
alter only the backward pass of the ReLU / ReLU6 activations, so logits, decisions and every
judged result stay exactly those of the real model:

* skip-gradient (SGM, Wu et al. 2020): each activation's gradient times sqrt(gamma). In an
  inverted-residual block (MobileNetV2, EfficientNet-Lite) both activations sit in the
  residual branch, so the branch passes gamma of its gradient and the skip all of it: the
  attack leans on the shallow features that architectures share. Outside residual branches
  it scales every path alike, which a sign step ignores.
* smooth rectifier (in the spirit of LinBP and BPA): the 0/1 step of a rectifier's
  derivative at zero replaced by a linear ramp from 0 at ``-width`` to 1 at ``+width``
  (pre-activation units; the derivative of a ReLU with a quadratic knee), so gradient also
  flows through units just below their threshold; ReLU6's cap at 6 stays a hard cut. Only
  exactly rounded operations (no exp): an image's gradient stays independent of where it
  sits in a batch, which vectorised transcendental functions do not promise.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["Surrogate", "surrogate_gradients"]


@dataclass(frozen=True)
class Surrogate:
    gamma: float = 1.0  # share of the gradient a residual branch keeps (1: exact)
    width: float = 0.0  # half-width of the rectifier derivative's ramp (0: exact)

    @property
    def exact(self) -> bool:
        return self.gamma == 1.0 and self.width == 0.0


class _Rectifier(torch.autograd.Function):
    """clamp(x, 0, upper) forward; the surrogate derivative backward, in as few elementwise
    passes as it takes (these are a MobileNet's largest tensors)."""

    @staticmethod
    def forward(ctx, x: Tensor, upper: float, scale: float, width: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.upper, ctx.scale, ctx.width = upper, scale, width
        return x.clamp(0, upper)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, None, None, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        aten = torch.ops.aten
        if ctx.width > 0:  # g * ramp(x), then ReLU6's cap as a hard cut
            ramp = x.mul(0.5 / ctx.width).add_(0.5).clamp_(0, 1)
            d = aten.hardtanh_backward(ramp.mul_(g), x, -math.inf, ctx.upper)
        else:
            d = aten.hardtanh_backward(g, x, 0.0, ctx.upper)
        return (d if ctx.scale == 1 else d.mul_(ctx.scale)), None, None, None


_UPPER = {nn.ReLU: math.inf, nn.ReLU6: 6.0}


@contextmanager
def surrogate_gradients(model: nn.Module, surrogate: Surrogate) -> Iterator[int]:
    """Within the block, ``model``'s ReLU and ReLU6 modules back-propagate ``surrogate``.

    Yields how many activations were changed. Forward values are unchanged; passes without
    gradients run the real modules. The modules' ``forward`` is swapped for the block's
    length (a hook would compute each activation twice).
    """
    if surrogate.exact:
        yield 0
        return
    scale = math.sqrt(surrogate.gamma)
    changed = []
    for m in model.modules():
        upper = _UPPER.get(type(m))
        if upper is None:
            continue

        def forward(x: Tensor, real=m.forward, upper: float = upper) -> Tensor:
            if not (torch.is_grad_enabled() and x.requires_grad):
                return real(x)
            return _Rectifier.apply(x, upper, scale, surrogate.width)

        m.forward = forward  # an instance attribute: shadows the class's method
        changed.append(m)
    try:
        yield len(changed)
    finally:
        for m in changed:
            del m.forward
