"""``unrestrict pack``: build and validate the submission ``images.zip``.

The contest expects ``images/<ImageId>`` for every row of dev.csv: JPEG files of the same
size as the originals, RGB. Everything is checked before anything is written, every problem
is listed at once, and the zip is written atomically and deterministically (sorted entries,
fixed timestamps), so the same results always give the same SHA-256.
"""

from __future__ import annotations

import difflib
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .data import scan_input
from .errors import ResultsError, ValidationError
from .files import atomic_path, file_sha256
from .jpeg import DecodeError, decode_rgb
from .submission import ZIP_PREFIX, ResultSource

__all__ = ["PackSummary", "validate", "pack", "check_zip"]

_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip can hold; keeps archives reproducible


def natural_key(name: str) -> list[int | str]:
    """Sort key that puts 2.jpg before 10.jpg."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


@dataclass(frozen=True)
class PackSummary:
    path: Path
    count: int
    total_bytes: int  # size of the zip
    payload_bytes: int  # sum of the JPEG sizes
    sha256: str


def validate(results: Path, input_dir: Path) -> list[str]:
    """Every problem that would make ``results`` (a folder or a zip) an invalid submission."""
    inputs = scan_input(Path(input_dir))
    src = ResultSource(results)
    expected = {r.image_id for r in inputs.rows}
    problems: list[str] = []
    entries = src.entries()
    if src.is_zip:
        stray = [e for e in entries if not e.startswith(ZIP_PREFIX)
                 or "/" in e[len(ZIP_PREFIX):]]
        problems += [f"zip entry {e!r} is not of the form images/<ImageId>" for e in stray]
        entries = [e for e in entries if e not in stray]
        present = [e[len(ZIP_PREFIX):] for e in entries]
    else:
        nested = [e for e in entries if "/" in e]
        problems += [f"{e}: results must sit directly in the folder" for e in nested]
        present = [e for e in entries if "/" not in e]
    extra = sorted(set(present) - expected, key=natural_key)
    for name in extra:
        close = difflib.get_close_matches(name, expected, n=1, cutoff=0.8)
        if close or name.lower() in {e.lower() for e in expected}:
            match = close[0] if close else next(e for e in expected if e.lower() == name.lower())
            problems.append(f"{name}: name does not match dev.csv (expected {match!r})")
        else:
            problems.append(f"{name}: extra file, not in dev.csv")
    for image_id in sorted(expected - set(present), key=natural_key):
        problems.append(f"{image_id}: missing")
    for row in inputs.rows:
        if row.image_id not in present:
            continue
        try:
            data = src.read(row.image_id)
        except ResultsError as e:  # a damaged zip entry, an unreadable file
            problems.append(str(e))
            continue
        try:
            image, fmt, note = decode_rgb(data)
        except DecodeError as e:
            problems.append(f"{row.image_id}: not a decodable JPEG ({e})")
            continue
        if fmt != "JPEG":
            problems.append(f"{row.image_id}: format {fmt}, not JPEG")
        h, w = image.shape[-2:]
        with Image.open(inputs.images_dir / row.image_id) as orig:
            if (w, h) != orig.size:
                problems.append(f"{row.image_id}: size {w}x{h}, "
                                f"original is {orig.size[0]}x{orig.size[1]}")
        if note is not None:
            problems.append(f"{row.image_id}: {note.replace(' converted to RGB', '')}, not RGB")
    return problems


def _summary(path: Path) -> PackSummary:
    with zipfile.ZipFile(path) as z:
        infos = [i for i in z.infolist() if not i.is_dir()]
        payload = sum(i.file_size for i in infos)
    return PackSummary(path, len(infos), path.stat().st_size, payload, file_sha256(path))


def pack(results_dir: Path, input_dir: Path, output: Path) -> PackSummary:
    """Validate ``results_dir`` against ``input_dir`` and write the submission zip.

    Raises:
        ValidationError: with every problem found; nothing is written then.
    """
    results_dir, output = Path(results_dir), Path(output)
    if not results_dir.is_dir():
        raise ResultsError(f"{results_dir} is not a folder of results")
    problems = validate(results_dir, input_dir)
    if problems:
        raise ValidationError(f"{results_dir} is not a valid submission "
                              f"({len(problems)} problem(s)); nothing written:", problems)
    inputs = scan_input(Path(input_dir))
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as tmp:
        # JPEG does not deflate: storing is as small and much faster.
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
            dir_info = zipfile.ZipInfo(ZIP_PREFIX, date_time=_EPOCH)
            dir_info.external_attr = (0o40755 << 16) | 0x10
            z.writestr(dir_info, b"")
            for image_id in sorted((r.image_id for r in inputs.rows), key=natural_key):
                info = zipfile.ZipInfo(ZIP_PREFIX + image_id, date_time=_EPOCH)
                info.external_attr = 0o100644 << 16
                z.writestr(info, (results_dir / image_id).read_bytes())
    return _summary(output)


def check_zip(path: Path, input_dir: Path) -> PackSummary:
    """Validate an existing submission zip.

    Raises:
        ValidationError: with every problem found.
    """
    path = Path(path)
    problems = validate(path, input_dir)  # a damaged or truncated zip raises ResultsError
    if problems:
        raise ValidationError(f"{path} is not a valid submission ({len(problems)} problem(s)):",
                              problems)
    return _summary(path)
