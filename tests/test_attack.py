"""The optimisation loop on real offline models (small, CPU)."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from conftest import STRONG_GRADE
from unrestrict.attack import (
    PIXEL_BASELINE,
    PRESETS,
    Attack,
    AttackConfig,
    ce_loss,
    margin_loss,
)
from unrestrict.augment import input_diversity
from unrestrict.models import Ensemble

pytestmark = pytest.mark.integration  # loads the offline weights


@pytest.fixture(scope="module")
def mobilenet():
    from unrestrict.models import create_classifier

    return Ensemble([create_classifier("mobilenet_v2")])


def test_margin_loss_closed_form():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, -1.0]])
    y = torch.tensor([0, 2])
    torch.testing.assert_close(margin_loss(logits, y), torch.tensor([-1.0, 6.0]))
    torch.testing.assert_close(margin_loss(logits, y, kappa=2.0), torch.tensor([-1.0, 2.0]))
    assert (ce_loss(logits, y) > 0).all()


def _placed_block(y: torch.Tensor) -> tuple[slice, slice]:
    """Rows and columns of y's non-zero block (DI pads with exact zeros)."""
    rows = torch.nonzero(y.abs().sum((0, 1, 3)) > 0).flatten()
    cols = torch.nonzero(y.abs().sum((0, 1, 2)) > 0).flatten()
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def test_input_diversity_shrinks_and_places_each_image():
    x = torch.rand(40, 3, 40, 36) * 0.9 + 0.1  # no zeros of its own
    gens = [torch.Generator().manual_seed(i) for i in range(40)]
    assert input_diversity(x, 0.0, 0.9, gens) is x
    y = input_diversity(x, 1.0, 0.5, gens)
    assert y.shape == x.shape
    sizes, offsets = set(), set()
    for xi, yi in zip(x, y, strict=True):
        if torch.equal(yi, xi):  # the scale rounded to the full size
            continue
        r, c = _placed_block(yi[None])
        sh, sw = r.stop - r.start, c.stop - c.start
        # The same scale for both axes, within a pixel's rounding, and at least min_scale.
        assert 0.5 * 40 - 1 <= sh < 40 and 0.5 * 36 - 1 <= sw < 36
        assert abs(sh / 40 - sw / 36) < 1.5 / 36
        # The image's own resize, as F.interpolate makes it (one resampling for the batch
        # reads the same points, up to float32 rounding of the coordinates), at its offset.
        expect = torch.nn.functional.interpolate(xi[None], size=(sh, sw), mode="bilinear",
                                                 align_corners=False)[0]
        torch.testing.assert_close(yi[:, r, c], expect, atol=1e-4, rtol=0)
        outside = yi.clone()
        outside[:, r, c] = 0
        assert (outside == 0).all()
        sizes.add(sh)
        offsets.add((r.start, c.start))
    assert len(sizes) >= 5 and len(offsets) >= 10


def test_input_diversity_probability_is_per_image():
    x = torch.rand(400, 3, 30, 30)
    gens = [torch.Generator().manual_seed(i) for i in range(400)]
    y = input_diversity(x, 0.3, 0.8, gens)
    untouched = sum(torch.equal(a, b) for a, b in zip(x, y, strict=True))
    # Passes through when the draw misses (0.7) or the scale rounds to 30 px (~1/12 of 0.3).
    assert 0.62 < untouched / 400 < 0.82


@pytest.mark.parametrize("families", [("color",), ("style",), ("geometry",), ("pixel",)])
def test_loop_lowers_true_class_margin(families, mobilenet, sample_images):
    x, y = sample_images[0][:2], sample_images[1][:2]
    # Geometry moves the margin least per step: after 4 steps one image had gained 0.05,
    # little enough that float32 rounding in the warp decided its sign.
    steps = 8 if "geometry" in families else 4
    # Exact gradients: surrogate ones trade progress on the attacked model for transfer. The
    # grade is pinned: the loop, not the default's bounds, is under test.
    cfg = AttackConfig(families=families, stages=1, steps=steps, refine=0, di_prob=0.0,
                       work_size=0 if "pixel" in families else None, sgm_gamma=1.0,
                       relu_width=0.0,
                       family_options={"color": STRONG_GRADE} if "color" in families else {})
    before = margin_loss(mobilenet(x), y)
    results = Attack(cfg, mobilenet).run(x, y, seeds=0)
    adv = torch.stack([r.decoded for r in results]).float() / 255
    after = margin_loss(mobilenet(adv), y)
    assert (after > before).all(), (before, after)
    assert (after - before).mean() > 1.0, (before, after)
    for r in results:
        assert r.val_success is None  # no validation models: the ensemble judges
        assert r.decoded.shape == (3, 500, 500) and r.decoded.dtype == torch.uint8
        assert r.jpeg[:2] == b"\xff\xd8"


def test_staged_budget_stops_early_and_refines(mobilenet, sample_images):
    x, y = sample_images[0][:2], sample_images[1][:2]
    cfg = AttackConfig(families=("color",), stages=4, steps=3, refine=3, di_prob=0.0)
    results = Attack(cfg, mobilenet, val=mobilenet).run(x, y)
    for r in results:
        if r.decision == "minimal":
            assert r.val_success and r.val_margin > 0 and r.strength <= 1.0
            # Success is judged on the decoded JPEG that would be written.
            z = mobilenet(r.decoded[None].float() / 255)
            assert margin_loss(z, y[[results.index(r)]]).item() > 0
        assert r.used <= r.strength + 1e-6


def test_same_seed_same_bytes(mobilenet, sample_images):
    x, y = sample_images[0][:2], sample_images[1][:2]
    cfg = AttackConfig(families=("color", "style"), stages=1, steps=2, refine=0)
    a = Attack(cfg, mobilenet).run(x, y, seeds=3)
    b = Attack(cfg, mobilenet).run(x, y, seeds=3)
    assert [r.jpeg for r in a] == [r.jpeg for r in b]


def test_a_fixed_batch_makes_an_image_independent_of_its_neighbours(mobilenet, sample_images):
    # Stages and refinement shrink the active set part-way, the case where a batch of
    # natural size would change the convolutions' batch size under an image.
    x, y = sample_images[0][:3], sample_images[1][:3]
    cfg = AttackConfig(stages=2, steps=2, refine=1)
    attack = Attack(cfg, mobilenet, val=mobilenet, fixed_batch=2)
    together = attack.run(x, y, seeds=[11, 12, 13])
    alone = attack.run(x[2:], y[2:], seeds=[13])
    swapped = attack.run(x[[2, 0]], y[[2, 0]], seeds=[13, 11])
    assert together[2].jpeg == alone[0].jpeg == swapped[0].jpeg
    assert together[0].jpeg == swapped[1].jpeg
    assert [r.passes for r in alone] == [together[2].passes]


def test_bf16_autocast_runs_and_attacks(mobilenet, sample_images):
    x, y = sample_images[0][:2], sample_images[1][:2]
    cfg = AttackConfig(families=("color", "style"), stages=1, steps=3, refine=0, di_prob=0.0)
    before = margin_loss(mobilenet(x), y)
    results = Attack(cfg, mobilenet, amp="bf16").run(x, y)
    adv = torch.stack([r.decoded for r in results]).float() / 255
    assert (margin_loss(mobilenet(adv), y) > before).all()
    # Parameters stay float32 under autocast: tiny sign steps would vanish in bf16.
    assert all(p.dtype == torch.float32 for r in results for p in r.params.values())


def test_lpips_penalty_keeps_results_closer(mobilenet, sample_images):
    from unrestrict.metrics import LpipsMetric

    x, y = sample_images[0][:2], sample_images[1][:2]
    metric = LpipsMetric("alex")
    dists = []
    for weight in (0.0, 50.0):
        cfg = AttackConfig(families=("color", "style"), stages=1, steps=6, refine=0,
                           di_prob=0.0, lpips_weight=weight, kappa=2.0)
        res = Attack(cfg, mobilenet, lpips=metric.model).run(x, y)
        adv = torch.stack([r.decoded for r in res]).float() / 255
        dists.append(metric(adv, x).mean().item())
    assert dists[1] < dists[0], dists
    with pytest.raises(ValueError, match="needs an LPIPS model"):
        Attack(AttackConfig(lpips_weight=1.0), mobilenet)


def test_ti_blur_in_the_forward_graph_still_attacks(mobilenet, sample_images):
    x, y = sample_images[0][:2], sample_images[1][:2]
    cfg = AttackConfig(families=("pixel",), work_size=0, stages=1, steps=3, refine=0,
                       blur_sigma=1.5, di_prob=0.0)
    before = margin_loss(mobilenet(x), y)
    adv = torch.stack([r.decoded for r in Attack(cfg, mobilenet).run(x, y)]).float() / 255
    assert (margin_loss(mobilenet(adv), y) > before).all()


def test_pixel_baseline_preset_is_the_contest_recipe():
    b = PIXEL_BASELINE
    assert b.families == ("pixel",) and b.steps == 80 and b.momentum == 1.0
    assert b.di_prob == 0.7 and b.loss == "margin" and b.stages == 1


def test_config_validation():
    with pytest.raises(ValueError, match="di_prob"):
        AttackConfig(di_prob=1.5)
    with pytest.raises(ValueError, match="loss"):
        AttackConfig(loss="hinge")  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", ["strongest", "original", "ensemble"])
def test_failure_policy_decides_what_unfooled_images_get(policy, mobilenet, sample_images):
    x, y = sample_images[0][:2], sample_images[1][:2]
    # A validation margin no model reaches: every image fails the budget check, while the
    # white-box pixel attack fools the attack model itself within the first stage or two.
    cfg = AttackConfig(families=("pixel",), work_size=0, stages=4, steps=3, refine=0,
                       di_prob=0.0, val_margin=1e9, on_failure=policy)
    results = Attack(cfg, mobilenet, val=mobilenet).run(x, y)
    for img, r in zip(x, results, strict=True):
        assert r.val_success is False
        assert r.passes == 4 * 3  # every stage ran: nothing stopped early
        change = (r.decoded.float() / 255 - img).abs().mean().item()
        if policy == "strongest":
            assert r.decision == "strongest" and r.strength == 1.0 and change > 4 / 255
        elif policy == "original":
            assert r.decision == "original" and r.strength == 0.0 and change < 1 / 255
            assert all(bool((p == 0).all()) for p in r.params.values())
        else:
            assert r.decision == "ensemble" and r.ensemble_success
            assert r.strength < 1.0  # an earlier, smaller stage already fooled the model


def test_natural_limit_stops_and_scales_back_results_that_show_as_edits(mobilenet,
                                                                       sample_images):
    from unrestrict.naturalness import naturalness, worst_ratio

    x, y = sample_images[0][:2], sample_images[1][:2]
    # Pixel noise fails flat-region noise and added detail from the first stage; the budget
    # check never passes, so only the limit can stop an image early.
    cfg = AttackConfig(families=("pixel",), work_size=0, stages=4, steps=3, refine=0,
                       di_prob=0.0, val_margin=1e9, natural_limit=1.0)
    limited = Attack(cfg, mobilenet, val=mobilenet).run(x, y)
    free = Attack(replace(cfg, natural_limit=0.0), mobilenet, val=mobilenet).run(x, y)
    for img, r, f in zip(x, limited, free, strict=True):
        assert f.decision == "strongest"
        assert worst_ratio(naturalness(img[None], f.decoded[None].float() / 255)[0]) > 1
        assert r.decision == "limited" and r.passes == 3 and r.strength <= 0.25
        assert worst_ratio(naturalness(img[None], r.decoded[None].float() / 255)[0]) <= 1
    # limit_continue: the stopped images go on through the remaining stages, their budget
    # held where the limits put it, and still end within the limits.
    held = Attack(replace(cfg, limit_continue=True), mobilenet, val=mobilenet).run(x, y)
    for img, r, h in zip(x, limited, held, strict=True):
        assert h.decision == "limited" and h.passes == 12
        assert h.strength <= r.strength + 1e-6
        assert worst_ratio(naturalness(img[None], h.decoded[None].float() / 255)[0]) <= 1
    with pytest.raises(ValueError, match="natural_limit"):
        AttackConfig(natural_limit=-1)


def test_shrinking_blocks_keeps_results_within_the_limits_with_more_of_the_change(
        mobilenet, sample_images):
    from unrestrict.naturalness import naturalness, worst_ratio

    x, y = sample_images[0][:2], sample_images[1][:2]
    # natural's texture at its full budget in one stage: past the limits at once, and the
    # budget check never passes.
    cfg = AttackConfig(families=("texture",), stages=1, steps=3, refine=0, di_prob=0.0,
                       val_margin=1e9, natural_limit=1.0,
                       family_options={"texture": {"fine": 12.8, "structure_cap": 8}})
    scaled = Attack(cfg, mobilenet, val=mobilenet).run(x, y)
    blocks = Attack(replace(cfg, limit_shrink="blocks"), mobilenet, val=mobilenet).run(x, y)

    def change(r, img):
        return (r.decoded.float() - img * 255).abs().mean().item()

    shrunk = 0
    for img, s, b in zip(x, scaled, blocks, strict=True):
        assert s.decision == b.decision == "limited" and s.strength < 1.0
        for r in (s, b):
            assert worst_ratio(naturalness(img[None], r.decoded[None].float() / 255)[0]) <= 1
        if b.strength == 1.0:  # the same optimised change, shrunk block by block
            assert change(b, img) > change(s, img)
            shrunk += 1
        else:  # no level of the blocks was within (flat-region noise): scaled as a whole
            assert b.jpeg == s.jpeg
    assert shrunk >= 1
    with pytest.raises(ValueError, match="limit_shrink"):
        AttackConfig(limit_shrink="none")


@pytest.mark.parametrize("copies", [1, 2])
def test_passes_count_only_the_stages_an_image_ran(copies, mobilenet, sample_images):
    x, y = sample_images[0][:2], sample_images[1][:2]
    cfg = AttackConfig(families=("pixel",), work_size=0, stages=4, steps=3, refine=0,
                       di_prob=0.0, val_margin=0.0, copies=copies, augment=("di", "flip"))
    results = Attack(cfg, mobilenet, val=mobilenet).run(x, y)
    for r in results:
        stage = round(r.strength * 4)
        assert r.decision == "minimal" and r.passes == 3 * stage * copies
    with pytest.raises(ValueError, match="on_failure"):
        AttackConfig(on_failure="drop")  # type: ignore[arg-type]


def test_a_step_for_some_rows_of_a_fixed_batch_is_the_step_for_all(mobilenet, sample_images):
    # An active row's update must not depend on how many rows are active: the gradient's norm
    # over a lone row rounds differently from the same row's within the batch, and sign steps
    # turn that last bit into other bytes a few steps later.
    x, y = sample_images[0][:4], sample_images[1][:4]
    attack = Attack(AttackConfig(families=("texture", "color")), mobilenet, fixed_batch=4)

    def step(rows: list[int], active: list[int]) -> tuple[dict, dict]:
        xs = x[rows]
        params = attack.composite.init_params(xs)
        velocity = {k: torch.zeros_like(v) for k, v in params.items()}
        generators = [torch.Generator().manual_seed(7 + r) for r in rows]
        attack._step(xs, params, velocity, y[rows], torch.tensor(active), torch.ones(4),
                     generators, attack.composite.prepare(xs))
        return params, velocity

    whole = step([0, 1, 2, 3], [0, 1, 2, 3])
    for part, row in ((step([0, 1, 2, 3], [1]), 1), (step([1, 1, 1, 1], [0]), 0)):
        for got, want in zip(part, whole, strict=True):
            for k in want:
                assert torch.equal(got[k][row], want[k][1]), k
    untouched = step([0, 1, 2, 3], [1])
    assert all(not v[0].any() for v in untouched[1].values())  # inactive rows keep theirs


def test_lookahead_takes_the_gradient_ahead_along_the_momentum_within_the_bounds(
        mobilenet, sample_images):
    x, y = sample_images[0][:2], sample_images[1][:2]
    cfg = AttackConfig(families=("color", "style"), steps=4, lookahead=3.0)
    attack = Attack(cfg, mobilenet)
    seen: list[dict[str, torch.Tensor]] = []
    objective = attack.objective

    def spy(x_work, params, *args, **kwargs):
        seen.append({k: v.detach().clone() for k, v in params.items()})
        return objective(x_work, params, *args, **kwargs)

    attack.objective = spy  # type: ignore[method-assign]
    params = attack.composite.init_params(x)
    velocity = {k: torch.zeros_like(v) for k, v in params.items()}
    strength = torch.full((2,), 0.5)
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    limits = attack.composite.limits(params, strength)
    for _ in range(3):
        before = {k: v.clone() for k, v in params.items()}
        v_before = {k: v.clone() for k, v in velocity.items()}
        attack._step(x, params, velocity, y, torch.arange(2), strength, generators,
                     attack.composite.prepare(x))
        ahead = cfg.effective_step_size * cfg.lookahead * cfg.momentum
        for k in params:
            want = (before[k] + ahead * limits[k] * v_before[k]).clamp(-limits[k], limits[k])
            torch.testing.assert_close(seen[-1][k], want)
            assert (params[k].abs() <= limits[k] + 1e-7).all()
    # From the second step on the momentum is non-zero: the gradient is taken elsewhere.
    assert any(not torch.equal(seen[-1][k], before[k]) for k in params)
    with pytest.raises(Exception, match="lookahead"):
        AttackConfig(lookahead=-1.0)


def test_a_step_off_the_cpu_never_reads_a_value_back(mobilenet):
    # Off the CPU the host queues a step's kernels ahead of the device; a read back (.item(),
    # a shape that depends on values) stalls it every step. Meta tensors hold no values, so
    # any read fails there, on the code paths a GPU takes.
    meta = copy.deepcopy(mobilenet).to("meta")
    for cfg in (PRESETS["natural"], replace(PRESETS["bold"], lookahead=1.0, copies=2)):
        attack = Attack(cfg, meta, device="meta")
        x = torch.rand(2, 3, 500, 500, device="meta")
        y = torch.zeros(2, dtype=torch.long, device="meta")
        params = attack.composite.init_params(x)
        velocity = {k: torch.zeros_like(v) for k, v in params.items()}
        strength = torch.full((2,), 0.5, device="meta")
        generators = [torch.Generator().manual_seed(i) for i in range(2)]
        with attack.surrogate():
            for rows in ([0, 1], [1]):
                attack._step(x, params, velocity, y, torch.tensor(rows, device="meta"),
                             strength, generators, attack.composite.prepare(x), None,
                             attack.box(params, strength), rows)
        assert all(p.device.type == "meta" for p in params.values())


def test_the_box_is_each_parameters_bounds_at_the_budget_and_its_step(mobilenet,
                                                                        sample_images):
    attack = Attack(AttackConfig(families=("texture", "color"), steps=8), mobilenet)
    params = attack.composite.init_params(sample_images[0][:2])
    strength = torch.tensor([0.25, 1.0])
    box = attack.box(params, strength)
    limits = attack.composite.limits(params, strength)
    for k in params:
        assert torch.equal(box.high[k], limits[k]) and torch.equal(box.low[k], -limits[k])
        torch.testing.assert_close(box.stride[k], limits[k] * 2.5 / 8)
    one = box.rows(torch.tensor([1]))
    assert all(torch.equal(one.high[k], limits[k][1:]) for k in params)


def test_a_render_with_the_batchs_prepared_constants_is_the_render_without(mobilenet,
                                                                           sample_images):
    # The loop renders every stage's candidates with the full-size constants it prepared once
    # per batch (the texture family's visibility maps); a subset's rows must render as if
    # they had been prepared on their own.
    x = sample_images[0][:3]
    attack = Attack(PRESETS["natural"], mobilenet)
    params = {k: (2 * torch.rand_like(v) - 1) * attack.composite.limits({k: v}, torch.ones(3))[k]
              for k, v in attack.composite.init_params(x).items()}
    prepared = attack.composite.prepare(x)
    rows = torch.tensor([2, 0])
    sub = {k: v[rows] for k, v in params.items()}
    with_rows = attack.render(x[rows], sub, {k: v[rows] for k, v in prepared.items()})
    alone = attack.render(x[rows], sub)
    assert with_rows[0] == alone[0] and torch.equal(with_rows[1], alone[1])
    assert alone[0] != attack.render(x[rows], {k: 0 * v for k, v in sub.items()})[0]
