"""`unrestrict score` (ASR + FID + LPIPS) against `python -m pytorch_fid` (FID alone) on the
same two folders with the same Inception weights.

pytorch-fid is pointed at the offline FID weights by saving them where it caches its own
download (TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth, in a temporary
TORCH_HOME), so both tools compute FID with identical networks and their values must agree.
Target: our full score <= 1.2x pytorch-fid's FID alone.

    python benchmarks/score_speed.py --n 200
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from _common import WORK, command_line, device_line, run, unrestrict, write_result
from derive import derive
from unrestrict import weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--num-workers", type=int, default=2)
    args = ap.parse_args()
    inp = WORK / f"derived-{args.n}"
    if not (inp / "dev.csv").is_file():
        derive(args.n, inp)
    res = WORK / f"score-speed-results-{args.n}"
    if not res.is_dir():  # any result set will do: a one-step colour attack is quick
        run(unrestrict("generate", str(inp), str(res), "--family", "color", "--stages", "1",
                       "--steps", "1", "--refine", "0", "-q"))
    home = Path(tempfile.mkdtemp(prefix="torch-home-"))
    ckpt = home / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    ckpt.parent.mkdir(parents=True)
    torch.save(weights.fid_inception_state_dict(weights.resolve("fid_inception")), ckpt)
    try:
        # pytorch-fid takes folders of images; it needs no dev.csv.
        ref = run([sys.executable, "-m", "pytorch_fid", str(inp / "images"), str(res),
                   "--device", "cpu", "--batch-size", str(args.batch_size),
                   "--num-workers", str(args.num_workers)], env={"TORCH_HOME": str(home)})
        fid_ref = float(re.search(r"FID:\s+([0-9.eE+-]+)", ref.stdout).group(1))
        js = res / ".unrestrict" / "speed.json"
        ours = run(unrestrict("score", str(inp), str(res), "--eval-models", "efficientnet_lite2",
                              "-b", str(args.batch_size), "--num-workers", str(args.num_workers),
                              "--json", str(js), "-q"))
        s = json.loads(js.read_text())
    finally:
        shutil.rmtree(home, ignore_errors=True)
    row = {"images": args.n, "pytorch_fid_s": ref.seconds, "unrestrict_s": ours.seconds,
           "ratio": ours.seconds / ref.seconds, "fid_pytorch_fid": fid_ref,
           "fid_unrestrict": s["fid"],
           "pytorch_fid_rss_mb": ref.max_rss_mb, "unrestrict_rss_mb": ours.max_rss_mb}
    print(row)
    md = ["### Score speed: `unrestrict score` vs `python -m pytorch_fid`\n",
          f"Device: {device_line()}  ", f"Command: {command_line()}  ",
          f"{args.n} derived 500x500 images against a result set; batch {args.batch_size}, "
          f"{args.num_workers} workers each; wall time including model loading. unrestrict "
          "computes ASR (efficientnet_lite2) + FID + LPIPS (alex, full size); pytorch-fid "
          "computes FID alone. Target: ratio <= 1.2.\n",
          "| images | pytorch-fid (s) | unrestrict score (s) | ratio | FID pytorch-fid | "
          "FID unrestrict |", "|---|---|---|---|---|---|",
          f"| {args.n} | {ref.seconds:.1f} | {ours.seconds:.1f} | {row['ratio']:.2f} | "
          f"{fid_ref:.4f} | {s['fid']:.4f} |"]
    print(f"wrote {write_result('score_speed-cpu', chr(10).join(md) + chr(10), row)}")


if __name__ == "__main__":
    main()
