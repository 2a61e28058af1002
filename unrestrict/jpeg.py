"""Image bytes in and out: the one decoder and the JPEG encoder.

Success is always judged on the decoded bytes that will be written, never on float tensors:
an adversarial colour shift that JPEG rounds away is no success.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

__all__ = ["DecodeError", "decode_rgb", "inspect_image", "encode_jpeg", "to_uint8"]


class DecodeError(ValueError):
    """The bytes are not a complete image PIL can read (truncated, corrupt, not an image)."""


def _decoded(source: bytes | Path, rgb: bool) -> tuple[np.ndarray | None, str, str, tuple]:
    """Open and fully decode (a truncated JPEG fails at load, not at open): the RGB array
    when ``rgb``, the format, the original mode and the (width, height)."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            im.load()
            arr = np.asarray(im.convert("RGB")).copy() if rgb else None
            return arr, str(im.format), im.mode, im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DecodeError(str(e) or type(e).__name__) from e


def decode_rgb(source: bytes | Path) -> tuple[Tensor, str | None, str | None]:
    """Fully decode an image (bytes or a file) to (3, H, W) uint8 RGB.

    Returns:
        The tensor, the file format PIL saw (``"JPEG"``, ``"PNG"``, ...) and a note when the
        mode was converted (``"mode CMYK converted to RGB"``), else None.

    Raises:
        DecodeError: what PIL said, for a truncated or corrupt file or one that is no image.
    """
    arr, fmt, mode, _ = _decoded(source, rgb=True)
    note = None if mode == "RGB" else f"mode {mode} converted to RGB"
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous(), fmt, note


def inspect_image(source: bytes | Path) -> tuple[str, str, tuple[int, int]]:
    """Decode in full without converting: (format, mode, (width, height)).

    Raises:
        DecodeError: as :func:`decode_rgb`.
    """
    _, fmt, mode, size = _decoded(source, rgb=False)
    return fmt, mode, size


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
