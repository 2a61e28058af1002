"""Reliability: what a run's bytes depend on, resume and multi-process runs, and a fault
matrix of bad inputs for every command (exit code, the file named, nothing lost)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from unrestrict.cli import cli
from unrestrict.errors import EXIT_CODES

pytestmark = pytest.mark.integration  # loads the offline weights

ROOT = Path(__file__).resolve().parents[1]
# One small attack model, another for the budget check, few steps: seconds per image.
FAST = ["--models", "mobilenet_v2", "--val-models", "efficientnet_lite0", "--stages", "2",
        "--steps", "2", "--refine", "1", "--num-workers", "0", "--cpu-batch", "2", "--quiet"]


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def images(out: Path) -> dict[str, str]:
    """ImageId -> SHA-256 of every result in a folder."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.iterdir()) if p.is_file() and not p.name.startswith(".")}


def log_ids(out: Path) -> list[str]:
    return [json.loads(line)["image_id"]
            for p in sorted((out / ".unrestrict").glob("log-*.jsonl"))
            for line in p.read_text().splitlines() if line.strip()]


def cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "unrestrict", "generate", *map(str, args)]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def wait_for_log(log: Path, lines: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if log.is_file() and len(log.read_text().splitlines()) >= lines:
            return
        time.sleep(0.2)
    raise AssertionError(f"{log} never reached {lines} lines")


# -- what the bytes depend on -------------------------------------------------------------

@pytest.fixture(scope="module")
def four(tmp_path_factory):
    """Four sample rows and the reference result: one process, all four in one batch."""
    from conftest import copy_sample

    root = tmp_path_factory.mktemp("four")
    inp = copy_sample(root / "in", 4)
    ref = root / "ref"
    assert invoke("generate", inp, ref, *FAST, "-b", "4").exit_code == 0
    return inp, images(ref)


def test_bytes_do_not_depend_on_batch_size_or_sharding(four, tmp_path):
    inp, ref = four
    assert len(ref) == 4
    one = tmp_path / "b1"
    assert invoke("generate", inp, one, *FAST, "-b", "1").exit_code == 0
    assert images(one) == ref
    shards = tmp_path / "shards"
    for shard in ("0/2", "1/2"):
        assert invoke("generate", inp, shards, *FAST, "-b", "3", "--shard", shard).exit_code == 0
    assert images(shards) == ref


def test_two_ranks_killed_and_rerun_equal_one_process(four, tmp_path):
    """Two ranks (torchrun's environment variables, set by hand) write one OUTPUT_DIR at
    once; rank 1 is killed after its first image and rerun. The union is the one-process run,
    byte for byte, and no image is written twice."""
    inp, ref = four
    out = tmp_path / "out"
    args = cmd(inp, out, *FAST, "-b", "1")
    # One thread each: two ranks at two threads each on a two-core machine spin-wait.
    r0 = subprocess.Popen(args, env=env(RANK="0", WORLD_SIZE="2", OMP_NUM_THREADS="1"),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    r1 = subprocess.Popen(args, env=env(RANK="1", WORLD_SIZE="2", OMP_NUM_THREADS="1"),
                          start_new_session=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_log(out / ".unrestrict" / "log-rank001-of-002.jsonl", 1)
    os.killpg(r1.pid, signal.SIGKILL)
    r1.wait()
    assert r0.wait(timeout=600) == 0, r0.stderr.read().decode()
    assert len(images(out)) < 4
    subprocess.run(args, env=env(RANK="1", WORLD_SIZE="2"), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert images(out) == ref
    assert sorted(log_ids(out)) == sorted(ref)


def test_kill_minus_nine_and_resume_give_the_same_bytes(four, tmp_path):
    inp, ref = four
    out = tmp_path / "out"
    args = cmd(inp, out, *FAST, "-b", "1")
    proc = subprocess.Popen(args, env=env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_log(out / ".unrestrict" / "log-rank000-of-001.jsonl", 2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = images(out)
    assert 2 <= len(before) < 4, "the run should have been killed part-way"
    subprocess.run(args, env=env(), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    after = images(out)
    assert after == ref
    assert all(after[k] == v for k, v in before.items())  # nothing finished was rewritten
    assert sorted(log_ids(out)) == sorted(ref)  # nor logged twice


def test_a_torn_log_line_is_repaired_and_nothing_is_redone(four, tmp_path):
    inp, ref = four
    out = tmp_path / "out"
    assert invoke("generate", inp, out, *FAST, "--limit", "2").exit_code == 0
    log = out / ".unrestrict" / "log-rank000-of-001.jsonl"
    with log.open("a") as f:
        f.write('{"image_id": "2.jpg", "status": "o')  # killed mid-append
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    result = invoke("generate", inp, out, *FAST[:-1])
    assert result.exit_code == 0, result.output
    assert "torn last line" in result.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()
            if p.name in mtimes} == mtimes  # the two finished images were not redone
    assert images(out) == ref
    assert all(json.loads(line) for line in log.read_text().splitlines())
    assert sorted(log_ids(out)) == sorted(ref)


def test_a_run_is_bound_to_its_input(four, tmp_path):
    inp, _ = four
    out = tmp_path / "out"
    assert invoke("generate", inp, out, *FAST, "--limit", "1").exit_code == 0
    other = tmp_path / "other"
    shutil.copytree(inp, other)
    r = invoke("generate", other, out, *FAST, "--limit", "1")
    assert r.exit_code == 6 and "another input folder" in r.output
    assert "start fresh" in r.output and "new OUTPUT_DIR" in r.output
    lines = (inp / "dev.csv").read_text().splitlines()
    name, label = lines[1].split(",")
    lines[1] = f"{name},{(int(label) + 1) % 1000}"  # another valid label: another dev.csv
    (other / "dev.csv").write_text("\n".join(lines) + "\n")
    r = invoke("generate", other, tmp_path / "out2", *FAST, "--limit", "1")
    assert r.exit_code == 0
    shutil.copy(other / "dev.csv", tmp_path / "dev.csv")
    (other / "dev.csv").write_text((inp / "dev.csv").read_text())
    r = invoke("generate", other, tmp_path / "out2", *FAST, "--limit", "1")
    assert r.exit_code == 6 and "another dev.csv" in r.output
    r = invoke("generate", inp, out, *FAST, "--limit", "1", "--steps", "3")
    assert r.exit_code == 6 and "other settings (attack)" in r.output
    assert invoke("generate", inp, out, *FAST, "--limit", "2", "-b", "5").exit_code == 0


def test_held_out_is_by_weight_file_not_by_name(four, tmp_path):
    inp, _ = four
    # torchvision's own name for mobilenet_v2's V1 weights is the offline file: no download
    # happens, the identity is known from the name.
    r = invoke("generate", inp, tmp_path / "o", "--models", "mobilenet_v2", "--val-models",
               "torchvision:mobilenet_v2.IMAGENET1K_V1")
    assert r.exit_code == 2 and "same weights" in r.output
    assert not (tmp_path / "o").exists()


def test_the_prescan_lists_every_bad_row_before_writing_anything(sample_copy, tmp_path):
    inp = sample_copy(5)
    (inp / "images" / "1.jpg").write_bytes((inp / "images" / "1.jpg").read_bytes()[:4000])
    (inp / "images" / "3.jpg").unlink()
    rows = list(csv.reader((inp / "dev.csv").open()))
    rows[5][1] = "1000"  # 4.jpg
    with (inp / "dev.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    out = tmp_path / "out"
    r = invoke("generate", inp, out, *FAST)
    assert r.exit_code == 3
    for text in ("line 3: .*1.jpg cannot be decoded", "line 5: image .*3.jpg is missing",
                 "line 6: TrueLabel 1000 of 4.jpg"):
        assert re.search(text, r.output), (text, r.output)
    assert not out.exists()  # nothing was written, not even the run folder


# -- the fault matrix -----------------------------------------------------------------------

def _rewrite_csv(inp: Path, text: str) -> None:
    (inp / "dev.csv").write_text(text)


def _image(inp: Path, name: str = "1.jpg") -> Path:
    return inp / "images" / name


def _save(inp: Path, im: Image.Image, fmt: str = "JPEG", name: str = "1.jpg") -> None:
    im.save(_image(inp, name), format=fmt)


INPUT_FAULTS = {
    # case: (break the input folder, exit code, what the message names)
    "missing dev.csv": (lambda i: (i / "dev.csv").unlink(), 3, r"dev.csv not found"),
    "bad header": (lambda i: _rewrite_csv(i, "id,label\n0.jpg,1\n1.jpg,2\n"), 3,
                   r"header must be 'ImageId,TrueLabel'"),
    "label out of range": (lambda i: _rewrite_csv(i, "ImageId,TrueLabel\n0.jpg,243\n1.jpg,1000\n"),
                           3, r"line 3: TrueLabel 1000 of 1.jpg is outside 0-999"),
    "duplicate ImageId": (lambda i: _rewrite_csv(i, "ImageId,TrueLabel\n0.jpg,243\n1.jpg,5\n"
                                                    "0.jpg,243\n"), 3,
                          r"line 4: duplicate ImageId 0.jpg"),
    "missing image": (lambda i: _image(i).unlink(), 3, r"line 3: image .*1.jpg is missing"),
    "truncated JPEG": (lambda i: _image(i).write_bytes(_image(i).read_bytes()[:5000]), 3,
                       r"line 3: .*1.jpg cannot be decoded"),
    "empty folder": (lambda i: [shutil.rmtree(i), i.mkdir()], 3, r"dev.csv not found"),
}
# Accepted with a warning that names the file: the result keeps the input's size.
INPUT_NOTES = {
    "PNG bytes named .jpg": (lambda i: _save(i, Image.open(_image(i)), "PNG"),
                             r"1.jpg: PNG data under a .jpg name"),
    "CMYK image": (lambda i: _save(i, Image.open(_image(i)).convert("CMYK")),
                   r"1.jpg: mode CMYK converted to RGB"),
    "grayscale image": (lambda i: _save(i, Image.open(_image(i)).convert("L")),
                        r"1.jpg: mode L converted to RGB"),
    "wrong size": (lambda i: _save(i, Image.open(_image(i)).resize((320, 240))),
                   r"1.jpg: size 320x240, not 500x500"),
}


@pytest.mark.parametrize("case", list(INPUT_FAULTS))
def test_generate_fault_matrix(case, sample_copy, tmp_path):
    inp = sample_copy(2)
    breaks, code, named = INPUT_FAULTS[case]
    breaks(inp)
    out = tmp_path / "out"
    r = invoke("generate", inp, out, *FAST)
    assert r.exit_code == code, (r.exit_code, r.output)
    assert re.search(named, r.output), r.output
    assert "Traceback" not in r.output and not out.exists()


@pytest.mark.parametrize("case", list(INPUT_NOTES))
def test_generate_accepts_odd_images_and_names_them(case, sample_copy, tmp_path):
    inp = sample_copy(2)
    breaks, named = INPUT_NOTES[case]
    breaks(inp)
    out = tmp_path / "out"
    r = invoke("generate", inp, out, *FAST[:-1])
    assert r.exit_code == 0, r.output
    assert re.search(named, r.stderr), r.stderr
    with Image.open(out / "1.jpg") as im, Image.open(_image(inp)) as orig:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == orig.size


@pytest.mark.parametrize("where, code, named", [
    ("inside input", 3, r"inside the input folder"),
    ("under a file", 7, r"cannot create .*not_a_folder"),
])
def test_generate_refuses_an_unusable_output_dir(where, code, named, sample_copy, tmp_path):
    inp = sample_copy(1)
    if where == "inside input":
        out = inp / "images" / "adv"
    else:
        (tmp_path / "not_a_folder").write_text("a file")
        out = tmp_path / "not_a_folder" / "out"
    before = sorted(p.name for p in (inp / "images").iterdir())
    r = invoke("generate", inp, out, *FAST)
    assert r.exit_code == code and re.search(named, r.output), r.output
    assert sorted(p.name for p in (inp / "images").iterdir()) == before


def _zip_of(folder: Path, path: Path, names: list[str] | None = None, extra: bool = False):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for p in sorted(folder.iterdir()):
            if names is None or p.name in names:
                z.write(p, f"images/{p.name}")
        if extra:
            z.writestr("images/stray.jpg", (folder / "0.jpg").read_bytes())
    return path


def _damage_entry(path: Path, name: str) -> Path:
    """Flip bytes inside one stored entry's data: the archive opens, the CRC fails."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 2000
    data[start:start + 16] = bytes(b ^ 0xFF for b in data[start:start + 16])
    path.write_bytes(bytes(data))
    return path


RESULT_FAULTS = {
    # case: (make the results from a good folder, exit code, what the message names)
    "folder with a missing file": (lambda good, t: [(good / "1.jpg").unlink(), good][1], 4,
                                   r"1 of 2 rows have no result .*1.jpg"),
    "unreadable image": (lambda good, t: [(good / "1.jpg").write_bytes(b"not an image"),
                                          good][1], 4, r"1.jpg"),
    "damaged zip": (lambda good, t: _damage_entry(_zip_of(good, t / "r.zip"), "images/1.jpg"),
                    4, r"r.zip!images/1.jpg cannot be read \(Bad CRC-32"),
    "truncated zip": (lambda good, t: [(t / "r.zip").write_bytes(
        _zip_of(good, t / "full.zip").read_bytes()[:20000]), t / "r.zip"][1], 4,
        r"r.zip is neither a folder nor a zip file \(or the zip is truncated"),
    "zip with a missing file": (lambda good, t: _zip_of(good, t / "r.zip", ["0.jpg"]), 4,
                                r"1 of 2 rows have no result .*1.jpg"),
}


@pytest.fixture
def good_results(sample_copy, tmp_path):
    """An input folder of two rows and a results folder of their JPEGs (the originals)."""
    inp = sample_copy(2)
    good = tmp_path / "good"
    shutil.copytree(inp / "images", good)
    return inp, good


@pytest.mark.parametrize("case", list(RESULT_FAULTS) + ["missing dev.csv"])
def test_score_fault_matrix(case, good_results, tmp_path):
    inp, good = good_results
    if case == "missing dev.csv":
        (inp / "dev.csv").unlink()
        results, code, named = good, 3, r"dev.csv not found"
    else:
        make, code, named = RESULT_FAULTS[case]
        results = make(good, tmp_path)
    r = invoke("score", inp, results, "--eval-models", "mobilenet_v2", "--num-workers", "0",
               "-q")
    assert r.exit_code == code, (r.exit_code, r.output)
    assert re.search(named, r.output), r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize("case", list(RESULT_FAULTS) + ["zip with an extra file"])
def test_pack_check_fault_matrix(case, good_results, tmp_path):
    inp, good = good_results
    if case == "zip with an extra file":
        results, code, named = _zip_of(good, tmp_path / "r.zip", extra=True), 4, r"stray.jpg"
    else:
        make, code, named = RESULT_FAULTS[case]
        results = make(good, tmp_path)
    named = named.replace("1 of 2 rows have no result ", "")  # pack lists names alone
    if results.is_dir():
        r = invoke("pack", results, "--input", inp, "-o", tmp_path / "out.zip")
        assert not (tmp_path / "out.zip").exists()  # nothing written
    else:
        r = invoke("pack", "--check", results, "--input", inp)
    assert r.exit_code == code, (r.exit_code, r.output)
    assert re.search(named, r.output), r.output
    assert "Traceback" not in r.output


def test_exit_codes_are_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("### Exit codes"):]
    for code, meaning in EXIT_CODES.items():
        assert re.search(rf"\| {code} \| {re.escape(meaning)}", table), (code, meaning)


def test_a_damaged_zip_names_the_entry_in_the_library_error(good_results, tmp_path):
    from unrestrict.errors import ResultsError
    from unrestrict.submission import ResultSource

    _, good = good_results
    src = ResultSource(_damage_entry(_zip_of(good, tmp_path / "r.zip"), "images/1.jpg"))
    assert src.read("0.jpg")[:2] == b"\xff\xd8"
    with pytest.raises(ResultsError, match="images/1.jpg cannot be read"):
        src.read("1.jpg")
    with pytest.raises(ResultsError, match="missing"):
        src.read("9.jpg")
    assert io.BytesIO(src.read("0.jpg")).read(2) == b"\xff\xd8"
