"""Small helpers shared across the library: input checks and seeding."""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import sys
from pathlib import Path

import torch
from torch import Tensor


def check_images(x: Tensor, name: str = "input") -> None:
    """Check the library's single image contract: (B, 3, H, W) floats.

    Raises:
        ValueError: with the shape that was received.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor. Got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{name} must have a shape of (B, 3, H, W). Got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating point tensor in [0, 1]. Got {x.dtype}")


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def derive_seed(seed: int, *parts: str) -> int:
    """A 63-bit seed from a base seed and strings (e.g. the image names of a batch).

    Randomness keyed on the images rather than on the batch index keeps a result the same
    whichever shard or resumed run processes the images.
    """
    h = hashlib.sha256(str(seed).encode())
    for p in parts:
        h.update(b"\0" + p.encode())
    return int.from_bytes(h.digest()[:8], "little") >> 1


def generator(seed: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def natural_key(name: str) -> list[int | str]:
    """Sort key that puts 2.jpg before 10.jpg."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the OS.

    A CPU attack step frees and reallocates hundreds of MB of activations. With glibc's
    defaults those blocks are unmapped after every step and page-faulted back in on the
    next one: on a 2-core machine that cost up to 240k page faults and 10-60% of a batch-16
    step, and made step times erratic; with freed memory kept, a step ran at a steady speed
    with no page faults (benchmarks/RESULTS.md). The price is that the process keeps its peak
    heap, which a long run reaches in its first batch anyway.

    The process owner (the CLI, a benchmark) calls this once; library code never does. Does
    nothing and returns False off Linux/glibc, or when the user set MALLOC_* variables.
    """
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(
            libc.mallopt(m_trim_threshold, 2**31 - 1)
        )
    except (OSError, AttributeError):
        return False
