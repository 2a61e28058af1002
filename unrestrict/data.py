"""Reading the contest layout: ``INPUT_DIR/dev.csv`` + ``INPUT_DIR/images/*.jpg``.

Everything is checked before any work starts: :func:`scan_input` parses dev.csv and fully
decodes every image (in worker threads), so a truncated JPEG at row 4,812 is listed with
every other problem before the first result is written. The streaming loader then yields
typed :class:`Item` records in dev.csv order.
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .errors import DataError
from .jpeg import DecodeError, decode_rgb, inspect_image

__all__ = [
    "CONTEST_SIZE",
    "Row",
    "InputSet",
    "Item",
    "read_dev_csv",
    "scan_input",
    "load_rgb",
    "ImageDataset",
    "collate_items",
    "make_loader",
    "group_by_size",
    "shard_rows",
    "log_notes",
]

CONTEST_SIZE = (500, 500)  # (width, height) of every contest image
MAX_LISTED = 20
T = TypeVar("T")


@dataclass(frozen=True)
class Row:
    image_id: str
    label: int
    line: int  # line number in dev.csv, for error messages


@dataclass
class InputSet:
    root: Path
    rows: list[Row]
    skipped: list[str] = field(default_factory=list)  # problems of rows left out (--skip-bad)
    notes: list[str] = field(default_factory=list)  # accepted oddities (size, mode)

    @property
    def images_dir(self) -> Path:
        return self.root / "images"


@dataclass
class Item:
    """One decoded row: the image (3, H, W) uint8, or the error that kept it from decoding."""

    row: Row
    image: Tensor | None = None
    error: str | None = None


def _listing(problems: list[str]) -> str:
    shown = "\n".join(f"  - {p}" for p in problems[:MAX_LISTED])
    more = len(problems) - MAX_LISTED
    return shown + (f"\n  ... and {more} more" if more > 0 else "")


def read_dev_csv(path: Path) -> tuple[list[Row], list[str]]:
    """Parse ``dev.csv``: rows that are valid, and a problem line for each row that is not.

    Raises:
        DataError: the file is missing or its header is not ``ImageId,TrueLabel``.
    """
    if not path.is_file():
        raise DataError(f"{path} not found: the input folder needs a dev.csv (ImageId,TrueLabel)")
    rows: list[Row] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            lines = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path} is not a readable CSV file ({e})") from e
    header = lines[0] if lines else None
    if header is None or [h.strip() for h in header[:2]] != ["ImageId", "TrueLabel"]:
        raise DataError(f"{path}: header must be 'ImageId,TrueLabel', got {header!r}")
    for line, rec in enumerate(lines[1:], start=2):
        if not rec or all(not c.strip() for c in rec):
            continue
        where = f"{path.name} line {line}"
        if len(rec) < 2:
            problems.append(f"{where}: expected 2 columns, got {rec!r}")
            continue
        image_id, raw = rec[0].strip(), rec[1].strip()
        if not image_id or "/" in image_id or "\\" in image_id or image_id.startswith("."):
            problems.append(f"{where}: invalid ImageId {image_id!r}")
            continue
        try:
            label = int(raw)
        except ValueError:
            problems.append(f"{where}: TrueLabel {raw!r} of {image_id} is not an integer")
            continue
        if not 0 <= label <= 999:
            problems.append(f"{where}: TrueLabel {label} of {image_id} is outside 0-999")
            continue
        if image_id in seen:
            problems.append(
                f"{where}: duplicate ImageId {image_id} (first on line {seen[image_id]})"
            )
            continue
        seen[image_id] = line
        rows.append(Row(image_id, label, line))
    return rows, problems


def _inspect(path: Path) -> tuple[str | None, list[str]]:
    """(problem, notes) of one image file, from a full decode."""
    if not path.is_file():
        return f"image {path} is missing", []
    try:
        fmt, mode, (w, h) = inspect_image(path)
    except DecodeError as e:
        return f"{path} cannot be decoded ({e})", []
    notes = [f"{path.name}: mode {mode} converted to RGB"] if mode != "RGB" else []
    if (w, h) != CONTEST_SIZE:
        notes.append(f"{path.name}: size {w}x{h}, not 500x500 (allowed; the output keeps "
                     "the input's size)")
    if fmt != "JPEG":
        notes.append(f"{path.name}: {fmt} data under a .jpg name (read as {fmt})")
    return None, notes


def scan_input(root: Path, skip_bad: bool = False, num_workers: int = 2) -> InputSet:
    """Validate an input folder, decoding every image in full (``num_workers`` threads: PIL
    releases the GIL while it decodes, and threads need no fork of a process running torch).

    Every problem is collected before anything is raised, so one error message lists them all,
    each with its dev.csv line. With ``skip_bad`` the bad rows are left out and listed in
    ``skipped`` instead.

    Raises:
        DataError: listing every problem, unless ``skip_bad``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"input folder {root} does not exist")
    rows, problems = read_dev_csv(root / "dev.csv")
    images = root / "images"
    if not images.is_dir():
        raise DataError(f"{images} not found: the input folder needs an images/ folder")
    paths = [images / r.image_id for r in rows]
    if num_workers > 0 and len(paths) > 1:
        with ThreadPoolExecutor(num_workers) as pool:
            found = list(pool.map(_inspect, paths))
    else:
        found = [_inspect(p) for p in paths]
    good: list[Row] = []
    notes: list[str] = []
    for row, (problem, row_notes) in zip(rows, found, strict=True):
        if problem is not None:
            problems.append(f"dev.csv line {row.line}: {problem}")
            continue
        notes += row_notes
        good.append(row)
    if problems and not skip_bad:
        raise DataError(
            f"{len(problems)} problem(s) in {root}, nothing was written (use --skip-bad to "
            "leave those rows out):\n" + _listing(problems)
        )
    return InputSet(root, good, problems, notes)


def load_rgb(path: Path) -> Tensor:
    """Fully decode one image to (3, H, W) uint8 RGB.

    Raises:
        DataError: the file cannot be decoded.
    """
    try:
        return decode_rgb(path)[0]
    except (DecodeError, OSError) as e:
        raise DataError(f"{path}: cannot decode image ({e})") from e


class ImageDataset(Dataset):
    """Rows as :class:`Item` records; a decoding error is returned, not raised, so the consumer
    decides between ``--skip-bad`` and stopping."""

    def __init__(self, images_dir: Path, rows: list[Row]) -> None:
        self.images_dir = Path(images_dir)
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Item:
        row = self.rows[i]
        try:
            return Item(row, load_rgb(self.images_dir / row.image_id))
        except DataError as e:
            return Item(row, error=str(e))


def collate_items(batch: list[T]) -> list[T]:
    """Keep a batch as a list of records (images may differ in size)."""
    return batch


def make_loader(dataset: Dataset, batch_size: int, num_workers: int = 2) -> DataLoader:
    """Stream ``dataset`` in order, decoding in worker processes; memory holds a few batches."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_items,
        prefetch_factor=2 if num_workers > 0 else None,
        persistent_workers=False,
    )


def group_by_size(items: Iterable[T], size: Callable[[T], Hashable]) -> list[list[T]]:
    """Items grouped by ``size(item)`` (first appearance first), so each group stacks into one
    batch: contest images are all 500x500, but other sizes are allowed."""
    groups: dict[Hashable, list[T]] = defaultdict(list)
    for it in items:
        groups[size(it)].append(it)
    return list(groups.values())


def shard_rows(rows: list[Row], rank: int, world: int) -> list[Row]:
    """Rows of one shard: every ``world``-th row starting at ``rank`` (disjoint, covering)."""
    if not 0 <= rank < world:
        raise DataError(f"shard {rank}/{world} is out of range (need 0 <= rank < world)")
    return rows[rank::world]


def log_notes(notes: list[str], logger: logging.Logger) -> None:
    for n in notes[:MAX_LISTED]:
        logger.warning(n)
    if len(notes) > MAX_LISTED:
        logger.warning("... and %d more such notes", len(notes) - MAX_LISTED)
