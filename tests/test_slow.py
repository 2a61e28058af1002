"""Full-strength attacks with the default settings on real images (minutes on a CPU).

Run with `make test-all` or `pytest -m slow`. They guard attack strength against regressions:
the thresholds sit well below what the benchmarks measure (benchmarks/RESULTS.md) so that
they fail on a broken attack, not on the noise of eight images.
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from unrestrict.attack import margin_loss
from unrestrict.cli import cli
from unrestrict.data import load_rgb
from unrestrict.models import create_ensemble

pytestmark = pytest.mark.slow


def _generate_and_score(inp, out, *extra):
    r = CliRunner().invoke(cli, ["generate", str(inp), str(out), "-q", *extra])
    assert r.exit_code == 0, r.output
    js = out / ".unrestrict" / "score.json"
    r = CliRunner().invoke(cli, ["score", str(inp), str(out), "--json", str(js), "-q",
                                 "--num-workers", "0"])
    assert r.exit_code == 0, r.output
    return json.loads(js.read_text())


def test_default_natural_attack_transfers_at_low_lpips(sample_copy, tmp_path):
    inp = sample_copy(8)
    s = _generate_and_score(inp, tmp_path / "out")
    assert s["eval_models"] == ["efficientnet_lite2"]  # held out from attack and validation
    assert s["asr"] >= 0.375, s
    assert s["lpips"] <= 0.25, s
    log = tmp_path / "out" / ".unrestrict" / "log-rank000-of-001.jsonl"
    recs = {r["image_id"]: r for r in map(json.loads, log.read_text().splitlines())}
    # The budget-check model (efficientnet_lite1, never attacked directly) must move towards
    # error: its margin past the true class after the attack, against that on the original. In
    # the sample-set benchmark that margin rose by 1.8 to 4.4 logits on 7 of these 8; the
    # eighth (7.jpg, which it misclassifies unattacked) stopped at 0.44 of the budget, fooled
    # past the stopping margin. Only that one passes the stopping margin: too few
    # to guard on.
    val = create_ensemble(["efficientnet_lite1"])
    moved = 0
    for r in recs.values():
        x = load_rgb(inp / "images" / r["image_id"]).float() / 255
        with torch.no_grad():
            clean = float(margin_loss(val(x[None]), torch.tensor([r["label"]])))
        moved += r["val_success"] or r["val_margin"] > clean + 1
    assert moved >= 6, recs


def test_pixel_baseline_transfers(sample_copy, tmp_path):
    inp = sample_copy(4)
    s = _generate_and_score(inp, tmp_path / "out", "--preset", "baseline")
    assert s["asr"] >= 0.75, s
