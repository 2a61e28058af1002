"""Model registry, Classifier and Ensemble wrappers."""

from __future__ import annotations

import socket

import pytest
import torch
from torch import nn

from unrestrict.errors import WeightsUnavailableError
from unrestrict.models import (
    OFFLINE_MODELS,
    Classifier,
    Ensemble,
    Preprocess,
    get_model_entry,
    list_models,
)

pytestmark = pytest.mark.integration  # loads the offline weights


class Const(nn.Module):
    """Logits that depend only on the mean of the input, for closed-form checks."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x):
        self.seen.append(tuple(x.shape))
        return self.scale * x.mean((1, 2, 3))[:, None].expand(-1, 1000)


def test_classifier_resizes_and_normalises_inside():
    inner = Const(1.0)
    clf = Classifier(inner, Preprocess(32, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))
    x = torch.full((2, 3, 50, 70), 0.75)
    out = clf(x)
    assert inner.seen == [(2, 3, 32, 32)]
    torch.testing.assert_close(out, torch.full((2, 1000), 0.5))  # (0.75-0.5)/0.5


@pytest.mark.parametrize(
    "bad", [torch.rand(3, 8, 8), torch.rand(1, 1, 8, 8), torch.rand(2, 4, 8, 8)]
)
def test_classifier_rejects_bad_shapes(bad):
    clf = Classifier(Const(1.0), Preprocess(8))
    with pytest.raises(ValueError, match=r"shape of \(B, 3, H, W\). Got"):
        clf(bad)


def test_ensemble_averages_logits():
    a = Classifier(Const(1.0), Preprocess(8), "a")
    b = Classifier(Const(3.0), Preprocess(16), "b")
    ens = Ensemble([a, b])
    x = torch.rand(4, 3, 20, 20)
    torch.testing.assert_close(ens(x), (a(x) + b(x)) / 2)
    assert ens.logits_each(x).shape == (2, 4, 1000)
    assert ens.names == ["a", "b"] and ens.max_input_size == 16


def test_ensemble_to_input_size_is_the_largest_members_own_resize():
    class Spatial(nn.Module):  # logits that see every pixel, unlike Const
        def forward(self, x):
            return x.flatten(1)[:, :1000]

    big = Classifier(Spatial(), Preprocess(24, "bicubic"), "big")
    small = Classifier(Const(1.0), Preprocess(16, "bilinear"), "small")
    ens = Ensemble([small, big])
    x = torch.rand(2, 3, 50, 50)
    resized = ens.to_input_size(x)
    assert resized.shape == (2, 3, 24, 24)
    # The largest member skips its own resize and so sees exactly what it saw before.
    torch.testing.assert_close(big(resized), big(x), rtol=0, atol=0)
    assert ens.to_input_size(resized) is resized


def test_unknown_model_suggests_close_names():
    with pytest.raises(WeightsUnavailableError, match="Did you mean: efficientnet_lite0"):
        get_model_entry("efficientnet_lte0")


def test_registry_knows_torchvision_and_timm_names_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the registry touched the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    tv = get_model_entry("resnet50")
    assert tv.source == "torchvision" and tv.preprocess.input_size == 224
    timm_entry = get_model_entry("timm:inception_v3.tf_adv_in1k")
    assert timm_entry.preprocess.input_size == 299
    assert timm_entry.preprocess.mean == (0.5, 0.5, 0.5)
    infos = {i.name: i for i in list_models(include_all=True)}
    assert all(infos[n].available for n in OFFLINE_MODELS)
    assert "torchvision:resnet50" in infos


def test_offline_models_take_precedence_over_torchvision_names():
    assert get_model_entry("mobilenet_v2").source == "offline"
    assert get_model_entry("torchvision:mobilenet_v2").source == "torchvision"


def test_networked_model_without_cache_fails_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def refuse(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    entry = get_model_entry("torchvision:resnet18")
    assert entry.availability(True)[0] == "missing"
    with pytest.raises(WeightsUnavailableError, match="could not be downloaded"):
        entry.build()


@pytest.mark.parametrize("name", OFFLINE_MODELS)
def test_offline_classifier_gives_gradients(name, offline_models):
    clf = offline_models[name]
    x = torch.rand(1, 3, 500, 500, requires_grad=True)
    clf(x)[0, 1].backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in clf.parameters())
