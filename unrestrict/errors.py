"""Exceptions raised by the library.

The CLI turns every :class:`UnrestrictError` into a one-line ``click.ClickException``;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UnrestrictError(Exception):
    """Base class for errors a user can act on (bad input, missing weights, ...)."""


class WeightsUnavailableError(UnrestrictError):
    """A weight file is missing, corrupt, or would need a download that is not allowed."""


class DataError(UnrestrictError):
    """The input folder, its ``dev.csv`` or one of its images is unusable."""


class ValidationError(UnrestrictError):
    """A submission (folder or zip) failed validation; ``problems`` lists every finding."""

    def __init__(self, message: str, problems: list[str]):
        super().__init__(message)
        self.problems = problems
