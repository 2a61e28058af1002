"""The click layer: help texts, the models listing, and error reporting."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from unrestrict.cli import cli
from unrestrict.models import OFFLINE_MODELS

pytestmark = pytest.mark.integration  # loads the offline weights


def test_help_lists_commands():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for cmd in ("models", "generate"):
        assert cmd in result.output


def test_models_lists_offline_models_as_ready():
    result = CliRunner().invoke(cli, ["models", "--json"])
    assert result.exit_code == 0, result.output
    infos = {m["name"]: m for m in json.loads(result.output)}
    for name in OFFLINE_MODELS:
        assert infos[name]["status"] == "verified"  # the file's SHA-256 was checked
        assert infos[name]["source"] == "offline"
        assert infos[name]["weights_id"].startswith("sha256:")
    table = CliRunner().invoke(cli, ["models"]).output
    assert "efficientnet_lite0" in table and "verified" in table


def test_models_reports_a_corrupt_weight_file(monkeypatch, tmp_path):
    import shutil

    from unrestrict import weights

    src = weights.locate("mobilenet_v2")
    bad = tmp_path / src.name
    shutil.copy(src, bad)
    with bad.open("r+b") as f:  # one byte changed: the size is right, the digest is not
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(weights, "locate", lambda key: bad if key == "mobilenet_v2" else src)
    result = CliRunner().invoke(cli, ["models", "--json"])
    status = {m["name"]: m["status"] for m in json.loads(result.output)}
    assert status["mobilenet_v2"] == "corrupt"


def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "unrestrict", "--help"],
                         capture_output=True, text=True, check=True)
    assert "generate" in out.stdout


def test_keep_freed_memory_respects_user_malloc_settings(monkeypatch):
    from unrestrict.process import keep_freed_memory

    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert keep_freed_memory() is False
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert keep_freed_memory() in (True, False)  # True on glibc, False elsewhere
