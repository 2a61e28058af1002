"""Settings that document themselves: a dataclass field with its help text and choices.

The command line builds one option per documented field of a config (``--step-size`` sets
``step_size``), so each setting is described once, beside its default.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

__all__ = ["setting"]


def setting(default: Any, help: str, choices: Any = None, *, flag: str | None = None) -> Any:
    """A dataclass field with ``help`` (a sentence), ``choices`` (names, or a mapping from
    name to a description) and an optional extra command-line ``flag``."""
    return field(default=default, metadata={"help": help, "choices": choices, "flag": flag})
