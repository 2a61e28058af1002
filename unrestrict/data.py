"""The contest layout on disk: ``INPUT_DIR/dev.csv`` + ``INPUT_DIR/images/*.jpg``.

Reading is validated up front (cheap header reads only) so that a long run does not die on
row 4,812; decoding errors that only a full decode can find are reported per image later.
Writes are atomic and the run log is append-only, so a killed run loses nothing finished.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .errors import DataError

__all__ = [
    "CONTEST_SIZE",
    "META_DIR",
    "Row",
    "InputSet",
    "read_dev_csv",
    "scan_input",
    "load_rgb",
    "ImageDataset",
    "make_loader",
    "write_atomic",
    "RunLog",
    "check_output_dir",
    "shard_rows",
]

CONTEST_SIZE = (500, 500)  # (width, height) of every contest image
META_DIR = ".unrestrict"  # run metadata inside OUTPUT_DIR; never part of a submission
MAX_LISTED = 20


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
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["ImageId", "TrueLabel"]:
            raise DataError(f"{path}: header must be 'ImageId,TrueLabel', got {header!r}")
        for line, rec in enumerate(reader, start=2):
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


def scan_input(root: Path, skip_bad: bool = False) -> InputSet:
    """Validate an input folder without decoding the images fully.

    Every problem is collected before anything is raised, so one error message lists them all.
    Unreadable rows are dropped with ``skip_bad``; otherwise a :class:`DataError` lists them.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"input folder {root} does not exist")
    rows, problems = read_dev_csv(root / "dev.csv")
    images = root / "images"
    if not images.is_dir():
        raise DataError(f"{images} not found: the input folder needs an images/ folder")
    good: list[Row] = []
    notes: list[str] = []
    for row in rows:
        path = images / row.image_id
        if not path.is_file():
            problems.append(f"dev.csv line {row.line}: image {path} is missing")
            continue
        try:
            with Image.open(path) as im:
                size, mode = im.size, im.mode
        except (UnidentifiedImageError, OSError) as e:
            problems.append(f"dev.csv line {row.line}: {path} is not a readable image ({e})")
            continue
        if size != CONTEST_SIZE:
            notes.append(f"{row.image_id}: size {size[0]}x{size[1]}, not 500x500 "
                         "(allowed; the output keeps the input's size)")
        if mode != "RGB":
            notes.append(f"{row.image_id}: mode {mode}, converted to RGB")
        good.append(row)
    if problems and not skip_bad:
        raise DataError(
            f"{len(problems)} problem(s) in {root} (use --skip-bad to leave those rows out):\n"
            + _listing(problems)
        )
    return InputSet(root, good, problems, notes)


def load_rgb(path: Path) -> tuple[Tensor, str | None]:
    """Fully decode an image to (3, H, W) uint8 RGB. Returns the tensor and a conversion note.

    Raises:
        DataError: the file cannot be decoded (truncated or corrupt JPEG, ...).
    """
    try:
        with Image.open(path) as im:
            im.load()
            note = None if im.mode == "RGB" else f"{path.name}: mode {im.mode} converted to RGB"
            arr = np.asarray(im.convert("RGB")).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot decode image ({e})") from e
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous(), note


class ImageDataset(Dataset):
    """Rows of an :class:`InputSet` as dicts; decoding errors are returned, not raised, so
    the consumer decides between ``--skip-bad`` and stopping."""

    def __init__(self, images_dir: Path, rows: list[Row]) -> None:
        self.images_dir = Path(images_dir)
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.rows[i]
        item: dict[str, Any] = {"row": row, "image": None, "error": None, "note": None}
        try:
            item["image"], item["note"] = load_rgb(self.images_dir / row.image_id)
        except DataError as e:
            item["error"] = str(e)
        return item


def _as_list(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return batch


def make_loader(
    images_dir: Path, rows: list[Row], batch_size: int, num_workers: int = 2
) -> DataLoader:
    """Stream rows in order, decoding in worker processes; memory holds a few batches only."""
    return DataLoader(
        ImageDataset(images_dir, rows),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_as_list,
        prefetch_factor=2 if num_workers > 0 else None,
        persistent_workers=False,
    )


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder, fsync, then rename over ``path``.

    A crash leaves either the old file or the new one, never half of one. Temporary names
    start with a dot so an interrupted run's leftovers are not mistaken for results.
    """
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    # os.open with 0o666 honours the umask, so results get the usual permissions
    # (mkstemp would make them private to the user).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunLog:
    """Append-only JSONL log of one rank. A record is appended only after its image file has
    been written, so "in the log and on disk" means finished."""

    def __init__(self, meta_dir: Path, rank: int, world: int) -> None:
        self.path = Path(meta_dir) / f"log-rank{rank:03d}-of-{world:03d}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        if not lines:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())

    @staticmethod
    def read_all(meta_dir: Path) -> Iterator[dict[str, Any]]:
        """Every record of every rank's log. A torn last line (killed mid-write) is ignored."""
        for path in sorted(Path(meta_dir).glob("log-rank*.jsonl")):
            with path.open(encoding="utf-8") as f:
                for line in f:
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        continue

    @classmethod
    def finished(cls, output_dir: Path) -> dict[str, dict[str, Any]]:
        """Records of images that are done: logged as ``ok`` and present on disk."""
        done = {}
        for rec in cls.read_all(Path(output_dir) / META_DIR):
            if rec.get("status") == "ok" and (Path(output_dir) / rec["image_id"]).is_file():
                done[rec["image_id"]] = rec
        return done


def check_output_dir(input_dir: Path, output_dir: Path) -> None:
    """Refuse an output folder that is, or is inside, the input folder: nothing in
    INPUT_DIR is ever written."""
    inp, out = Path(input_dir).resolve(), Path(output_dir).resolve()
    if out == inp or inp in out.parents:
        raise DataError(
            f"output folder {output_dir} is inside the input folder {input_dir}; "
            "choose a folder outside it (nothing in INPUT_DIR is ever written)"
        )


def shard_rows(rows: list[Row], rank: int, world: int) -> list[Row]:
    """Rows of one shard: every ``world``-th row starting at ``rank`` (disjoint, covering)."""
    if not 0 <= rank < world:
        raise ValueError(f"shard {rank}/{world} is out of range")
    return rows[rank::world]


def log_notes(notes: list[str], logger: logging.Logger) -> None:
    for n in notes[:MAX_LISTED]:
        logger.warning(n)
    if len(notes) > MAX_LISTED:
        logger.warning("... and %d more such notes", len(notes) - MAX_LISTED)
