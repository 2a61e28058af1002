"""A loss on the attack models' intermediate features, for transfer (FIA: Wang et al., ICCV 2021,
"Feature Importance-aware Transferable Adversarial Attacks").

Logits overfit the attack model; mid-level features are closer to what other architectures
compute. Per image, the *importance* of each unit of one mid-depth activation map is the
gradient of the true class's logit with respect to it, averaged over copies of the original
with random pixels dropped (the average keeps what the class leans on, not one view's
accidents) and scaled to unit L2 norm. The loss to maximise is minus the importance-weighted
sum of the current result's features: it suppresses what supports the true class.

The tapped map is the output of the rectifier (ReLU / ReLU6 module) at a given fraction of the
model's depth, counted in the order a forward pass runs them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .models import Classifier, Ensemble

__all__ = ["tap_module", "FeatureTap", "feature_importance", "feature_loss"]

_TAPPABLE = (nn.ReLU, nn.ReLU6)


def tap_module(clf: Classifier, depth: float) -> nn.Module:
    """The rectifier at ``depth`` (0: first, 1: last) of ``clf``'s, in forward order."""
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m) if m not in order else None)
             for m in clf.modules() if isinstance(m, _TAPPABLE)]
    try:
        size = clf.preprocess.input_size
        p = next(clf.parameters())
        with torch.no_grad():
            clf(torch.zeros(1, 3, size, size, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
    if not order:
        raise ValueError(f"{clf.name or 'model'} has no ReLU/ReLU6 module to tap")
    return order[min(round(depth * (len(order) - 1)), len(order) - 1)]


class FeatureTap:
    """Records the output of one module per ensemble member while active."""

    def __init__(self, ensemble: Ensemble, depth: float) -> None:
        self.modules = [tap_module(m, depth) for m in ensemble.members]
        self.outputs: list[Tensor] = []

    @contextmanager
    def recording(self) -> Iterator[list[Tensor]]:
        self.outputs = []
        hooks = [m.register_forward_hook(lambda m, i, o: self.outputs.append(o))
                 for m in self.modules]
        try:
            yield self.outputs
        finally:
            for h in hooks:
                h.remove()


def feature_importance(
    ensemble: Ensemble, tap: FeatureTap, x: Tensor, y: Tensor, copies: int, drop: float,
    generators: Sequence[torch.Generator],
) -> list[Tensor]:
    """Per member, (B, C, h, w) importance of the tapped map for the true class, unit L2 norm
    per image. ``x`` at the models' input size; one pixel-drop mask per copy and image, drawn
    from that image's generator."""
    b, _, h, w = x.shape
    total: list[Tensor] | None = None
    for _ in range(copies):
        keep = torch.stack([(torch.rand(1, h, w, generator=g) >= drop) for g in generators])
        xm = (x * keep.to(x.device, x.dtype)).requires_grad_(True)  # builds the graph
        with torch.enable_grad(), tap.recording() as feats:
            true = torch.stack([m(xm) for m in ensemble.members]).gather(
                2, y.view(1, -1, 1).expand(len(ensemble.members), -1, 1)).sum()
            grads = torch.autograd.grad(true, feats)
        total = list(grads) if total is None else [t + g for t, g in zip(total, grads,
                                                                          strict=True)]
    assert total is not None
    return [t / t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1) for t in total]


def feature_loss(features: Sequence[Tensor], importance: Sequence[Tensor]) -> Tensor:
    """Minus the importance-weighted sum of each member's features, averaged over members,
    (B',) for features of B' = k * B rows (k augmented copies of a B-image batch)."""
    out = []
    for f, imp in zip(features, importance, strict=True):
        k = f.shape[0] // imp.shape[0]
        out.append(-(f.float() * imp.repeat(k, 1, 1, 1)).flatten(1).sum(1))
    return torch.stack(out).mean(0)
