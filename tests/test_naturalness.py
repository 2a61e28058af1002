"""Naturalness measures against cases whose answer is known in advance."""

from __future__ import annotations

import math

import kornia.enhance as KE
import kornia.filters as KF
import pytest
import torch

from unrestrict.naturalness import (
    LIMITS,
    MEASURES,
    block_excess,
    clip_share,
    color_drift,
    detail_excess,
    flat_noise,
    global_color_fit,
    naturalness,
    structure_change,
    tone_shift,
    worst_ratio,
)


@pytest.fixture(scope="module")
def photos(sample_images):
    """Four real photos, downsized to 256 px to keep the tests fast."""
    x, _ = sample_images
    return torch.nn.functional.interpolate(x[:4], size=(256, 256), mode="bilinear",
                                           antialias=True, align_corners=False).clamp(0, 1)


def _flat_scene(b: int = 2, size: int = 192) -> torch.Tensor:
    """A sky-like image: a gentle vertical gradient, flat everywhere (7x7 std < 4/255)."""
    ramp = torch.linspace(0.45, 0.75, size).view(1, 1, size, 1).expand(b, 1, size, size)
    return torch.cat([ramp * 0.8, ramp * 0.9, ramp], 1).contiguous()


def test_identical_images_score_exactly_zero(photos):
    rows = naturalness(photos, photos.clone())
    assert len(rows) == len(photos)
    for row in rows:
        assert row == dict.fromkeys(MEASURES, 0.0)


def test_global_grade_has_no_colour_drift(photos):
    graded = KE.adjust_saturation(KE.adjust_brightness(photos, 0.04), 1.25)
    graded = KE.adjust_gamma(graded.clamp(0, 1), 0.85).clamp(0, 1)
    mean, p95 = color_drift(photos, graded)
    assert (mean < 0.6).all() and (p95 < 1.5).all(), (mean, p95)
    # The same grade is a large change before the global map takes it out.
    raw = (KE.adjust_saturation(photos, 1.25) - photos).abs().mean()
    assert raw * 255 > 3


def test_an_exact_quadratic_map_is_recovered(photos):
    r, g, b = photos.unbind(1)
    # Stays inside [0, 1] for every input, so no clipping is involved.
    mapped = torch.stack([0.02 + 0.85 * r + 0.05 * g + 0.05 * r * r,
                          0.95 * g + 0.04 * b - 0.03 * r * b,
                          0.01 + 0.85 * b + 0.1 * g * g], 1)
    fitted = global_color_fit(photos, mapped)
    assert (fitted - mapped).abs().max() < 1e-4


def test_colour_blob_on_a_flat_region_drifts():
    sky = _flat_scene()
    size = sky.shape[-1]
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    blob = torch.exp(-((yy - 60) ** 2 + (xx - 100) ** 2) / (2 * 25.0**2))
    edited = sky.clone()
    edited[:, 0] += 0.08 * blob  # a pink cloud: red up, green down
    edited[:, 1] -= 0.06 * blob
    mean, p95 = color_drift(sky, edited.clamp(0, 1))
    assert (p95 > LIMITS["color_drift_p95"]).all(), p95
    assert (mean > 0.5).all(), mean
    # Smooth and low-frequency: it adds neither grain nor fine detail.
    assert (flat_noise(sky, edited) < 0.3).all()
    assert (detail_excess(sky, edited)[0] < 0.05).all()


def test_uniform_noise_on_a_flat_scene_reads_as_its_rms():
    sky = _flat_scene()
    amp = 6 / 255
    noisy = sky + (torch.rand_like(sky) * 2 - 1) * amp
    rms = amp * 255 / math.sqrt(3)
    got = flat_noise(sky, noisy)
    # Subtracting a sigma-2 blur removes about 2% of white noise's energy.
    assert got == pytest.approx(torch.full_like(got, rms), rel=0.05)
    excess, p95 = detail_excess(sky, noisy)
    assert (excess > 0.5).all() and (p95 >= excess).all()
    # Colour drift low-passes first, so pixel noise barely counts.
    assert (color_drift(sky, noisy)[0] < 0.5).all()


def test_noise_shows_more_on_a_blurred_photo_than_on_the_textured_one(photos):
    blurred = KF.gaussian_blur2d(photos, (13, 13), (2.5, 2.5), border_type="reflect")
    noise = (torch.rand_like(photos) * 2 - 1) * (8 / 255)
    on_blur, on_blur95 = detail_excess(blurred, (blurred + noise).clamp(0, 1))
    on_photo, on_photo95 = detail_excess(photos, (photos + noise).clamp(0, 1))
    assert (on_blur > 1.5 * on_photo).all(), (on_blur, on_photo)
    assert (on_blur95 > on_photo95).all()
    assert (on_blur > LIMITS["detail_excess"]).all()


def test_recoloured_object_drifts_but_a_global_hue_shift_does_not(photos):
    shifted = KE.adjust_hue(photos, 0.15).clamp(0, 1)
    assert (color_drift(photos, shifted)[0] < 1.0).all()
    # The same hue shift inside a soft disc: no global map explains it.
    size = photos.shape[-1]
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    mask = ((yy - 128) ** 2 + (xx - 128) ** 2 < 60**2).float()
    mask = KF.gaussian_blur2d(mask[None, None], (15, 15), (3.0, 3.0))
    local = photos * (1 - mask) + shifted * mask
    mean_local, p95_local = color_drift(photos, local)
    assert (p95_local > 2 * color_drift(photos, shifted)[1]).all()


def test_tone_shift_sees_a_grade_and_not_grain(photos):
    # A global exposure change: what colour drift takes out, tone shift must see.
    brighter = KE.adjust_brightness(photos, 0.06).clamp(0, 1)
    assert (tone_shift(photos, brighter) > LIMITS["tone_shift"]).all()
    assert (color_drift(photos, brighter)[0] < LIMITS["color_drift"]).all()
    # It grows with the change, and a slight one stays under the limit.
    slight = KE.adjust_brightness(photos, 0.01).clamp(0, 1)
    assert (tone_shift(photos, slight) < tone_shift(photos, brighter) / 3).all()
    assert (tone_shift(photos, slight) < LIMITS["tone_shift"]).all()
    # A contrast grade moves shadows and highlights apart: seen too.
    contrast = ((photos - 0.5) * 1.5 + 0.5).clamp(0, 1)
    assert (tone_shift(photos, contrast) > LIMITS["tone_shift"]).all()
    # Zero-mean grain far above the flat-noise limit averages out in the low-pass.
    noise = (torch.rand_like(photos) * 2 - 1) * (12 / 255)
    noisy = (photos + noise).clamp(0, 1)
    assert (tone_shift(photos, noisy) < 0.5).all()
    assert (flat_noise(photos, noisy) > LIMITS["flat_noise"]).all() or \
        (detail_excess(photos, noisy)[0] > LIMITS["detail_excess"]).all()


def _mid_band(x: torch.Tensor) -> torch.Tensor:
    return (KF.gaussian_blur2d(x, (13, 13), (2.0, 2.0), border_type="reflect")
            - KF.gaussian_blur2d(x, (31, 31), (5.0, 5.0), border_type="reflect"))


def test_structure_change_sees_a_new_pattern_hidden_in_texture(photos):
    # A mid-scale pattern as strong as the photo's own band where it has one (what a texture
    # attack adds): no gain of the original's band explains it.
    luma = photos.mean(1, keepdim=True)
    amp = KF.gaussian_blur2d(_mid_band(luma) ** 2, (31, 31), (5.0, 5.0)).sqrt()
    g = torch.Generator().manual_seed(0)
    pattern = _mid_band(torch.randn(luma.shape, generator=g))
    pattern = pattern / pattern.std()

    def added(ratio: float) -> torch.Tensor:
        return (photos + ratio * amp * pattern).clamp(0, 1)

    mean, p99 = structure_change(photos, added(1.0))
    assert (mean > LIMITS["structure_change"]).all(), mean
    assert (p99 > LIMITS["structure_change_p99"]).all() and (p99 > mean).all()
    # It grows with the pattern, and a faint one stays under both limits.
    faint_mean, faint_p99 = structure_change(photos, added(0.15))
    assert (faint_mean < mean / 3).all()
    assert (faint_mean < LIMITS["structure_change"]).all()
    assert (faint_p99 < LIMITS["structure_change_p99"]).all()


def test_clipping_the_most_edited_blocks_keeps_more_than_one_scale(photos):
    # The pattern above, faint everywhere and strong on a 48 px square (9 of 256 blocks): the
    # structure measure's p99 is past its limit because of the square.
    luma = photos.mean(1, keepdim=True)
    amp = KF.gaussian_blur2d(_mid_band(luma) ** 2, (31, 31), (5.0, 5.0)).sqrt()
    pattern = _mid_band(torch.randn(luma.shape, generator=torch.Generator().manual_seed(0)))
    weight = torch.full((1, 1, 256, 256), 0.3)
    weight[..., 96:144, 96:144] = 2.0
    change = (photos + amp * pattern / pattern.std() * weight).clamp(0, 1) - photos
    mean, p99 = structure_change(photos, photos + change)
    assert (p99 > LIMITS["structure_change_p99"]).all()
    excess = block_excess(photos, photos + change)
    assert excess.shape == (4, 1, 16, 16)
    assert torch.equal(block_excess(photos, photos), torch.zeros_like(excess))
    # The square (blocks 6-8) shows the most.
    assert (excess[..., 6:9, 6:9].mean((1, 2, 3)) > 2 * excess[..., :4, :].mean((1, 2, 3))).all()

    def clipped(level: torch.Tensor) -> torch.Tensor:
        share = clip_share(excess, level)
        return photos + change * torch.nn.functional.interpolate(
            share, size=(256, 256), mode="bilinear", align_corners=True)

    def within(result: torch.Tensor) -> torch.Tensor:
        mean, p99 = structure_change(photos, result)
        return (mean <= LIMITS["structure_change"]) & (p99 <= LIMITS["structure_change_p99"])

    # The highest level within the structure limits, by bisection (as natural_limit does).
    lo, hi = torch.zeros(4), excess.flatten(1).amax(1)
    assert torch.equal(clip_share(excess, hi), torch.ones_like(excess))
    for _ in range(8):
        mid = (lo + hi) / 2
        ok = within(clipped(mid))
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    share = clip_share(excess, lo)
    # The square shrinks, blocks far from it much less.
    square = share[..., 6:9, 6:9].mean((1, 2, 3))
    assert (square < 0.7).all() and (square + 0.25 < share[..., :3, :].mean((1, 2, 3))).all()
    # More of the change kept than by the one scale for the whole image that meets the same
    # limits.
    whole = torch.minimum(LIMITS["structure_change"] / mean, LIMITS["structure_change_p99"] / p99)
    kept = (clipped(lo) - photos).abs().mean((1, 2, 3)) / change.abs().mean((1, 2, 3))
    assert (kept > 1.1 * whole).all(), (kept, whole)


def test_structure_change_leaves_sharpening_and_a_grade_alone(photos):
    # Sharpening raises the contrast of the original's own detail: its pattern stays.
    blur = KF.gaussian_blur2d(photos, (13, 13), (2.0, 2.0), border_type="reflect")
    sharper = (photos + 0.5 * (photos - blur)).clamp(0, 1)
    # Saturation moves each pixel's luminance by its hue, which the global colour map explains.
    graded = KE.adjust_saturation(photos, 1.3).clamp(0, 1)
    for edited in (sharper, graded):
        mean, p99 = structure_change(photos, edited)
        assert (mean < LIMITS["structure_change"] / 2).all(), mean
        assert (p99 < LIMITS["structure_change_p99"]).all(), p99
    # A new mid-scale pattern with the sharpening's RMS change shows far more.
    g = torch.Generator().manual_seed(1)
    pattern = _mid_band(torch.randn(photos[:, :1].shape, generator=g))
    pattern = pattern * (sharper - photos).std() / pattern.std()
    assert (structure_change(photos, (photos + pattern).clamp(0, 1))[0]
            > 3 * structure_change(photos, sharper)[0]).all()


def test_half_size_tone_shift_matches_full_size(photos):
    big = torch.nn.functional.interpolate(photos, size=(512, 512), mode="bilinear",
                                          align_corners=False).clamp(0, 1)
    graded = KE.adjust_gamma(big, 0.8).clamp(0, 1)
    half, full = tone_shift(big, graded), tone_shift(big, graded, downsample=1)
    assert half == pytest.approx(full, rel=0.03)


def test_rows_and_worst_ratio(photos):
    rows = naturalness(photos, (photos + 0.02).clamp(0, 1))
    assert len(rows) == len(photos) and set(rows[0]) == set(MEASURES)
    at_limit = dict(LIMITS)
    assert worst_ratio(at_limit) == pytest.approx(1.0)
    at_limit["flat_noise"] *= 3
    assert worst_ratio(at_limit) == pytest.approx(3.0)


def test_shapes_are_checked(photos):
    with pytest.raises(ValueError, match="equal shapes"):
        naturalness(photos, photos[..., :128, :128])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        naturalness(photos[:, :1], photos[:, :1])


def test_half_size_drift_matches_full_size(sample_images):
    # The default computes colour drift on 2x2 averages (sigma 3 there); both low-passes are
    # linear, so it must agree with the full-size definition on real photos and real edits.
    x = sample_images[0][:3]
    size = x.shape[-1]
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    blob = torch.exp(-((yy - 200) ** 2 + (xx - 260) ** 2) / (2 * 50.0**2))
    edited = x.clone()
    edited[:, 0] += 0.05 * blob
    edited[:, 2] -= 0.04 * blob
    edited = KE.adjust_saturation(edited.clamp(0, 1), 1.1)
    edited = (edited + 0.01 * torch.randn_like(edited)).clamp(0, 1)
    full, full95 = color_drift(x, edited, downsample=1)
    half, half95 = color_drift(x, edited)
    assert half == pytest.approx(full, rel=0.05)
    assert half95 == pytest.approx(full95, rel=0.05)
    assert (full95 > 2).all()  # the blob is there to be measured
