"""Attack strength on held-out models, naturalness and cost, each configuration beside the
contest teams' L-inf DI-MI-FGSM baseline run with the same models.

Two protocols:

* ``cross-arch`` (the default): attack efficientnet_lite0 alone, budget check on
  efficientnet_lite1, score on mobilenet_v2 (another architecture and training recipe) and
  efficientnet_lite2. Transfer is claimed on mobilenet_v2.
* ``same-family``: attack efficientnet_lite0 + mobilenet_v2, budget check on
  efficientnet_lite1, score on efficientnet_lite2 (one family with the attack: flattering).

    python benchmarks/strength.py                                   # cross-arch, sample set
    python benchmarks/strength.py --protocol same-family
    python benchmarks/strength.py --only baseline,natural --input benchmarks/work/derived-160
    python benchmarks/strength.py --config "mine=--family color --val-margin 2"

A GPU machine without the scoring weights (FID Inception, LPIPS) can run the attacks alone,
``--phase generate``; each result set then keeps its ``generate`` output and timing beside it,
and ``--phase score`` with the same arguments scores them later elsewhere. The table names
both devices.

The default configuration's results on the sample set (cross-arch) also go into a before/after
contact sheet, ``results/contact-<tag>.jpg``, so the look can be judged without running
anything.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from _common import ROOT, SAMPLE, WORK, command_line, device_line, run, unrestrict, write_result
from derive import SOURCES
from unrestrict.perturb.texture import TextureConfig


@dataclass(frozen=True)
class Protocol:
    models: tuple[str, ...]
    val: tuple[str, ...]
    eval: tuple[str, ...]  # held out from every configuration; the first is the headline
    note: str


PROTOCOLS = {
    "cross-arch": Protocol(
        ("efficientnet_lite0",), ("efficientnet_lite1",), ("mobilenet_v2", "efficientnet_lite2"),
        "Attack efficientnet_lite0 alone; budget check on efficientnet_lite1; scored on "
        "mobilenet_v2 (another architecture and training recipe: the transfer claim) and "
        "efficientnet_lite2 (the attack model's family)."),
    "same-family": Protocol(
        ("efficientnet_lite0", "mobilenet_v2"), ("efficientnet_lite1",), ("efficientnet_lite2",),
        "Attack efficientnet_lite0 + mobilenet_v2; budget check on efficientnet_lite1; scored "
        "on efficientnet_lite2, the attack model's own family (flatters transfer)."),
}
DEFAULT_CONFIG = "natural"
_TEX = ("--set", "texture.fine={}", "--set", "texture.mid={}", "--set", "texture.coarse={}")


def _texture_budget(scale: float) -> list[str]:
    """The default texture bounds times ``scale``: one point of the frontier."""
    t = TextureConfig()
    f, m, c = (round(v * scale, 3) for v in (t.fine, t.mid, t.coarse))
    return [a.format(v) for a, v in zip(_TEX, (None, f, None, m, None, c), strict=True)]


# The global grade's bounds before the tone-shift measure (4x today's default).
OLD_GRADE = {"brightness": 0.03, "contrast": 0.08, "saturation": 0.12, "hue": 0.03,
             "gamma": 0.08, "curve": 0.15, "channel_curve": 0.0}


def _gain(gain: float, bands: tuple[str, ...] = ("fine", "mid", "coarse")) -> list[str]:
    """The local gain of the original's own band set to ``gain`` in each of ``bands``."""
    return [a for band in bands for a in ("--set", f"texture.gain_{band}={gain}")]


# The natural preset's families until `fdfd2aa` dropped its grade: pinned presets add it back.
GRADED = ["--family", "texture,color"]


def _natural_texture(scale: float, structure_cap: float, stages: int) -> list[str]:
    """The texture bounds of :data:`FINE_NATURAL` times ``scale`` under a structure cap, in
    ``stages`` stages."""
    bands = [f"texture.{band}={value * scale:g}" for band, value in FINE_TEXTURE.items()]
    return ["--preset", "natural", *GRADED, "--stages", str(stages),
            "--set", f"texture.structure_cap={structure_cap:g}",
            "--set", "texture.detail_sigma=0",
            *(a for b in bands for a in ("--set", b))]


# The natural preset's band ratios today, pinned for the rows that scale them.
NATURAL_BANDS = {"fine": 12.8, "mid": 8.0, "coarse": 8.0}


def _natural_bands(scale: float) -> list[str]:
    """The natural preset's band ratios times ``scale``."""
    return [a for band, value in NATURAL_BANDS.items()
            for a in ("--set", f"texture.{band}={value * scale:g}")]


def _gain_only(gain: float) -> list[str]:
    """The mid and coarse bands as a local gain of the original's band only, no added change."""
    return [a for band in ("mid", "coarse")
            for a in ("--set", f"texture.{band}=0", "--set", f"texture.gain_{band}={gain}")]


def _grade_budget(scale: float) -> list[str]:
    """The old global grade's bounds (:data:`OLD_GRADE`) times ``scale``: the rows keep their
    meaning whatever the default."""
    return [a for k, v in OLD_GRADE.items() for a in ("--set", f"color.{k}={round(v * scale, 4)}")]


# The natural preset of `00b6644`: fine-band texture, four stages, no structure cap. Rows
# `natural preset, ...` measured on it keep running it.
FINE_TEXTURE = {"fine": 6.4, "mid": 4.0, "coarse": 4.0}
FINE_NATURAL = _natural_texture(1, 0, 4)
FINE_NATURAL_TEXT = ("the natural preset of `00b6644` (texture fine 6.4, mid and coarse 4, four "
                     "stages)")
# The natural preset before `00b6644` moved its texture to the fine band: rows measured
# against it keep their meaning.
OLD_NATURAL = ["--preset", "natural", *GRADED, "--stages", "4", "--set", "texture.fine=3.2",
               "--set", "texture.mid=8", "--set", "texture.coarse=8",
               "--set", "texture.structure_cap=0", "--set", "texture.detail_sigma=0"]
OLD_NATURAL_TEXT = "the natural preset of `5c8b5b3` (texture fine 3.2, mid and coarse 8)"
# The structure-capped natural preset of `9409066`, before its mid and coarse bands' flat ramp
# moved to detail: rows `capped natural, ...` keep running it.
CAPPED_NATURAL = ["--preset", "natural", *GRADED, "--set", "texture.detail_sigma=0"]
# The natural preset of `f58ac3c` (the mid and coarse bands' flat ramp on detail), pinned:
# rows `ramped natural, ...` keep running it.
RAMPED_NATURAL = ["--preset", "natural", *GRADED, "--stages", "8", *(a for b in (
    "fine=12.8", "mid=8", "coarse=8", "structure_cap=8", "detail_sigma=2",
    "detail_bands=mid,coarse") for a in ("--set", f"texture.{b}"))]


CONFIGS: dict[str, list[str]] = {
    "baseline": ["--preset", "baseline"],
    "natural": [],
    "bold": ["--preset", "bold"],
    "baseline, seed 1": ["--preset", "baseline", "--seed", "1"],
    "natural, seed 1": ["--seed", "1"],
    "natural, look-ahead 1": ["--preset", "natural", "--lookahead", "1"],
    "natural, look-ahead 0.5": ["--preset", "natural", "--lookahead", "0.5"],
    "bold, look-ahead 1": ["--preset", "bold", "--lookahead", "1"],
    "natural, local gain 0.5": ["--preset", "natural", *_gain(0.5)],
    "natural, no local gain": ["--preset", "natural", *_gain(0)],
    "natural, fine gain 1": ["--preset", "natural", *_gain(1, ("fine",))],
    "natural, local gain 0.5, seed 1": ["--preset", "natural", *_gain(0.5), "--seed", "1"],
    "natural, fine gain 1, seed 1": ["--preset", "natural", *_gain(1, ("fine",)), "--seed", "1"],
    "natural, local gain 0.5, look-ahead 1": ["--preset", "natural", *_gain(0.5),
                                              "--lookahead", "1"],
    "natural, mid+coarse local gain 0.5": ["--preset", "natural",
                                           *_gain(0.5, ("mid", "coarse"))],
    "natural, seed 2": ["--seed", "2"],
    "natural, no grade": ["--preset", "natural", "--family", "texture"],
    "natural, texture x0.5": _texture_budget(0.5),
    "natural, texture x0.75": _texture_budget(0.75),
    "natural, texture x1.5": _texture_budget(1.5),
    "natural, texture x1.5, 6 stages": [*_texture_budget(1.5), "--stages", "6"],
    "natural, texture x1.25, 5 stages": [*_texture_budget(1.25), "--stages", "5"],
    "natural, mid+coarse x1.5, 6 stages": [
        "--set", f"texture.mid={TextureConfig().mid * 1.5}",
        "--set", f"texture.coarse={TextureConfig().coarse * 1.5}", "--stages", "6"],
    "natural, texture RGB": ["--set", "texture.channels=rgb"],
    "natural, colour-masked chroma 3.2/8": ["--set", "texture.chroma_fine=3.2",
                                            "--set", "texture.chroma_mid=8"],
    "natural, colour-masked chroma 6.4/16": ["--set", "texture.chroma_fine=6.4",
                                             "--set", "texture.chroma_mid=16"],
    "natural, cap 16, colour-masked chroma 6.4/16": [
        "--set", "texture.cap=16", "--set", "texture.chroma_fine=6.4",
        "--set", "texture.chroma_mid=16"],
    "natural, mid+coarse x1.5, 6 stages, colour-masked chroma 3.2/8": [
        "--set", f"texture.mid={TextureConfig().mid * 1.5}",
        "--set", f"texture.coarse={TextureConfig().coarse * 1.5}", "--stages", "6",
        "--set", "texture.chroma_fine=3.2", "--set", "texture.chroma_mid=8"],
    "natural, texture x0.5, 40 steps": [*_texture_budget(0.5), "--steps", "40"],
    "natural, coarse x0.5": ["--set", f"texture.coarse={TextureConfig().coarse / 2}"],
    "natural, mid x0.5": ["--set", f"texture.mid={TextureConfig().mid / 2}"],
    "natural, coarse off": ["--set", "texture.coarse=0"],
    "natural, cpu batch 1": ["--cpu-batch", "1"],
    "natural, val margin 2": ["--val-margin", "2"],
    "natural, val margin 3": ["--val-margin", "3"],
    "natural, val margin 8": ["--val-margin", "8"],
    "strong, val margin 3": ["--preset", "strong", "--val-margin", "3"],
    "strong, val margin 3, seed 1": ["--preset", "strong", "--val-margin", "3", "--seed", "1"],
    "strong, cap 16, val margin 3": ["--preset", "strong", "--val-margin", "3",
                                     "--set", "texture.cap=16"],
    "natural, lowcut 8": ["--set", "texture.lowcut=8"],
    "natural, lowcut 8, mid+coarse x1.5, 6 stages": [
        "--set", "texture.lowcut=8", "--set", f"texture.mid={TextureConfig().mid * 1.5}",
        "--set", f"texture.coarse={TextureConfig().coarse * 1.5}", "--stages", "6"],
    "natural, lowcut 8, mid+coarse x1.25, 5 stages": [
        "--set", "texture.lowcut=8", "--set", f"texture.mid={TextureConfig().mid * 1.25}",
        "--set", f"texture.coarse={TextureConfig().coarse * 1.25}", "--stages", "5"],
    "natural, cap 8": ["--set", "texture.cap=8"],
    "natural, cap 4": ["--set", "texture.cap=4"],
    "natural, cap 12": ["--set", "texture.cap=12"],
    "natural, cap 16": ["--set", "texture.cap=16"],
    "natural, natural limit 1": ["--natural-limit", "1"],
    "strong, natural limit 1": ["--preset", "strong", "--natural-limit", "1"],
    "natural, natural limit 1.5": ["--natural-limit", "1.5"],
    "natural, natural limit 1.2": ["--natural-limit", "1.2"],
    "natural, natural limit 1, seed 1": ["--natural-limit", "1", "--seed", "1"],
    "natural, natural limit 1, fine x0.5": ["--natural-limit", "1", "--set",
                                            f"texture.fine={TextureConfig().fine / 2}"],
    "natural, natural limit 1, fine off": ["--natural-limit", "1", "--set", "texture.fine=0"],
    "natural, cap 24": ["--set", "texture.cap=24"],
    "natural, cap 8, texture x2": ["--set", "texture.cap=8", *_texture_budget(2)],
    "natural, gain 0.5": [*_gain(0.5)],
    "natural, gain 1": [*_gain(1.0)],
    "natural, cap 16, gain 0.5": ["--set", "texture.cap=16", *_gain(0.5)],
    "natural, cap 16, gain 1": ["--set", "texture.cap=16", *_gain(1.0)],
    "natural, mid+coarse as gain 1": _gain_only(1.0),
    "natural, mid+coarse as gain 1.5": _gain_only(1.5),
    "natural, cap 8, texture x4": ["--set", "texture.cap=8", *_texture_budget(4)],
    # Results of configurations removed since keep their own commands in results/.
    "natural, old texture": ["--set", "texture.range_margin=0", "--set", "texture.mid=6.4",
                             "--set", "texture.coarse=6.4"],
    "natural, no range gate": ["--set", "texture.range_margin=0"],
    "natural, range gate 0.35": ["--set", "texture.range_margin=0.35"],
    "natural, 30 steps": ["--steps", "30"],
    "natural, detail 2": ["--set", "texture.detail_sigma=2"],
    "natural, detail 4": ["--set", "texture.detail_sigma=4"],
    "natural, detail 2, 2 copies": ["--set", "texture.detail_sigma=2", "--copies", "2"],
    "natural, old grade": _grade_budget(1.0),
    "natural, grade x0.5": _grade_budget(0.5),
    "natural, grade x0.25": _grade_budget(0.25),
    "natural, flat ramp 4-10": ["--set", "texture.flat_start=4", "--set", "texture.flat_full=10"],
    "natural, failures unchanged": ["--on-failure", "original"],
    "natural, failures ensemble-minimal": ["--on-failure", "ensemble"],
    "natural, full budget": ["--stages", "1", "--steps", "80", "--refine", "0"],
    "natural, exact gradients": ["--sgm-gamma", "1", "--relu-width", "0"],
    "natural, skip-gradient only": ["--relu-width", "0"],
    "natural, smooth rectifiers only": ["--sgm-gamma", "1"],
    "natural, no surrogate gradients": ["--preset", "natural", "--sgm-gamma", "1",
                                        "--relu-width", "0"],
    "natural, sgm 0.25": ["--preset", "natural", "--sgm-gamma", "0.25", "--relu-width", "1"],
    "natural, relu width 2": ["--preset", "natural", "--relu-width", "2"],
    "natural, ce loss": ["--preset", "natural", "--loss", "ce", "--relu-width", "1"],
    "natural, relu width 4": ["--preset", "natural", "--relu-width", "4"],
    "natural, relu width 3": ["--preset", "natural", "--relu-width", "3"],
    "natural, relu width 1.5": ["--preset", "natural", "--relu-width", "1.5"],
    "natural, relu width 1": ["--preset", "natural", "--relu-width", "1"],
    "natural, relu width 1, seed 1": ["--preset", "natural", "--relu-width", "1", "--seed", "1"],
    "natural, relu width 2, seed 1": ["--preset", "natural", "--relu-width", "2", "--seed", "1"],
    "bold, relu width 2": ["--preset", "bold", "--relu-width", "2"],
    "natural, overshoot 1 everywhere": ["--preset", "natural", "--set", "texture.overshoot=1",
                                        "--set", "texture.overshoot_reach=0"],
    "natural preset, 2 copies per step": ["--preset", "natural", "--copies", "2"],
    "bold, 2 copies per step": ["--preset", "bold", "--copies", "2"],
    "natural, disorder 5": ["--preset", "natural", "--set", "texture.disorder=5"],
    "natural preset, shrink blocks": ["--preset", "natural", "--limit-shrink", "blocks"],
    "natural, 12 stages to 1.5x": ["--preset", "natural", "--stages", "12",
                                   *_natural_bands(1.5), "--set", "texture.structure_cap=12"],
    "natural, disorder 5, bands x1.5": ["--preset", "natural", "--set", "texture.disorder=5",
                                        *_natural_bands(1.5)],
    "texture": ["--family", "texture"],
    "texture, RGB": ["--family", "texture", "--set", "texture.channels=rgb"],
    "color": ["--family", "color"],
    "natural, 2 copies": ["--copies", "2"],
    "natural, 40 steps": ["--steps", "40"],
    "natural, 2 copies di+scale": ["--copies", "2", "--augment", "di,scale"],
    "natural, 2 copies di+blocks": ["--copies", "2", "--augment", "di,blocks"],
    "natural, spectrum": ["--augment", "di,spectrum"],
    "natural, feature loss": ["--feature-weight", "10"],
    "natural, feature loss x0.3": ["--feature-weight", "3"],
    "natural, feature loss, depth 0.25": ["--feature-weight", "10", "--feature-depth", "0.25"],
    "natural, feature loss, depth 0.75": ["--feature-weight", "10", "--feature-depth", "0.75"],
    "natural + style": ["--family", "texture,style,color"],
    "natural + geometry": ["--family", "texture,geometry,color"],
    "natural + light 0.05": ["--family", "texture,style,color", "--set", "style.matrix=0",
                             "--set", "style.offset=0", "--set", "style.detail=0",
                             "--set", "style.exposure=0.05"],
    "natural preset, mid+coarse as gain 1": [*OLD_NATURAL, *_gain_only(1.0)],
    "natural preset, limit continue": [*OLD_NATURAL, "--limit-continue"],
    "natural preset, fine x2": [*OLD_NATURAL, "--set", "texture.fine=6.4"],
    "natural preset, fine x2, mid+coarse x0.5": FINE_NATURAL,
    "natural preset + light 0.05": [*OLD_NATURAL, "--family", "texture,style,color",
                                    "--set", "style.matrix=0", "--set", "style.offset=0",
                                    "--set", "style.detail=0", "--set", "style.exposure=0.05"],
    "natural preset, mid+coarse as gain 0.5": [*OLD_NATURAL, *_gain_only(0.5)],
    "natural preset, seed 1": [*FINE_NATURAL, "--seed", "1"],
    "old natural preset, seed 1": [*OLD_NATURAL, "--seed", "1"],
    # Transfer tricks on the natural preset of `00b6644`, ranked under its five limits.
    "natural preset, 2 copies": [*FINE_NATURAL, "--copies", "2"],
    "natural preset, 40 steps": [*FINE_NATURAL, "--steps", "40"],
    "natural preset, 2 copies di+scale": [*FINE_NATURAL, "--copies", "2",
                                          "--augment", "di,scale"],
    "natural preset, 2 copies di+blocks": [*FINE_NATURAL, "--copies", "2",
                                           "--augment", "di,blocks"],
    "natural preset, spectrum": [*FINE_NATURAL, "--augment", "di,spectrum"],
    "natural preset, feature loss": [*FINE_NATURAL, "--feature-weight", "10"],
    "natural preset, structure cap 4": [*FINE_NATURAL, "--set", "texture.structure_cap=4"],
    "natural preset, structure cap 8": [*FINE_NATURAL, "--set", "texture.structure_cap=8"],
    "natural preset, structure cap 16": [*FINE_NATURAL, "--set",
                                         "texture.structure_cap=16"],
    "natural preset, texture x2, 8 stages": _natural_texture(2, 0, 8),
    "natural preset, structure cap 4, texture x1.5, 6 stages": _natural_texture(1.5, 4, 6),
    "natural preset, structure cap 4, texture x2, 8 stages": _natural_texture(2, 4, 8),
    "natural preset, structure cap 8, texture x2, 8 stages": _natural_texture(2, 8, 8),
    "natural preset, structure cap 8, texture x2, 8 stages, seed 1": [
        *_natural_texture(2, 8, 8), "--seed", "1"],
    # On the structure-capped natural preset (the default since it).
    "capped natural, mid and coarse 4": [*CAPPED_NATURAL, "--set", "texture.mid=4",
                                         "--set", "texture.coarse=4"],
    "capped natural, detail 2": ["--preset", "natural", "--set", "texture.detail_sigma=2",
                                 "--set", "texture.detail_bands=fine,mid,coarse"],
    "capped natural, detail 2 on mid and coarse": [
        "--preset", "natural", "--set", "texture.detail_sigma=2",
        "--set", "texture.detail_bands=mid,coarse"],
    "capped natural, shrink blocks": [*CAPPED_NATURAL, "--limit-shrink", "blocks"],
    "capped natural, grade x2": [*CAPPED_NATURAL, *_grade_budget(0.5)],
    "capped natural, old grade": [*CAPPED_NATURAL, *_grade_budget(1.0)],
    # On the natural preset of `f58ac3c`: the texture's budget between its bands.
    "ramped natural, fine x2": [*RAMPED_NATURAL, "--set", "texture.fine=25.6"],
    "ramped natural, fine x2, mid+coarse x0.5": [*RAMPED_NATURAL, "--set", "texture.fine=25.6",
                                                 "--set", "texture.mid=4",
                                                 "--set", "texture.coarse=4"],
    "ramped natural, overshoot 0.5": [*RAMPED_NATURAL, "--set", "texture.overshoot=0.5"],
    "ramped natural, overshoot 0.5 by flat": [*RAMPED_NATURAL, "--set", "texture.overshoot=0.5",
                                              "--set", "texture.overshoot_reach=7"],
    "old natural (color+style, pre-redesign bounds)": [
        "--family", "color,style", "--steps", "25", "--val-margin", "2",
        "--set", "color.brightness=0.06", "--set", "color.contrast=0.15",
        "--set", "color.saturation=0.25", "--set", "color.hue=0.06", "--set", "color.gamma=0.15",
        "--set", "color.curve=0.35", "--set", "color.channel_curve=0.1"],
}
# Rows without a preset of their own, but `natural`, predate the naturalness limit in the
# default: they run the pre-limit default (now `--preset bold`) with their changes. A row of
# today's default names `--preset natural` itself.
CONFIGS = {k: v if k == DEFAULT_CONFIG or "--preset" in v else ["--preset", "bold", *v]
           for k, v in CONFIGS.items()}
DESCRIPTION = {
    "baseline": "L-inf 16/255 DI-MI-FGSM, 80 steps, CW margin, DI p=0.7 (pixel family)",
    "natural": "the default preset (its settings at the table's commit; README: Presets): "
               "texture hidden in the original's own detail (with a mild global grade until "
               "it dropped it), staged "
               "per-image budget, surrogate gradients, each image stopped at the naturalness "
               "limits",
    "bold": "the texture family's own bounds (fine 3.2, mid and coarse 8) plus the mild "
            "global grade, without the "
            "naturalness limit (the default before commit `6a0f662`; rows `natural, ...` of "
            "earlier tables ran it)",
    "baseline, seed 1": "the baseline with another seed (input-diversity draws)",
    "natural, seed 1": "the default with another seed: how far chance alone moves a row",
    "natural, seed 2": "the default with a third seed",
    "natural, look-ahead 1": "the default with NI-FGSM's Nesterov look-ahead: each step's "
                             "gradient taken one step ahead along the momentum, clamped to "
                             "the bounds (no extra passes)",
    "natural, look-ahead 0.5": "the default with half that look-ahead",
    "bold, look-ahead 1": "`bold` with the Nesterov look-ahead of NI-FGSM",
    "natural, local gain 0.5": "the natural preset of `e558b89` plus a local gain of the "
                               "original's own band, up to +-0.5 in each texture band (a local "
                               "contrast edit, which reshaped structure leaves out); the "
                               "default since `dd80f97`",
    "natural, no local gain": "the natural preset without its local gain: the default of "
                              "`e558b89`",
    "natural, fine gain 1": "the natural preset with the fine band's local gain at +-1 (mid "
                            "and coarse keep 0.5): a sharpening or softening of the finest "
                            "detail, which added detail measures and reshaped structure "
                            "mostly does not",
    "natural, local gain 0.5, seed 1": "the natural preset plus the local gain 0.5, seed 1",
    "natural, fine gain 1, seed 1": "`natural, fine gain 1` with seed 1",
    "natural, local gain 0.5, look-ahead 1": "the default plus the local gain 0.5 and "
                                             "the Nesterov look-ahead together",
    "natural, mid+coarse local gain 0.5": "the default plus that local gain in the mid and "
                                          "coarse bands only",
    "natural, no grade": "the natural preset without its global colour grade (the texture "
                         "family alone; the natural preset itself since it dropped the "
                         "grade): on a GPU the grade's small per-image operations dispatch "
                         "more kernels per step than the whole texture family",
    "natural, texture x0.5": "the default with half the texture bounds",
    "natural, texture x0.75": "the default with 0.75x the texture bounds",
    "natural, texture x1.5": "the default with 1.5x the texture bounds",
    "natural, texture x1.5, 6 stages": "1.5x the texture bounds in six stages: the default's "
                                       "ladder (0.25 to 1 of its bounds) and two more rungs, "
                                       "1.25 and 1.5, for the images it leaves unfooled",
    "natural, texture x1.25, 5 stages": "1.25x the texture bounds in five stages: the "
                                        "default's ladder and one more rung",
    "natural, mid+coarse x1.5, 6 stages": "the mid and coarse bands at 1.5x in six stages, "
                                          "the fine band (the grain) kept at the default's "
                                          "bound, reached at the last stage",
    "natural, texture RGB": "the default with the texture change drawn per channel (R, G, B "
                            "independently, same bounds) instead of luminance only",
    "natural, colour-masked chroma 3.2/8": "opponent colour in the fine (3.2) and mid (8) bands, "
                                           "bounded by the original's own colour detail of each "
                                           "band instead of its lightness detail",
    "natural, colour-masked chroma 6.4/16": "colour-masked opponent colour at twice those ratios "
                                            "(fine 6.4, mid 16)",
    "natural, cap 16, colour-masked chroma 6.4/16": "texture cap 16/255 (on colour too) with "
                                                    "colour-masked opponent colour 6.4/16",
    "natural, mid+coarse x1.5, 6 stages, colour-masked chroma 3.2/8": "the strong preset with "
        "colour-masked opponent colour in the fine (3.2) and mid (8) bands",
    "natural, texture x0.5, 40 steps": "half the texture bounds, 40 steps per stage (twice "
                                       "the default's passes)",
    "natural, coarse x0.5": "the default with half the coarse band's bound (stride 8)",
    "strong, val margin 3, seed 1": "`strong, val margin 3` with another seed (the "
                                    "augmentations' random draws)",
    "strong, cap 16, val margin 3": "the strong preset at a validation margin of 3, each "
                                    "texture band's change capped at 16/255",
    "natural, mid x0.5": "the default with half the mid band's bound (stride 4)",
    "natural, coarse off": "the default without the coarse band (fine and mid only)",
    "natural, flat ramp 4-10": "the default; texture allowed only where the original's 7x7 "
                               "contrast exceeds 4/255, in full above 10/255 (default 3, 8)",
    "natural, old texture": "the texture defaults before the range gate: no gate, mid and "
                            "coarse bounds 6.4",
    "natural, no range gate": "the default without the range gate (texture.range_margin 0)",
    "natural, range gate 0.35": "the default with a range-gate margin of 0.35",
    "natural, 30 steps": "the default with 30 steps per stage (1.5x its passes)",
    "natural, detail 2": "the default with the flat ramp on detail only (sigma 2 px)",
    "natural, detail 4": "the default with the flat ramp on detail only (sigma 4 px)",
    "natural, detail 2, 2 copies": "detail 2 with 2 DI copies per step (2 passes a step)",
    "natural, old grade": "the global grade's bounds before the tone-shift measure: 4x today's",
    "natural, grade x0.5": "the old global grade's bounds halved (colour family)",
    "natural, grade x0.25": "a quarter of the old global grade's bounds (today's default)",
    "natural, cpu batch 1": "the default attacked one image at a time on the CPU (the cost "
                            "of chunks; results differ from chunks of 4 in the last bits)",
    "natural, val margin 2": "the default; an image stops growing once the budget-check "
                             "model is fooled by a logit margin of 2 (default 5)",
    "natural, val margin 3": "the default with a budget-check margin of 3",
    "natural, val margin 8": "the default with a budget-check margin of 8",
    "natural, lowcut 8": "the default with the texture change's local mean (Gaussian sigma "
                         "8 px) taken out and put back in proportion to each pixel's bound",
    "natural, lowcut 8, mid+coarse x1.5, 6 stages": "lowcut 8 with the mid and coarse bands "
                                                    "at 1.5x in six stages (as `strong`)",
    "natural, lowcut 8, mid+coarse x1.25, 5 stages": "lowcut 8 with the mid and coarse bands "
                                                     "at 1.25x in five stages (halfway to "
                                                     "`strong`)",
    "natural, cap 8": "the default with each texture band's change capped at 8/255",
    "natural, cap 4": "the default with each texture band's change capped at 4/255",
    "natural, cap 12": "the default with each texture band's change capped at 12/255",
    "natural, cap 16": "the default with each texture band's change capped at 16/255",
    "natural, gain 0.5": "the default plus a local gain of up to +-0.5 of the original's own "
                         "bands",
    "natural, gain 1": "the default plus a local gain of up to +-1 of the original's own fine, "
                       "mid and coarse bands (changes their contrast, not their edges' place)",
    "natural, cap 16, gain 0.5": "texture cap 16/255 plus a local gain of up to +-0.5 of the "
                                 "original's own bands",
    "natural, cap 16, gain 1": "texture cap 16/255 plus a local gain of up to +-1 of the "
                               "original's own bands",
    "natural, mid+coarse as gain 1": "the fine band's additive change as in the default; the "
                                     "mid and coarse bands only as a local gain of up to +-1 of "
                                     "the original's own band (from removing it to doubling it)",
    "natural, mid+coarse as gain 1.5": "as `natural, mid+coarse as gain 1`, gains within +-1.5",
    "natural, natural limit 1": "the default; an image stops growing once its result "
                                "passes a naturalness limit, scaled back within them by "
                                "bisection, fooled or not",
    "strong, natural limit 1": "the strong preset with natural limit 1",
    "natural, natural limit 1.5": "the default stopping an image at 1.5x the naturalness "
                                  "limits",
    "natural, natural limit 1.2": "the default stopping an image at 1.2x the naturalness "
                                  "limits",
    "natural, natural limit 1, seed 1": "`natural, natural limit 1` (the natural preset then) with "
                                        "another seed",
    "natural, natural limit 1, fine x0.5": "natural limit 1 with half the fine texture band's "
                                           "bound: the fine band is the added-detail measure's "
                                           "own band, which binds most often",
    "natural, natural limit 1, fine off": "natural limit 1 without the fine texture band",
    "natural, cap 24": "the default with each texture band's change capped at 24/255",
    "natural, cap 8, texture x2": "each texture band capped at 8/255, its ratio doubled: "
                                  "moderate texture gets more, strong patterns less",
    "natural, cap 8, texture x4": "each texture band capped at 8/255, its ratio four times "
                                  "the default's",
    "natural, failures unchanged": "the default; images that never fool the budget check are "
                                   "written unchanged",
    "natural, failures ensemble-minimal": "the default; images that never fool the budget check "
                                          "keep the smallest stage that fooled the attack model",
    "natural, full budget": "the default families at full bounds, one stage of 80 steps",
    "natural, exact gradients": "the default without its surrogate gradients (no "
                                "skip-gradient, exact rectifier derivatives)",
    "natural, skip-gradient only": "the default with exact rectifier derivatives",
    "natural, smooth rectifiers only": "the default without the skip-gradient scaling",
    "natural, no surrogate gradients": "the natural preset without its surrogate gradients",
    "natural, sgm 0.25": "the natural preset with residual branches passing 0.25 of "
                                "the gradient (0.5), rectifier ramp 1",
    "natural, relu width 2": "the natural preset with rectifier derivatives ramped over "
                                    "+-2 (1)",
    "natural, ce loss": "the natural preset with cross-entropy in place of the CW margin, "
                        "rectifier ramp 1",
    "natural, relu width 4": "the natural preset with rectifier derivatives ramped over "
                             "+-4 (1)",
    "natural, relu width 3": "the natural preset with rectifier derivatives ramped over "
                             "+-3 (1)",
    "natural, relu width 1.5": "the natural preset with rectifier derivatives ramped over "
                               "+-1.5 (1)",
    "natural, relu width 1": "the natural preset with rectifier derivatives ramped over +-1 "
                             "(its ramp until it took 2)",
    "natural, relu width 1, seed 1": "the natural preset with rectifier derivatives ramped "
                                     "over +-1 (its ramp until it took 2), another seed",
    "natural, relu width 2, seed 1": "the natural preset with rectifier derivatives ramped "
                                     "over +-2, another seed",
    "bold, relu width 2": "the bold preset with rectifier derivatives ramped over +-2 (1)",
    "natural, overshoot 1 everywhere": "the natural preset with every pixel's luminance kept "
                                       "within its 3x3 neighbours' range in the original "
                                       "(the preset: half-way, within 7 px of a flat pixel)",
    "natural preset, 2 copies per step": "the natural preset with 2 DI copies per step, "
                                         "gradients averaged (2 passes a step)",
    "bold, 2 copies per step": "the bold preset with 2 DI copies per step (2 passes a step)",
    "natural, disorder 5": "the natural preset with every texture map times the share of the "
                           "original's fine detail a 5x5 median leaves out (clean outlines "
                           "kept, irregular texture spared)",
    "natural preset, shrink blocks": "the natural preset; an over-limit result brought back "
                                     "by shrinking its most edited 16x16 blocks, not the "
                                     "whole change",
    "natural, 12 stages to 1.5x": "the natural preset with four more budget stages, its "
                                  "band ratios and structure cap 1.5x over 12 stages (the "
                                  "first 8 rungs are the preset's own), for the images that "
                                  "reach its full budget within the limits unfooled",
    "natural, disorder 5, bands x1.5": "disorder 5 with the natural preset's three band "
                                       "ratios 1.5x (fine 19.2, mid and coarse 12; the "
                                       "structure cap unchanged): the budget disorder takes "
                                       "off outlines given back to irregular texture",
    "texture": "texture family alone, staged",
    "texture, RGB": "texture family alone, changing R, G and B independently",
    "color": "colour family alone (mild global grade), staged",
    "natural, 2 copies": "the default with 2 DI copies per step (2 passes a step)",
    "natural, 40 steps": "the default with 40 steps a stage: the passes of 2 copies, spent in time",
    "natural, 2 copies di+scale": "2 copies per step, each DI then an intensity scale 2^-k",
    "natural, 2 copies di+blocks": "2 copies per step, each DI then a 2x2 block shuffle",
    "natural, spectrum": "one copy per step, DI then spectrum simulation (SSA-like)",
    "natural, feature loss": "the default plus the FIA feature-importance loss on the middle "
                             "rectifier of the attack model, weight 10 (8 importance passes)",
    "natural, feature loss x0.3": "the feature loss at weight 3",
    "natural, feature loss, depth 0.25": "the feature loss on the rectifier a quarter of the "
                                         "way through the model",
    "natural, feature loss, depth 0.75": "the feature loss on the rectifier three quarters of "
                                         "the way through",
    "natural + style": "the default plus the style family (spatial colour fields, dodge and "
                       "burn, detail blend)",
    "natural + geometry": "the default plus the geometry family",
    "strong, val margin 3": "the strong preset (mid and coarse bands up to 1.5x in two more "
                            "stages) stopping at a validation margin of 3, not 5",
    "natural + light 0.05": "the default plus the style family's dodge and burn alone, "
                            "exposure within +-5%",
    "natural preset, mid+coarse as gain 1":
        OLD_NATURAL_TEXT + ", the mid and coarse bands only as a local gain of up to +-1 of "
        "the original's own band",
    "natural preset, limit continue":
        OLD_NATURAL_TEXT + ", an image stopped at the limits going on through the remaining "
        "stages at its limited budget",
    "natural preset, fine x2": OLD_NATURAL_TEXT + ", the fine band's bound doubled (to 6.4)",
    "natural preset, fine x2, mid+coarse x0.5":
        OLD_NATURAL_TEXT + ", the fine band's bound doubled, the mid and coarse bands' halved "
        "(the natural preset of `00b6644`)",
    "natural preset + light 0.05":
        OLD_NATURAL_TEXT + " plus the style family's dodge and burn alone, exposure within +-5%",
    "natural preset, seed 1": FINE_NATURAL_TEXT + " with another seed",
    "old natural preset, seed 1": OLD_NATURAL_TEXT + ", with another seed",
    "natural preset, mid+coarse as gain 0.5": "as `natural preset, mid+coarse as gain 1`, gains "
                                              "within +-0.5",
    "natural preset, 2 copies": FINE_NATURAL_TEXT + " with 2 DI copies per step (2 passes a step)",
    "natural preset, 40 steps": FINE_NATURAL_TEXT + " with 40 steps a stage: the passes of 2 "
                                                    "copies, spent in time",
    "natural preset, 2 copies di+scale": FINE_NATURAL_TEXT + ", 2 copies per step, each DI then "
                                                             "an intensity scale 2^-k",
    "natural preset, 2 copies di+blocks": FINE_NATURAL_TEXT + ", 2 copies per step, each DI then "
                                                              "a 2x2 block shuffle",
    "natural preset, spectrum": FINE_NATURAL_TEXT + ", one copy per step, DI then spectrum "
                                                    "simulation (SSA-like)",
    "natural preset, feature loss": FINE_NATURAL_TEXT + " plus the FIA feature-importance loss "
                                    "on the attack model's middle rectifier, weight 10",
    "natural preset, structure cap 4": FINE_NATURAL_TEXT + ", the texture bands' summed bound "
                                       "at most 4x the original's own mid-scale structure "
                                       "(DoG 2/5 px RMS over ~16 px, +1/255)",
    "natural preset, structure cap 8": "as `natural preset, structure cap 4`, at 8x",
    "natural preset, structure cap 16": "as `natural preset, structure cap 4`, at 16x",
    "natural preset, texture x2, 8 stages": FINE_NATURAL_TEXT + " with its texture bounds "
        "doubled, in eight stages (its ladder and four more rungs), no structure cap",
    "natural preset, structure cap 4, texture x1.5, 6 stages": FINE_NATURAL_TEXT + " with "
        "structure cap 4, its texture bounds at 1.5x, in six stages (its ladder and two more "
        "rungs)",
    "natural preset, structure cap 4, texture x2, 8 stages": FINE_NATURAL_TEXT + " with "
        "structure cap 4, its texture bounds doubled, in eight stages (its ladder and four more "
        "rungs)",
    "natural preset, structure cap 8, texture x2, 8 stages": "as `natural preset, structure cap "
        "4, texture x2, 8 stages`, the cap at 8x",
    "natural preset, structure cap 8, texture x2, 8 stages, seed 1": "`natural preset, structure "
        "cap 8, texture x2, 8 stages` with another seed",
    "capped natural, mid and coarse 4": "the structure-capped natural preset with the mid and "
                                        "coarse bands at 4 (the fine band's 12.8 kept)",
    "capped natural, detail 2": "the structure-capped natural preset, the flat ramp on detail "
                                "only (sigma 2 px): smooth shading counts as flat",
    "capped natural, detail 2 on mid and coarse": "`capped natural, detail 2` with the fine "
                                                  "band's flat ramp on the plain luminance",
    "capped natural, shrink blocks": "the structure-capped natural preset; an over-limit "
                                     "result is brought within the limits by shrinking its "
                                     "most edited blocks (added detail, reshaped structure) "
                                     "to a level found by bisection, not by scaling it all",
    "capped natural, grade x2": "the structure-capped natural preset with twice its global "
                                "grade's bounds (half the old grade's)",
    "capped natural, old grade": "the structure-capped natural preset with the old global "
                                 "grade's bounds (4x its own; tone shift held by the limit)",
    "ramped natural, overshoot 0.5": "the natural preset of `f58ac3c` with each pixel's "
                                     "luminance change at most half-way to the darkest or "
                                     "brightest of its 3x3 neighbours in the original (no "
                                     "fringe along a roof against the sky)",
    "ramped natural, overshoot 0.5 by flat": "as `ramped natural, overshoot 0.5`, but only "
                                             "within 7 pixels of a flat one (an edge against "
                                             "the sky); inside texture unbounded",
    "ramped natural, fine x2": "the natural preset of `f58ac3c` with twice its fine band "
                               "(25.6): the budget the reshaped-structure limit reads least",
    "ramped natural, fine x2, mid+coarse x0.5": "the natural preset of `f58ac3c` with the "
                                                "texture's budget moved to the fine band (fine "
                                                "25.6, mid and coarse 4)",
    "old natural (color+style, pre-redesign bounds)": "the preset before the redesign: colour "
                                                      "(with per-channel curves) + style",
}
NATURAL_KEYS = ("color_drift", "color_drift_p95", "flat_noise", "detail_excess",
                "detail_excess_p95", "tone_shift", "structure_change", "structure_change_p99",
                "within_limits", "natural_success")


def _quoted(command: str) -> str:
    return command if command.startswith("`") else f"`{command}`"


def _mean_bytes(out: Path) -> float:
    files = [p for p in out.iterdir() if p.is_file()]
    return sum(p.stat().st_size for p in files) / max(len(files), 1)


def _mean_passes(out: Path) -> float | None:
    """Mean attack-model forward+backward passes per image, from the run logs."""
    recs = [json.loads(line) for p in sorted((out / ".unrestrict").glob("log-*.jsonl"))
            for line in p.read_text().splitlines() if line.strip()]
    passes = [r["passes"] for r in recs if r.get("status") == "ok" and "passes" in r]
    return sum(passes) / len(passes) if passes else None


def _sheet_wanted(input_dir: Path, protocol: str) -> bool:
    """One committed sheet: the default on the sample set under the cross-arch protocol (the
    derived set's would be megabytes of the same photos)."""
    return input_dir.resolve() == SAMPLE.resolve() and protocol == "cross-arch"


def contact_sheet(input_dir: Path, out: Path, per_image: Path, path: Path,
                  thumb: int = 200) -> None:
    """Every result beside its original, small, as one JPEG to commit."""
    from unrestrict.report import contact_sheet as sheet
    from unrestrict.report import thumbnails

    cells = []
    for r in csv.DictReader(per_image.open()):
        cells.append((*thumbnails(input_dir, out, r["ImageId"], thumb), [
            f"{r['ImageId']}  fooled {r['fooled_models']}  LPIPS {float(r['lpips']):.3f}",
            f"drift {float(r['color_drift_p95']):.1f}  flat {float(r['flat_noise']):.1f}  "
            f"detail {float(r['detail_excess_p95']):.2f}  tone {float(r['tone_shift']):.1f}  "
            f"structure {float(r['structure_change_p99']):.2f}"]))
    sheet(cells, path, thumb=thumb, cols=4, quality=88)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=Path, default=SAMPLE)
    ap.add_argument("--protocol", choices=list(PROTOCOLS), default="cross-arch")
    ap.add_argument("--only", default=None, help="comma-separated subset of the configurations")
    ap.add_argument("--config", action="append", default=[], metavar="NAME=ARGS",
                    help="an extra configuration: name and generate arguments")
    ap.add_argument("--tag", default=None,
                    help="result file name [default: strength-<protocol>-<input>]")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--baseline-from", type=Path, default=None,
                    help="take the baseline row from an earlier run's .json (same input, "
                         "same protocol)")
    ap.add_argument("--phase", choices=("all", "generate", "score"), default="all",
                    help="generate: attack only, keeping what scoring needs in each result "
                         "set; score: score the sets an earlier --phase generate left")
    ap.add_argument("--render", type=Path, default=None,
                    help="only re-render the table of an existing results .json")
    args = ap.parse_args()
    if args.render:
        doc = json.loads(args.render.read_text())
        if args.baseline_from:
            doc["rows"] = _with_baseline(doc["rows"], args.baseline_from)
            doc["meta"]["baseline_from"] = str(args.baseline_from)
        path = write_result(args.render.stem, render(doc["meta"], doc["rows"]), doc)
        print(f"wrote {path}")
        return

    proto = PROTOCOLS[args.protocol]
    configs = dict(CONFIGS)
    for c in args.config:
        name, _, rest = c.partition("=")
        configs[name] = shlex.split(rest)
        DESCRIPTION[name] = rest
    if args.only:
        # Commas that start a name's own words ("natural, full budget") do not split it.
        wanted = re.split(r",(?=\S)", args.only)
        unknown = [k for k in wanted if k not in configs]
        if unknown:
            ap.error(f"unknown configuration(s) {unknown}; known: {list(configs)}")
        configs = {k: configs[k] for k in wanted}
    tag = args.tag or f"strength-{args.protocol}-{args.input.name}"
    n = sum(1 for _ in (args.input / "images").iterdir())
    models = ["--models", ",".join(proto.models), "--val-models", ",".join(proto.val)]

    rows, generated_on = [], set()
    for name, extra in configs.items():
        out = WORK / tag / name
        gen = unrestrict("generate", str(args.input), str(out), "-b", str(args.batch_size),
                         "-q", *models, *extra)
        g = _generate(gen, out, args.phase)
        if args.phase == "generate":
            print(f"{name:>22}: generated in {g['seconds']:.1f} s", flush=True)
            continue
        generated_on.add((g["device"], g["command"]))
        written = int(re.search(r"(\d+) written", g["stdout"]).group(1))
        val = re.search(r"fooled validation models (\d+)/(\d+)", g["stdout"])
        row = {
            "config": name, "description": DESCRIPTION.get(name, ""),
            **score_columns(args.input, out, proto),
            # Share of images that fooled the budget-check model after the JPEG round trip.
            "val_success": int(val.group(1)) / int(val.group(2)) if val else None,
            "passes_per_image": _mean_passes(out),
            "bytes_per_image": _mean_bytes(out),
            "seconds_per_image": g["seconds"] / max(written, 1),
            "generate": shown_command(gen),
        }
        rows.append(row)
        _print_row(row)
        if (name == DEFAULT_CONFIG and args.phase == "all"
                and _sheet_wanted(args.input, args.protocol)):
            contact_sheet(args.input, out, out / ".unrestrict" / "score.csv",
                          ROOT / "benchmarks" / "results" / f"contact-{tag}.jpg")

    if args.phase == "generate":
        return
    meta = {"command": command_line(), "device": device_line(), "input": args.input.name,
            "n_images": n, "protocol": args.protocol, "models": list(proto.models),
            "val_models": list(proto.val), "eval_models": list(proto.eval), "tag": tag}
    if args.phase == "score":
        (gen_device, gen_command), *more = sorted(generated_on)
        if more:
            raise SystemExit(f"result sets were generated by different runs: {generated_on}")
        meta.update(device=f"generate on {gen_device}; score on {meta['device']}",
                    generate_command=gen_command)
    if args.baseline_from:
        meta["baseline_from"] = str(args.baseline_from)
        rows = _with_baseline(rows, args.baseline_from)
    path = write_result(tag, render(meta, rows), {"meta": meta, "rows": rows})
    print(f"wrote {path}")


def score_columns(input_dir: Path, out: Path, proto: Protocol) -> dict:
    """Score one result set on the protocol's held-out models: the row's scoring columns."""
    js, per_image = out / ".unrestrict" / "score.json", out / ".unrestrict" / "score.csv"
    s = run(unrestrict("score", str(input_dir), str(out), "--eval-models", ",".join(proto.eval),
                       "--json", str(js), "--csv", str(per_image), "-q"))
    summary = json.loads(js.read_text())
    return {
        "asr": summary["asr"], "asr_per_model": summary["asr_per_model"],
        "lpips": summary["lpips"], "fid": summary["fid"], "score": summary["score"],
        "clean_accuracy": summary["clean_accuracy"], "n_images": summary["n_images"],
        **{k: summary[k] for k in NATURAL_KEYS},
        # 100 * ASR * LPIPS factor: the formula without its FID term, because FID from
        # a few dozen images is dominated by its small-sample bias.
        "score_no_fid": 100 * summary["asr"] * summary["score_factors"]["lpips"],
        "score_seconds": s.seconds,
        **missed(input_dir, per_image, proto.eval[0]),
    }


def missed(input_dir: Path, per_image: Path, model: str) -> dict:
    """Images ``model`` still classifies correctly, and how many distinct photos they are
    (derived images name their source photo in ``sources.csv``; otherwise each is its own)."""
    source_file = input_dir / SOURCES
    sources = ({r["ImageId"]: r["Source"] for r in csv.DictReader(source_file.open())}
               if source_file.is_file() else {})
    ids = [r["ImageId"] for r in csv.DictReader(per_image.open())
           if r[f"adv_pred[{model}]"] == r["TrueLabel"]]
    return {"missed_images": len(ids), "missed_photos": len({sources.get(i, i) for i in ids})}


def _print_row(row: dict) -> None:
    per = "  ".join(f"{m} {v:.3f}" for m, v in row["asr_per_model"].items())
    print(f"{row['config']:>22}: ASR {per}  LPIPS {row['lpips']:.4f}  drift "
          f"{row['color_drift']:.2f}/{row['color_drift_p95']:.2f}  flat "
          f"{row['flat_noise']:.2f}  detail {row['detail_excess']:.3f}/"
          f"{row['detail_excess_p95']:.3f}  tone {row['tone_shift']:.2f}  structure "
          f"{row['structure_change']:.2f}/{row['structure_change_p99']:.2f}  passes "
          f"{row['passes_per_image']}  {row['seconds_per_image']:.2f} s/img", flush=True)


GENERATED = "strength-generate.json"  # beside each result set: what scoring needs of the run


def _generate(cmd: list[str], out: Path, phase: str) -> dict:
    """Run ``generate`` into ``out`` (or, for ``--phase score``, read what an earlier
    ``--phase generate`` kept there): its stdout, wall time, device and command."""
    record = out / ".unrestrict" / GENERATED
    if phase == "score":
        if not record.is_file():
            raise SystemExit(f"{record} is missing: run this with --phase generate first")
        return json.loads(record.read_text())
    shutil.rmtree(out, ignore_errors=True)
    g = run(cmd)
    rec = {"stdout": g.stdout, "seconds": g.seconds, "device": device_line(),
           "command": command_line()}
    record.write_text(json.dumps(rec, indent=2) + "\n")
    return rec


def _with_baseline(rows: list[dict], path: Path) -> list[dict]:
    """``rows`` with the baseline row taken from another run's JSON (same input)."""
    prior = json.loads(path.read_text())
    base = [dict(r) for r in prior["rows"] if r["config"] == "baseline"]
    for r in base:  # the file is usually overwritten by this run: keep where the row came from
        r.setdefault("measured_by", prior["meta"]["command"])
    return base + [r for r in rows if r["config"] != "baseline"]


def shown_command(cmd: list[str]) -> str:
    """The command as a user would type it from benchmarks/: shell-quoted, short paths."""
    def short(a: str) -> str:
        if a.startswith(str(WORK) + "/"):
            return "work/" + a[len(str(WORK)) + 1:]
        return a.replace(str(ROOT) + "/", "../")
    return shlex.join(["unrestrict", *(short(a) for a in cmd[3:])])


def render(meta: dict, rows: list[dict]) -> str:
    """The markdown table of one run, from the values it measured."""
    n = meta["n_images"]
    evals = meta["eval_models"]
    base = next((r for r in rows if r["config"] == "baseline"), None)

    def ratio(key: str, r: dict) -> str:
        if base is None or not base.get(key):
            return "-"
        return f"{r[key] / base[key]:.2f}x"

    def opt(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    def structure(r: dict) -> str:
        if "structure_change" not in r:
            return "-"
        return f"{r['structure_change']:.2f} / {r['structure_change_p99']:.2f}"

    proto = PROTOCOLS[meta["protocol"]]
    md = [f"### Strength and naturalness, {meta['protocol']} protocol ({meta['input']}, "
          f"{n} images)\n",
          f"Device: {meta['device']}  ",
          *([f"Generate phase: {_quoted(meta['generate_command'])}  "]
            if "generate_command" in meta else []),
          f"Command: {_quoted(meta['command'])}  ",
          f"{proto.note} `budget check` is the share of results that fool the budget-check "
          "model after the JPEG round trip, as `generate` reported it. Naturalness (see README): "
          "colour drift in delta E (mean / p95 over pixels; limits 1.5 / 3), flat-region noise in "
          "0-255 RMS (limit 1.2), added fine detail (mean / p95 over blocks; limits 0.3 / 0.6), "
          "tone shift in delta L* (limit 3), reshaped structure (mean / p99 over blocks; limits "
          "0.2 / 0.5) (`-` where a row predates a measure, and its `natural` columns then leave "
          "it out); "
          "`natural` is the share of images within every limit, `fooled+natural` the share that "
          "fool every held-out model and stay within every limit. FID from "
          f"{n} images is rank-deficient and biased upwards: compare it between rows only. "
          "`no-FID score` = 100 x mean held-out ASR x LPIPS factor. `passes` = forward+backward "
          f"passes of the attack model per image. `missed (photos)`: images {evals[0]} still "
          "classifies correctly, and the distinct source photos among them (`-` where a row "
          "predates the column).\n",
          "| config | " + " | ".join(f"ASR {m}" for m in evals) + " | missed (photos) | "
          "budget check | LPIPS | "
          "drift | flat noise | detail | tone | structure | natural | fooled+natural | "
          "FID (biased) | no-FID score | vs baseline | passes | s/img |",
          "|---" * (len(evals) + 16) + "|"]
    for r in rows:
        asr = " | ".join(f"{r['asr_per_model'][m]:.3f}" for m in evals)
        miss = (f"{r['missed_images']} ({r['missed_photos']})" if "missed_images" in r
                else "-")
        md.append(
            f"| {r['config']} | {asr} | {miss} | {opt(r.get('val_success'), '.3f')} | "
            f"{r['lpips']:.4f} | "
            f"{r['color_drift']:.2f} / {r['color_drift_p95']:.2f} | {r['flat_noise']:.2f} | "
            f"{r['detail_excess']:.3f} / {r['detail_excess_p95']:.3f} | "
            f"{opt(r.get('tone_shift'), '.2f')} | {structure(r)} | "
            f"{r['within_limits']:.3f} | {r['natural_success']:.3f} | {r['fid']:.1f} | "
            f"{r['score_no_fid']:.2f} | {ratio('score_no_fid', r)} | "
            f"{opt(r.get('passes_per_image'), '.0f')} | {r['seconds_per_image']:.2f} |")
    if meta["input"].startswith("derived"):
        md.append("\nThe derived images are random crops, flips and mild colour jitters of the 24 "
                  "sample photos (`derive.py`): more samples for FID and LPIPS, but not that many "
                  "independent photos.")
    measured_by = [r["measured_by"] for r in rows if "measured_by" in r]
    if measured_by:
        md.append(f"\nThe baseline row is reused from an earlier run on the same input "
                  f"(`--baseline-from`): {measured_by[0]}.")
    if (ROOT / "benchmarks" / "results" / f"contact-{meta['tag']}.jpg").is_file():
        md.append(f"\nBefore/after contact sheet of `{DEFAULT_CONFIG}`: "
                  f"[contact-{meta['tag']}.jpg](results/contact-{meta['tag']}.jpg).")
    md.append("\nGenerate commands (each followed by `unrestrict score INPUT OUT --eval-models "
              f"{','.join(evals)}`):\n")
    md += [f"- {r['config']} ({r['description']}): `{r['generate']}`" for r in rows]
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    main()
