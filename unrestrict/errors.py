"""Exceptions raised by the library for mistakes a user can act on, and their exit codes.

The CLI turns every :class:`UnrestrictError` into a one-line message and the class's
``exit_code`` (the codes and their meaning: :data:`EXIT_CODES`); anything else is a bug and
keeps its traceback (exit status 1).
"""

from __future__ import annotations

__all__ = [
    "UnrestrictError",
    "ConfigError",
    "DataError",
    "ResultsError",
    "ValidationError",
    "WeightsUnavailableError",
    "RunMismatchError",
    "OutputError",
    "EXIT_CODES",
]


class UnrestrictError(Exception):
    """Base class for errors a user can act on (bad input, missing weights, ...)."""

    exit_code = 1


class ConfigError(UnrestrictError, ValueError):
    """A setting is invalid (out of range, unknown name). Also a ``ValueError``."""

    exit_code = 2


class DataError(UnrestrictError):
    """The input folder, its ``dev.csv`` or one of its images is unusable."""

    exit_code = 3


class ResultsError(UnrestrictError):
    """A results folder or zip is damaged or incomplete."""

    exit_code = 4


class ValidationError(ResultsError):
    """A submission (folder or zip) failed validation; ``problems`` lists every finding."""

    def __init__(self, message: str, problems: list[str]):
        super().__init__(message)
        self.problems = problems

    def __str__(self) -> str:
        return super().__str__() + "".join(f"\n  - {p}" for p in self.problems)


class WeightsUnavailableError(UnrestrictError):
    """A weight file is missing, corrupt, or would need a download that is not allowed."""

    exit_code = 5


class RunMismatchError(UnrestrictError):
    """OUTPUT_DIR holds a run with another input or other settings."""

    exit_code = 6


class OutputError(UnrestrictError):
    """OUTPUT_DIR (or another output path) cannot be written."""

    exit_code = 7


# Exit statuses of the command line and what each means (README: Exit codes explains them).
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "a bug (the traceback is shown)",
    2: "a usage error",
    3: "bad input",
    4: "bad results",
    5: "weights missing or corrupt",
    6: "OUTPUT_DIR holds another run",
    7: "an output cannot be written",
    130: "interrupted",
}
