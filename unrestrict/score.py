"""``unrestrict score``: estimate the contest's objective score from the submitted bytes.

One pass over the data: each original and each result is decoded once, and the same batch
feeds the evaluation classifiers, the FID Inception, LPIPS and the naturalness measures.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from . import __version__
from .data import Row, group_by_size, load_rgb, make_loader, scan_input
from .errors import ConfigError, DataError, ResultsError
from .jpeg import DecodeError, decode_rgb
from .metrics import (
    FID_FULL_RANK,
    LPIPS_NETS,
    FeatureStats,
    FidFeatures,
    LpipsMetric,
    LpipsNet,
    ScoreFormula,
    frechet_distance,
    success_rates,
)
from .models import OFFLINE_MODELS, create_ensemble, get_model_entry
from .naturalness import LABELS, LIMITS, MEASURES, naturalness, worst_ratio
from .rundir import RunDir
from .settings import setting
from .submission import ResultSource

__all__ = ["ScoreConfig", "ScoreResult", "ScoreSummary", "ImageScore", "score",
           "default_eval_models", "summary_rows", "format_summary"]

logger = logging.getLogger("unrestrict")


@dataclass(frozen=True)
class ScoreConfig:
    eval_models: tuple[str, ...] | None = setting(
        None, "Classifiers to attack-test on (None: the offline models whose weights the "
              "generate run did not use, read from RESULTS/.unrestrict or --run-dir).")
    lpips_nets: tuple[LpipsNet, ...] = setting(
        ("alex",), "LPIPS backbones to report; the first is the one the combined score uses "
                   "(README: Scoring).", LPIPS_NETS, flag="--lpips-net")
    batch_size: int = setting(16, "Images per batch.", flag="-b")
    num_workers: int = setting(2, "Image-decoding worker processes.")
    formula: ScoreFormula = field(default_factory=ScoreFormula)
    partial: bool = setting(False, "Score the results present instead of refusing when some "
                                   "are missing.")

    def __post_init__(self) -> None:
        if not self.lpips_nets:
            raise ConfigError("at least one LPIPS net is needed")
        bad = [n for n in self.lpips_nets if n not in LPIPS_NETS]
        if bad or len(set(self.lpips_nets)) != len(self.lpips_nets):
            raise ConfigError(f"lpips nets must be distinct names from {', '.join(LPIPS_NETS)}; "
                              f"got {', '.join(self.lpips_nets)}")
        if self.batch_size < 1:
            raise ConfigError("batch_size must be >= 1")

    @property
    def lpips_net(self) -> LpipsNet:
        """The backbone of the combined score's LPIPS."""
        return self.lpips_nets[0]


@dataclass
class ImageScore:
    image_id: str
    label: int
    clean_pred: list[int]
    adv_pred: list[int]
    lpips: float  # with the score's backbone
    lpips_by_net: dict[str, float] = field(default_factory=dict)
    natural: dict[str, float] = field(default_factory=dict)  # keyed by naturalness.MEASURES

    @property
    def fooled(self) -> list[bool]:
        return [p != self.label for p in self.adv_pred]

    @property
    def worst_ratio(self) -> float:
        """Largest naturalness measure over its limit: above 1, a person likely sees an edit."""
        return worst_ratio(self.natural)

    @property
    def within_limits(self) -> bool:
        return self.worst_ratio <= 1.0


@dataclass(frozen=True)
class ScoreSummary:
    """The summary of one scoring run; :meth:`to_dict` is the ``--json`` document."""

    n_images: int
    n_missing: int
    eval_models: list[str]
    eval_models_reason: str
    asr: float  # mean over the evaluation models
    asr_per_model: dict[str, float]
    asr_all_models: float  # share of images that fool every evaluation model
    asr_on_clean_correct: float
    asr_on_clean_correct_per_model: dict[str, float]
    clean_accuracy: float
    clean_accuracy_per_model: dict[str, float]
    fid: float
    fid_full_rank: bool
    lpips: float  # with the score's backbone, lpips_net
    lpips_net: str
    lpips_nets: list[str]
    lpips_by_net: dict[str, float]  # written as lpips_<net> keys
    lpips_distribution: dict[str, float]
    natural: dict[str, float]  # means over images, keyed by naturalness.MEASURES; written flat
    naturalness_limits: dict[str, float]
    within_limits: float
    natural_success: float  # fool every evaluation model and stay within every limit
    score: float
    score_factors: dict[str, float]
    formula: dict[str, Any]
    conventions: dict[str, str]
    input_dir: str
    results: str
    versions: dict[str, str]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update({f"lpips_{n}": v for n, v in d.pop("lpips_by_net").items()})
        d.update(d.pop("natural"))
        return d


@dataclass
class ScoreResult:
    summary: ScoreSummary
    images: list[ImageScore]

    def write_json(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.summary.to_dict(), indent=2, sort_keys=True) + "\n")

    def write_csv(self, path: Path) -> None:
        models, nets = self.summary.eval_models, self.summary.lpips_nets
        with Path(path).open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["ImageId", "TrueLabel",
                        *(f"clean_pred[{m}]" for m in models),
                        *(f"adv_pred[{m}]" for m in models),
                        "fooled_models", "success", "lpips",
                        *(f"lpips_{n}" for n in nets), *MEASURES, "worst_ratio"])
            for im in self.images:
                w.writerow([im.image_id, im.label, *im.clean_pred, *im.adv_pred,
                            sum(im.fooled), int(all(im.fooled)), f"{im.lpips:.6f}",
                            *(f"{im.lpips_by_net[n]:.6f}" for n in nets),
                            *(f"{im.natural[k]:.4f}" for k in MEASURES),
                            f"{im.worst_ratio:.4f}"])


def default_eval_models(results: ResultSource, run_dir: Path | None) -> tuple[list[str], str]:
    """Offline models whose weights the generate run did not use, and how they were chosen.

    Held-out-ness is by weight file, not by name: the same weights under another name count
    as used.
    """
    run = run_dir or results.run_dir()
    used = RunDir(run).models_used() if run is not None else None
    if used is None:
        return list(OFFLINE_MODELS), (
            "no generate run recorded with these results: evaluating on every offline model, "
            "which may include the attack models (pass --eval-models or --run-dir)"
        )
    used_ids = set(used.values())
    held_out = [m for m in OFFLINE_MODELS if get_model_entry(m).weights_id not in used_ids]
    if not held_out:
        raise ConfigError(
            f"every offline model was used by the run ({', '.join(used)}); "
            "pass --eval-models with models it did not use"
        )
    return held_out, f"offline models not used by the run (it used {', '.join(used)})"


@dataclass
class _Pair:
    row: Row
    orig: torch.Tensor | None = None
    adv: torch.Tensor | None = None
    error: str | None = None


class _Pairs(Dataset):
    def __init__(self, images_dir: Path, rows: list[Row], results: ResultSource) -> None:
        self.images_dir, self.rows, self.results = images_dir, rows, results

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> _Pair:
        row = self.rows[i]
        try:
            orig = load_rgb(self.images_dir / row.image_id)
            adv = decode_rgb(self.results.read(row.image_id))[0]
        except (DataError, ResultsError) as e:
            return _Pair(row, error=str(e))
        except DecodeError as e:
            return _Pair(row, error=f"{row.image_id}: result cannot be decoded ({e})")
        if adv.shape != orig.shape:
            return _Pair(row, error=f"{row.image_id}: result is {tuple(adv.shape[1:])}, "
                                    f"original is {tuple(orig.shape[1:])} (H, W)")
        return _Pair(row, orig, adv)


def score(
    input_dir: Path,
    results_path: Path,
    cfg: ScoreConfig = ScoreConfig(),
    device: torch.device | str = "cpu",
    run_dir: Path | None = None,
    progress: bool = True,
) -> ScoreResult:
    """Score the results at ``results_path`` (folder or zip) against ``input_dir``.

    Raises:
        DataError: the input folder is unusable.
        ResultsError: results are missing (unless ``partial``), damaged or undecodable;
            every problem is listed.
    """
    device = torch.device(device)
    inputs = scan_input(Path(input_dir), num_workers=cfg.num_workers)
    results = ResultSource(results_path)
    present = results.names()
    rows = [r for r in inputs.rows if r.image_id in present]
    missing = [r.image_id for r in inputs.rows if r.image_id not in present]
    if missing and not cfg.partial:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise ResultsError(
            f"{len(missing)} of {len(inputs.rows)} rows have no result in {results_path} "
            f"({shown}); use --partial to score only those present"
        )
    if len(rows) < 2:
        raise ResultsError(f"need at least 2 results to score, found {len(rows)}")
    if cfg.eval_models:
        eval_models, why = list(cfg.eval_models), "given with --eval-models"
    else:
        eval_models, why = default_eval_models(results, run_dir)
        if "may include" in why:
            logger.warning(why)
    if len(rows) < FID_FULL_RANK:
        logger.warning(
            "FID from %d images: below %d the 2048-d covariance is rank-deficient and FID is "
            "biased upwards; compare it only between runs on the same images", len(rows),
            FID_FULL_RANK)

    ensemble = create_ensemble(eval_models, device)
    fid_net = FidFeatures(device)
    lpips = {n: LpipsMetric(n, device) for n in cfg.lpips_nets}
    stats_orig, stats_adv = FeatureStats(), FeatureStats()
    images: list[ImageScore] = []
    problems: list[str] = []
    start = time.perf_counter()
    bar = tqdm(total=len(rows), unit="img", desc="score", disable=not progress, dynamic_ncols=True)
    fooled_so_far = 0
    with torch.no_grad():
        for batch in make_loader(_Pairs(inputs.images_dir, rows, results), cfg.batch_size,
                                 cfg.num_workers):
            problems += [p.error for p in batch if p.error is not None]
            good = [p for p in batch if p.error is None]
            for items in group_by_size(good, lambda p: tuple(p.orig.shape)):
                x = torch.stack([p.orig for p in items]).to(device).float() / 255
                a = torch.stack([p.adv for p in items]).to(device).float() / 255
                clean = ensemble.logits_each(x).argmax(-1).cpu()  # (M, B)
                adv = ensemble.logits_each(a).argmax(-1).cpu()
                stats_orig.update(fid_net(x))
                stats_adv.update(fid_net(a))
                dist = {n: m(a, x).cpu().tolist() for n, m in lpips.items()}
                natural = naturalness(x, a)
                for j, p in enumerate(items):
                    by_net = {n: d[j] for n, d in dist.items()}
                    im = ImageScore(p.row.image_id, p.row.label, clean[:, j].tolist(),
                                    adv[:, j].tolist(), by_net[cfg.lpips_net], by_net, natural[j])
                    images.append(im)
                    fooled_so_far += all(im.fooled)
            bar.update(len(batch))
            bar.set_postfix(fooled_all=f"{fooled_so_far}/{len(images)}")
    bar.close()
    if problems:
        raise ResultsError(f"{len(problems)} result(s) could not be scored:\n"
                           + "\n".join(f"  - {p}" for p in problems[:20]))
    order = {r.image_id: i for i, r in enumerate(rows)}
    images.sort(key=lambda im: order[im.image_id])
    summary = _summarise(images, eval_models, why, stats_orig, stats_adv, cfg, input_dir,
                         results_path, missing, time.perf_counter() - start)
    return ScoreResult(summary, images)


def _summarise(
    images: list[ImageScore], eval_models: list[str], why: str, stats_orig: FeatureStats,
    stats_adv: FeatureStats, cfg: ScoreConfig, input_dir: Path, results_path: Path,
    missing: list[str], seconds: float,
) -> ScoreSummary:
    labels = np.array([im.label for im in images])
    rates = success_rates(np.array([im.clean_pred for im in images]).T,
                          np.array([im.adv_pred for im in images]).T, labels)
    lp = np.array([im.lpips for im in images])
    fid = frechet_distance(stats_orig, stats_adv)
    f = cfg.formula
    within = np.array([im.within_limits for im in images])
    fooled_all = np.array([all(im.fooled) for im in images])

    def per_model(values: list[float]) -> dict[str, float]:
        return dict(zip(eval_models, values, strict=True))

    def mean(key: str) -> float:
        return float(np.mean([im.natural[key] for im in images]))

    return ScoreSummary(
        n_images=len(images), n_missing=len(missing), eval_models=eval_models,
        eval_models_reason=why, asr=rates.asr, asr_per_model=per_model(rates.asr_per_model),
        asr_all_models=rates.asr_all_models, asr_on_clean_correct=rates.asr_on_correct,
        asr_on_clean_correct_per_model=per_model(rates.asr_on_correct_per_model),
        clean_accuracy=rates.clean_accuracy,
        clean_accuracy_per_model=per_model(rates.clean_accuracy_per_model),
        fid=fid, fid_full_rank=len(images) >= FID_FULL_RANK,
        lpips=float(lp.mean()), lpips_net=cfg.lpips_net, lpips_nets=list(cfg.lpips_nets),
        lpips_by_net={n: float(np.mean([im.lpips_by_net[n] for im in images]))
                      for n in cfg.lpips_nets},
        lpips_distribution={
            "std": float(lp.std()), "min": float(lp.min()), "p05": float(np.percentile(lp, 5)),
            "p25": float(np.percentile(lp, 25)), "median": float(np.median(lp)),
            "p75": float(np.percentile(lp, 75)), "p95": float(np.percentile(lp, 95)),
            "max": float(lp.max()),
        },
        natural={k: mean(k) for k in MEASURES}, naturalness_limits=dict(LIMITS),
        within_limits=float(within.mean()), natural_success=float((within & fooled_all).mean()),
        score=f(rates.asr, fid, float(lp.mean())),
        score_factors={"fid": f.fid_factor(fid), "lpips": f.lpips_factor(float(lp.mean()))},
        formula={**asdict(f), "expression": "100*ASR*sqrt(1-min(FID,fid_cap)/fid_cap)*"
                 "sqrt(1-(clip(LPIPS,lpips_low,lpips_high)-lpips_low)/(lpips_high-lpips_low))"},
        conventions={
            "lpips": f"lpips v0.1 ({', '.join(cfg.lpips_nets)}; the score uses "
                     f"{cfg.lpips_net}), inputs in [-1,1], at the images' own size",
            "naturalness": "per image: colour drift (delta E between the result and the best "
                           "global quadratic colour map of the original, both low-passed "
                           "sigma 6 px; mean and p95 over pixels), flat-region noise (RMS 0-255 "
                           "of the change minus its sigma-2 blur where the original's 7x7 luma "
                           "std < 4/255), added fine detail (sqrt(E_change/(E_orig+1)) of the "
                           "DoG 0.7/2 px luma band per 16x16 block; mean and p95 over blocks), "
                           "tone shift (mean |delta L*| between result and original, both "
                           "low-passed sigma 8 px); summary: means over images",
            "fid": "pytorch-fid InceptionV3 pool3 (TF inception-2015-12-05 weights), "
                   "bilinear resize to 299, float64 statistics",
            "classifiers": "whole image resized (antialiased) to each model's input size",
            "decoding": "the result files' own bytes, decoded once with PIL",
        },
        input_dir=str(Path(input_dir).resolve()), results=str(Path(results_path).resolve()),
        versions={"unrestrict": __version__, "torch": torch.__version__}, seconds=seconds,
    )


def summary_rows(s: ScoreSummary) -> list[tuple[str, str]]:
    """The summary as (label, value) lines: what the terminal and the HTML report show."""
    per_model = ", ".join(f"{m} {v:.3f}" for m, v in s.asr_per_model.items())
    lp, lim = s.lpips_distribution, s.naturalness_limits
    return [
        ("images", f"{s.n_images}" + (f" ({s.n_missing} missing)" if s.n_missing else "")),
        ("eval models", ", ".join(s.eval_models)),
        ("clean accuracy", f"{s.clean_accuracy:.3f}"),
        ("ASR", f"{s.asr:.3f}  ({per_model})"),
        ("ASR on correct", f"{s.asr_on_clean_correct:.3f}"),
        ("FID", f"{s.fid:.2f}" + ("" if s.fid_full_rank else
                                  f"  (from {s.n_images} images: biased upwards)")),
        (f"LPIPS ({s.lpips_net})",
         f"{s.lpips:.4f}  (median {lp['median']:.4f}, p95 {lp['p95']:.4f})"),
        *((f"LPIPS ({n})", f"{s.lpips_by_net[n]:.4f}") for n in s.lpips_nets[1:]),
        *((LABELS.get(k, k), f"{v:.3f}  (limit {lim[k]:g})") for k, v in s.natural.items()),
        ("within limits", f"{s.within_limits:.3f} of images"),
        ("fooled all, natural", f"{s.natural_success:.3f} of images"),
        ("score", f"{s.score:.2f}"),
    ]


def format_summary(s: ScoreSummary) -> str:
    """:func:`summary_rows` as aligned terminal lines."""
    rows = summary_rows(s)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
