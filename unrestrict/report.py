"""``unrestrict score --report DIR``: an HTML page and a PNG contact sheet for human review.

The least natural results come first (ranked by the worst naturalness measure over its limit),
then the failures (results that did not fool every evaluation model): the two lists a team
looks at before a human jury does. Every shown pair is also copied at full size.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from PIL import Image, ImageDraw, ImageFont

from .naturalness import LABELS, LIMITS, MEASURES
from .score import ImageScore, ScoreResult, summary_rows
from .submission import ResultSource

__all__ = ["write_report", "class_names", "rank_least_natural", "contact_sheet", "thumbnails"]

THUMB = 256
_LABELS = {"color_drift": "drift", "color_drift_p95": "drift p95", "flat_noise": "flat noise",
           "detail_excess": "detail", "detail_excess_p95": "detail p95", "tone_shift": "tone",
           "structure_change": "structure", "structure_change_p99": "structure p99"}


def class_names() -> list[str]:
    """ImageNet-1k class names, offline (they ship inside torchvision)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def rank_least_natural(images: list[ImageScore]) -> list[ImageScore]:
    """Least natural first: by the worst measure-to-limit ratio, then by LPIPS."""
    return sorted(images, key=lambda im: (im.worst_ratio, im.lpips), reverse=True)


def _thumb(data: bytes, size: int = THUMB) -> Image.Image:
    im = Image.open(io.BytesIO(data)).convert("RGB")
    im.thumbnail((size, size))
    return im


def thumbnails(input_dir: Path, results: Path, image_id: str,
               size: int = THUMB) -> tuple[Image.Image, Image.Image]:
    """The original and the result of one image, shrunk to fit ``size`` x ``size``."""
    orig = (Path(input_dir) / "images" / image_id).read_bytes()
    return _thumb(orig, size), _thumb(ResultSource(results).read(image_id), size)


def _caption_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


Cell = tuple[Image.Image, Image.Image, list[str]]  # original, result, caption lines


def contact_sheet(cells: list[Cell], path: Path, thumb: int = THUMB, cols: int = 3,
                  quality: int | None = None) -> None:
    """Original and result side by side for each cell, captions underneath, in a grid.

    ``quality``: save as JPEG at this quality (small enough to commit); PNG when ``None``.
    """
    pad, line_h = 8, 15
    lines = max((len(c[2]) for c in cells), default=0)
    cell_w, cell_h = 2 * thumb + pad, thumb + 4 + line_h * lines
    rows = max(1, (len(cells) + cols - 1) // cols)
    sheet = Image.new("RGB", (cols * (cell_w + pad) + pad, rows * (cell_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    font = _caption_font(13)
    for k, (orig, adv, caption) in enumerate(cells):
        x0 = pad + (k % cols) * (cell_w + pad)
        y0 = pad + (k // cols) * (cell_h + pad)
        sheet.paste(orig, (x0, y0))
        sheet.paste(adv, (x0 + thumb + pad, y0))
        for i, text in enumerate(caption):
            draw.text((x0, y0 + thumb + 2 + line_h * i), text, fill="black", font=font)
    if quality is None:
        sheet.save(path)
    else:
        sheet.save(path, format="JPEG", quality=quality)


def _captions(im: ImageScore, names: list[str]) -> list[str]:
    n = im.natural
    first = names[im.adv_pred[0]][:22] if im.adv_pred else ""
    return [f"{im.image_id}  LPIPS {im.lpips:.3f}  worst/limit {im.worst_ratio:.2f}",
            f"drift {n['color_drift']:.1f}/{n['color_drift_p95']:.1f}  flat "
            f"{n['flat_noise']:.1f}  tone {n['tone_shift']:.1f}",
            f"detail {n['detail_excess']:.2f}/{n['detail_excess_p95']:.2f}  structure "
            f"{n['structure_change']:.2f}/{n['structure_change_p99']:.2f}",
            f"{names[im.label][:22]} -> {first}"]


def _card(im: ImageScore, models: list[str], names: list[str]) -> dict[str, Any]:
    stem = quote(im.image_id)
    return {
        "id": im.image_id, "true": names[im.label], "lpips": im.lpips, "worst": im.worst_ratio,
        "fooled": sum(im.fooled), "n_models": len(models),
        "orig_src": f"thumbs/{stem}.orig.jpg", "adv_src": f"thumbs/{stem}.adv.jpg",
        "orig_href": f"full/orig/{stem}", "adv_href": f"full/result/{stem}",
        "measures": [{"label": _LABELS.get(k, k.replace("_", " ")), "value": f"{im.natural[k]:.2f}",
                      "over": im.natural[k] > LIMITS[k]} for k in MEASURES],
        "preds": [{"model": m, "clean": names[c], "adv": names[a], "kept": a == im.label}
                  for m, c, a in zip(models, im.clean_pred, im.adv_pred, strict=True)],
    }


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("unrestrict", "templates"),
    autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
    undefined=jinja2.StrictUndefined,
)


def write_report(result: ScoreResult, input_dir: Path, results_path: Path, out_dir: Path,
                 top: int = 48) -> Path:
    """Write ``index.html``, ``contact_sheet.png``, ``per_image.csv``, thumbnails and the
    shown pairs at full size (``full/orig``, ``full/result``: the bytes as submitted)."""
    out_dir = Path(out_dir)
    thumbs, full = out_dir / "thumbs", out_dir / "full"
    for d in (thumbs, full / "orig", full / "result"):
        d.mkdir(parents=True, exist_ok=True)
    names = class_names()
    models = result.summary.eval_models
    ranked = rank_least_natural(result.images)
    worst = ranked[:top]
    failures = [im for im in ranked if not all(im.fooled)][:top]
    src = ResultSource(results_path)
    images_dir = Path(input_dir) / "images"
    shown: dict[str, tuple[Image.Image, Image.Image]] = {}
    for im in {i.image_id: i for i in worst + failures}.values():
        orig_bytes, adv_bytes = (images_dir / im.image_id).read_bytes(), src.read(im.image_id)
        (full / "orig" / im.image_id).write_bytes(orig_bytes)
        (full / "result" / im.image_id).write_bytes(adv_bytes)
        orig, adv = _thumb(orig_bytes), _thumb(adv_bytes)
        orig.save(thumbs / f"{im.image_id}.orig.jpg", quality=90)
        adv.save(thumbs / f"{im.image_id}.adv.jpg", quality=90)
        shown[im.image_id] = (orig, adv)
    contact_sheet([(*shown[im.image_id], _captions(im, names)) for im in worst[:12]],
                  out_dir / "contact_sheet.png")
    result.write_csv(out_dir / "per_image.csv")
    page = _ENV.get_template("report.html.j2").render(
        summary=result.summary, rows=summary_rows(result.summary),
        worst=[_card(im, models, names) for im in worst],
        failures=[_card(im, models, names) for im in failures],
        n_failures=sum(not all(i.fooled) for i in result.images),
        ranked_by=", ".join(LABELS.get(k, k) for k in MEASURES),
    )
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
