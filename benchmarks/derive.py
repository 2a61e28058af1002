"""Derive N distinct contest-layout images from the bundled sample set.

Each derived image is a random crop (60-100% of the side), an optional horizontal flip and a
mild colour jitter of one sample photo, resized to 500x500 and saved as JPEG quality 95 with
the source's label. Deterministic for a given seed, so benchmark runs are repeatable.

    python benchmarks/derive.py 1000 benchmarks/work/derived-1000
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

from PIL import Image, ImageEnhance

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
# Beside dev.csv: which sample photo each derived image was cut from, so a benchmark can
# count distinct photos, not only images.
SOURCES = "sources.csv"


def derive(n: int, out: Path, seed: int = 0, source: Path = SAMPLE) -> Path:
    rows = list(csv.DictReader((source / "dev.csv").open()))
    rng = random.Random(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    with (out / "dev.csv").open("w", newline="") as f, (out / SOURCES).open("w", newline="") as g:
        w, sources = csv.writer(f), csv.writer(g)
        w.writerow(["ImageId", "TrueLabel"])
        sources.writerow(["ImageId", "Source"])
        for i in range(n):
            src = rows[i % len(rows)]
            im = Image.open(source / "images" / src["ImageId"]).convert("RGB")
            side = rng.uniform(0.6, 1.0) * im.width
            left = rng.uniform(0, im.width - side)
            top = rng.uniform(0, im.height - side)
            im = im.crop((left, top, left + side, top + side)).resize((500, 500), Image.LANCZOS)
            if rng.random() < 0.5:
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
            for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
                im = enhancer(im).enhance(rng.uniform(0.9, 1.1))
            name = f"{i}.jpg"
            im.save(out / "images" / name, quality=95)
            w.writerow([name, src["TrueLabel"]])
            sources.writerow([name, src["ImageId"]])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", type=int)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    derive(args.n, args.out, args.seed)
    print(f"wrote {args.n} images to {args.out}")


if __name__ == "__main__":
    main()
