"""What the naturalness measures give for edits whose look is known, on the sample set.

Each edit is applied to the 24 sample photos, JPEG-encoded at quality 95 like `generate`'s
output (except the JPEG rows themselves), and measured against the originals: a calibration
of the limits in `unrestrict.naturalness.LIMITS` against edits a person would accept (a JPEG
round trip, a global grade) and reject (grain, a blur, a colour cloud).

    python benchmarks/naturalness.py
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import kornia.enhance as KE
import kornia.filters as KF
import torch

from _common import SAMPLE, command_line, device_line, write_result
from unrestrict.data import load_rgb, read_dev_csv
from unrestrict.jpeg import decode_rgb, encode_jpeg
from unrestrict.naturalness import LABELS, LIMITS, MEASURES, naturalness

Edit = Callable[[torch.Tensor], torch.Tensor]


def _jpeg(q: int) -> Edit:
    return lambda x: torch.stack([decode_rgb(encode_jpeg(i, q))[0] for i in x]).float() / 255


def _noise(amp: float) -> Edit:
    g = torch.Generator().manual_seed(0)
    return lambda x: (x + (torch.rand(x.shape, generator=g) * 2 - 1) * amp).clamp(0, 1)


def _grade(x: torch.Tensor) -> torch.Tensor:
    y = KE.adjust_saturation(KE.adjust_brightness(x, 0.04), 1.25).clamp(0, 1)
    return KE.adjust_gamma(y, 0.85).clamp(0, 1)


def _cloud(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    blob = torch.exp(-((yy - h / 4) ** 2 + (xx - w / 2) ** 2) / (2 * (h / 8) ** 2))
    y = x.clone()
    y[:, 0] += 0.06 * blob
    y[:, 1] -= 0.04 * blob
    return y.clamp(0, 1)


def _unsharp(sigma: float, amount: float) -> Edit:
    def edit(x: torch.Tensor) -> torch.Tensor:
        k = 2 * int(3 * sigma + 0.5) + 1
        return (x + amount * (x - KF.gaussian_blur2d(x, (k, k), (sigma, sigma)))).clamp(0, 1)
    return edit


EDITS: dict[str, tuple[Edit, bool]] = {  # name: (edit, JPEG q95 after it)
    "JPEG q95 round trip": (_jpeg(95), False),
    "JPEG q85 round trip": (_jpeg(85), False),
    "global grade (brightness +0.04, saturation x1.25, gamma 0.85)": (_grade, True),
    "unsharp mask (sigma 2 px, amount 0.5)": (_unsharp(2.0, 0.5), True),
    "unsharp mask (sigma 1 px, amount 1)": (_unsharp(1.0, 1.0), True),
    "uniform noise +-2/255": (_noise(2 / 255), True),
    "uniform noise +-8/255": (_noise(8 / 255), True),
    "Gaussian blur sigma 1": (lambda x: KF.gaussian_blur2d(x, (7, 7), (1.0, 1.0)), True),
    "colour cloud in the upper half (+0.06 R, -0.04 G)": (_cloud, True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.parse_args()
    rows_csv, _ = read_dev_csv(SAMPLE / "dev.csv")
    x = torch.stack([load_rgb(SAMPLE / "images" / r.image_id) for r in rows_csv]).float() / 255
    rows = []
    for name, (edit, then_jpeg) in EDITS.items():
        y = edit(x)
        if then_jpeg:
            y = _jpeg(95)(y)
        per = [naturalness(x[i:i + 4], y[i:i + 4]) for i in range(0, len(x), 4)]
        flat = [r for chunk in per for r in chunk]
        means = {k: sum(r[k] for r in flat) / len(flat) for k in MEASURES}
        within = sum(all(r[k] <= LIMITS[k] for k in MEASURES) for r in flat) / len(flat)
        worst = {k: max(r[k] for r in flat) for k in MEASURES}
        rows.append({"edit": name, **means, "within_limits": within,
                     "worst_image": {k: worst[k] for k in MEASURES}})
        print(rows[-1], flush=True)
    heads = [f"{LABELS.get(k, k)} (limit {LIMITS[k]:g})" for k in MEASURES]
    md = ["### Naturalness measures on known edits (sample set, 24 images)\n",
          f"Device: {device_line()}  ", f"Command: {command_line()}  ",
          "Each edit applied to the sample photos and saved as JPEG q95 (the JPEG rows are the "
          "round trip alone). Each cell: mean over images / the worst image's value. `within` = "
          "share of images under every limit.\n",
          "| edit | " + " | ".join(heads) + " | within |",
          "|---|" + "---|" * (len(heads) + 1)]
    md += [f"| {r['edit']} | " + " | ".join(f"{r[k]:.3g} / {r['worst_image'][k]:.3g}"
                                             for k in MEASURES)
           + f" | {r['within_limits']:.2f} |" for r in rows]
    path = write_result("naturalness-sample", "\n".join(md) + "\n", rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
