"""`unrestrict generate` end to end: outputs, log, resume, kill -9, bad input, shards."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from unrestrict.cli import cli

# A fast configuration: one small attack model, a different validation model, few steps.
FAST = ["--models", "mobilenet_v2", "--val-models", "efficientnet_lite0", "--stages", "2",
        "--steps", "2", "--refine", "1", "--num-workers", "0", "-b", "2", "--quiet"]


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
        assert 0 <= r["lpips"] < 1 and r["families"] == ["texture", "color"]
        assert r["passes"] <= 2 * 2 and r["decision"] in ("minimal", "strongest")
    cfg = json.loads((out / ".unrestrict" / "config.json").read_text())
    assert cfg["seed"] == 0 and cfg["config"]["models"] == ["mobilenet_v2"]
    assert len(list((out / ".unrestrict" / "params").glob("*.pt"))) == 3
    mtimes = {i: (out / i).stat().st_mtime_ns for i in ids}
    result = run([str(inp), str(out), *FAST])
    assert "0 written, 3 already done" in result.output
    assert len(log_records(out)) == 3
    assert {i: (out / i).stat().st_mtime_ns for i in ids} == mtimes
    assert tree_digest(inp) == before  # nothing in INPUT_DIR is ever written


def test_seeded_cpu_runs_are_byte_identical(sample_copy, tmp_path):
    inp = sample_copy(2)
    run([str(inp), str(tmp_path / "a"), *FAST, "--seed", "7"])
    run([str(inp), str(tmp_path / "b"), *FAST, "--seed", "7"])
    for name in ("0.jpg", "1.jpg"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_two_shards_cover_every_row_once(sample_copy, tmp_path):
    inp = sample_copy(5)
    out = tmp_path / "out"
    run([str(inp), str(out), *FAST, "--shard", "0/2"])
    run([str(inp), str(out), *FAST, "--shard", "1/2"])
    recs = log_records(out)
    ids = [r["image_id"] for r in recs]
    assert sorted(ids) == sorted(f"{i}.jpg" for i in range(5)) and len(set(ids)) == 5
    assert len(list((out / ".unrestrict").glob("log-*.jsonl"))) == 2


def test_torchrun_environment_selects_the_shard(sample_copy, tmp_path, monkeypatch):
    inp = sample_copy(4)
    out = tmp_path / "out"
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    run([str(inp), str(out), *FAST])
    assert sorted(r["image_id"] for r in log_records(out)) == ["1.jpg", "3.jpg"]
    assert (out / ".unrestrict" / "log-rank001-of-002.jsonl").is_file()


def test_resume_refuses_a_different_attack(sample_copy, tmp_path):
    inp = sample_copy(1)
    out = tmp_path / "out"
    run([str(inp), str(out), *FAST])
    result = run([str(inp), str(out), *FAST, "--family", "color"], ok=False)
    assert result.exit_code == 1 and "different settings (attack)" in result.output
    run([str(inp), str(out), *FAST, "-b", "4"])  # runtime-only changes are fine


def test_kill_minus_nine_then_resume_loses_and_redoes_nothing(sample_copy, tmp_path):
    inp = sample_copy(6)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "unrestrict", "generate", str(inp), str(out), *FAST, "-b", "1",
           "--num-workers", "1"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    log = out / ".unrestrict" / "log-rank000-of-001.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:
        if log.is_file() and len(log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = log_records(out)
    assert 2 <= len(first) < 6, "the run should have been killed part-way"
    kept = {r["image_id"]: (out / r["image_id"]).read_bytes() for r in first}
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    recs = log_records(out)
    ids = [r["image_id"] for r in recs]
    assert sorted(ids) == sorted(f"{i}.jpg" for i in range(6))
    assert len(ids) == len(set(ids)), "a finished image was redone"
    for name, data in kept.items():
        assert (out / name).read_bytes() == data
    assert sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.startswith(".")) \
        == sorted(ids)


# -- bad input ------------------------------------------------------------------------------

def _rewrite_csv(inp: Path, rows: list[list[str]]) -> None:
    with (inp / "dev.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["ImageId", "TrueLabel"], *rows])


@pytest.mark.parametrize("case, expected", [
    ("no_csv", "dev.csv not found"),
    ("bad_header", "header must be 'ImageId,TrueLabel'"),
    ("missing_image", "image .*1.jpg is missing"),
    ("label_range", "TrueLabel 1000 of 1.jpg is outside 0-999"),
    ("label_text", "TrueLabel 'cat' of 1.jpg is not an integer"),
    ("duplicate", "duplicate ImageId 0.jpg"),
    ("not_an_image", "1.jpg is not a readable image"),
    ("corrupt_jpeg", "1.jpg: cannot decode image"),
])
def test_bad_input_is_named_and_exits_nonzero(case, expected, sample_copy, tmp_path):
    inp = sample_copy(2)
    img = inp / "images" / "1.jpg"
    if case == "no_csv":
        (inp / "dev.csv").unlink()
    elif case == "bad_header":
        (inp / "dev.csv").write_text("id,label\n0.jpg,1\n")
    elif case == "missing_image":
        img.unlink()
    elif case == "label_range":
        _rewrite_csv(inp, [["0.jpg", "243"], ["1.jpg", "1000"]])
    elif case == "label_text":
        _rewrite_csv(inp, [["0.jpg", "243"], ["1.jpg", "cat"]])
    elif case == "duplicate":
        _rewrite_csv(inp, [["0.jpg", "243"], ["1.jpg", "559"], ["0.jpg", "243"]])
    elif case == "not_an_image":
        img.write_bytes(b"this is not a jpeg")
    elif case == "corrupt_jpeg":
        img.write_bytes(img.read_bytes()[:5000])  # truncated: header fine, data not
    result = run([str(inp), str(tmp_path / "out"), *FAST], ok=False)
    assert result.exit_code == 1, result.output
    assert re.search(expected, result.output), result.output


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


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK"])
def test_non_rgb_images_are_converted_and_reported(mode, sample_copy, tmp_path):
    inp = sample_copy(1)
    img = inp / "images" / "0.jpg"
    converted = Image.open(img).convert(mode)
    if mode == "RGBA":  # JPEG cannot hold alpha: PNG bytes under the row's .jpg name
        converted.save(img, format="PNG")
    else:
        converted.save(img, format="JPEG")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["generate", str(inp), str(out), *FAST[:-1]])
    assert result.exit_code == 0, result.output
    assert f"mode {mode}" in result.stderr and "converted to RGB" in result.stderr
    with Image.open(out / "0.jpg") as im:
        assert im.mode == "RGB" and im.format == "JPEG"


def test_other_sizes_are_allowed_with_a_warning(sample_copy, tmp_path):
    inp = sample_copy(2)
    Image.open(inp / "images" / "1.jpg").resize((320, 240)).save(inp / "images" / "1.jpg")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["generate", str(inp), str(out), *FAST[:-1]])
    assert result.exit_code == 0, result.output
    assert "not 500x500" in result.stderr
    assert Image.open(out / "1.jpg").size == (320, 240)
    assert Image.open(out / "0.jpg").size == (500, 500)


@pytest.mark.parametrize("where", ["same", "inside"])
def test_output_inside_input_is_refused(where, sample_copy):
    inp = sample_copy(1)
    before = tree_digest(inp)
    out = inp if where == "same" else inp / "images" / "adv"
    result = run([str(inp), str(out), *FAST], ok=False)
    assert result.exit_code == 1 and "inside the input folder" in result.output
    assert tree_digest(inp) == before


def test_unknown_family_and_option_fail_before_loading_models(sample_copy, tmp_path):
    inp = sample_copy(1)
    r = run([str(inp), str(tmp_path / "o"), "--family", "blur"], ok=False)
    assert r.exit_code == 2 and "unknown family 'blur'" in r.output
    r = run([str(inp), str(tmp_path / "o"), "--set", "color.hue"], ok=False)
    assert r.exit_code == 2 and "FAMILY.OPTION=VALUE" in r.output
    r = run([str(inp), str(tmp_path / "o"), "--models", "mobilenet_v2", "--val-models",
             "mobilenet_v2"], ok=False)
    assert r.exit_code == 2 and "held out" in r.output
