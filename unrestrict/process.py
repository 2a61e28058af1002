"""Process-wide settings that only the owner of a process (the CLI, a benchmark) makes."""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from typing import Any

__all__ = ["keep_freed_memory", "setup_logging", "pick_device"]


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory instead of unmapping it after every step.

    A CPU attack step frees and reallocates hundreds of MB of activations; unmapped, they are
    page-faulted back in on the next step. The process owner (the CLI, a benchmark) calls
    this once; library code never does. Off Linux/glibc, or when the user set MALLOC_*
    variables, it does nothing and returns False.
    """
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def setup_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("unrestrict: %(levelname)s: %(message)s"))
    log = logging.getLogger("unrestrict")
    log.handlers[:] = [handler]
    log.setLevel(logging.ERROR if quiet else logging.INFO)
    log.propagate = False


def pick_device(name: str) -> Any:
    """The one place that decides "CUDA if available"; under torchrun, LOCAL_RANK's GPU."""
    import torch

    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")
