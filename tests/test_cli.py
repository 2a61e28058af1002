"""The click layer: help texts, the models listing, and error reporting."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from unrestrict.cli import cli
from unrestrict.models import OFFLINE_MODELS


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
        assert infos[name]["available"] is True
        assert infos[name]["source"] == "offline"
    table = CliRunner().invoke(cli, ["models"]).output
    assert "efficientnet_lite0" in table and "yes" in table


def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "unrestrict", "--help"],
                         capture_output=True, text=True, check=True)
    assert "generate" in out.stdout


def test_keep_freed_memory_respects_user_malloc_settings(monkeypatch):
    from unrestrict.utils import keep_freed_memory

    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert keep_freed_memory() is False
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert keep_freed_memory() in (True, False)  # True on glibc, False elsewhere
