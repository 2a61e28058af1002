"""Helpers shared by the benchmark scripts: timed subprocess runs and result files."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "work"
RESULTS = ROOT / "benchmarks" / "results"
SAMPLE = ROOT / "data" / "sample"


@dataclass
class RunStats:
    cmd: list[str]
    seconds: float
    max_rss_mb: float  # peak resident memory of the process itself (not its children)
    stdout: str
    stderr: str


def run(cmd: list[str], env: dict[str, str] | None = None) -> RunStats:
    """Run a command to completion; its wall time, own peak RSS (from wait4) and output."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    out, err = _communicate_and_reap(proc)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}): {shlex.join(cmd)}\n{err[-3000:]}")
    return RunStats(cmd, seconds, _last_rss_mb, out, err)


_last_rss_mb = float("nan")


def _communicate_and_reap(proc: subprocess.Popen) -> tuple[str, str]:
    """Read both pipes (threads avoid a full-pipe deadlock), then reap with wait4 for rusage."""
    import threading

    global _last_rss_mb
    chunks: dict[str, str] = {}

    def drain(name: str, stream) -> None:
        chunks[name] = stream.read()

    threads = [threading.Thread(target=drain, args=(n, s))
               for n, s in (("out", proc.stdout), ("err", proc.stderr))]
    for t in threads:
        t.start()
    _, status, usage = os.wait4(proc.pid, 0)
    for t in threads:
        t.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    _last_rss_mb = usage.ru_maxrss / 1024
    return chunks["out"], chunks["err"]
def device_line() -> str:
    import torch

    if torch.cuda.is_available():
        dev = torch.cuda.get_device_name(0)
    else:
        dev = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return f"{dev}; torch {torch.__version__}; Python {platform.python_version()}"


def unrestrict(*args: str) -> list[str]:
    return [sys.executable, "-m", "unrestrict", *args]


def write_result(name: str, markdown: str, data: object) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    path = RESULTS / f"{name}.md"
    path.write_text(markdown)
    return path


def command_line() -> str:
    """The command that made a table, and the code it ran: ``python ...`` at commit ``abc1234``
    (``+ uncommitted changes`` when the code differed from it when the script started)."""
    return f"`{shlex.join(['python', *sys.argv])}` at commit {_CODE_VERSION}"


def code_version() -> str:
    # Whoever copied the tree elsewhere (a GPU machine) says which commit it was: a copy's own
    # git metadata can be stale.
    if sent := os.environ.get("BENCH_COMMIT"):
        return f"`{sent}` (as sent to this machine)"
    # The results folder is left out: a script rewrites its own tables there.
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
             ":(exclude)benchmarks/results"],
            cwd=ROOT, text=True, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"`{head}`" + (" + uncommitted changes" if dirty.strip() else "")


# Read once, when a script starts: a run takes minutes, and what counts is the code it ran.
_CODE_VERSION = code_version()
