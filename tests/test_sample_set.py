"""The bundled sample set is in the exact contest layout and its provenance is recorded."""

from __future__ import annotations

import csv

from PIL import Image


def test_sample_set_layout(sample_dir):
    lines = (sample_dir / "dev.csv").read_text().splitlines()
    assert lines[0] == "ImageId,TrueLabel"
    rows = list(csv.DictReader(lines))
    assert len(rows) >= 20
    assert len({r["ImageId"] for r in rows}) == len(rows)
    for r in rows:
        assert r["ImageId"].endswith(".jpg")
        assert 0 <= int(r["TrueLabel"]) <= 999
        with Image.open(sample_dir / "images" / r["ImageId"]) as im:
            assert im.format == "JPEG" and im.size == (500, 500) and im.mode == "RGB"
    assert sorted(p.name for p in (sample_dir / "images").iterdir()) == sorted(
        r["ImageId"] for r in rows
    )


def test_every_sample_image_has_a_recorded_source(sample_dir):
    dev = {r["ImageId"]: r["TrueLabel"] for r in csv.DictReader((sample_dir / "dev.csv").open())}
    src = {r["ImageId"]: r for r in csv.DictReader((sample_dir / "SOURCES.csv").open())}
    assert dev.keys() == src.keys()
    for image_id, label in dev.items():
        assert src[image_id]["TrueLabel"] == label
        assert src[image_id]["package"] and src[image_id]["file"] and src[image_id]["label_source"]
