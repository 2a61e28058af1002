"""Presets: each is a valid configuration, and overrides merge into it."""

from __future__ import annotations

import dataclasses

import pytest

from unrestrict.attack import PRESET_HELP, PRESETS, resolve_preset
from unrestrict.errors import ConfigError
from unrestrict.generate import GenerateConfig
from unrestrict.perturb import compose
from unrestrict.perturb.texture import TextureConfig


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_composes_and_is_described(name):
    cfg = PRESETS[name]
    compose(cfg.families, cfg.family_options)
    assert PRESET_HELP[name]


def test_natural_is_bold_with_capped_fine_texture_no_grade_wider_ramp_stopped_at_the_limits():
    natural, bold = PRESETS["natural"], PRESETS["bold"]
    default = TextureConfig()
    assert natural.natural_limit == 1.0 and bold.natural_limit == 0.0
    assert natural.relu_width == 2.0 and bold.relu_width == 1.0
    assert natural.family_options["texture"] == {
        "fine": default.fine * 4, "mid": default.mid, "coarse": default.coarse,
        "structure_cap": 8.0, "detail_sigma": 2.0, "detail_bands": "mid,coarse",
        "overshoot": 0.5, "overshoot_reach": 7,
        "gain_fine": 0.5, "gain_mid": 0.5, "gain_coarse": 0.5}
    assert natural.stages == 2 * bold.stages
    assert natural.families == ("texture",) and bold.families == ("texture", "color")
    assert dataclasses.replace(natural, natural_limit=0.0, family_options={},
                               stages=bold.stages, families=bold.families,
                               relu_width=bold.relu_width) == bold
    assert GenerateConfig().attack == natural  # the library's default is the CLI's


def test_strong_is_bold_with_two_more_stages_for_mid_and_coarse_texture():
    strong, bold = PRESETS["strong"], PRESETS["bold"]
    default = TextureConfig()
    assert strong.family_options["texture"] == {"mid": default.mid * 1.5,
                                                "coarse": default.coarse * 1.5}
    assert strong.stages == bold.stages + 2
    # The mid band's rungs: the default's four, then 1.25x and 1.5x of its bound.
    rungs = [strong.family_options["texture"]["mid"] * (k + 1) / strong.stages
             for k in range(strong.stages)]
    assert rungs[:4] == pytest.approx([default.mid * (k + 1) / 4 for k in range(4)])
    assert dataclasses.replace(strong, family_options={}, stages=bold.stages) == bold


def test_a_family_option_overrides_one_preset_value_and_keeps_the_rest():
    cfg = resolve_preset("strong", {"texture": {"mid": "2.0"}, "color": {"hue": "0.01"}},
                         steps=7)
    assert cfg.family_options == {"texture": {"mid": "2.0", "coarse": 12.0},
                                  "color": {"hue": "0.01"}}
    assert cfg.steps == 7
    assert PRESETS["strong"].family_options["texture"]["mid"] == 12.0  # preset untouched


def test_preset_options_of_families_left_out_are_dropped():
    cfg = resolve_preset("strong", families=("color",))
    assert cfg.family_options == {}


def test_an_unknown_preset_is_named():
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        resolve_preset("nope")
