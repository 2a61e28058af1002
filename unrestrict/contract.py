"""The library's one image contract: (B, 3, H, W) floating-point tensors in [0, 1]."""

from __future__ import annotations

from torch import Tensor

__all__ = ["check_images"]


def check_images(x: Tensor, name: str = "input") -> None:
    """Check a batch at a boundary: (B, 3, H, W) floats.

    Raises:
        TypeError: not a tensor.
        ValueError: with the shape or dtype that was received.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor. Got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{name} must have a shape of (B, 3, H, W). Got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating point tensor in [0, 1]. Got {x.dtype}")
