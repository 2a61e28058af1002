"""Build data/sample: real labelled photos in the exact contest layout.

Sources (read from installed packages, never imported; install them with
``pip install --no-deps foolbox==3.3.4 scikit-image==0.26.0 scikit-learn==1.9.1
matplotlib==3.11.2``):

* foolbox 3.3.4 ``data/imagenet_XX_<label>.jpg``: 20 ImageNet photos with their 0-based label.
* four unlabelled photos whose label all offline models agree on (or 3 of 4, checked by eye):
  skimage ``chelsea`` (Egyptian cat), ``coffee`` (espresso), sklearn ``china`` (palace),
  matplotlib ``grace_hopper`` (military uniform). Their label source says so in SOURCES.csv.

Each photo is centre-cropped to a square and resized to 500x500 (Lanczos), saved as JPEG
quality 95. ``dev.csv`` has the contest header ``ImageId,TrueLabel``; ``SOURCES.csv`` records
where every photo came from.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import re
from pathlib import Path

from PIL import Image

SIZE = 500
QUALITY = 95

# (module, version, file inside the package, label, how the label was obtained)
EXTRAS = [
    ("skimage", "0.26.0", "data/chelsea.png", 285, "consensus of 4 offline models"),
    ("skimage", "0.26.0", "data/coffee.png", 967, "consensus of 4 offline models"),
    ("sklearn", "1.9.1", "datasets/images/china.jpg", 698, "consensus of 4 offline models"),
    ("matplotlib", "3.11.2", "mpl-data/sample_data/grace_hopper.jpg", 652,
     "3 of 4 offline models, checked by eye (US Navy uniform)"),
]
DISTRIBUTION = {"foolbox": "foolbox", "skimage": "scikit-image", "sklearn": "scikit-learn",
                "matplotlib": "matplotlib"}


def package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package for {module!r} is not installed: "
                         f"pip install --no-deps {DISTRIBUTION[module]}")
    return Path(list(spec.submodule_search_locations)[0])


def square_500(path: Path) -> Image.Image:
    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return im.crop((left, top, left + s, top + s)).resize((SIZE, SIZE), Image.LANCZOS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "data" / "sample")
    args = ap.parse_args()
    (args.out / "images").mkdir(parents=True, exist_ok=True)

    sources = []
    fb = package_dir("foolbox") / "data"
    for f in sorted(fb.glob("imagenet_*.jpg")):
        label = int(re.fullmatch(r"imagenet_\d+_(\d+)\.jpg", f.name).group(1))
        sources.append(("foolbox", "3.3.4", f"data/{f.name}", label, "ImageNet label (foolbox)"))
    sources += EXTRAS

    rows = []
    for i, (module, version, rel, label, how) in enumerate(sources):
        image_id = f"{i}.jpg"
        square_500(package_dir(module) / rel).save(
            args.out / "images" / image_id, quality=QUALITY
        )
        rows.append((image_id, label, DISTRIBUTION[module], version, rel, how))

    with (args.out / "dev.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ImageId", "TrueLabel"])
        w.writerows((r[0], r[1]) for r in rows)
    with (args.out / "SOURCES.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ImageId", "TrueLabel", "package", "version", "file", "label_source"])
        w.writerows(rows)
    print(f"wrote {len(rows)} images to {args.out}")


if __name__ == "__main__":
    main()
