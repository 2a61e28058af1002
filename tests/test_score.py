"""`unrestrict score`: the pipeline, on mocked features where closed forms exist and on real
weights for the self-score identities."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import unrestrict.score as score_mod
from unrestrict.cli import cli
from unrestrict.naturalness import LABELS, MEASURES
from unrestrict.score import ScoreConfig, score

pytestmark = pytest.mark.integration  # loads the offline weights


class MeanColourFeatures:
    """A stand-in for the Inception: 2048-d features linear in each image's mean colour."""

    def __init__(self, device="cpu"):
        self.w = torch.randn(3, 2048, generator=torch.Generator().manual_seed(0))

    def __call__(self, x):
        return x.mean((2, 3)) @ self.w


def _shift_copy(src, dst, delta: int):
    """Copy a contest folder's images with every pixel value raised by ``delta`` (no clipping
    for the sample set's darker images would be needed; clipped pixels are avoided by the
    check below)."""
    dst.mkdir()
    for p in (src / "images").iterdir():
        arr = np.asarray(Image.open(p).convert("RGB")).astype(np.int16)
        Image.fromarray(np.clip(arr + delta, 0, 255).astype(np.uint8)).save(
            dst / p.name, format="PNG")


def test_fid_through_the_pipeline_matches_closed_form(sample_copy, tmp_path, monkeypatch):
    monkeypatch.setattr(score_mod, "FidFeatures", MeanColourFeatures)
    inp = sample_copy(6)
    adv = tmp_path / "adv"
    _shift_copy(inp, adv, 0)
    # Results differ from the originals by a per-image constant colour offset, so the
    # features shift by (offset @ w) per image; with the same offset for every image the
    # covariances are equal and FID = ||mean shift||^2.
    for p in adv.iterdir():
        arr = np.asarray(Image.open(p)).astype(np.float64)
        Image.fromarray(np.clip(arr * 0.5 + 40, 0, 255).round().astype(np.uint8)).save(p)
    res = score(inp, adv, ScoreConfig(eval_models=("mobilenet_v2",), num_workers=0),
                progress=False)
    feats = MeanColourFeatures()

    def load(folder):
        return torch.stack([torch.from_numpy(np.asarray(Image.open(folder / r).convert("RGB"))
                                             .copy()).permute(2, 0, 1).float() / 255
                            for r in sorted(p.name for p in adv.iterdir())])

    fa, fb = feats(load(inp / "images")).double().numpy(), feats(load(adv)).double().numpy()
    from pytorch_fid.fid_score import calculate_frechet_distance

    expected = calculate_frechet_distance(fa.mean(0), np.cov(fa, rowvar=False),
                                          fb.mean(0), np.cov(fb, rowvar=False))
    assert res.summary.fid == pytest.approx(expected, rel=1e-4, abs=1e-3)
    assert res.summary.fid > 1.0


@pytest.fixture(scope="module")
def self_score(tmp_path_factory):
    from conftest import SAMPLE

    adv = tmp_path_factory.mktemp("self")
    for p in (SAMPLE / "images").iterdir():
        shutil.copy(p, adv / p.name)
    res = score(SAMPLE, adv, ScoreConfig(eval_models=("efficientnet_lite2", "mobilenet_v2"),
                                         num_workers=0), progress=False)
    return adv, res


def test_self_score_identities_with_real_weights(self_score):
    _, res = self_score
    s = res.summary.to_dict()
    assert s["lpips"] == 0.0
    assert s["fid"] == pytest.approx(0.0, abs=1e-3)
    assert s["asr"] == pytest.approx(1 - s["clean_accuracy"])
    assert s["asr_on_clean_correct"] == 0.0
    assert s["n_images"] == 24 and s["fid_full_rank"] is False
    assert s["score"] == pytest.approx(100 * s["asr"])
    for key in ("color_drift", "color_drift_p95", "flat_noise", "detail_excess",
                "detail_excess_p95", "tone_shift", "structure_change", "structure_change_p99",
                "lpips_alex"):
        assert s[key] == 0.0, key
    assert s["within_limits"] == 1.0
    assert s["natural_success"] == pytest.approx(s["asr_all_models"])


def test_zip_and_folder_give_the_same_numbers(self_score, tmp_path, sample_dir):
    adv, res = self_score
    z = tmp_path / "images.zip"
    with zipfile.ZipFile(z, "w") as f:
        for p in adv.iterdir():
            f.write(p, f"images/{p.name}")
    res2 = score(sample_dir, z, ScoreConfig(eval_models=("efficientnet_lite2", "mobilenet_v2"),
                                            num_workers=0), progress=False)
    for key in ("asr", "lpips", "clean_accuracy", "n_images"):
        assert getattr(res2.summary, key) == getattr(res.summary, key)
    assert res2.summary.fid == pytest.approx(res.summary.fid, abs=1e-6)


def test_cli_outputs_json_csv_and_report(self_score, tmp_path, sample_dir):
    adv, _ = self_score
    out = CliRunner().invoke(cli, [
        "score", str(sample_dir), str(adv), "--eval-models", "mobilenet_v2", "--num-workers", "0",
        "--json", str(tmp_path / "s.json"), "--csv", str(tmp_path / "s.csv"),
        "--report", str(tmp_path / "rep"), "-q"])
    assert out.exit_code == 0, out.output
    s = json.loads((tmp_path / "s.json").read_text())
    for key in ("asr", "fid", "lpips", "score", "n_images", "eval_models", "clean_accuracy",
                "formula", "conventions", "versions", "color_drift", "color_drift_p95",
                "flat_noise", "detail_excess", "detail_excess_p95", "tone_shift",
                "structure_change", "structure_change_p99", "lpips_alex"):
        assert key in s
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0].startswith("ImageId,TrueLabel,clean_pred[mobilenet_v2]")
    assert lines[0].endswith("lpips,lpips_alex,color_drift,color_drift_p95,flat_noise,"
                             "detail_excess,detail_excess_p95,tone_shift,structure_change,"
                             "structure_change_p99,worst_ratio")
    assert len(lines) == 25
    html = (tmp_path / "rep" / "index.html").read_text()
    assert "Least natural results" in html and "Failures" in html
    assert Image.open(tmp_path / "rep" / "contact_sheet.png").size[0] > 500
    for line in ("score", "ASR", "colour drift", "flat-region noise", "added fine detail",
                 "tone shift", "reshaped structure"):
        assert line in out.output


def test_report_ranks_by_naturalness_not_lpips(sample_copy, tmp_path):
    """A colour cloud (low LPIPS, high drift) ranks above a global hue rotation (higher LPIPS,
    neither drift nor tone shift); the page escapes what it shows and links the full-size
    files."""
    import kornia.enhance as KE

    from conftest import load_folder
    from unrestrict.jpeg import encode_jpeg
    from unrestrict.report import write_report

    inp = sample_copy(2)
    x, _ = load_folder(inp)
    adv = tmp_path / "adv"
    adv.mkdir()
    yy, xx = torch.meshgrid(torch.arange(500), torch.arange(500), indexing="ij")
    cloud = torch.exp(-((yy - 120) ** 2 + (xx - 250) ** 2) / (2 * 60.0**2))
    clouded = x[0].clone()
    clouded[0] += 0.07 * cloud
    clouded[1] -= 0.05 * cloud
    (adv / "0.jpg").write_bytes(encode_jpeg(clouded.clamp(0, 1), 95))
    (adv / "1.jpg").write_bytes(encode_jpeg(KE.adjust_hue(x[1], 0.3).clamp(0, 1), 95))
    res = score(inp, adv, ScoreConfig(eval_models=("mobilenet_v2",), num_workers=0),
                progress=False)
    by_id = {im.image_id: im for im in res.images}
    assert by_id["0.jpg"].lpips < by_id["1.jpg"].lpips
    assert by_id["0.jpg"].worst_ratio > 1 > by_id["1.jpg"].worst_ratio
    index = write_report(res, inp, adv, tmp_path / "rep")
    page = index.read_text()
    assert page.index("<b>0.jpg</b>") < page.index("<b>1.jpg</b>")
    note = page.partition("Ranked by")[2].partition("</p>")[0]
    assert all(LABELS.get(k, k) in note for k in MEASURES)  # the ranking names every measure
    assert "href=\"full/result/0.jpg\"" in page
    assert (tmp_path / "rep" / "full" / "result" / "0.jpg").read_bytes() == (
        adv / "0.jpg").read_bytes()


def test_two_lpips_nets_in_one_pass(sample_copy, tmp_path):
    from conftest import load_folder
    from unrestrict.jpeg import encode_jpeg

    inp = sample_copy(2)
    x, _ = load_folder(inp)
    adv = tmp_path / "adv"
    adv.mkdir()
    for name, img in zip(("0.jpg", "1.jpg"), x, strict=True):
        (adv / name).write_bytes(encode_jpeg((img * 0.8 + 0.1).clamp(0, 1), 90))
    res = score(inp, adv, ScoreConfig(eval_models=("mobilenet_v2",), num_workers=0,
                                      lpips_nets=("vgg", "alex")), progress=False)
    s = res.summary.to_dict()
    assert s["lpips_net"] == "vgg" and s["lpips"] == s["lpips_vgg"]
    assert s["lpips_alex"] > 0.01 and s["lpips_vgg"] > 0.01
    assert s["lpips_alex"] != s["lpips_vgg"]
    assert res.images[0].lpips_by_net["vgg"] == res.images[0].lpips
    with pytest.raises(ValueError, match="distinct names"):
        ScoreConfig(lpips_nets=("alex", "alex"))
    with pytest.raises(ValueError, match="distinct names"):
        ScoreConfig(lpips_nets=("squeeze",))


def test_missing_results_are_refused_unless_partial(sample_copy, tmp_path):
    inp = sample_copy(3)
    adv = tmp_path / "adv"
    adv.mkdir()
    for name in ("0.jpg", "1.jpg"):
        shutil.copy(inp / "images" / name, adv / name)
    cfg = ScoreConfig(eval_models=("mobilenet_v2",), num_workers=0)
    from unrestrict.errors import ResultsError

    with pytest.raises(ResultsError, match="1 of 3 rows have no result.*2.jpg"):
        score(inp, adv, cfg, progress=False)
    res = score(inp, adv, ScoreConfig(eval_models=("mobilenet_v2",), num_workers=0,
                                      partial=True), progress=False)
    assert res.summary.n_images == 2 and res.summary.n_missing == 1


def test_default_eval_models_exclude_those_the_run_used(tmp_path):
    from unrestrict.rundir import RunBinding, RunDir
    from unrestrict.score import default_eval_models
    from unrestrict.submission import ResultSource

    run = tmp_path / "run"

    def bind(models: dict[str, str]) -> None:
        RunDir(run).binding_path.unlink(missing_ok=True)
        RunDir(run).bind(RunBinding("in", "0" * 64, {}, models), {})

    bind({"efficientnet_lite0": "sha256:57934424", "mobilenet_v2": "sha256:b0353104",
          "efficientnet_lite1": "sha256:77cc7160"})
    models, why = default_eval_models(ResultSource(run), None)
    assert models == ["efficientnet_lite2"] and "not used by the run" in why
    # Held out by weight file, not by name: torchvision's own name for the V1 weights of
    # mobilenet_v2 is the offline file under another name.
    bind({"efficientnet_lite0": "sha256:57934424",
          "torchvision:mobilenet_v2.IMAGENET1K_V1": "sha256:b0353104"})
    models, _ = default_eval_models(ResultSource(run), None)
    assert models == ["efficientnet_lite1", "efficientnet_lite2"]
    bare = tmp_path / "bare"
    bare.mkdir()
    models, why = default_eval_models(ResultSource(bare), None)
    assert len(models) == 4 and "may include the attack models" in why
