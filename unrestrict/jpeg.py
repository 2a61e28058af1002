"""JPEG encoding and decoding in memory.

Success is always judged on the decoded bytes that will be written, never on float tensors:
an adversarial colour shift that JPEG rounds away is no success.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def to_uint8(x: Tensor) -> Tensor:
    """(3, H, W) floats in [0, 1] -> (3, H, W) uint8, rounded to nearest."""
    return (x.detach().float() * 255.0).round_().clamp_(0, 255).to(torch.uint8)


def encode_jpeg(image: Tensor, quality: int) -> bytes:
    """(3, H, W) uint8 or float in [0, 1] -> JPEG bytes (PIL, 4:2:0 chroma, baseline)."""
    if image.is_floating_point():
        image = to_uint8(image)
    arr = image.cpu().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_jpeg(data: bytes) -> Tensor:
    """JPEG bytes -> (3, H, W) uint8."""
    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im.convert("RGB")).copy()
    return torch.from_numpy(arr).permute(2, 0, 1)
