"""``unrestrict generate``: attack every row of an input folder and write the results.

Streaming (a few batches in memory), resumable (atomic writes + an append-only log per rank,
:mod:`unrestrict.rundir`) and shardable (``torchrun`` sets RANK/WORLD_SIZE; each rank takes
rows ``rank::world``). On the CPU every image is attacked on its own, with randomness drawn
from the seed and its ImageId, so its bytes do not depend on the batch size, the sharding or
a resume.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import __version__
from .attack import AMP_DTYPES, PRESETS, AmpMode, Attack, AttackConfig, ImageResult
from .data import (
    ImageDataset,
    InputSet,
    Item,
    Row,
    group_by_size,
    log_notes,
    make_loader,
    scan_input,
    shard_rows,
)
from .errors import ConfigError, DataError, OutputError
from .files import file_sha256, write_atomic
from .models import create_ensemble, get_model_entry
from .rundir import RunBinding, RunDir, check_output_dir
from .settings import setting

__all__ = [
    "DEFAULT_ATTACK_MODELS",
    "DEFAULT_VAL_MODELS",
    "GenerateConfig",
    "GenerateSummary",
    "generate",
    "parse_shard",
    "shard_from_env",
]

logger = logging.getLogger("unrestrict")

# The offline models split three ways: attack, validate (per-image budget), and evaluate
# (`unrestrict score` defaults to the models that generation did not use).
DEFAULT_ATTACK_MODELS: tuple[str, ...] = ("efficientnet_lite0", "mobilenet_v2")
DEFAULT_VAL_MODELS: tuple[str, ...] = ("efficientnet_lite1",)

# Per-image parameters are kept by default up to this size (float32, a contest image): a
# global grade's few dozen numbers, not a per-pixel field's hundreds of KB per image.
PARAMS_KEPT_BYTES = 64 * 1024

# Settings that do not change what is computed; a resumed run may change them freely.
_RUNTIME_KEYS = {"batch_size", "num_workers", "limit", "save_params", "skip_bad"}


@dataclass(frozen=True)
class GenerateConfig:
    attack: AttackConfig = field(default_factory=lambda: PRESETS["natural"])
    models: tuple[str, ...] = setting(DEFAULT_ATTACK_MODELS,
                                      "Attack ensemble (logits averaged).")
    val_models: tuple[str, ...] = setting(
        DEFAULT_VAL_MODELS, "Held-out models for the per-image budget check; '' to judge with "
                            "the attack ensemble.")
    seed: int = setting(0, "With each image's ImageId, seeds its randomness (README: "
                           "Reproducibility).")
    batch_size: int = setting(8, "Images per batch (on the CPU: split into chunks of "
                                 "--cpu-batch).", flag="-b")
    cpu_batch: int = setting(4, "On the CPU, images are attacked in chunks of exactly this "
                                "many (the last padded), so that an image's bytes do not "
                                "depend on its batch; results depend on it, -b does not.")
    num_workers: int = setting(2, "Image-decoding worker processes.")
    amp: AmpMode = setting("none", "Mixed precision for the model passes (GPU).", AMP_DTYPES)
    skip_bad: bool = setting(False, "Leave unreadable rows out (listed at the end) instead of "
                                    "stopping.")
    save_params: bool | None = setting(
        None, "Save per-image parameters under OUTPUT_DIR/.unrestrict/params (None: when they "
              "are small, not for per-pixel families).")
    limit: int | None = setting(None, "Only the first N rows of dev.csv.")
    lpips_net: str = "alex"  # for the LPIPS-to-original value in the log

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("at least one attack model is needed")
        if self.batch_size < 1:
            raise ConfigError("batch_size must be >= 1")
        if self.cpu_batch < 1:
            raise ConfigError("cpu_batch must be >= 1")
        if self.amp not in AMP_DTYPES:
            raise ConfigError(f"amp must be one of {', '.join(AMP_DTYPES)}; got {self.amp!r}")

    def model_identities(self) -> dict[str, str]:
        """Attack and validation model names -> weight identity (no weights are loaded).

        Raises:
            ConfigError: a validation model has the same weights as an attack model, under
                whatever name.
        """
        ids = {n: get_model_entry(n).weights_id for n in (*self.models, *self.val_models)}
        attack_ids = {ids[n]: n for n in self.models}
        same = [f"{v} (= {attack_ids[ids[v]]})" for v in self.val_models if ids[v] in attack_ids]
        if same:
            raise ConfigError(
                "validation models must be held out from the attack ensemble; these have the "
                f"same weights as an attack model: {', '.join(same)}"
            )
        return ids

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["attack"] = self.attack.to_dict()
        d["models"] = list(self.models)
        d["val_models"] = list(self.val_models)
        return d

    def settings(self) -> dict[str, Any]:
        """What changes the computed results: everything but the runtime keys."""
        return {k: v for k, v in self.to_dict().items() if k not in _RUNTIME_KEYS}


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

    validated: bool = True  # validation models judged the results
    limited: int = 0  # stopped at the naturalness limits (natural_limit)

    def __str__(self) -> str:
        shard = f" (shard {self.rank}/{self.world})" if self.world > 1 else ""
        val = (f"fooled validation models {self.val_success}/{self.written}, " if self.validated
               else "no validation models, ")
        return (f"{self.output_dir}{shard}: {self.written} written, {self.already_done} already "
                f"done, {len(self.skipped)} skipped of {self.total}; {val}attack ensemble "
                f"{self.ensemble_success}/{self.written}"
                + (f", stopped at the naturalness limits {self.limited}" if self.limited else "")
                + f"; {self.seconds:.1f}s")


def derive_seed(seed: int, *parts: str) -> int:
    """A 63-bit seed from a base seed and strings (an image's ImageId): randomness keyed on
    the image, not on its batch, whichever shard or resumed run processes it."""
    h = hashlib.sha256(str(seed).encode())
    for p in parts:
        h.update(b"\0" + p.encode())
    return int.from_bytes(h.digest()[:8], "little") >> 1


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N), with 0 <= I < N.

    Raises:
        ConfigError: anything else.
    """
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard expects I/N such as 0/4, got {text!r}") from None
    if not 0 <= i < n:
        raise ConfigError(f"--shard needs 0 <= I < N, got {text!r}")
    return i, n


def shard_from_env() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment, or (0, 1)."""
    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError as e:
        raise ConfigError(f"RANK/WORLD_SIZE in the environment are not integers: {e}") from e


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

    Every input is checked (each image fully decoded) and the output folder is bound to the
    input and the settings before anything is written; finished images are skipped, so
    calling it again resumes.
    """
    device = torch.device(device)
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    check_output_dir(input_dir, output_dir)
    identities = cfg.model_identities()
    inputs: InputSet = scan_input(input_dir, skip_bad=cfg.skip_bad, num_workers=cfg.num_workers)
    log_notes(inputs.notes, logger)
    rows = inputs.rows[: cfg.limit] if cfg.limit is not None else inputs.rows
    shard = shard_rows(rows, rank, world)

    run = RunDir(output_dir)
    binding = RunBinding(str(input_dir.resolve()), file_sha256(input_dir / "dev.csv"),
                         cfg.settings(), identities)
    run.bind(binding, {"config": cfg.to_dict(), "seed": cfg.seed, "device": str(device),
                       "versions": {"unrestrict": __version__, "torch": torch.__version__}})
    done = run.finished()
    todo = [r for r in shard if r.image_id not in done]
    log = run.log(rank, world)
    save_params = cfg.save_params
    if save_params is None:
        from .perturb import compose

        size = compose(cfg.attack.families, cfg.attack.family_options).param_count(500, 500)
        save_params = 4 * size <= PARAMS_KEPT_BYTES
    summary = GenerateSummary(rank, world, len(shard), len(shard) - len(todo), 0,
                              list(inputs.skipped), 0, 0, 0.0, output_dir, bool(cfg.val_models))
    if not todo:
        return summary

    from .metrics import LpipsMetric  # heavy import, only when there is work

    ensemble = create_ensemble(cfg.models, device)
    val = create_ensemble(cfg.val_models, device) if cfg.val_models else None
    lpips_metric = LpipsMetric(cfg.lpips_net, device)
    # On the CPU convolution results depend (in the last bits) on the batch size, though not
    # on the other images in the batch, and sign steps amplify that: fix the size.
    attack = Attack(cfg.attack, ensemble, val, device=device, amp=cfg.amp,
                    lpips=lpips_metric.model if cfg.attack.lpips_weight > 0 else None,
                    fixed_batch=cfg.cpu_batch if device.type == "cpu" else None)

    start = time.perf_counter()
    bar = tqdm(total=len(shard), initial=summary.already_done, unit="img", disable=not progress,
               desc=f"generate[{rank}/{world}]" if world > 1 else "generate", dynamic_ncols=True)
    try:
        for batch in make_loader(ImageDataset(inputs.images_dir, todo), cfg.batch_size,
                                 cfg.num_workers):
            bad = [it for it in batch if it.error is not None]
            if bad:  # changed on disk since the scan
                raise DataError("\n".join(f"dev.csv line {it.row.line}: {it.error}"
                                          for it in bad))
            records = []
            for group in group_by_size(batch, lambda it: tuple(it.image.shape)):
                records += _attack(attack, lpips_metric, group, cfg, device, run,
                                   save_params, summary)
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


def _attack(
    attack: Attack, lpips_metric: Any, items: list[Item], cfg: GenerateConfig,
    device: torch.device, run: RunDir, save_params: bool, summary: GenerateSummary,
) -> list[dict[str, Any]]:
    """Attack one batch of same-size items, write each result, return their log records."""
    t0 = time.perf_counter()
    x = torch.stack([it.image for it in items]).to(device).float() / 255
    y = torch.tensor([it.row.label for it in items], device=device)
    results = attack.run(x, y, [derive_seed(cfg.seed, it.row.image_id) for it in items])
    adv = torch.stack([r.decoded for r in results]).to(device).float() / 255
    # In the attack's own padded chunks, so that the logged distance has the same bits too.
    dists = [d for c in attack.chunks(len(items))
             for d in lpips_metric(attack.pad(adv[c]), attack.pad(x[c]))[:len(adv[c])].tolist()]
    per_image = (time.perf_counter() - t0) / len(items)
    records = []
    for it, r, d in zip(items, results, dists, strict=True):
        records.append(_finish(it.row, r, d, per_image, run, save_params, cfg))
        summary.written += 1
        summary.val_success += bool(r.val_success)
        summary.ensemble_success += r.ensemble_success
        summary.limited += r.decision == "limited"
    return records


def _finish(
    row: Row, r: ImageResult, lpips_value: float, seconds: float, run: RunDir,
    save_params: bool, cfg: GenerateConfig,
) -> dict[str, Any]:
    """Write one image (and its parameters), and return its log record."""
    try:
        write_atomic(run.output_dir / row.image_id, r.jpeg)
        if save_params:
            run.save_params(row.image_id, r.params)
    except OSError as e:
        raise OutputError(f"cannot write {run.output_dir / row.image_id} ({e.strerror or e}); "
                          "every image logged before it is kept") from e
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
