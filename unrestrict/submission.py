"""Where results live: a folder of JPEGs (``generate``'s output) or a submission zip with
``images/<ImageId>`` entries. Both read the exact bytes that would be submitted.

Every way a folder or a zip can be damaged (not a zip, a truncated archive, an entry whose
bytes fail their CRC, a file that cannot be read) raises :class:`ResultsError` naming it.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from .errors import ResultsError
from .rundir import META_DIR

__all__ = ["ResultSource", "ZIP_PREFIX"]

ZIP_PREFIX = "images/"


class ResultSource:
    """Read-only access to result files by ImageId. Safe to pickle into DataLoader workers:
    a zip is (re)opened lazily in each process."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise ResultsError(f"results {path} do not exist")
        self.is_zip = self.path.is_file()
        if self.is_zip and not zipfile.is_zipfile(self.path):
            raise ResultsError(f"{path} is neither a folder nor a zip file (or the zip is "
                               "truncated: its central directory is missing)")
        self._zip: zipfile.ZipFile | None = None
        self._pid = -1

    def _archive(self) -> zipfile.ZipFile:
        if self._zip is None or self._pid != os.getpid():
            try:
                self._zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise ResultsError(f"{self.path} is a damaged zip file ({e})") from e
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
        """The bytes of one result.

        Raises:
            ResultsError: missing, unreadable, or (in a zip) damaged.
        """
        where = f"{self.path}{'!' + ZIP_PREFIX if self.is_zip else '/'}{image_id}"
        try:
            if self.is_zip:
                return self._archive().read(ZIP_PREFIX + image_id)
            return (self.path / image_id).read_bytes()
        except KeyError:
            raise ResultsError(f"{where} is missing") from None
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as e:
            # A CRC mismatch, a truncated entry, a bad compression stream, an I/O error.
            raise ResultsError(f"{where} cannot be read ({e})") from e

    def run_dir(self) -> Path | None:
        """The folder holding a generate run's metadata, if these results have one."""
        return self.path if not self.is_zip and (self.path / META_DIR).is_dir() else None
