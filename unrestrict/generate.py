"""``unrestrict generate``: attack every row of an input folder and write the results.

Streaming (a few batches in memory), resumable (atomic writes + an append-only log per rank)
and shardable (``torchrun`` sets RANK/WORLD_SIZE; each rank takes rows ``rank::world``).
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import __version__
from .attack import AmpMode, Attack, AttackConfig, ImageResult
from .data import (
    META_DIR,
    InputSet,
    RunLog,
    check_output_dir,
    log_notes,
    make_loader,
    scan_input,
    shard_rows,
    write_atomic,
)
from .errors import DataError
from .models import create_ensemble
from .utils import derive_seed

__all__ = [
    "DEFAULT_ATTACK_MODELS",
    "DEFAULT_VAL_MODELS",
    "GenerateConfig",
    "GenerateSummary",
    "generate",
    "shard_from_env",
]

logger = logging.getLogger("unrestrict")

# The offline models split three ways: attack, validate (per-image budget), and evaluate
# (`unrestrict score` defaults to the models that generation did not use).
DEFAULT_ATTACK_MODELS: tuple[str, ...] = ("efficientnet_lite0", "mobilenet_v2")
DEFAULT_VAL_MODELS: tuple[str, ...] = ("efficientnet_lite1",)

# Settings that do not change what is computed; a resumed run may change them freely.
_RUNTIME_KEYS = {"batch_size", "num_workers", "limit", "save_params"}


@dataclass(frozen=True)
class GenerateConfig:
    attack: AttackConfig = field(default_factory=AttackConfig)
    models: tuple[str, ...] = DEFAULT_ATTACK_MODELS
    val_models: tuple[str, ...] = DEFAULT_VAL_MODELS
    seed: int = 0
    batch_size: int = 8
    num_workers: int = 2
    amp: AmpMode = "none"
    skip_bad: bool = False
    save_params: bool | None = None  # None: save unless the per-pixel family is on
    limit: int | None = None  # only the first N rows of dev.csv (demos, smoke tests)
    lpips_net: str = "alex"  # for the LPIPS-to-original value in the log

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("at least one attack model is needed")
        overlap = set(self.models) & set(self.val_models)
        if overlap:
            raise ValueError(
                f"validation models must be held out from the attack ensemble; both have "
                f"{sorted(overlap)}"
            )
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["attack"] = self.attack.to_dict()
        d["models"] = list(self.models)
        d["val_models"] = list(self.val_models)
        return d


@dataclass
class GenerateSummary:
    rank: int
    world: int
    total: int  # rows in this shard
    already_done: int
    written: int
    skipped: list[str]
    val_success: int
    ensemble_success: int
    seconds: float
    output_dir: Path

    @property
    def val_success_rate(self) -> float:
        return self.val_success / self.written if self.written else float("nan")


def shard_from_env() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment, or (0, 1)."""
    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError as e:
        raise DataError(f"RANK/WORLD_SIZE in the environment are not integers: {e}") from e


def _check_config(meta: Path, cfg: GenerateConfig) -> None:
    """Refuse to resume into a folder made with different attack settings: the outputs would
    silently mix two experiments."""
    path = meta / "config.json"
    new = {k: v for k, v in cfg.to_dict().items() if k not in _RUNTIME_KEYS}
    if path.is_file():
        old = json.loads(path.read_text())["config"]
        old = {k: v for k, v in old.items() if k not in _RUNTIME_KEYS}
        if old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise DataError(
                f"{path.parent.parent} holds a run with different settings ({', '.join(diff)}); "
                f"resume with the same settings, or use a new OUTPUT_DIR"
            )


def _write_config(meta: Path, cfg: GenerateConfig, input_dir: Path, device: torch.device) -> None:
    doc = {
        "config": cfg.to_dict(),
        "input_dir": str(Path(input_dir).resolve()),
        "seed": cfg.seed,
        "versions": {"unrestrict": __version__, "torch": torch.__version__},
        "device": str(device),
        "jpeg_quality": cfg.attack.jpeg_quality,
    }
    write_atomic(meta / "config.json", (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


def generate(
    input_dir: Path,
    output_dir: Path,
    cfg: GenerateConfig,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world: int = 1,
    progress: bool = True,
) -> GenerateSummary:
    """Attack the rows of shard ``rank``/``world`` of ``input_dir`` into ``output_dir``.

    Finished images (logged and on disk) are skipped, so calling it again resumes.
    """
    device = torch.device(device)
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    check_output_dir(input_dir, output_dir)
    inputs: InputSet = scan_input(input_dir, skip_bad=cfg.skip_bad)
    log_notes(inputs.notes, logger)
    rows = inputs.rows[: cfg.limit] if cfg.limit is not None else inputs.rows
    shard = shard_rows(rows, rank, world)

    meta = output_dir / META_DIR
    meta.mkdir(parents=True, exist_ok=True)
    _check_config(meta, cfg)
    _write_config(meta, cfg, input_dir, device)
    done = RunLog.finished(output_dir)
    todo = [r for r in shard if r.image_id not in done]
    log = RunLog(meta, rank, world)
    save_params = cfg.save_params if cfg.save_params is not None else (
        "pixel" not in cfg.attack.families
    )
    if save_params:
        (meta / "params").mkdir(exist_ok=True)

    summary = GenerateSummary(rank, world, len(shard), len(shard) - len(todo), 0,
                              list(inputs.skipped), 0, 0, 0.0, output_dir)
    if not todo:
        return summary

    from .metrics import LpipsMetric  # heavy import, only when there is work

    ensemble = create_ensemble(cfg.models, device)
    val = create_ensemble(cfg.val_models, device) if cfg.val_models else None
    lpips_metric = LpipsMetric(cfg.lpips_net, device)
    attack = Attack(cfg.attack, ensemble, val, device=device, amp=cfg.amp,
                    lpips=lpips_metric.model if cfg.attack.lpips_weight > 0 else None)

    start = time.perf_counter()
    bar = tqdm(total=len(shard), initial=summary.already_done, unit="img", disable=not progress,
               desc=f"generate[{rank}/{world}]" if world > 1 else "generate", dynamic_ncols=True)
    loader = make_loader(inputs.images_dir, todo, cfg.batch_size, cfg.num_workers)
    try:
        for batch in loader:
            bad = [it for it in batch if it["error"] is not None]
            for it in bad:
                if not cfg.skip_bad:
                    raise DataError(f"dev.csv line {it['row'].line}: {it['error']}")
                summary.skipped.append(it["error"])
                logger.warning("skipped: %s", it["error"])
            log.append({"image_id": it["row"].image_id, "status": "skipped",
                        "reason": it["error"]} for it in bad)
            good = [it for it in batch if it["error"] is None]
            for it in good:
                if it["note"]:
                    logger.warning(it["note"])
            # Contest images are all 500x500, but others are allowed: batch by size.
            groups: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
            for it in good:
                groups[tuple(it["image"].shape[-2:])].append(it)
            records = []
            for items in groups.values():
                t_group = time.perf_counter()
                names = [it["row"].image_id for it in items]
                x = torch.stack([it["image"] for it in items]).to(device).float() / 255
                y = torch.tensor([it["row"].label for it in items], device=device)
                results = attack.run(x, y, seed=derive_seed(cfg.seed, *names))
                adv = torch.stack([r.decoded for r in results]).to(device).float() / 255
                dists = lpips_metric(adv, x).tolist()
                per_image = (time.perf_counter() - t_group) / len(items)
                for it, r, d in zip(items, results, dists, strict=True):
                    records.append(_finish(it["row"], r, d, per_image, output_dir, meta,
                                           save_params, cfg))
                    summary.written += 1
                    summary.val_success += bool(r.val_success)
                    summary.ensemble_success += r.ensemble_success
            log.append(records)
            bar.update(len(batch))
            elapsed = time.perf_counter() - start
            bar.set_postfix(
                val_ok=f"{summary.val_success}/{summary.written}",
                img_s=f"{summary.written / max(elapsed, 1e-9):.2f}",
            )
    finally:
        bar.close()
        summary.seconds = time.perf_counter() - start
    return summary


def _finish(
    row: Any, r: ImageResult, lpips_value: float, seconds: float, output_dir: Path, meta: Path,
    save_params: bool, cfg: GenerateConfig,
) -> dict[str, Any]:
    """Write one image (and its parameters), and return its log record."""
    write_atomic(output_dir / row.image_id, r.jpeg)
    if save_params:
        buf = io.BytesIO()
        torch.save({k: v.contiguous() for k, v in r.params.items()}, buf)
        write_atomic(meta / "params" / f"{row.image_id}.pt", buf.getvalue())
    return {
        "image_id": row.image_id,
        "label": row.label,
        "status": "ok",
        "families": list(cfg.attack.families),
        "decision": r.decision,
        "strength": round(r.strength, 6),
        "used": round(r.used, 6),
        "ensemble_success": r.ensemble_success,
        "val_success": r.val_success,
        "val_margin": None if r.val_margin is None else round(r.val_margin, 4),
        "passes": r.passes,
        "lpips": round(lpips_value, 6),
        "seconds": round(seconds, 4),
        "bytes": len(r.jpeg),
    }


def read_run_config(output_dir: Path) -> dict[str, Any] | None:
    """The config a generate run recorded in ``output_dir``, or None."""
    path = Path(output_dir) / META_DIR / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def models_used(output_dir: Path) -> Sequence[str] | None:
    """Attack + validation models of the run in ``output_dir`` (None if no run is recorded)."""
    doc = read_run_config(output_dir)
    if doc is None:
        return None
    return list(doc["config"]["models"]) + list(doc["config"]["val_models"])
