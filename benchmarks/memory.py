"""Peak memory of `generate` and `score` over 100 and 1000 derived images, and images per
second as the batch grows.

Memory must be flat in the number of images (target: 1000 images <= 1.1x of 100). Runs use a
one-step attack so that 1000 images fit in a CPU session: what streams, and what could leak,
is the same as in a full attack. `--num-workers 0` keeps decoding in the measured process, so
its peak RSS (read with wait4) covers everything.

    python benchmarks/memory.py --sizes 100,1000 --batch-sizes 1,4,16
"""

from __future__ import annotations

import argparse
import re
import shutil

from _common import WORK, command_line, device_line, run, unrestrict, write_result
from derive import derive

LIGHT = ["--stages", "1", "--steps", "1", "--refine", "0", "--num-workers", "0", "-q"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,1000")
    ap.add_argument("--batch-sizes", default="1,4,16")
    ap.add_argument("--throughput-images", type=int, default=64)
    args = ap.parse_args()
    sizes = [int(v) for v in args.sizes.split(",")]
    rows = []
    for n in sizes:
        inp = WORK / f"derived-{n}"
        if not (inp / "dev.csv").is_file():
            derive(n, inp)
        out = WORK / f"memory-out-{n}"
        shutil.rmtree(out, ignore_errors=True)
        g = run(unrestrict("generate", str(inp), str(out), "-b", "8", *LIGHT))
        s = run(unrestrict("score", str(inp), str(out), "--eval-models", "efficientnet_lite2",
                           "--num-workers", "0", "-b", "16", "-q"))
        rows.append({"images": n, "generate_rss_mb": g.max_rss_mb, "generate_s": g.seconds,
                     "score_rss_mb": s.max_rss_mb, "score_s": s.seconds})
        print(rows[-1], flush=True)
    tp = []
    inp = WORK / f"derived-{sizes[0]}"
    for b in (int(v) for v in args.batch_sizes.split(",")):
        out = WORK / f"throughput-{b}"
        shutil.rmtree(out, ignore_errors=True)
        g = run(unrestrict("generate", str(inp), str(out), "-b", str(b), "--limit",
                           str(args.throughput_images), *LIGHT[:-3], "--num-workers", "2", "-q"))
        written = int(re.search(r"(\d+) written", g.stdout).group(1))
        tp.append({"batch": b, "images": written, "seconds": g.seconds,
                   "images_per_s": written / g.seconds, "rss_mb": g.max_rss_mb})
        print(tp[-1], flush=True)
    base = rows[0]
    md = ["### Memory and scale\n", f"Device: {device_line()}  ", f"Command: {command_line()}  ",
          "One-step attack (`--stages 1 --steps 1 --refine 0`), batch 8, `--num-workers 0`; "
          "score on efficientnet_lite2, batch 16. Peak RSS of the process, from wait4. "
          "Target: 1000 images <= 1.1x the memory of 100.\n",
          "| images | generate peak RSS (MB) | vs first | generate (s) | score peak RSS (MB) "
          "| vs first | score (s) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['images']} | {r['generate_rss_mb']:.0f} | "
                  f"{r['generate_rss_mb'] / base['generate_rss_mb']:.3f}x | {r['generate_s']:.0f} "
                  f"| {r['score_rss_mb']:.0f} | {r['score_rss_mb'] / base['score_rss_mb']:.3f}x | "
                  f"{r['score_s']:.0f} |")
    md += ["", f"Images per second as the batch grows ({args.throughput_images} images, same "
           "one-step attack, 2 decoding workers, model loading included):\n",
           "| batch | images/s | seconds | peak RSS (MB) |", "|---|---|---|---|"]
    md += [f"| {t['batch']} | {t['images_per_s']:.2f} | {t['seconds']:.0f} | {t['rss_mb']:.0f} |"
           for t in tp]
    data = {"memory": rows, "throughput": tp}
    print(f"wrote {write_result('memory-cpu', chr(10).join(md) + chr(10), data)}")


if __name__ == "__main__":
    main()
