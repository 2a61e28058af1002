"""What LPIPS costs per backbone at the contest's 500x500, and whether the backbones agree.

Times lpips v0.1 with the AlexNet and VGG16 backbones on pairs of 500x500 images (forward
only, under no_grad, as `unrestrict score` runs it), and, for each results folder given,
the mean distance each backbone reports, so their rankings of attack configurations can be
compared.

    python benchmarks/lpips_cost.py
    python benchmarks/lpips_cost.py --results work/strength-cross-arch-sample/baseline \\
        work/strength-cross-arch-sample/natural
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from _common import SAMPLE, command_line, device_line, write_result
from unrestrict.data import load_rgb, read_dev_csv
from unrestrict.metrics import LPIPS_NETS, LpipsMetric


def _load(folder: Path, names: list[str]) -> torch.Tensor:
    return torch.stack([load_rgb(folder / n) for n in names]).float() / 255


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--results", type=Path, nargs="*", default=[],
                    help="result folders of the sample set to compare the backbones on")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows, _ = read_dev_csv(SAMPLE / "dev.csv")
    names = [r.image_id for r in rows]
    x = _load(SAMPLE / "images", names[: args.batch_size]).to(device)
    y = (x + 0.03 * torch.randn_like(x)).clamp(0, 1)
    timing = []
    for net in LPIPS_NETS:
        metric = LpipsMetric(net, device)
        metric(y, x)  # warm-up
        times = []
        for _ in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            metric(y, x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t) / len(x))
        timing.append({"net": net, "ms_per_pair": 1e3 * statistics.median(times)})
        print(f"{net}: {timing[-1]['ms_per_pair']:.0f} ms per pair", flush=True)
    base = timing[0]["ms_per_pair"]
    means = []
    for folder in args.results:
        orig = _load(SAMPLE / "images", names)
        adv = _load(folder, names)
        row = {"results": folder.name}
        for net in LPIPS_NETS:
            metric = LpipsMetric(net, device)
            d = torch.cat([metric(adv[i:i + 4].to(device), orig[i:i + 4].to(device)).cpu()
                           for i in range(0, len(names), 4)])
            row[net] = float(d.mean())
        means.append(row)
        print(row, flush=True)

    md = ["### LPIPS cost per backbone at 500x500\n",
          f"Device: {device_line()}  ", f"Command: {command_line()}  ",
          f"lpips v0.1 forward under no_grad, batch {args.batch_size} pairs of 500x500 images, "
          f"median of {args.repeats} runs after a warm-up.\n",
          "| backbone | ms per pair | vs alex |", "|---|---|---|"]
    md += [f"| {t['net']} | {t['ms_per_pair']:.0f} | {t['ms_per_pair'] / base:.1f}x |"
           for t in timing]
    if means:
        md += ["\nMean LPIPS of result sets on the sample set (24 images), by backbone:\n",
               "| results | " + " | ".join(LPIPS_NETS) + " |", "|---" * (len(LPIPS_NETS) + 1) + "|"]
        md += ["| " + r["results"] + " | " + " | ".join(f"{r[n]:.4f}" for n in LPIPS_NETS) + " |"
               for r in means]
    tag = "lpips_cost-" + ("gpu" if device.type == "cuda" else "cpu")
    path = write_result(tag, "\n".join(md) + "\n", {"timing": timing, "means": means})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
