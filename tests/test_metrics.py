"""Metric parts against independent, closed-form computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unrestrict.metrics import FeatureStats, ScoreFormula, frechet_distance, success_rates


def test_success_rates_on_crafted_predictions():
    labels = np.array([0, 1, 2, 3])
    clean = np.array([[0, 1, 2, 9],    # model A: 3/4 correct
                      [0, 1, 9, 9]])   # model B: 2/4 correct
    adv = np.array([[5, 1, 7, 3],      # A fooled on images 0, 2 -> 2/4
                    [5, 6, 7, 8]])     # B fooled on all -> 4/4
    r = success_rates(clean, adv, labels)
    assert r.asr_per_model == [0.5, 1.0]
    assert r.asr == 0.75
    assert r.asr_all_models == 0.5  # images 0 and 2
    assert r.clean_accuracy_per_model == [0.75, 0.5]
    # A: correct on 0,1,2, fooled on 0,2 -> 2/3; B: correct on 0,1, fooled on both -> 1.
    assert r.asr_on_correct_per_model == pytest.approx([2 / 3, 1.0])
    with pytest.raises(ValueError, match="shapes differ"):
        success_rates(clean, adv[:, :3], labels)


def test_feature_stats_match_numpy():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(50, 6))
    s = FeatureStats(6)
    s.update(torch.from_numpy(f[:20]))
    s.update(f[20:])
    mu, cov = s.mean_cov()
    np.testing.assert_allclose(mu, f.mean(0), atol=1e-12)
    np.testing.assert_allclose(cov, np.cov(f, rowvar=False), atol=1e-12)


def test_fid_equal_covariances_is_squared_mean_difference():
    # pytorch-fid's own test: with equal covariances, FID = ||mu1 - mu2||^2.
    rng = np.random.default_rng(1)
    f = rng.normal(size=(200, 8))
    shift = rng.normal(size=8)
    a, b = FeatureStats(8), FeatureStats(8)
    a.update(f)
    b.update(f + shift)
    assert frechet_distance(a, b) == pytest.approx(float(shift @ shift), rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_fid_needs_two_images():
    s = FeatureStats(4)
    s.update(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        s.mean_cov()


@pytest.mark.parametrize("lpips, factor", [
    (0.0, 1.0), (0.2, 1.0), (0.45, math.sqrt(0.5)), (0.7, 0.0), (0.9, 0.0),
])
def test_score_lpips_clip_points(lpips, factor):
    f = ScoreFormula()
    assert f.lpips_factor(lpips) == pytest.approx(factor)
    assert f(1.0, 0.0, lpips) == pytest.approx(100 * factor)


@pytest.mark.parametrize("fid, factor", [(0.0, 1.0), (50.0, math.sqrt(0.75)), (200.0, 0.0),
                                         (500.0, 0.0)])
def test_score_fid_clip_points(fid, factor):
    f = ScoreFormula()
    assert f.fid_factor(fid) == pytest.approx(factor)
    assert f(0.5, fid, 0.1) == pytest.approx(50 * factor)


def test_score_formula_constants_are_options():
    f = ScoreFormula(fid_cap=100, lpips_low=0.1, lpips_high=0.3)
    assert f(1.0, 50.0, 0.2) == pytest.approx(100 * math.sqrt(0.5) * math.sqrt(0.5))
    with pytest.raises(ValueError):
        ScoreFormula(lpips_low=0.5, lpips_high=0.4)
