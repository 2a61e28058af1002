"""``unrestrict score --report DIR``: an HTML page and a PNG contact sheet for human review.

The least natural results (highest LPIPS) come first, then the failures (results that did not
fool every evaluation model): the two lists a team looks at before a human jury does.
"""

from __future__ import annotations

import html
import io
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .score import ImageScore, ScoreResult
from .submission import ResultSource

__all__ = ["write_report", "class_names"]

THUMB = 256


def class_names() -> list[str]:
    """ImageNet-1k class names, offline (they ship inside torchvision)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def _thumb(data: bytes | Path) -> Image.Image:
    src = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    im = src.convert("RGB")
    im.thumbnail((THUMB, THUMB))
    return im


def _caption_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def _contact_sheet(pairs: list[tuple[ImageScore, Image.Image, Image.Image]], names: list[str],
                   path: Path) -> None:
    cols, pad, text_h = 3, 8, 34
    cell_w, cell_h = 2 * THUMB + pad, THUMB + text_h
    rows = max(1, (len(pairs) + cols - 1) // cols)
    sheet = Image.new("RGB", (cols * (cell_w + pad) + pad, rows * (cell_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    font = _caption_font(13)
    for k, (im, orig, adv) in enumerate(pairs):
        x0 = pad + (k % cols) * (cell_w + pad)
        y0 = pad + (k // cols) * (cell_h + pad)
        sheet.paste(orig, (x0, y0))
        sheet.paste(adv, (x0 + THUMB + pad, y0))
        label = names[im.label][:22]
        first = names[im.adv_pred[0]][:22] if im.adv_pred else ""
        draw.text((x0, y0 + THUMB + 2), f"{im.image_id}  LPIPS {im.lpips:.3f}", fill="black",
                  font=font)
        draw.text((x0, y0 + THUMB + 17), f"{label} -> {first}", fill="black", font=font)
    sheet.save(path)


def _card(im: ImageScore, models: list[str], names: list[str], thumbs: str) -> str:
    preds = "".join(
        f"<li><b>{html.escape(m)}</b>: {html.escape(names[c])} &rarr; "
        f"<span class='{'bad' if a == im.label else 'ok'}'>{html.escape(names[a])}</span></li>"
        for m, c, a in zip(models, im.clean_pred, im.adv_pred, strict=True)
    )
    fooled = sum(im.fooled)
    stem = html.escape(im.image_id)
    return (
        f"<div class='card'><div class='pair'>"
        f"<figure><img src='{thumbs}/{stem}.orig.jpg' alt='original {stem}'>"
        f"<figcaption>original</figcaption></figure>"
        f"<figure><img src='{thumbs}/{stem}.adv.jpg' alt='result {stem}'>"
        f"<figcaption>result</figcaption></figure></div>"
        f"<p><b>{stem}</b> &middot; true: {html.escape(names[im.label])} &middot; "
        f"LPIPS <b>{im.lpips:.3f}</b> &middot; fooled {fooled}/{len(models)}</p>"
        f"<ul>{preds}</ul></div>"
    )


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{margin-bottom:4px} table.summary td,table.summary th{padding:4px 12px;text-align:left}
table.summary{border-collapse:collapse;background:#fff;margin:12px 0}
table.summary tr:nth-child(even){background:#f0f0f0}
.grid{display:flex;flex-wrap:wrap;gap:14px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;width:532px}
.pair{display:flex;gap:8px} figure{margin:0} figure img{width:256px;height:auto;display:block}
figcaption{font-size:12px;color:#666} .card p{margin:6px 0;font-size:14px}
.card ul{margin:0;padding-left:18px;font-size:13px} .ok{color:#0a7d2c} .bad{color:#b00020}
.note{color:#666;font-size:13px}
"""


def write_report(result: ScoreResult, input_dir: Path, results_path: Path, out_dir: Path,
                 top: int = 48) -> Path:
    """Write ``index.html``, ``contact_sheet.png``, ``per_image.csv`` and thumbnails."""
    out_dir = Path(out_dir)
    thumbs = out_dir / "thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)
    names = class_names()
    models = result.summary["eval_models"]
    by_lpips = sorted(result.images, key=lambda im: im.lpips, reverse=True)
    worst = by_lpips[:top]
    failures = [im for im in by_lpips if not all(im.fooled)][:top]
    src = ResultSource(results_path)
    images_dir = Path(input_dir) / "images"
    shown: dict[str, tuple[Image.Image, Image.Image]] = {}
    for im in {i.image_id: i for i in worst + failures}.values():
        orig, adv = _thumb(images_dir / im.image_id), _thumb(src.read(im.image_id))
        orig.save(thumbs / f"{im.image_id}.orig.jpg", quality=90)
        adv.save(thumbs / f"{im.image_id}.adv.jpg", quality=90)
        shown[im.image_id] = (orig, adv)
    _contact_sheet([(im, *shown[im.image_id]) for im in worst[:12]], names,
                   out_dir / "contact_sheet.png")
    result.write_csv(out_dir / "per_image.csv")

    s = result.summary
    rows = [
        ("images", f"{s['n_images']}" + (f" ({s['n_missing']} missing)" if s["n_missing"] else "")),
        ("eval models", ", ".join(models)),
        ("attack success rate (mean over models)", f"{s['asr']:.3f}"),
        ("ASR on originally-correct images", f"{s['asr_on_clean_correct']:.3f}"),
        ("clean accuracy of eval models", f"{s['clean_accuracy']:.3f}"),
        ("FID" + ("" if s["fid_full_rank"] else " (fewer than 2048 images: biased)"),
         f"{s['fid']:.2f}"),
        ("LPIPS mean (median, p95)", f"{s['lpips']:.4f} ({s['lpips_distribution']['median']:.4f}, "
                                     f"{s['lpips_distribution']['p95']:.4f})"),
        ("combined score", f"{s['score']:.2f}"),
    ]
    n_failures = sum(not all(i.fooled) for i in result.images)
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>unrestrict report</title>
<style>{_CSS}</style></head><body>
<h1>unrestrict score report</h1>
<p class="note">{html.escape(s['results'])} against {html.escape(s['input_dir'])}</p>
<table class="summary">{table}</table>
<p class="note">Per-image values: <a href="per_image.csv">per_image.csv</a> &middot;
contact sheet: <a href="contact_sheet.png">contact_sheet.png</a></p>
<h2>Least natural results (highest LPIPS first)</h2>
<div class="grid">{''.join(_card(im, models, names, 'thumbs') for im in worst)}</div>
<h2>Failures: not every evaluation model fooled ({n_failures})</h2>
<div class="grid">{''.join(_card(im, models, names, 'thumbs') for im in failures)
                   or '<p>None: every result fooled every evaluation model.</p>'}</div>
</body></html>
"""
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
