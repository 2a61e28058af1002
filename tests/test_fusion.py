"""BatchNorm folding: the same function as the model it came from, with BN gone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unrestrict.fusion import fold_batchnorm
from unrestrict.models import get_model_entry

pytestmark = pytest.mark.integration  # loads the offline weights


def _bn_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _logits_and_grad(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(logits[:, :10].sum(), x)
    return logits.detach(), grad


# torchvision's Conv-BN-ReLU6 and timm's Conv(Same) + BatchNormAct2d, with real weights.
@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_lite0"])
def test_fold_is_exact_in_float64(name):
    entry = get_model_entry(name)
    ref = entry.build().double().requires_grad_(False)
    folded = fold_batchnorm(entry.build().double()).requires_grad_(False)
    assert _bn_count(ref) > 40 and _bn_count(folded) == 0
    assert not folded.training
    x = torch.rand(2, 3, 96, 96, dtype=torch.float64)
    (a, ga), (b, gb) = _logits_and_grad(ref, x), _logits_and_grad(folded, x)
    torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gb, ga, rtol=1e-9, atol=1e-12)


class _Branchy(nn.Module):
    """A conv whose output also feeds a skip connection, and a BN after a non-conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.bn2 = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y + self.bn2(x * 2)


def _randomise_bn(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)
    return model.eval()


def test_bn_is_kept_where_folding_would_change_the_function():
    model = _randomise_bn(_Branchy())
    x = torch.rand(2, 3, 8, 8)
    expect = model(x)
    folded = fold_batchnorm(model)
    assert _bn_count(folded) == 2  # the conv's output is read twice; bn2 follows a multiply
    torch.testing.assert_close(folded(x), expect)


class _StandardisedConv(nn.Conv2d):
    """Like timm's StdConv2d: the weight is normalised in forward, so BN cannot go into it."""

    def forward(self, x):
        w = self.weight - self.weight.mean((1, 2, 3), keepdim=True)
        return nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)


def test_conv_subclass_that_rewrites_its_weight_is_not_folded():
    model = _randomise_bn(nn.Sequential(_StandardisedConv(3, 4, 3), nn.BatchNorm2d(4)))
    x = torch.rand(2, 3, 8, 8)
    expect = model(x)
    folded = fold_batchnorm(model)
    assert _bn_count(folded) == 1
    torch.testing.assert_close(folded(x), expect)


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        if x.sum() > 0:  # torch.fx cannot trace this
            x = x * 2
        return self.bn(self.conv(x))


def test_untraceable_model_comes_back_unchanged():
    model = _randomise_bn(_DataDependent())
    assert fold_batchnorm(model) is model


def test_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)))


def test_create_classifier_folds_unless_told_not_to():
    from unrestrict.models import create_classifier

    assert _bn_count(create_classifier("mobilenet_v2").model) == 0
    assert _bn_count(create_classifier("mobilenet_v2", fold_bn=False).model) == 52
