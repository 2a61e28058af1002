"""`unrestrict generate` end to end: outputs, log, resume, kill -9, bad input, shards."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from unrestrict.cli import cli

pytestmark = pytest.mark.integration  # loads the offline weights

# A fast configuration: one small attack model, a different validation model, few steps.
FAST = ["--models", "mobilenet_v2", "--val-models", "efficientnet_lite0", "--stages", "2",
        "--steps", "2", "--refine", "1", "--num-workers", "0", "--cpu-batch", "2", "-b", "2",
        "--quiet"]


def run(args, ok=True):
    result = CliRunner().invoke(cli, ["generate", *args])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def log_records(out: Path) -> list[dict]:
    recs = []
    for p in sorted((out / ".unrestrict").glob("log-*.jsonl")):
        recs += [json.loads(line) for line in p.read_text().splitlines()]
    return recs


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_end_to_end_outputs_log_and_rerun(sample_copy, tmp_path):
    inp = sample_copy(3)
    before = tree_digest(inp)
    out = tmp_path / "out"
    run([str(inp), str(out), *FAST])
    ids = [r["ImageId"] for r in csv.DictReader((inp / "dev.csv").open())]
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == sorted(ids)
    for i in ids:
        with Image.open(out / i) as im, Image.open(inp / "images" / i) as orig:
            assert im.format == "JPEG" and im.size == orig.size and im.mode == "RGB"
    recs = log_records(out)
    assert sorted(r["image_id"] for r in recs) == sorted(ids)
    for r in recs:
        assert r["status"] == "ok"
        for key in ("label", "families", "strength", "ensemble_success", "val_success",
                    "lpips", "seconds", "decision"):
            assert key in r, key
        assert 0 <= r["lpips"] < 1 and r["families"] == ["texture"]
        # The default preset may also stop an image at the naturalness limits.
        assert r["passes"] <= 2 * 2 and r["decision"] in ("minimal", "strongest", "limited")
    doc = json.loads((out / ".unrestrict" / "run.json").read_text())
    assert doc["seed"] == 0 and doc["config"]["models"] == ["mobilenet_v2"]
    assert doc["binding"]["models"] == {"mobilenet_v2": "sha256:b0353104",
                                        "efficientnet_lite0": "sha256:57934424"}
    assert len(doc["binding"]["dev_csv_sha256"]) == 64
    # Texture's per-pixel grids are hundreds of KB an image: not kept unless asked for.
    assert not (out / ".unrestrict" / "params").exists()
    mtimes = {i: (out / i).stat().st_mtime_ns for i in ids}
    result = run([str(inp), str(out), *FAST])
    assert "0 written, 3 already done" in result.output
    assert len(log_records(out)) == 3
    assert {i: (out / i).stat().st_mtime_ns for i in ids} == mtimes
    assert tree_digest(inp) == before  # nothing in INPUT_DIR is ever written


def test_small_parameters_are_kept_and_replay_the_result(sample_copy, tmp_path):
    import torch

    from unrestrict.attack import Attack, AttackConfig
    from unrestrict.jpeg import decode_rgb

    inp = sample_copy(1)
    out = tmp_path / "out"
    run([str(inp), str(out), *FAST, "--family", "color"])
    params = torch.load(out / ".unrestrict" / "params" / "0.jpg.pt")
    x = decode_rgb(inp / "images" / "0.jpg")[0][None].float() / 255
    # The saved parameters, applied at full size, give the written image again.
    attack = Attack(AttackConfig(families=("color",)), ensemble=None)  # type: ignore[arg-type]
    blobs, _ = attack.render(x, {k: v[None] for k, v in params.items()})
    assert blobs[0] == (out / "0.jpg").read_bytes()


def test_seeded_cpu_runs_are_byte_identical(sample_copy, tmp_path):
    inp = sample_copy(2)
    run([str(inp), str(tmp_path / "a"), *FAST, "--seed", "7"])
    run([str(inp), str(tmp_path / "b"), *FAST, "--seed", "7"])
    for name in ("0.jpg", "1.jpg"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_torchrun_environment_selects_the_shard(sample_copy, tmp_path, monkeypatch):
    inp = sample_copy(4)
    out = tmp_path / "out"
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    run([str(inp), str(out), *FAST])
    assert sorted(r["image_id"] for r in log_records(out)) == ["1.jpg", "3.jpg"]
    assert (out / ".unrestrict" / "log-rank001-of-002.jsonl").is_file()


# -- bad input ------------------------------------------------------------------------------

def _rewrite_csv(inp: Path, rows: list[list[str]]) -> None:
    with (inp / "dev.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["ImageId", "TrueLabel"], *rows])


@pytest.mark.parametrize("case", ["missing_image", "corrupt_jpeg", "label_range"])
def test_skip_bad_continues_and_lists_rows(case, sample_copy, tmp_path):
    inp = sample_copy(2)
    img = inp / "images" / "1.jpg"
    if case == "missing_image":
        img.unlink()
    elif case == "corrupt_jpeg":
        img.write_bytes(img.read_bytes()[:5000])
    else:
        _rewrite_csv(inp, [["0.jpg", "243"], ["1.jpg", "-3"]])
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["generate", str(inp), str(out), *FAST,
                                                      "--skip-bad"])
    assert result.exit_code == 0, result.output
    assert "1 skipped" in result.output and "1.jpg" in result.stderr
    assert (out / "0.jpg").is_file() and not (out / "1.jpg").exists()


def test_unknown_family_and_option_fail_before_loading_models(sample_copy, tmp_path):
    inp = sample_copy(1)
    r = run([str(inp), str(tmp_path / "o"), "--family", "blur"], ok=False)
    assert r.exit_code == 2 and "unknown family 'blur'" in r.output
    r = run([str(inp), str(tmp_path / "o"), "--set", "color.hue"], ok=False)
    assert r.exit_code == 2 and "FAMILY.OPTION=VALUE" in r.output
    r = run([str(inp), str(tmp_path / "o"), "--set", "texture.fine=lots"], ok=False)
    assert r.exit_code == 2 and "texture" in r.output
    r = run([str(inp), str(tmp_path / "o"), "--steps", "-1"], ok=False)
    assert r.exit_code == 2 and "steps must be >= 0" in r.output
    r = run([str(inp), str(tmp_path / "o"), "--models", "mobilenet_v2", "--val-models",
             "mobilenet_v2"], ok=False)
    assert r.exit_code == 2 and "held out" in r.output
    assert not (tmp_path / "o").exists()


def test_the_summary_counts_images_stopped_at_the_naturalness_limits(tmp_path):
    from unrestrict.generate import GenerateSummary

    summary = GenerateSummary(0, 1, 3, 0, 3, [], 1, 2, 1.0, tmp_path)
    assert "naturalness" not in str(summary)
    summary.limited = 2
    assert str(summary).endswith("attack ensemble 2/3, stopped at the naturalness limits 2; 1.0s")
