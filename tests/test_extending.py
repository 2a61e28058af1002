"""README's Extending section: every example runs and its extension works end to end.

Each example registers into a module-level registry; the fixture restores every registry
afterwards, so the examples leave no trace in other tests."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import torch

from unrestrict import attack, models, naturalness
from unrestrict.perturb import base as perturb_base

README = Path(__file__).resolve().parents[1] / "README.md"


def _examples() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Extending"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.fixture
def registries():
    """Snapshot every registry the examples touch, and restore it afterwards."""
    saved = [(r, r.copy()) for r in (perturb_base.FAMILIES, perturb_base.FAMILY_ORDER,
                                     attack.LOSSES, naturalness.MEASURES, naturalness.LIMITS,
                                     naturalness._REGISTRY, models._REGISTRY)]
    yield
    for live, copy in saved:
        live.clear()
        (live.update if isinstance(live, dict) else live.extend)(copy)


def _run(source: str, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Run an example as the body of a module, as the file a user would add."""
    module = types.ModuleType("readme_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # dataclasses look it up
    exec(compile(source, "README.md", "exec"), module.__dict__)
    return module.__dict__


def test_there_is_one_example_per_kind():
    assert len(_examples()) == 4


def test_family_example(registries, monkeypatch):
    _run(_examples()[0], monkeypatch)
    from unrestrict.perturb import FAMILY_ORDER, compose

    assert FAMILY_ORDER.index("vignette") == FAMILY_ORDER.index("color") - 1
    comp = compose(["color", "vignette", "texture"], {"vignette": {"amount": 0.1}})
    assert comp.names == ["texture", "vignette", "color"]  # sorted by order
    x = torch.rand(2, 3, 64, 64)
    params = comp.init_params(x)
    assert (comp.apply(x, params) - x).abs().max() < 1e-6  # the identity at zero
    params["vignette.amount"] = torch.full_like(params["vignette.amount"], 0.1).requires_grad_()
    y = comp.apply(x, params)
    assert y[..., 0, 0].mean() < x[..., 0, 0].mean()  # corners darkened
    y.sum().backward()
    assert params["vignette.amount"].grad.abs().sum() > 0
    assert attack.AttackConfig(families=("texture", "vignette", "color")).families


def test_loss_example(registries, monkeypatch):
    _run(_examples()[1], monkeypatch)
    logits = torch.tensor([[3.0, 1.0, -1.0]])
    assert attack.LOSSES["logit_gap"](logits, torch.tensor([0])).item() == pytest.approx(-2.0)
    assert attack.AttackConfig(loss="logit_gap").loss == "logit_gap"


def test_measure_example(registries, monkeypatch):
    _run(_examples()[2], monkeypatch)
    assert naturalness.MEASURES[-1] == "clipped" and naturalness.LIMITS["clipped"] == 0.01
    x = torch.full((1, 3, 32, 32), 0.5)
    y = x.clone()
    y[..., :16, :] = 1.0  # half the pixels pushed to white
    row = naturalness.naturalness(x, y)[0]
    assert row["clipped"] == pytest.approx(0.5)
    assert naturalness.worst_ratio(row) >= 50


def test_model_example(registries, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the example's checkpoint path is relative: absent here
    _run(_examples()[3], monkeypatch)
    entry = models.get_model_entry("resnet18_robust")
    assert entry.availability(False)[0] == "missing"
    assert entry.weights_id == "name:resnet18_robust"
    clf = models.create_classifier("resnet18_robust", device="cpu")
    assert clf(torch.rand(1, 3, 100, 120)).shape == (1, 1000)
