"""`unrestrict pack`: every refusal, a round trip, the zip layout, atomicity."""

from __future__ import annotations

import shutil
import zipfile

import pytest
from click.testing import CliRunner
from PIL import Image

from unrestrict.cli import cli
from unrestrict.errors import ValidationError
from unrestrict.pack import check_zip, pack, validate


@pytest.fixture
def good(sample_copy, tmp_path):
    inp = sample_copy(3)
    res = tmp_path / "res"
    res.mkdir()
    for p in (inp / "images").iterdir():
        shutil.copy(p, res / p.name)
    (res / ".unrestrict").mkdir()  # run metadata is not part of a submission
    (res / ".unrestrict" / "log.jsonl").write_text("{}\n")
    return inp, res


def test_round_trip_and_layout(good, tmp_path):
    inp, res = good
    z = tmp_path / "sub" / "images.zip"
    s = pack(res, inp, z)
    assert s.count == 3 and s.total_bytes == z.stat().st_size and len(s.sha256) == 64
    with zipfile.ZipFile(z) as f:
        names = f.namelist()
        assert names == ["images/", "images/0.jpg", "images/1.jpg", "images/2.jpg"]
        assert f.read("images/1.jpg") == (res / "1.jpg").read_bytes()
    assert check_zip(z, inp).sha256 == s.sha256
    # Reproducible: the same results give the same archive.
    assert pack(res, inp, tmp_path / "again.zip").sha256 == s.sha256


def test_cli_pack_and_check(good, tmp_path):
    inp, res = good
    z = tmp_path / "images.zip"
    out = CliRunner().invoke(cli, ["pack", str(res), "--input", str(inp), "-o", str(z)])
    assert out.exit_code == 0, out.output
    assert "3 images" in out.output and "sha256" in out.output
    out = CliRunner().invoke(cli, ["pack", "--check", str(z), "--input", str(inp)])
    assert out.exit_code == 0 and "valid" in out.output


def _break(case, inp, res):
    if case == "missing":
        (res / "2.jpg").unlink()
    elif case == "extra":
        shutil.copy(res / "0.jpg", res / "99.jpg")
    elif case == "wrong_name":
        (res / "1.jpg").rename(res / "1.JPG")
    elif case == "not_decodable":
        (res / "1.jpg").write_bytes((res / "1.jpg").read_bytes()[:3000])
    elif case == "png":
        Image.open(res / "1.jpg").save(res / "1.jpg", format="PNG")
    elif case == "size":
        Image.open(res / "1.jpg").resize((499, 500)).save(res / "1.jpg")
    elif case == "grey":
        Image.open(res / "1.jpg").convert("L").save(res / "1.jpg")
    elif case == "nested":
        (res / "sub").mkdir()
        shutil.copy(res / "0.jpg", res / "sub" / "0.jpg")


@pytest.mark.parametrize("case, message", [
    ("missing", "2.jpg: missing"),
    ("extra", "99.jpg: extra file, not in dev.csv"),
    ("wrong_name", "1.JPG: name does not match dev.csv (expected '1.jpg')"),
    ("not_decodable", "1.jpg: not a decodable JPEG"),
    ("png", "1.jpg: format PNG, not JPEG"),
    ("size", "1.jpg: size 499x500, original is 500x500"),
    ("grey", "1.jpg: mode L, not RGB"),
    ("nested", "sub/0.jpg: results must sit directly in the folder"),
])
def test_every_refusal_is_listed_and_nothing_is_written(case, message, good, tmp_path):
    inp, res = good
    _break(case, inp, res)
    z = tmp_path / "images.zip"
    with pytest.raises(ValidationError) as e:
        pack(res, inp, z)
    assert any(p.startswith(message) for p in e.value.problems), e.value.problems
    assert not z.exists() and not list(tmp_path.glob(".*.tmp"))
    out = CliRunner().invoke(cli, ["pack", str(res), "--input", str(inp), "-o", str(z)])
    assert out.exit_code == 4 and message in out.output


def test_all_problems_are_listed_at_once(good, tmp_path):
    inp, res = good
    _break("missing", inp, res)
    _break("grey", inp, res)
    _break("extra", inp, res)
    assert len(validate(res, inp)) == 3


def test_check_refuses_a_zip_with_a_bad_layout(good, tmp_path):
    inp, res = good
    z = tmp_path / "flat.zip"
    with zipfile.ZipFile(z, "w") as f:
        for p in sorted(res.glob("*.jpg")):
            f.write(p, p.name)  # no images/ prefix
    with pytest.raises(ValidationError) as e:
        check_zip(z, inp)
    assert "zip entry '0.jpg' is not of the form images/<ImageId>" in e.value.problems
    assert "0.jpg: missing" in e.value.problems


def test_a_crash_while_writing_leaves_no_zip(good, tmp_path, monkeypatch):
    inp, res = good
    z = tmp_path / "images.zip"
    z.write_bytes(b"previous submission")
    calls = {"n": 0}
    original = zipfile.ZipFile.writestr

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "writestr", failing)
    with pytest.raises(OSError, match="disk full"):
        pack(res, inp, z)
    assert z.read_bytes() == b"previous submission"
    assert not list(tmp_path.glob(".*.tmp"))
