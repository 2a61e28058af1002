"""Full-strength attacks with the default settings on real images (minutes on a CPU).

Run with `make test-all` or `pytest -m slow`. They guard attack strength against regressions:
the thresholds sit well below what the benchmarks measure (benchmarks/RESULTS.md) so that
they fail on a broken attack, not on the noise of eight images.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from unrestrict.cli import cli

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
    assert s["lpips"] <= 0.3, s
    log = tmp_path / "out" / ".unrestrict" / "log-rank000-of-001.jsonl"
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    # The sample-set benchmark fools efficientnet_lite1 past the margin on 2 of these 8 (4 at
    # the commit before the step-overhead work: style ahead of colour, its input's detail
    # layer, one-pass input diversity; held-out success on all 24 went from 0.625 to 0.667
    # with it). Unattacked, none is.
    assert sum(r["val_success"] for r in recs) >= 1


def test_pixel_baseline_transfers(sample_copy, tmp_path):
    inp = sample_copy(4)
    s = _generate_and_score(inp, tmp_path / "out", "--preset", "baseline")
    assert s["asr"] >= 0.75, s
