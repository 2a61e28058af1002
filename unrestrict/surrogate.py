"""Backward-pass surrogates: change what the attack models' gradients say, never their outputs.

Gradients of one model overfit its own rectifiers and residual wiring; two transfer tricks
alter only the backward pass of the ReLU / ReLU6 activations, so logits, decisions and every
judged result stay exactly those of the real model:

* skip-gradient (SGM, Wu et al. 2020): each activation's gradient times sqrt(gamma). In an
  inverted-residual block (MobileNetV2, EfficientNet-Lite) both activations sit in the
  residual branch, so the branch passes gamma of its gradient and the skip all of it: the
  attack leans on the shallow features that architectures share. Outside residual branches
  it scales every path alike, which a sign step ignores.
* smooth rectifier (in the spirit of LinBP and BPA): the 0/1 derivative of a rectifier
  replaced by that of a softplus of temperature ``tau`` (pre-activation units), so gradient
  also flows through units just below their threshold.
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
    tau: float = 0.0  # softplus temperature of the rectifier derivative (0: exact)

    @property
    def exact(self) -> bool:
        return self.gamma == 1.0 and self.tau == 0.0


class _Rectifier(torch.autograd.Function):
    """clamp(x, 0, upper) forward; the surrogate derivative backward."""

    @staticmethod
    def forward(ctx, x: Tensor, upper: float, scale: float, tau: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.upper, ctx.scale, ctx.tau = upper, scale, tau
        return x.clamp(0, upper)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, None, None, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        if ctx.tau > 0:
            d = torch.sigmoid(x / ctx.tau)
            if math.isfinite(ctx.upper):
                d = d - torch.sigmoid((x - ctx.upper) / ctx.tau)
        else:
            d = ((x > 0) & (x < ctx.upper)).to(g.dtype)
        return g * d * ctx.scale, None, None, None


_UPPER = {nn.ReLU: math.inf, nn.ReLU6: 6.0}


@contextmanager
def surrogate_gradients(model: nn.Module, surrogate: Surrogate) -> Iterator[int]:
    """Within the block, ``model``'s ReLU and ReLU6 modules back-propagate ``surrogate``.

    Yields how many activations were changed. Forward values are unchanged; passes without
    gradients run the real modules untouched. In-place activations run out of place while
    the block lasts (the surrogate needs their input).
    """
    if surrogate.exact:
        yield 0
        return
    scale = math.sqrt(surrogate.gamma)
    handles, inplace = [], []
    for m in model.modules():
        upper = _UPPER.get(type(m))
        if upper is None:
            continue

        def hook(module: nn.Module, args: tuple[Tensor, ...], out: Tensor,
                 upper: float = upper) -> Tensor | None:
            if not torch.is_grad_enabled():
                return None
            return _Rectifier.apply(args[0], upper, scale, surrogate.tau)

        handles.append(m.register_forward_hook(hook))
        inplace.append((m, m.inplace))
        m.inplace = False
    try:
        yield len(handles)
    finally:
        for h in handles:
            h.remove()
        for m, flag in inplace:
            m.inplace = flag
