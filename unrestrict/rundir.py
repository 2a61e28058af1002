"""The run directory: everything ``generate`` keeps in ``OUTPUT_DIR/.unrestrict``.

* ``run.json``: what defines the work (the input folder and a digest of its dev.csv, the
  attack settings, the models by weight identity, the seed), written when a run starts. A
  rerun into the same folder must match it, or it is refused: two experiments never mix.
* ``log-rankRRR-of-WWW.jsonl``: one append-only log per rank. A record is appended only
  after its image file is written, so "logged and on disk" means finished. A torn last line
  (a kill during the append) is cut off when the log is next opened.
* ``params/<ImageId>.pt``: the per-image parameters that produced each result.

Every file is written atomically (:mod:`unrestrict.files`), so a crash leaves the old version
or the new one, never half of one.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DataError, OutputError, RunMismatchError
from .files import write_atomic

__all__ = ["META_DIR", "RunDir", "RunLog", "RunBinding", "check_output_dir"]

META_DIR = ".unrestrict"  # run metadata inside OUTPUT_DIR; never part of a submission
logger = logging.getLogger("unrestrict")


def check_output_dir(input_dir: Path, output_dir: Path) -> None:
    """Refuse an output folder that is, or is inside, the input folder: nothing in
    INPUT_DIR is ever written."""
    inp, out = Path(input_dir).resolve(), Path(output_dir).resolve()
    if out == inp or inp in out.parents:
        raise DataError(
            f"output folder {output_dir} is inside the input folder {input_dir}; "
            "choose a folder outside it (nothing in INPUT_DIR is ever written)"
        )


@dataclass(frozen=True)
class RunBinding:
    """What a run's outputs depend on. Two runs into one folder must agree on all of it."""

    input_dir: str  # resolved path, for the message; the digest is what binds
    dev_csv_sha256: str
    settings: Mapping[str, Any]  # the attack settings that change what is computed
    models: Mapping[str, str]  # model name -> weight identity, attack and validation

    def to_dict(self) -> dict[str, Any]:
        return {"input_dir": self.input_dir, "dev_csv_sha256": self.dev_csv_sha256,
                "settings": dict(self.settings), "models": dict(self.models)}


class RunLog:
    """The append-only JSONL log of one rank."""

    def __init__(self, meta_dir: Path, rank: int, world: int) -> None:
        self.path = Path(meta_dir) / f"log-rank{rank:03d}-of-{world:03d}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repaired = _repair_torn_line(self.path)

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        lines = "".join(json.dumps(dict(r), sort_keys=True) + "\n" for r in records)
        if not lines:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())


def _repair_torn_line(path: Path) -> str | None:
    """Cut a partial last line (no newline: the process died mid-append) off a log, so the
    next record starts on a line of its own. Returns what was cut, or None."""
    if not path.is_file() or path.stat().st_size == 0:
        return None
    with path.open("rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return None
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    torn = data[keep:].decode("utf-8", "replace")
    logger.warning("%s: dropped a torn last line left by an interrupted run: %.80s",
                   path.name, torn)
    return torn


def _read_records(meta: Path) -> Iterator[dict[str, Any]]:
    for path in sorted(meta.glob("log-rank*.jsonl")):
        with path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:  # a torn last line not yet repaired
                    continue


class RunDir:
    """``OUTPUT_DIR/.unrestrict`` of one generate run."""

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = Path(output_dir)
        self.meta = self.output_dir / META_DIR

    @property
    def binding_path(self) -> Path:
        return self.meta / "run.json"

    def exists(self) -> bool:
        return self.binding_path.is_file()

    def read(self) -> dict[str, Any] | None:
        """The recorded run (binding, full config, versions), or None."""
        return json.loads(self.binding_path.read_text()) if self.exists() else None

    def bind(self, binding: RunBinding, record: Mapping[str, Any]) -> None:
        """Create the run directory bound to ``binding``, or check that it already is.

        ``record``: more to store for the reader (the full config, versions, device), which
        may change between resumes.

        Raises:
            RunMismatchError: the folder holds a run with another input or other settings.
        """
        try:
            self.meta.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create {self.meta} ({e.strerror or e})") from e
        new = binding.to_dict()
        old = self.read()
        if old is not None:
            diff = sorted(k for k in new if old["binding"].get(k) != new[k])
            if diff:
                what = ", ".join(_describe(k, old["binding"].get(k), new[k]) for k in diff)
                raise RunMismatchError(
                    f"{self.output_dir} holds a run with {what}. Resume it with the same input "
                    f"and settings, or start fresh: use a new OUTPUT_DIR, or delete "
                    f"{self.output_dir} first"
                )
        doc = {"binding": new, **record}
        write_atomic(self.binding_path,
                     (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())

    def log(self, rank: int, world: int) -> RunLog:
        return RunLog(self.meta, rank, world)

    def records(self) -> Iterator[dict[str, Any]]:
        """Every record of every rank's log."""
        return _read_records(self.meta)

    def finished(self) -> dict[str, dict[str, Any]]:
        """Records of images that are done: logged as ``ok`` and present on disk."""
        return {
            rec["image_id"]: rec for rec in self.records()
            if rec.get("status") == "ok" and (self.output_dir / rec["image_id"]).is_file()
        }

    def save_params(self, image_id: str, params: Mapping[str, Any]) -> None:
        import torch

        (self.meta / "params").mkdir(exist_ok=True)
        buf = io.BytesIO()
        torch.save({k: v.contiguous() for k, v in params.items()}, buf)
        write_atomic(self.meta / "params" / f"{image_id}.pt", buf.getvalue())

    def models_used(self) -> dict[str, str] | None:
        """Model name -> weight identity of the attack and validation models, or None when
        no run is recorded here."""
        doc = self.read()
        return None if doc is None else dict(doc["binding"]["models"])


def _describe(key: str, old: Any, new: Any) -> str:
    if key == "input_dir":
        return f"another input folder ({old}, not {new})"
    if key == "dev_csv_sha256":
        return "another dev.csv (its contents differ)"
    if key == "models":
        return f"other models ({', '.join(sorted(old or {}))}, not {', '.join(sorted(new))})"
    changed = sorted(k for k in set(old or {}) | set(new) if (old or {}).get(k) != new.get(k))
    return f"other settings ({', '.join(changed)})"
