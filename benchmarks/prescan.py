"""How long the input pre-scan takes: dev.csv read and every image decoded in full.

`generate` runs it before any work so that every bad row is listed at once; this is its cost
on a derived set of N 500x500 JPEGs (made by derive.py when absent).

    python benchmarks/prescan.py --n 1000
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from _common import WORK, command_line, device_line, write_result
from unrestrict.data import scan_input


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    folder = WORK / f"derived-{args.n}"
    if not folder.is_dir():
        subprocess.run([sys.executable, "derive.py", str(args.n), str(folder)], check=True)
    rows = []
    for w in (int(v) for v in args.workers.split(",")):
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            found = scan_input(folder, num_workers=w)
            times.append(time.perf_counter() - t)
        assert len(found.rows) == args.n
        rows.append({"images": args.n, "workers": w, "seconds": statistics.median(times)})
        print(rows[-1], flush=True)
    md = [f"### Input pre-scan: {args.n} images decoded in full\n",
          f"Device: {device_line()}  ", f"Command: {command_line()}  ",
          f"`unrestrict.data.scan_input` on {args.n} derived 500x500 JPEGs (dev.csv read, every "
          f"image decoded by PIL in worker threads), median of {args.repeats} runs; the files "
          "are in the page cache after the first.\n",
          "| workers | seconds | ms per image |", "|---|---|---|"]
    md += [f"| {r['workers']} | {r['seconds']:.1f} | {1e3 * r['seconds'] / r['images']:.1f} |"
           for r in rows]
    print(f"wrote {write_result('prescan-cpu', chr(10).join(md) + chr(10), rows)}")


if __name__ == "__main__":
    main()
