"""The contest's objective metrics: attack success rate, FID, LPIPS, and the combined score.

FID and LPIPS are computed by pytorch-fid and lpips themselves, with the offline weights of
:mod:`unrestrict.weights`. Conventions that change a number, recorded here once:

* LPIPS: lpips v0.1 linear heads, inputs scaled to [-1, 1], at the images' own resolution.
* FID: pytorch-fid's InceptionV3 pool3 (2048-d), which resizes to 299x299 bilinearly
  (no antialias) and scales to [-1, 1] itself; statistics in float64; pytorch-fid's
  ``calculate_frechet_distance`` (with its guard against imaginary components).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from . import weights
from .contract import check_images
from .errors import ConfigError
from .settings import setting

__all__ = [
    "LpipsMetric",
    "LPIPS_NETS",
    "FidFeatures",
    "FeatureStats",
    "frechet_distance",
    "FID_FULL_RANK",
    "ScoreFormula",
    "SuccessRates",
    "success_rates",
]

LpipsNet = Literal["alex", "vgg"]
LPIPS_NETS: tuple[str, ...] = ("alex", "vgg")
# Below this many images the 2048x2048 covariance is rank-deficient and FID is biased upwards
# (pytorch-fid issue #13).
FID_FULL_RANK = 2048


class LpipsMetric:
    """LPIPS distance per image pair, with the offline backbone."""

    def __init__(self, net: LpipsNet = "alex", device: torch.device | str = "cpu") -> None:
        if net not in LPIPS_NETS:
            raise ConfigError(f"lpips net must be one of {', '.join(LPIPS_NETS)}; got {net!r}")
        self.net = net
        # channels_last: oneDNN's faster convolution kernels on the CPU; same features.
        self.model = weights.load_lpips(net, weights.resolve(f"lpips_{net}")).to(
            device, memory_format=torch.channels_last
        )

    @torch.no_grad()
    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        """Shape: two (B, 3, H, W) batches in [0, 1] -> (B,) distances."""
        check_images(a, "a")
        check_images(b, "b")
        if a.shape != b.shape:
            raise ValueError(f"LPIPS needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
        return self.model(a * 2 - 1, b * 2 - 1).flatten()


class FidFeatures:
    """pytorch-fid's InceptionV3 pool3 features of (B, 3, H, W) images in [0, 1]."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        # channels_last: oneDNN's faster convolution kernels on the CPU; same features.
        self.model = weights.load_fid_inception(weights.resolve("fid_inception")).to(
            device, memory_format=torch.channels_last
        )

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        check_images(x)
        return self.model(x)[0].flatten(1)


class FeatureStats:
    """Running mean and covariance in float64: memory is O(D^2), flat in the number of images."""

    def __init__(self, dim: int = 2048) -> None:
        self.n = 0
        self.sum = np.zeros(dim, dtype=np.float64)
        self.outer = np.zeros((dim, dim), dtype=np.float64)

    def update(self, feats: Tensor | np.ndarray) -> None:
        f = feats.detach().cpu().double().numpy() if isinstance(feats, Tensor) else feats
        f = np.asarray(f, dtype=np.float64)
        self.n += f.shape[0]
        self.sum += f.sum(0)
        self.outer += f.T @ f

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and unbiased covariance, as ``np.mean(axis=0)`` and ``np.cov(rowvar=False)``."""
        if self.n < 2:
            raise ValueError(f"FID needs at least 2 images, got {self.n}")
        mu = self.sum / self.n
        cov = (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return mu, cov


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """FID between two feature sets, by pytorch-fid's own formula."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    mu1, s1 = a.mean_cov()
    mu2, s2 = b.mean_cov()
    return float(calculate_frechet_distance(mu1, s1, mu2, s2))


@dataclass(frozen=True)
class SuccessRates:
    """Attack success and clean accuracy over M evaluation models and N images."""

    asr_per_model: list[float]  # fraction of all images each model gets wrong on the results
    asr_all_models: float  # fraction of images that fool every model at once
    asr_on_correct_per_model: list[float]  # among images the model got right originally
    clean_accuracy_per_model: list[float]

    @property
    def asr(self) -> float:
        """The contest's success rate: the mean over evaluation models."""
        return float(np.mean(self.asr_per_model))

    @property
    def asr_on_correct(self) -> float:
        return float(np.nanmean(self.asr_on_correct_per_model))

    @property
    def clean_accuracy(self) -> float:
        return float(np.mean(self.clean_accuracy_per_model))


def success_rates(clean_pred: np.ndarray, adv_pred: np.ndarray, labels: np.ndarray) -> SuccessRates:
    """From (M, N) predictions on originals and results and (N,) labels.

    An image counts as a success for a model when the model's prediction on the result is not
    the true label (untargeted), whatever it predicted on the original.
    """
    clean_pred, adv_pred, labels = map(np.asarray, (clean_pred, adv_pred, labels))
    if clean_pred.shape != adv_pred.shape or clean_pred.shape[-1] != labels.shape[0]:
        raise ValueError(f"shapes differ: {clean_pred.shape}, {adv_pred.shape}, {labels.shape}")
    correct = clean_pred == labels
    fooled = adv_pred != labels
    on_correct = [
        float(f[c].mean()) if c.any() else float("nan")
        for f, c in zip(fooled, correct, strict=True)
    ]
    return SuccessRates(
        asr_per_model=fooled.mean(1).tolist(),
        asr_all_models=float(fooled.all(0).mean()),
        asr_on_correct_per_model=on_correct,
        clean_accuracy_per_model=correct.mean(1).tolist(),
    )


@dataclass(frozen=True)
class ScoreFormula:
    """Our reconstruction of the contest's combined score (see README, "Scoring").

    ``score = 100 * ASR * sqrt(1 - min(FID, fid_cap) / fid_cap)
    * sqrt(1 - (clip(LPIPS, lpips_low, lpips_high) - lpips_low) / (lpips_high - lpips_low))``

    With the defaults (200, 0.2, 0.7) the LPIPS term is ``sqrt(1 - 2 (clip - 0.2))``.
    """

    fid_cap: float = setting(200.0, "FID at which the FID factor reaches 0.")
    lpips_low: float = setting(0.2, "Mean LPIPS up to which the LPIPS factor stays 1.")
    lpips_high: float = setting(0.7, "Mean LPIPS at which the LPIPS factor reaches 0.")

    def __post_init__(self) -> None:
        if self.fid_cap <= 0 or not self.lpips_low < self.lpips_high:
            raise ConfigError("need fid_cap > 0 and lpips_low < lpips_high")

    def fid_factor(self, fid: float) -> float:
        return math.sqrt(1 - min(max(fid, 0.0), self.fid_cap) / self.fid_cap)

    def lpips_factor(self, lpips: float) -> float:
        c = min(max(lpips, self.lpips_low), self.lpips_high)
        return math.sqrt(1 - (c - self.lpips_low) / (self.lpips_high - self.lpips_low))

    def __call__(self, asr: float, fid: float, lpips: float) -> float:
        return 100.0 * asr * self.fid_factor(fid) * self.lpips_factor(lpips)
