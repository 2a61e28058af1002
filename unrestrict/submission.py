"""Where results live: a folder of JPEGs (``generate``'s output) or a submission zip with
``images/<ImageId>`` entries. Both read the exact bytes that would be submitted."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from .data import META_DIR
from .errors import DataError

__all__ = ["ResultSource", "open_results", "ZIP_PREFIX"]

ZIP_PREFIX = "images/"


class ResultSource:
    """Read-only access to result files by ImageId. Safe to pickle into DataLoader workers:
    a zip is (re)opened lazily in each process."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.is_zip = self.path.is_file()
        if not self.path.exists():
            raise DataError(f"results {path} do not exist")
        if self.is_zip and not zipfile.is_zipfile(self.path):
            raise DataError(f"{path} is neither a folder nor a zip file")
        self._zip: zipfile.ZipFile | None = None
        self._pid = -1

    def _archive(self) -> zipfile.ZipFile:
        if self._zip is None or self._pid != os.getpid():
            self._zip = zipfile.ZipFile(self.path)
            self._pid = os.getpid()
        return self._zip

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_zip": None, "_pid": -1}

    def entries(self) -> list[str]:
        """Every entry, relative to the folder or zip root (folders: files only; the run
        metadata folder and hidden files are not results and are left out)."""
        if self.is_zip:
            return [n for n in self._archive().namelist() if not n.endswith("/")]
        rel = (p.relative_to(self.path) for p in self.path.rglob("*") if p.is_file())
        return sorted(str(r) for r in rel if not any(part.startswith(".") for part in r.parts))

    def names(self) -> set[str]:
        """ImageIds present, as they would be submitted."""
        if self.is_zip:
            return {n[len(ZIP_PREFIX):] for n in self.entries()
                    if n.startswith(ZIP_PREFIX) and "/" not in n[len(ZIP_PREFIX):]}
        return {n for n in self.entries() if "/" not in n}

    def read(self, image_id: str) -> bytes:
        if self.is_zip:
            return self._archive().read(ZIP_PREFIX + image_id)
        return (self.path / image_id).read_bytes()

    def run_dir(self) -> Path | None:
        """The folder holding a generate run's metadata, if these results have one."""
        return self.path if not self.is_zip and (self.path / META_DIR).is_dir() else None


def open_results(path: Path) -> ResultSource:
    return ResultSource(path)
