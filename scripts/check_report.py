"""Check an HTML report in headless Chromium: the page loads without console errors, every
image and link it references exists, and a screenshot is written beside it.

    python scripts/check_report.py demo/report          # needs `apt-get install chromium`
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse


class _Refs(HTMLParser):
    """Local files the page points at (img src, a href), as the browser rendered it."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.images = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        ref = a.get("src") if tag == "img" else a.get("href") if tag == "a" else None
        self.images += tag == "img"
        if ref and not urlparse(ref).scheme and not ref.startswith("#"):
            self.refs.append(ref)


def _browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return name
    sys.exit("no Chromium found: apt-get install chromium")


def check(report: Path) -> list[str]:
    page = (report / "index.html").resolve()
    browser = [_browser(), "--headless", "--no-sandbox", "--disable-gpu",
               "--enable-logging=stderr", "--v=0", "--window-size=1400,2000"]
    run = subprocess.run([*browser, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120)
    problems = []
    if run.returncode != 0 or "<body" not in run.stdout:
        problems.append(f"the page did not render (exit {run.returncode}): {run.stderr[-500:]}")
    problems += [f"console: {m}" for m in re.findall(r"CONSOLE\(\d+\)\] (.*)", run.stderr)]
    parser = _Refs()
    parser.feed(run.stdout)
    if parser.images == 0:
        problems.append("the rendered page has no images")
    problems += [f"broken reference: {r}" for r in parser.refs
                 if not (page.parent / unquote(r.split("#")[0])).exists()]
    subprocess.run([*browser, f"--screenshot={report.resolve() / 'screenshot.png'}",
                    page.as_uri()], capture_output=True, timeout=120)
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path, help="a folder written by `unrestrict score --report`")
    problems = check(ap.parse_args().report)
    for p in problems:
        print(p)
    print("ok" if not problems else f"{len(problems)} problem(s)")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
