"""Perturbation families: smoke, identity, range, gradients (float64 gradcheck), bounds."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

from conftest import STRONG_GRADE
from unrestrict.errors import ConfigError
from unrestrict.perturb import (
    DEFAULT_FAMILIES,
    FAMILIES,
    FAMILY_ORDER,
    NATURAL_FAMILIES,
    compose,
    create_family,
)
from unrestrict.perturb.color import tone_curve
from unrestrict.perturb.geometry import warp
from unrestrict.perturb.style import detail_blend, local_color_transform

ALL = list(FAMILY_ORDER)


def _rand_params(comp, x, level, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = {k: torch.randn(v.shape, generator=g, dtype=x.dtype) * 3
              for k, v in comp.init_params(x).items()}
    comp.project_(params, torch.full((x.shape[0],), level, dtype=x.dtype))
    return params


def test_every_family_is_registered_in_order():
    assert set(FAMILIES) == set(FAMILY_ORDER)
    assert set(NATURAL_FAMILIES) == {"color", "style", "geometry", "texture"}
    assert set(DEFAULT_FAMILIES) <= set(NATURAL_FAMILIES)
    comp = compose(["pixel", "color", "geometry", "style"])
    assert comp.names == ["geometry", "style", "color", "pixel"]


@pytest.mark.parametrize("names, once", [
    (["style"], {"style"}), (["color", "style"], {"style"}), (["geometry", "style"], {"geometry"}),
    (["pixel"], set()), (["texture"], {"texture"}), (["texture", "style", "color"],
                                                     {"texture", "style"}),
    (["texture", "geometry", "style"], {"texture"}),
])
def test_prepared_apply_matches_plain_apply(names, once):
    # The loop prepares constants once per batch: the first family's, and those of later
    # families that describe the original image, unless a warp comes before them. The result
    # must be the one apply computes by itself, values and gradients alike.
    x = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    comp = compose(names)
    params = _rand_params(comp, x, 1.0)
    prepared = comp.prepare(x)
    assert {k.partition(".")[0] for k in prepared} == once
    outs, grads = [], []
    for p in (None, prepared):
        leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        y = comp.apply(x, leaves, p)
        y.pow(2).sum().backward()
        outs.append(y.detach())
        grads.append([v.grad for v in leaves.values()])
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("shape", [(2, 3, 24, 24), (1, 3, 17, 29)])
def test_identity_at_init(name, shape, device):
    comp = compose([name])
    x = torch.rand(shape, device=device)
    params = comp.init_params(x)
    assert all(p.abs().sum() == 0 for p in params.values())
    # float32 bicubic resampling exactly at the grid points is exact to ~2e-6 (JPEG's step
    # is 4e-3); every other family is exact.
    torch.testing.assert_close(comp.apply(x, params), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ALL)
def test_output_in_unit_range_and_shape_kept(name, device):
    comp = compose([name])
    x = torch.rand(3, 3, 20, 28, device=device)
    x[0] = 0.0
    x[1] = 1.0
    params = {k: v.to(device) for k, v in _rand_params(comp, x.cpu(), 1.0).items()}
    y = comp.apply(x, params)
    assert y.shape == x.shape
    assert y.min() >= 0 and y.max() <= 1
    assert (y - x).abs().max() > 1e-3  # it does something


@pytest.mark.parametrize("name", ALL)
def test_bounds_respected(name):
    comp = compose([name])
    x = torch.rand(3, 3, 16, 16)
    level = torch.tensor([0.25, 0.5, 1.0])
    # Every entry starts well outside its box (random sign, magnitude >= 100), so
    # projection must put each one exactly on a face. Seeded: an unseeded randn*100
    # once drew an entry already inside a single-element box and failed CI.
    g = torch.Generator().manual_seed(0)
    params = {}
    for k, v in comp.init_params(x).items():
        sign = torch.randint(0, 2, v.shape, generator=g).float() * 2 - 1
        params[k] = sign * (100 + torch.rand(v.shape, generator=g))
    comp.project_(params, level)
    for k, lim in comp.limits(params, level).items():
        assert (params[k].abs() <= lim + 1e-7).all(), k
        # Sign-step corners reach the box exactly.
        assert torch.allclose(params[k].abs().reshape(3, -1).amax(1), lim.reshape(3, -1)[:, 0])
    power = comp.families[0].budget_power
    torch.testing.assert_close(comp.relative_size(params), level ** power)


def test_geometry_is_spent_last():
    comp = compose(["geometry", "color"])
    x = torch.rand(1, 3, 8, 8)
    params = comp.init_params(x)
    lim = comp.limits(params, torch.tensor([0.5]))
    assert lim["geometry.angle"].item() == pytest.approx(math.radians(5.0) * 0.25)
    assert lim["color.hue"].item() == pytest.approx(comp.families[1].config.hue * 0.5)


@pytest.mark.parametrize("name", ALL)
def test_gradcheck_float64(name):
    options = {"style": {"detail": 0.0}}.get(name)  # the detail base is a no-grad constant
    comp = compose([name], {name: options} if options else None)
    x = torch.rand(1, 3, 7, 9, dtype=torch.float64) * 0.8 + 0.1
    params = _rand_params(comp, x, 0.5, seed=1)
    keys = list(params)

    def f(*ps):
        return comp.apply(x, dict(zip(keys, ps, strict=True)))

    inputs = tuple(p.clone().requires_grad_(True) for p in params.values())
    assert gradcheck(f, inputs, eps=1e-6, atol=1e-4)


def test_gradcheck_detail_blend_and_color_transform():
    x = torch.rand(1, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    base = torch.rand(1, 3, 6, 6, dtype=torch.float64)
    w = torch.randn(1, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda x, w: detail_blend(x, w, base), (x, w))
    m = torch.randn(1, 9, 2, 2, dtype=torch.float64, requires_grad=True)
    o = torch.randn(1, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert gradcheck(local_color_transform, (x, m, o))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clamp_unit_has_the_gradient_of_clamp_at_and_beyond_the_ends(dtype):
    from unrestrict.perturb.base import clamp_unit

    one = torch.tensor(1.0, dtype=dtype)
    above, below = torch.nextafter(one, one * 2), torch.nextafter(-one * 0, -one)
    x = torch.tensor([-0.5, below, 0.0, 0.3, 1.0, above, 1.5], dtype=dtype)
    grad = torch.arange(1, 8, dtype=dtype)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    torch.testing.assert_close(clamp_unit(a), b.clamp(0, 1), atol=0, rtol=0)
    (clamp_unit(a) * grad).sum().backward()
    (b.clamp(0, 1) * grad).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, atol=0, rtol=0)
    assert a.grad.tolist() == [0, 0, 0, 4, 0, 0, 0]  # torch's clamp: none at 0 and 1 either


def test_clamp_between_is_clamp_with_the_whole_gradient_at_its_bounds():
    from unrestrict.perturb.base import clamp_between

    x = torch.tensor([-0.5, -0.2, 0.0, 0.3, 0.7, 0.9, 1.5], dtype=torch.float64)
    low = torch.tensor([-0.4, -0.2, -0.1, 0.0, 0.0, 0.5, 0.0], dtype=torch.float64)
    high = torch.tensor([0.5, 0.5, 0.0, 0.4, 0.7, 0.8, 1.0], dtype=torch.float64)
    grad = torch.arange(1, 8, dtype=torch.float64)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    torch.testing.assert_close(clamp_between(a, low, high), b.clamp(low, high), atol=0, rtol=0)
    (clamp_between(a, low, high) * grad).sum().backward()
    (b.clamp(low, high) * grad).sum().backward()
    off_bounds = (x != low) & (x != high)
    torch.testing.assert_close(a.grad[off_bounds], b.grad[off_bounds], atol=0, rtol=0)
    assert a.grad.tolist() == [0, 2, 3, 4, 5, 0, 0]  # whole at a bound (autograd: halved)


def test_clamp_between_with_a_weight_moves_that_share_of_the_way_with_autograds_gradient():
    from unrestrict.perturb.base import clamp_between

    x = torch.tensor([-0.5, -0.2, 0.0, 0.3, 0.7, 0.9, 1.5], dtype=torch.float64)
    low = torch.tensor([-0.4, -0.2, -0.1, 0.0, 0.0, 0.5, 0.0], dtype=torch.float64)
    high = torch.tensor([0.5, 0.5, 0.0, 0.4, 0.7, 0.8, 1.0], dtype=torch.float64)
    weight = torch.tensor([0.25, 1.0, 0.5, 0.0, 0.75, 0.6, 0.3], dtype=torch.float64)
    grad = torch.arange(1, 8, dtype=torch.float64)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ours = clamp_between(a, low, high, weight)
    theirs = b + weight * (clamp_between(b, low, high) - b)
    torch.testing.assert_close(ours, theirs, atol=1e-15, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(clamp_between(x, low, high, weight), theirs.detach())
    (ours * grad).sum().backward()
    (theirs * grad).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, atol=1e-15, rtol=0)
    # Outside its bounds, the gradient times 1 - weight: none at weight 1, whole at 0.
    assert a.grad.tolist() == pytest.approx([0.75, 2, 3, 4, 5, 6 * 0.4, 7 * 0.7])


def test_lookup_is_linear_interpolation_with_its_own_gradients():
    """The hand-written lookup (forward and backward) against plain interpolation and autograd,
    inside [0, 1] and on the end segments' extensions outside it."""
    from unrestrict.perturb.color import lookup

    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 5, 7, generator=g, dtype=torch.float64) * 1.4 - 0.2
    lut = torch.rand(2, 3, 9, generator=g, dtype=torch.float64)

    def reference(x, lut):
        n = lut.shape[-1] - 1
        t = x.reshape(2, 3, -1) * n
        k = t.detach().floor().clamp(0, n - 1).long()
        lo, hi = lut.gather(2, k), lut.gather(2, k + 1)
        return (lo + (t - k) * (hi - lo)).view_as(x)

    torch.testing.assert_close(lookup(x, lut), reference(x, lut), atol=1e-12, rtol=0)
    grad = torch.randn(x.shape, generator=g, dtype=torch.float64)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    luts = [lut.clone().requires_grad_(True) for _ in range(2)]
    (lookup(xs[0], luts[0]) * grad).sum().backward()
    (reference(xs[1], luts[1]) * grad).sum().backward()
    torch.testing.assert_close(xs[0].grad, xs[1].grad, atol=1e-12, rtol=0)
    torch.testing.assert_close(luts[0].grad, luts[1].grad, atol=1e-12, rtol=0)
    # Away from the knots (where the slope jumps) finite differences agree too.
    inside = torch.rand(1, 2, 3, 4, generator=g, dtype=torch.float64) * 0.9 + 0.05
    assert gradcheck(lookup, (inside.requires_grad_(True), lut[:1, :2].requires_grad_(True)))


@pytest.mark.parametrize("options", [{}, {"exposure": 0.0}, {"detail": 0.0},
                                     {"exposure": 0.0, "detail": 0.0}])
def test_style_edit_is_the_composition_of_its_parts(options):
    """The family's hand-written forward and backward against autograd of the reference
    functions it fuses, for the parameters and for the input image (geometry's path)."""
    from unrestrict.perturb.base import upsample_field
    from unrestrict.perturb.style import local_exposure

    fam = create_family("style", options)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, 13, 11, generator=g, dtype=torch.float64) * 1.2 - 0.1
    params = {k: (torch.rand(2, *s.shape, generator=g, dtype=torch.float64) * 2 - 1) * s.bound
              * 6 for k, s in fam.param_specs(13, 11).items()}  # big enough to clip
    prepared = fam.prepare(x)

    def reference(x, p):
        y = local_color_transform(x, p["matrix"], p["offset"])
        light = [k for k in ("exposure", "detail") if k in p]
        if light:
            grids = fam._smooth(torch.cat([p[k] for k in light], 1))
            field = dict(zip(light, grids.split(1, 1), strict=True))
            if "exposure" in field:
                y = local_exposure(y, field["exposure"])
            if "detail" in field:
                up = upsample_field(field["detail"], *x.shape[-2:])
                y = y + up * prepared["detail"]
        return y.clamp(0, 1)

    grad = torch.randn(x.shape, generator=g, dtype=torch.float64)
    results = []
    for fn in (lambda x, p: fam.apply(x, p, prepared), reference):
        xi = x.clone().requires_grad_(True)
        ps = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        out = fn(xi, ps)
        (out * grad).sum().backward()
        results.append((out, xi.grad, {k: v.grad for k, v in ps.items()}))
    (out, gx, gp), (ref, ref_gx, ref_gp) = results
    assert 0 < (ref == 0).sum() + (ref == 1).sum() < ref.numel()  # the clamp is exercised
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(gx, ref_gx, atol=1e-10, rtol=0)
    for k in params:
        torch.testing.assert_close(gp[k], ref_gp[k], atol=1e-10, rtol=0)


def _warp_reference(x, angle, log_scale, translate, flow, mode):
    """The warp built pixel by pixel and sampled with grid_sample's own reflection."""
    from unrestrict.perturb.base import upsample_field

    b, _, h, w = x.shape
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, dtype=x.dtype),
                            torch.linspace(-1, 1, w, dtype=x.dtype), indexing="ij")
    px, py = xs * (w / 2), ys * (h / 2)  # pixel units about the centre
    cos, sin = torch.cos(angle).view(b, 1, 1), torch.sin(angle).view(b, 1, 1)
    inv = torch.exp(-log_scale).view(b, 1, 1)
    dense = upsample_field(flow, h, w)
    gx = (cos * px - sin * py) * inv / (w / 2) + 2 * (translate[:, 0].view(b, 1, 1) + dense[:, 0])
    gy = (sin * px + cos * py) * inv / (h / 2) + 2 * (translate[:, 1].view(b, 1, 1) + dense[:, 1])
    out = torch.nn.functional.grid_sample(x, torch.stack([gx, gy], -1), mode=mode,
                                          padding_mode="reflection", align_corners=True)
    return out.clamp(0, 1)


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
@pytest.mark.parametrize("size", [(24, 24), (10, 90), (91, 11)])
def test_warp_pads_once_as_grid_sample_reflects(mode, size):
    """The family's warp (reflection margin padded once, sampling grid as matrix products)
    against the plain construction, at every corner of the bounds, where the margin is
    tightest; thin images check the margin along the short side too."""
    fam = create_family("geometry", {"mode": mode})
    specs = fam.param_specs(*size)
    g = torch.Generator().manual_seed(5)
    n = 8
    x = torch.rand(n, 3, *size, generator=g, dtype=torch.float64)
    params = {k: (torch.randint(0, 2, (n, *s.shape), generator=g) * 2 - 1).double() * s.bound
              for k, s in specs.items()}
    prepared = fam.prepare(x)
    assert "padded" in prepared  # the padded path, not grid_sample's own reflection
    grad = torch.randn(x.shape, generator=g, dtype=torch.float64)
    results = []
    for fn in (lambda p: fam.apply(x, p, prepared), lambda p: fam.apply(x, p),
               lambda p: _warp_reference(x, **p, mode=mode)):
        ps = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        out = fn(ps)
        (out * grad).sum().backward()
        results.append((out, [ps[k].grad for k in params]))
    ref, ref_grads = results[-1]
    for out, grads in results[:-1]:
        torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
        for a, b in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_warp_margin_from_the_parameters():
    # Without a margin warp reads one off the parameters; a quarter turn of a small image
    # needs more than one reflection, which grid_sample's own padding then folds.
    x = torch.rand(2, 3, 10, 14, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    params = dict(angle=torch.tensor([0.05, -0.02], dtype=torch.float64),
                  log_scale=torch.tensor([0.03, -0.04], dtype=torch.float64),
                  translate=torch.tensor([[0.02, -0.03], [0.0, 0.01]], dtype=torch.float64),
                  flow=torch.rand(2, 2, 3, 3, dtype=torch.float64) * 0.02 - 0.01)
    torch.testing.assert_close(warp(x, **params), _warp_reference(x, **params, mode="bicubic"),
                               atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="padded by the margin"):
        warp(x, **params, margin=(2, 2), padded=torch.zeros(2, 3, 14, 14, dtype=x.dtype))
    params["angle"] = torch.tensor([math.pi / 2, 1.0], dtype=torch.float64)
    torch.testing.assert_close(warp(x, **params), _warp_reference(x, **params, mode="bicubic"),
                               atol=1e-12, rtol=0)


def test_gradients_reach_every_parameter_through_the_composite():
    comp = compose(ALL)
    x = torch.rand(2, 3, 16, 16)
    params = {k: v.requires_grad_(True) for k, v in _rand_params(comp, x, 0.3).items()}
    comp.apply(x, params).pow(2).sum().backward()
    for k, p in params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, k


def test_warp_quarter_turn_equals_rot90():
    x = torch.rand(1, 3, 9, 9)
    zero = torch.zeros(1)
    y = warp(x, torch.tensor([math.pi / 2]), zero, torch.zeros(1, 2), torch.zeros(1, 2, 2, 2),
             mode="bilinear")
    torch.testing.assert_close(y, torch.rot90(x, 1, (-2, -1)), atol=1e-5, rtol=0)


def test_warp_translation_moves_content():
    x = torch.zeros(1, 3, 11, 11)
    x[..., 5, 5] = 1.0
    # Normalised span is 2 over 10 pixel steps (align_corners): 0.1 of the size is 1 pixel.
    y = warp(x, torch.zeros(1), torch.zeros(1), torch.tensor([[0.1, 0.0]]),
             torch.zeros(1, 2, 2, 2), mode="bilinear")
    assert y[0, 0, 5, 4] == pytest.approx(1.0, abs=1e-5)


def test_tone_curve_is_monotone_and_keeps_endpoints():
    x = torch.linspace(0, 1, 101).view(1, 1, 1, 101).expand(1, 3, 1, 101).contiguous()
    curves = torch.tensor([[[0.3, -0.3, 0.2, -0.2], [-0.5, 0.5, 0.0, 0.1], [0.0] * 4]])
    y = tone_curve(x, curves)
    assert (y[..., 1:] >= y[..., :-1]).all()
    torch.testing.assert_close(y[..., 0], torch.zeros(1, 3, 1))
    torch.testing.assert_close(y[..., -1], torch.ones(1, 3, 1))
    torch.testing.assert_close(y[0, 2], x[0, 2])  # zero deviation: identity


def test_style_field_is_smooth_not_noise():
    comp = compose(["style"], {"style": {"detail": 0.0}})
    x = torch.full((1, 3, 500, 500), 0.5)  # contest size: 16x16 grid cells are 31 px
    params = _rand_params(comp, x, 1.0)
    y = comp.apply(x, params)
    # On a flat image a smooth field changes slowly: neighbouring pixels differ by far
    # less than the total change.
    step = (y[..., 1:, :] - y[..., :-1, :]).abs().max()
    assert step < 0.1 * (y - x).abs().max()


def test_light_grid_cannot_tile():
    """A checkerboard of saturated exposure cells (what sign steps produce) is blurred away,
    while a coherent change keeps its strength: dodge and burn, never a mosaic."""
    comp = compose(["style"], {"style": {"detail": 0.0}})
    x = torch.full((1, 3, 240, 240), 0.5)
    bound = comp.families[0].config.exposure
    params = comp.init_params(x)
    g = params["style.exposure"].shape[-1]
    ij = torch.arange(g)
    checker = ((ij[:, None] + ij[None, :]) % 2 * 2 - 1).float() * bound
    tiled = comp.apply(x, {**params, "style.exposure": checker.view(1, 1, g, g)})
    flat = comp.apply(x, {**params, "style.exposure": torch.full((1, 1, g, g), bound)})
    assert (tiled - x).abs().max() < 0.3 * (flat - x).abs().max()  # unblurred: 1.0
    assert (flat - x).abs().max() > 0.9 * 0.5 * (math.exp(bound) - 1)


def test_pixel_family_is_linf_bounded():
    comp = compose(["pixel"], {"pixel": {"eps": 8 / 255}})
    x = torch.full((1, 3, 10, 10), 0.5)
    y = comp.apply(x, _rand_params(comp, x, 1.0))
    assert (y - x).abs().max() <= 8 / 255 + 1e-6


def test_create_family_errors_name_the_valid_choices():
    with pytest.raises(ValueError, match="choose from texture, geometry, style, color, pixel"):
        create_family("blur")
    with pytest.raises(ValueError, match="valid:.*rotation"):
        create_family("geometry", {"rotate": 3})
    with pytest.raises(ValueError, match="not selected"):
        compose(["color"], {"style": {"grid": 3}})


def test_family_options_are_typed():
    fam = create_family("geometry", {"rotation": "2.5", "flow_grid": "4"})
    assert fam.config.rotation == 2.5 and fam.config.flow_grid == 4


@pytest.mark.parametrize("grid", [(4, 7), (60, 45)])  # a dense product; banded blocks
def test_upsample_field_is_torch_bicubic(grid):
    import torch.nn.functional as F

    from unrestrict.perturb.base import _banded_weights, upsample_field

    g = torch.randn(2, 5, *grid, dtype=torch.float64)
    size = (grid[0] * 5 + 3, grid[1] * 7 + 1)
    banded = _banded_weights(grid[0], size[0], g.device, g.dtype, "bicubic") is not None
    assert banded == (grid[0] > 10)
    ref = F.interpolate(g, size=size, mode="bicubic", align_corners=True)
    torch.testing.assert_close(upsample_field(g, *size), ref, atol=1e-12, rtol=0)
    g.requires_grad_(True)  # and its gradient is the transposed products'
    w = torch.randn(2, 5, *size, dtype=torch.float64)
    (ours,) = torch.autograd.grad((upsample_field(g, *size) * w).sum(), g)
    (theirs,) = torch.autograd.grad((F.interpolate(g, size=size, mode="bicubic",
                                                   align_corners=True) * w).sum(), g)
    torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=0)
    const = torch.full((1, 1, 4, 4), 0.3, dtype=torch.float64)
    torch.testing.assert_close(upsample_field(const, 20, 20), torch.full((1, 1, 20, 20), 0.3,
                                                                          dtype=torch.float64))


@pytest.mark.parametrize("mode", ["bspline", "bicubic"])
@pytest.mark.parametrize("shape,size", [((2, 1, 60, 45), (120, 90)),  # reflected borders
                                        ((1, 2, 3, 5), (24, 40))])  # replicated
def test_highpass_upsample_dense_form_is_blur_difference_and_upsampling(mode, shape, size):
    """The form off the CPU (two dense products) against the one on it, values and gradient."""
    from unrestrict.perturb.base import _highpass_upsample_dense, highpass_upsample_field

    g = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    ours = _highpass_upsample_dense(g, 1.0, *size, mode)
    ref = highpass_upsample_field(g, 1.0, *size, mode)  # CPU: blur_field, upsample_field
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)
    w = torch.randn_like(ref)
    (ga,) = torch.autograd.grad((ours * w).sum(), g)
    (gb,) = torch.autograd.grad((ref * w).sum(), g)
    torch.testing.assert_close(ga, gb, atol=1e-12, rtol=0)
    flat = torch.full(shape, 0.3, dtype=torch.float64)  # a high-pass drops a constant
    assert _highpass_upsample_dense(flat, 1.0, *size, mode).abs().max() < 1e-12


@pytest.mark.parametrize("shape,size", [((2, 1, 60, 45), (120, 90)), ((1, 2, 3, 5), (24, 40))])
def test_highpass_and_plain_dense_form_is_both_fields(shape, size):
    """Two grids through one pair of products (off the CPU) against each field on its own,
    values and gradients."""
    from unrestrict.perturb.base import (
        _highpass_and_plain_dense,
        highpass_and_plain_fields,
        highpass_upsample_field,
        upsample_field,
    )

    g = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    o = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    ours = _highpass_and_plain_dense(g, o, 1.0, *size, "bspline")
    ref = highpass_and_plain_fields(g, o, 1.0, *size, "bspline")  # CPU: shared banded products
    torch.testing.assert_close(ref[:, :, 0], highpass_upsample_field(g, 1.0, *size, "bspline"))
    torch.testing.assert_close(ref[:, :, 1], upsample_field(o, *size, "bspline"))
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)
    w = torch.randn_like(ref)
    grads = torch.autograd.grad((ours * w).sum(), (g, o))
    for a, b in zip(grads, torch.autograd.grad((ref * w).sum(), (g, o)), strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("shape", [(2, 1, 70, 45), (1, 2, 3, 9)])  # banded; replicated
@pytest.mark.parametrize("sigma", [0.6, 1.0])
def test_blur_field_is_kornias_gaussian_blur(shape, sigma):
    import math

    import kornia.filters as KF

    from unrestrict.perturb.base import blur_field

    g = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    k = 2 * math.ceil(3 * sigma) + 1
    border = "replicate" if min(shape[-2:]) <= k // 2 else "reflect"
    ref = KF.gaussian_blur2d(g, (k, k), (sigma, sigma), border_type=border)
    ours = blur_field(g, sigma)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)
    w = torch.randn_like(ref)
    (ga,) = torch.autograd.grad((ours * w).sum(), g)
    (gb,) = torch.autograd.grad((ref * w).sum(), g)
    torch.testing.assert_close(ga, gb, atol=1e-12, rtol=0)


def test_a_trailing_global_grade_runs_after_the_resize():
    import torch.nn.functional as F

    comp = compose(["texture", "color"], {"color": STRONG_GRADE})
    x = _photo() * 0.6 + 0.2
    params = _rand_params(comp, x, 0.8)
    calls = []

    def shrink(t: torch.Tensor) -> torch.Tensor:
        calls.append(t.shape[-1])
        return F.interpolate(t, size=(16, 16), mode="bilinear", antialias=True,
                             align_corners=False)

    late = comp.apply(x, params, resize=shrink)
    early = shrink(comp.apply(x, params))
    assert calls[0] == x.shape[-1] and late.shape == early.shape
    # The grade is pointwise: after or before the resize differ only by its averaging.
    assert (late - early).abs().amax() < 0.02
    assert (late - shrink(x)).abs().amax() > 0.02  # and it did change the image
    comp_px = compose(["color", "pixel"])  # the pixel family ends it: no reordering
    p2 = _rand_params(comp_px, x, 0.8)
    torch.testing.assert_close(comp_px.apply(x, p2, resize=shrink), shrink(comp_px.apply(x, p2)))


def test_chroma_matrix_is_a_rotation_of_yuv_chroma():
    import kornia.color as KC

    from unrestrict.perturb.color import adjust_chroma

    x = torch.rand(2, 3, 5, 5, dtype=torch.float64)
    sat = torch.tensor([0.2, -0.1], dtype=torch.float64)
    hue = torch.tensor([0.3, -0.5], dtype=torch.float64)
    yuv = KC.rgb_to_yuv(x)
    s = torch.exp(sat).view(-1, 1, 1)
    c, n = torch.cos(hue).view(-1, 1, 1) * s, torch.sin(hue).view(-1, 1, 1) * s
    u, v = yuv[:, 1], yuv[:, 2]
    ref = KC.yuv_to_rgb(torch.stack([yuv[:, 0], c * u - n * v, n * u + c * v], 1))
    torch.testing.assert_close(adjust_chroma(x, sat, hue), ref, atol=1e-12, rtol=0)
    # Luma is untouched by chroma changes.
    torch.testing.assert_close(KC.rgb_to_yuv(adjust_chroma(x, sat, hue))[:, 0], yuv[:, 0])


def test_fused_colour_matches_the_kornia_chain():
    """The one-lookup, one-matrix colour pass equals the step-by-step kornia operations."""
    import kornia.enhance as KE

    from unrestrict.perturb.color import _gamma, adjust_chroma, adjust_color, tone_curve

    g = torch.Generator().manual_seed(0)
    b = 5
    x = torch.rand(b, 3, 32, 32, generator=g, dtype=torch.float64) * 0.6 + 0.2

    def r(bound, *shape):
        return (torch.rand(b, *shape, generator=g, dtype=torch.float64) * 2 - 1) * bound

    br, co, sa, hu, ga, cu = r(0.06), r(0.15), r(0.25), r(0.06), r(0.15), r(0.35, 3, 8)
    y = _gamma(tone_curve(x, cu), ga)
    y = KE.adjust_brightness(y, br, clip_output=False)
    y = KE.adjust_contrast_with_mean_subtraction(y, torch.exp(co))
    ref = adjust_chroma(y, sa, hu).clamp(0, 1)
    out = adjust_color(x, br, co, sa, hu, ga, cu)
    # The lookup table approximates gamma between its knots: a few 1e-3 at most.
    torch.testing.assert_close(out, ref, atol=3e-3, rtol=0)
    assert (out - ref).abs().mean() < 1e-4


def test_colour_curves_are_one_shared_curve_plus_a_channel_deviation():
    from unrestrict.perturb.color import adjust_color

    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 16, 16, generator=g)
    zero = torch.zeros(2)
    shared = (torch.rand(2, 1, 8, generator=g) * 2 - 1) * 0.35
    channel = (torch.rand(2, 3, 8, generator=g) * 2 - 1) * 0.1
    both = adjust_color(x, zero, zero, zero, zero, zero, shared, channel)
    torch.testing.assert_close(both, adjust_color(x, zero, zero, zero, zero, zero,
                                                  shared + channel))
    # A shared curve alone maps grey to grey: it never casts a colour.
    grey = torch.rand(2, 1, 16, 16, generator=g).expand(2, 3, 16, 16)
    out = adjust_color(grey, zero, zero, zero, zero, zero, shared)
    torch.testing.assert_close(out[:, 0], out[:, 1], rtol=0, atol=0)
    torch.testing.assert_close(out[:, 0], out[:, 2], rtol=0, atol=0)
    specs = create_family("color").param_specs(500, 500)
    assert specs["curves"].shape == (1, 8) and "channel_curves" not in specs  # off by default
    specs = create_family("color", {"channel_curve": 0.02}).param_specs(500, 500)
    assert specs["channel_curves"].shape == (3, 8)
    assert specs["channel_curves"].bound < specs["curves"].bound


def _photo(size: int = 96) -> torch.Tensor:
    """Left half: fine random texture; right half: flat grey with one strong vertical edge."""
    g = torch.Generator().manual_seed(0)
    x = torch.full((1, 3, size, size), 0.5)
    x[..., : size // 2] += (torch.rand(1, 1, size, size // 2, generator=g) - 0.5) * 0.3
    x[..., 3 * size // 4 :] = 0.2  # a dark region: an isolated straight edge at 3/4
    return x.clamp(0, 1)


def test_texture_visibility_is_high_in_texture_and_low_on_flats_blur_and_edges():
    from unrestrict.perturb.texture import visibility

    x = _photo()
    vis = visibility(x)  # (1, 3, H, W): fine, mid, coarse
    fine = vis[0, 0]
    texture = fine[20:76, 8:40].mean()
    flat = fine[20:76, 56:66].mean()  # flat grey, away from both boundaries
    edge = fine[20:76, 70:74].mean()  # straddles the isolated edge at column 72
    assert texture > 0.02
    assert flat < 0.05 * texture
    assert edge < 0.5 * texture
    # A blurred copy has local contrast but no fine detail: the fine band's map collapses.
    blurred = torch.nn.functional.avg_pool2d(x, 5, 1, 2, count_include_pad=False)
    assert visibility(blurred)[0, 0, 20:76, 8:40].mean() < 0.35 * texture


@pytest.mark.parametrize("channels", ["luma", "rgb"])
def test_texture_change_is_bounded_by_ratio_times_visibility(channels):
    from unrestrict.perturb.texture import visibility

    x = _photo() * 0.6 + 0.2  # away from 0 and 1: no clamping
    comp = compose(["texture"], {"texture": {"channels": channels}})
    level = torch.tensor([0.5])
    params = _rand_params(comp, x, 0.5)
    y = comp.apply(x, params)
    vis = visibility(x)
    cfg = comp.families[0].config
    bound = 0.5 * (cfg.fine * vis[:, :1] + cfg.mid * vis[:, 1:2] + cfg.coarse * vis[:, 2:])
    delta = y - x
    assert (delta.abs() <= bound + 1e-6).all()
    assert delta.abs().amax() > 0.2 * bound.amax()  # it uses its budget
    if channels == "luma":  # the same change in R, G and B: luminance only, hue kept
        torch.testing.assert_close(delta[:, 0], delta[:, 1], atol=1e-6, rtol=0)
        torch.testing.assert_close(delta[:, 0], delta[:, 2], atol=1e-6, rtol=0)
    else:
        assert (delta[:, 0] - delta[:, 1]).abs().amax() > 1e-3
    # The grid is bounded by ratio / 2: its high-pass (grid minus its blur) stays within ratio.
    assert comp.limits(params, level)["texture.fine"].item() == pytest.approx(cfg.fine * 0.25)


def _coloured_photo(size: int = 96) -> torch.Tensor:
    """_photo with each channel's texture drawn apart: colour detail as well as lightness."""
    g = torch.Generator().manual_seed(1)
    x = _photo(size)
    x[..., : size // 2] += (torch.rand(1, 3, size, size // 2, generator=g) - 0.5) * 0.2
    return x.clamp(0, 1) * 0.6 + 0.2  # away from 0 and 1: no clamping


@pytest.mark.parametrize("band", ["fine", "mid"])
def test_texture_chroma_keeps_luminance_and_is_bounded_by_colour_detail(band):
    import kornia.color as KC

    from unrestrict.perturb.texture import chroma_visibility, opponent

    i = ("fine", "mid").index(band)
    comp = compose(["texture"], {"texture": {f"chroma_{band}": 2.0}})
    x = _coloured_photo()
    params = _rand_params(comp, x, 0.5)
    assert f"texture.{band}_chroma" in params
    luma_params = {k: v for k, v in params.items() if "_chroma" not in k}

    def colour_of(options, image):
        """What the chroma components add to the luminance-only change."""
        with_colour = compose(["texture"], {"texture": {f"chroma_{band}": 2.0, **options}})
        luma_only = compose(["texture"], {"texture": options})
        return with_colour.apply(image, params) - luma_only.apply(image, luma_params)

    colour = colour_of({}, x)
    # Colour only: the luminance (as the naturalness measures read it) is unchanged.
    torch.testing.assert_close(KC.rgb_to_grayscale(colour), torch.zeros_like(colour[:, :1]),
                               atol=1e-6, rtol=0)
    # Each opponent component within ratio x level x the original's colour detail.
    bound = 0.5 * 2.0 * chroma_visibility(x)[:, i : i + 1]
    components = opponent(colour)
    assert (components.abs() <= bound + 1e-6).all()
    assert components.abs().amax() > 0.2 * bound.amax()  # it uses its budget
    # Grey texture (the same lightness detail, no colour detail) gets no colour at all: on
    # grey branches against a sky it would show as a coloured fringe.
    assert colour_of({}, _photo() * 0.6 + 0.2).abs().amax() < 1e-6
    # The cap bounds the colour components too.
    capped_colour = colour_of({"cap": 2.0}, x)
    assert opponent(capped_colour).abs().amax() <= 0.5 * 2.0 / 255 + 1e-6
    assert capped_colour.abs().amax() < colour.abs().amax()
    with pytest.raises(ConfigError, match="chroma"):
        compose(["texture"], {"texture": {f"chroma_{band}": 1.0, "channels": "rgb"}})
    with pytest.raises(ConfigError, match="chroma"):
        compose(["texture"], {"texture": {f"chroma_{band}": 1.0, band: 0.0}})


def test_texture_gain_scales_the_originals_band_and_keeps_its_edges_in_place():
    import kornia.color as KC

    from unrestrict.perturb.base import upsample_field
    from unrestrict.perturb.texture import _activity, _blur, _range_position

    x = _photo() * 0.6 + 0.2  # away from 0 and 1: no clamping
    comp = compose(["texture"], {"texture": {"fine": 0.0, "mid": 0.0, "coarse": 0.0,
                                             "gain_mid": 0.8}})
    params = _rand_params(comp, x, 0.5)
    assert set(params) == {"texture.mid_gain"}
    delta = comp.apply(x, params) - x
    luma = KC.rgb_to_grayscale(x)
    band = (_blur(luma, 2.0) - _blur(luma, 4.0)) * _activity(luma, 3 / 255, 8 / 255) \
        * _range_position(luma, 9, 0.2)
    # At most gain x level of the original's own band, pixel by pixel: zero where the band
    # crosses zero (where its edges lie), on flats and on plateaus at the local extremes
    # (the flat sides of an edge: no halo); hue kept.
    assert (delta.abs() <= 0.5 * 0.8 * band.abs() + 1e-6).all()
    assert delta.abs().amax() > 0.2 * (0.5 * 0.8 * band.abs()).amax()  # it uses its budget
    torch.testing.assert_close(delta[:, 0], delta[:, 2], atol=1e-6, rtol=0)
    # The flat grey between texture and edge, and a step edge, whose every pixel lies on one
    # of its two plateaus: the band rings into both, the change does not (no halo).
    assert band[..., 62:82].abs().amax() == 0 and delta[..., 56:].abs().amax() < 1e-6
    ungated = (_blur(luma, 2.0) - _blur(luma, 4.0)) * _activity(luma, 3 / 255, 8 / 255)
    assert ungated[..., 66:78].abs().amax() > 0.02
    gain = upsample_field(params["texture.mid_gain"], *x.shape[-2:], "bspline")
    torch.testing.assert_close(delta, (gain * band).expand_as(delta), atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="gain_fine"):
        compose(["texture"], {"texture": {"gain_fine": -1.0}})


def test_texture_band_and_gain_through_shared_products_are_the_same_change(monkeypatch):
    """A band with a gain shares its products with the gain's (banded on the CPU, dense
    elsewhere, forced here on the CPU): values and gradients match the band and gain taken
    one by one."""
    from unrestrict.perturb import texture
    from unrestrict.perturb.base import _highpass_and_plain_dense

    x = _photo()[..., :64, :48].double()
    options = {"fine": 12.8, "mid": 4.0, "coarse": 3.0, "gain_fine": 0.5, "gain_coarse": 0.5,
               "overshoot": 0.5, "overshoot_reach": 4}
    comp = compose(["texture"], {"texture": options})
    params = _rand_params(comp, x, 0.7)
    weights = torch.randn_like(x)

    def change():
        prepared = comp.prepare(x)
        p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        out = comp.apply(x, p, prepared)
        return prepared, out, torch.autograd.grad((out * weights).sum(), list(p.values()))

    shared, out, grads = change()
    assert "texture.fused_maps" in shared and "texture.bands" not in shared  # mid has none
    with monkeypatch.context() as m:
        m.setattr(texture, "highpass_and_plain_fields", _highpass_and_plain_dense)
        runs = [change()]
    with monkeypatch.context() as m:
        m.setattr(texture.TextureFamily, "_fused", lambda self: ())
        runs.append(change())
    assert "texture.bands" in runs[1][0] and "texture.fused_maps" not in runs[1][0]
    assert (runs[1][1] - x).abs().amax() > 1e-3
    for _, other, other_grads in runs:
        torch.testing.assert_close(out, other, atol=1e-12, rtol=0)
        for a, b in zip(grads, other_grads, strict=True):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_texture_range_gate_keeps_plateaus_between_branches_unchanged():
    from unrestrict.perturb.texture import visibility

    # Dark one-pixel "branches" on a white sky: every pixel sits at a local extreme, so the
    # gated maps are 0 there; between the extremes (a continuous texture) most of it stays.
    sky = torch.ones(1, 3, 96, 96) * 0.95
    sky[..., ::6, :] = 0.15
    sky[..., :, ::7] = 0.15
    assert visibility(sky).amax() > 0.01  # ungated, the branches mask the sky between them
    assert visibility(sky, range_margin=0.2).amax() == 0
    texture = _photo()[..., 20:76, 8:40]
    ungated = visibility(texture).sum((0, 2, 3))
    gated = visibility(texture, range_margin=0.2).sum((0, 2, 3))
    assert (gated > 0.6 * ungated).all() and (gated < ungated).all()


def test_texture_detail_activity_treats_smooth_shading_as_flat():
    from unrestrict.perturb.texture import visibility

    # A glossy highlight: a smooth bump with no detail. Its slopes have a large 7x7 std, so
    # the plain ramp lets the mid and coarse bands change it; measured on detail, none.
    yy, xx = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    bump = 0.2 + 0.6 * torch.exp(-((yy - 48) ** 2 + (xx - 48) ** 2) / (2 * 12.0**2))
    bump = bump.expand(1, 3, 96, 96)
    assert visibility(bump)[:, 1:].amax() > 0.01
    assert visibility(bump, detail_sigma=2.0).amax() == 0
    texture = _photo()[..., 20:76, 8:40]
    plain, detail = visibility(texture), visibility(texture, detail_sigma=2.0)
    assert (detail.sum((0, 2, 3)) > 0.5 * plain.sum((0, 2, 3))).all()
    # Never more than the plain ramp allows: the blur of strong texture spreads its residual
    # several pixels into the flat region beside it, which must stay flat.
    half = torch.full((1, 3, 64, 64), 0.1)
    half[..., 32:] = torch.rand(1, 1, 64, 32, generator=torch.Generator().manual_seed(0))
    for image in (texture, half):
        assert (visibility(image, detail_sigma=4.0) <= visibility(image)).all()
    # Limited to the mid and coarse bands: the fine band keeps the plain ramp's map.
    some = visibility(bump, detail_sigma=2.0, detail_bands=("mid", "coarse"))
    torch.testing.assert_close(some[:, :1], visibility(bump)[:, :1])
    assert some[:, 1:].amax() == 0


def test_texture_disorder_keeps_clean_outlines_and_spares_irregular_texture():
    from unrestrict.perturb.texture import visibility

    # Dark round spots with clean outlines on a light ground (a dalmatian's coat), beside
    # irregular texture of about the same contrast: a median keeps the spots, not the grain.
    yy, xx = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    spots = torch.full((96, 96), 0.85)
    for cy in (16, 48, 80):
        for cx in (16, 48, 80):
            spots[(yy - cy) ** 2 + (xx - cx) ** 2 < 8.0**2] = 0.15
    grain = 0.5 + (torch.rand(96, 96, generator=torch.Generator().manual_seed(0)) - 0.5) * 0.6
    plain = {n: visibility(t.expand(1, 3, 96, 96)) for n, t in (("spots", spots),
                                                                 ("grain", grain))}
    kept = {n: visibility(t.expand(1, 3, 96, 96), disorder=5).sum((0, 2, 3)) / plain[n].sum(
        (0, 2, 3)) for n, t in (("spots", spots), ("grain", grain))}
    assert (kept["spots"] < 0.45).all()  # what is left: the outlines' pixel staircase
    assert (kept["grain"] > 0.9).all()
    assert (visibility(grain.expand(1, 3, 96, 96), disorder=5) <= plain["grain"]).all()
    with pytest.raises(ConfigError, match="odd median window"):
        create_family("texture", {"disorder": 4})


def test_texture_lowcut_takes_out_the_slow_part_and_leaves_flats_alone():
    from unrestrict.perturb.base import blur_field

    # Grids not high-passed, half noise and half a positive offset: a change that brightens
    # the whole textured area, the slow part an optimiser builds where the maps follow a
    # pattern.
    x = _photo() * 0.6 + 0.2
    plain = compose(["texture"], {"texture": {"highpass": 0.0}})
    cut = compose(["texture"], {"texture": {"highpass": 0.0, "lowcut": 8.0}})
    noise = {k: v / 2 for k, v in _rand_params(plain, x, 1.0).items()}
    params = {k: v + v.abs().amax() for k, v in noise.items()}
    before, after = plain.apply(x, params) - x, cut.apply(x, params) - x
    texture = (..., slice(20, 76), slice(8, 40))

    def slow(d):
        return blur_field(d[:, :1], 8.0)[texture].abs().mean()

    assert slow(after) < 0.3 * slow(before)
    assert after[texture].abs().mean() > 0.5 * (plain.apply(x, noise) - x)[texture].abs().mean()
    # Where no band may change anything, nothing changes: the mean goes back by each pixel's
    # bound, which is 0 there.
    assert before[..., 20:76, 56:66].abs().amax() == 0
    assert after[..., 20:76, 56:66].abs().amax() == 0
    with pytest.raises(ConfigError, match="lowcut"):
        compose(["texture"], {"texture": {"lowcut": "-1"}})


def test_texture_cap_bounds_each_band_in_absolute_terms():
    from unrestrict.perturb.texture import visibility

    # Strong texture: ratio times its band amplitude is far above the cap, so the cap binds.
    x = _photo() * 0.6 + 0.2
    free = compose(["texture"])
    capped = compose(["texture"], {"texture": {"cap": 4.0}})
    params = _rand_params(free, x, 1.0)
    cfg = free.families[0].config
    ratios = torch.tensor([cfg.fine, cfg.mid, cfg.coarse]).view(1, 3, 1, 1)
    assert (ratios * visibility(x)).amax() > 3 * 4.0 / 255
    bound = capped.families[0].prepare(x)["visibility"] * ratios
    assert bound.amax() <= 4.0 / 255 + 1e-7
    delta = capped.apply(x, params) - x
    assert delta.abs().amax() <= 3 * 4.0 / 255 + 1e-6  # three bands, each within the cap
    assert delta.abs().amax() < (free.apply(x, params) - x).abs().amax()
    # Weak texture stays under the cap: its maps are unchanged.
    faint = x * 0.05 + 0.45
    torch.testing.assert_close(capped.families[0].prepare(faint)["visibility"],
                               visibility(faint), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="cap"):
        compose(["texture"], {"texture": {"cap": "-1"}})


def test_texture_flat_ramp_must_rise():
    from unrestrict.errors import ConfigError
    from unrestrict.perturb import compose

    with pytest.raises(ConfigError, match="flat_start <= flat_full"):
        compose(["texture"], {"texture": {"flat_start": "9", "flat_full": "4"}})
    with pytest.raises(ConfigError, match="range_margin"):
        compose(["texture"], {"texture": {"range_margin": "0.6"}})
    with pytest.raises(ConfigError, match="detail_sigma"):
        compose(["texture"], {"texture": {"detail_sigma": "-1"}})
    with pytest.raises(ConfigError, match="detail_bands"):
        compose(["texture"], {"texture": {"detail_bands": "mid,glossy"}})


def test_texture_structure_cap_shrinks_the_change_where_the_original_has_no_mid_scale_pattern():
    from unrestrict.naturalness import structure_change
    from unrestrict.perturb.base import blur_field

    g = torch.Generator().manual_seed(0)
    grain = torch.rand(1, 1, 128, 128, generator=g) - 0.5
    grain = (grain - blur_field(grain, 1.0)) * 0.6
    blobs = blur_field(torch.rand(1, 1, 128, 128, generator=g) - 0.5, 3.0)
    blobs = blobs / blobs.abs().amax() * 0.3
    # Top: per-pixel grain only (fine band, hardly any 2-5 px pattern); bottom: the same grain
    # over a mid-scale pattern of blobs.
    x = (0.5 + grain + torch.cat([torch.zeros(1, 1, 64, 128), blobs[..., 64:, :]], 2))
    x = x.expand(1, 3, 128, 128).clamp(0, 1)
    free = compose(["texture"])
    capped = compose(["texture"], {"texture": {"structure_cap": 16.0}})
    cfg = free.families[0].config
    ratios = torch.tensor([cfg.fine, cfg.mid, cfg.coarse]).view(1, 3, 1, 1)
    before = (free.families[0].prepare(x)["visibility"] * ratios).sum(1)
    after = (capped.families[0].prepare(x)["visibility"] * ratios).sum(1)
    assert (after <= before + 1e-7).all()  # a cap only ever shrinks
    top, bottom = (..., slice(8, 56), slice(8, 120)), (..., slice(72, 120), slice(8, 120))
    kept_top = after[top].mean() / before[top].mean()
    kept_bottom = after[bottom].mean() / before[bottom].mean()
    assert kept_bottom > 0.95 and kept_top < 0.7
    # A change at its full bounds reshapes less of the grain's little structure with the cap.
    params = _rand_params(free, x, 1.0)  # mostly at the bounds

    def reshaped(comp, rows):
        return structure_change(x[..., rows, :], comp.apply(x, params)[..., rows, :])[0]

    upper, lower = slice(0, 64), slice(64, 128)
    assert reshaped(capped, upper) < 0.7 * reshaped(free, upper)
    assert reshaped(capped, lower) > 0.9 * reshaped(free, lower)
    with pytest.raises(ConfigError, match="structure_cap"):
        compose(["texture"], {"texture": {"structure_cap": "-1"}})


def test_texture_overshoot_keeps_each_pixel_short_of_its_neighbours_extremes():
    import kornia.color as KC

    from unrestrict.perturb.texture import _local_range

    # A textured roof under a flat sky at the texture's full bounds: unbounded, pixels by the
    # edge end brighter than the brightest of their 3x3 neighbours (a white fringe) or darker
    # than the darkest; with overshoot 0.5, each moves at most half-way to either.
    x = _photo()[..., 10:90, 10:90].clone()
    x[..., :30, :] = 0.85
    luma = KC.rgb_to_grayscale(x)
    lo, hi = _local_range(luma, 3)
    out = {}
    for share in (0.0, 0.5):
        fam = compose(["texture"], {"texture": {"fine": 12.8, "overshoot": share}})
        gen = torch.Generator().manual_seed(1)
        params = {k: fam._bound(k, v) * torch.randn(v.shape, generator=gen).sign()
                  for k, v in fam.init_params(x).items()}
        out[share] = KC.rgb_to_grayscale(fam.apply(x, params))
    assert ((out[0.0] > hi + 1e-3) | (out[0.0] < lo - 1e-3)).sum() > 10
    assert (out[0.5] - luma <= 0.5 * (hi - luma) + 1e-5).all()
    assert (luma - out[0.5] <= 0.5 * (luma - lo) + 1e-5).all()
    assert (out[0.5] - luma).abs().amax() > 0.02  # a change is left to make
    for bad in ({"overshoot": 1.5}, {"overshoot": 0.5, "channels": "rgb"},
                {"overshoot": 0.5, "overshoot_reach": -1}):
        with pytest.raises(ConfigError, match="overshoot"):
            compose(["texture"], {"texture": bad})


def test_texture_overshoot_reach_bounds_the_edge_by_the_sky_and_spares_deep_texture():
    import kornia.color as KC

    from unrestrict.perturb.texture import _local_range

    # The same roof under a sky: with overshoot_reach 4 the bound holds on the rows within
    # four of the sky's last flat one (row 26: its 7x7 std reaches the roof at row 30), and
    # not deep inside the roof.
    x = _photo()[..., 10:90, 10:90].clone()
    x[..., :30, :] = 0.85
    luma = KC.rgb_to_grayscale(x)
    lo, hi = _local_range(luma, 3)
    fam = compose(["texture"], {"texture": {"fine": 12.8, "overshoot": 0.5,
                                            "overshoot_reach": 4}})
    weight = fam.families[0].prepare(x)["overshoot_weight"]
    assert (weight[..., :31, :] == 1).all() and (weight[..., 31:, :] == 0).float().mean() > 0.3
    gen = torch.Generator().manual_seed(1)
    params = {k: fam._bound(k, v) * torch.randn(v.shape, generator=gen).sign()
              for k, v in fam.init_params(x).items()}
    out = KC.rgb_to_grayscale(fam.apply(x, params))
    near = weight == 1
    assert (out - luma <= 0.5 * (hi - luma) + 1e-5)[near].all()
    assert (luma - out <= 0.5 * (luma - lo) + 1e-5)[near].all()
    deep = weight == 0
    assert ((out > hi + 1e-3) | (out < lo - 1e-3))[deep].sum() > 10
