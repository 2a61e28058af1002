"""Backward-pass surrogates: outputs untouched, gradients changed as documented, models restored."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unrestrict.attack import AttackConfig
from unrestrict.errors import ConfigError
from unrestrict.surrogate import Surrogate, surrogate_gradients


class Residual(nn.Module):
    """x + relu6(a * relu(b * x)): one residual branch with two activations."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = 0.5, 2.0
        self.act1, self.act2 = nn.ReLU(inplace=True), nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act2(self.a * self.act1(self.b * x))


def grad(model: nn.Module, x: torch.Tensor, s: Surrogate) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    with surrogate_gradients(model, s):
        out = model(x)
        (g,) = torch.autograd.grad(out.sum(), x)
    return out.detach(), g


def test_exact_by_default_and_outputs_never_change():
    m, x = Residual(), torch.linspace(-2, 8, 41)
    plain, g_plain = grad(m, x, Surrogate())
    for s in (Surrogate(0.25), Surrogate(1.0, 1.0), Surrogate(0.5, 2.0)):
        out, _ = grad(m, x, s)
        torch.testing.assert_close(out, plain, atol=0, rtol=0)
    # Exact derivative: 1 + a*b where the branch is live (0 < 2x and x < 6), else 1.
    live = (x > 0) & (x < 6)
    torch.testing.assert_close(g_plain, 1 + live.float())


def test_skip_gradient_scales_the_branch_by_gamma():
    m, x = Residual(), torch.linspace(-2, 8, 41)
    _, g = grad(m, x, Surrogate(gamma=0.25))
    live = (x > 0) & (x < 6)
    torch.testing.assert_close(g, 1 + 0.25 * live.float())


def test_smooth_rectifier_passes_gradient_below_the_threshold():
    m, x = Residual(), torch.tensor([-0.25, 0.5, 9.0])
    _, exact = grad(m, x, Surrogate())
    _, smooth = grad(m, x, Surrogate(width=1.0))
    assert exact[0] == 1 and smooth[0] > 1  # just below zero: the branch now contributes
    assert smooth[2] == 1  # above ReLU6's cap: no branch gradient, as exact


def test_modules_are_restored_and_no_grad_passes_untouched():
    m = Residual()
    with surrogate_gradients(m, Surrogate(0.5)) as changed:
        assert changed == 2 and "forward" in vars(m.act1)
        x = torch.ones(3)
        with torch.no_grad():
            m(x)
        assert (x == 1).all()
    assert "forward" not in vars(m.act1) and "forward" not in vars(m.act2)
    assert m.act1.inplace and m.act2.inplace


@pytest.mark.parametrize("kw", [{"sgm_gamma": 0.0}, {"sgm_gamma": 1.5}, {"relu_width": -1.0}])
def test_config_refuses_out_of_range_values(kw):
    with pytest.raises(ConfigError):
        AttackConfig(**kw)
