"""Folding eval-mode BatchNorm into the convolution before it.

A frozen classifier's BatchNorm is a per-channel affine map, so it can be absorbed into the
preceding convolution's weights and bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``). The
function is unchanged (exactly, up to float rounding), but every BN costs a full pass over its
activations forward and another backward, and an attack runs both at every step (what
folding saves is measured by benchmarks/step_overhead.py).

``torch.fx.experimental.optimization.fuse`` does the same for plain ``nn.BatchNorm2d``, but
matches exact types, so timm's ``BatchNormAct2d`` (BN plus activation in one module, used by
the offline EfficientNet-Lite models) would be left alone. Here the graph is traced with
convolutions and BN as leaves, and a BN is replaced by whatever it does after normalising.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch.fx as fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fold_batchnorm", "register_bn_remainder"]

log = logging.getLogger(__name__)

# BN module type -> the module that does what it does after normalising (exact type match:
# a subclass may do anything else in its forward).
_BN_REMAINDER: dict[type[nn.Module], Callable[[nn.Module], nn.Module]] = {
    nn.BatchNorm2d: lambda bn: nn.Identity(),
}


def register_bn_remainder(
    bn_type: type[nn.Module], remainder: Callable[[nn.Module], nn.Module]
) -> None:
    """Let :func:`fold_batchnorm` fold ``bn_type``, replacing it by ``remainder(bn)``."""
    _BN_REMAINDER[bn_type] = remainder


# Convolutions whose forward is linear in ``weight`` and ``bias`` as stored (exact type match:
# timm's StdConv2d, a Conv2d subclass, standardises its weight in forward, so a BN folded
# into it would be undone).
_FOLDABLE_CONVS: set[type[nn.Module]] = {nn.Conv2d}

try:  # timm's fused BN + activation (normalise, then drop, then act) and its "same" padding
    from timm.layers import BatchNormAct2d, Conv2dSame

    register_bn_remainder(BatchNormAct2d, lambda bn: nn.Sequential(bn.drop, bn.act))
    _FOLDABLE_CONVS.add(Conv2dSame)  # pads from the input's size, then a plain conv2d
except ImportError:  # pragma: no cover - timm is a dependency; older layouts just fold less
    pass


class _LeafTracer(fx.Tracer):
    # Convolution subclasses (timm's Conv2dSame pads from the input's size) and BN subclasses
    # stay opaque: the fold only needs to see which module feeds which.
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) or super().is_leaf_module(m, qualname)


def _set(root: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` with every eval-mode BN that directly follows a convolution folded into it.

    The model must be in eval mode; it is modified in place where the returned module shares
    its submodules. A BN is folded only when it takes the output of a plain convolution
    (``nn.Conv2d`` or timm's ``Conv2dSame``) that nothing else reads, and uses running
    statistics. A model that
    ``torch.fx`` cannot trace comes back unchanged (logged at INFO): folding is an
    optimisation, never a requirement.

    Returns:
        A ``torch.fx.GraphModule`` in eval mode, or ``model`` itself.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (BN uses batch statistics)")
    try:
        graph = _LeafTracer().trace(model)
    except Exception as e:  # tracing fails in many ways on data-dependent control flow
        log.info("BatchNorm not folded in %s: torch.fx cannot trace it (%s)",
                 type(model).__name__, e)
        return model
    gm = fx.GraphModule(model, graph)
    modules = dict(gm.named_modules())
    folded = 0
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        bn = modules[node.target]
        remainder = _BN_REMAINDER.get(type(bn))
        prev = node.args[0] if node.args else None
        if (
            remainder is None
            or not isinstance(prev, fx.Node)
            or prev.op != "call_module"
            or type(modules[prev.target]) not in _FOLDABLE_CONVS
            or len(prev.users) != 1
            or bn.running_mean is None
        ):
            continue
        _set(gm, prev.target, fuse_conv_bn_eval(modules[prev.target], bn))
        _set(gm, node.target, remainder(bn))
        folded += 1
    gm.recompile()
    log.debug("folded %d BatchNorm layers of %s", folded, type(model).__name__)
    return gm.eval()
