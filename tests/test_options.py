"""One options parser for every family: the same value is read the same way by VAR, LlamaGen and MAR, and
a misspelt name is refused with the closest known one. Checked through accel.api.check_settings, the
path `argen generate` takes before Ray starts (no weights are read)."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from accel.api import ArgenError, check_settings
from accel.options import parse_options

TINY = ("var_tiny", "llamagen_tiny", "mar_tiny")


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("value", ["3.0", 3, "3"])
def test_cfg_from_a_command_line_is_a_number_for_every_family(name, value):
    check_settings(name, "none", {"cfg": value}, random_init=True)


@pytest.mark.parametrize("name", TINY)
def test_cfg_that_is_not_a_number_is_refused_alike(name):
    with pytest.raises(ArgenError, match=r"cfg='strong' is not a number; pass e.g. cfg="):
        check_settings(name, "none", {"cfg": "strong"}, random_init=True)


@pytest.mark.parametrize("name", ["llamagen_tiny", "mar_tiny"])
def test_temperature_from_a_command_line_is_a_number(name):
    check_settings(name, "none", {"temperature": "0.9"}, random_init=True)
    with pytest.raises(ArgenError, match="temperature='hot' is not a number"):
        check_settings(name, "none", {"temperature": "hot"}, random_init=True)


@pytest.mark.parametrize("name, accel", [("var_tiny", "none"), ("var_tiny", "fastvar"), ("llamagen_tiny", "none")])
def test_draw_is_argen_or_release(name, accel):
    check_settings(name, accel, {"draw": "release"}, random_init=True)
    with pytest.raises(ArgenError, match=r"draw='numpy'; expected 'argen' .* or 'release'"):
        check_settings(name, accel, {"draw": "numpy"}, random_init=True)


def test_release_draw_is_for_plain_llamagen_decoding_and_not_a_mar_option():
    with pytest.raises(ArgenError, match=r"draw='release' with accel=lantern: .*accel=none"):
        check_settings("llamagen_tiny", "lantern", {"draw": "release"}, random_init=True)
    with pytest.raises(ArgenError, match=r"unknown option\(s\) \['draw'\] for mar_tiny"):
        check_settings("mar_tiny", "none", {"draw": "release"}, random_init=True)


@pytest.mark.parametrize("name, accel, typo, meant", [
    ("var_tiny", "none", "top_kk", "top_k"),
    ("mar_tiny", "lazymar", "refresh_intervall", "refresh_interval"),
    ("llamagen_tiny", "lantern", "lantern_delt", "lantern_delta"),
])
def test_a_misspelt_option_names_the_closest(name, accel, typo, meant):
    with pytest.raises(ArgenError, match=rf"unknown option\(s\) \['{typo}'\].*'{typo}': did you mean '{meant}'\?"):
        check_settings(name, accel, {typo: 1}, random_init=True)


@dataclass
class Example:
    steps: int = 4
    scale: float = 1.0
    on: bool = False
    mode: str = "a"
    limit: int | None = None

    def check(self, most: int) -> None:
        if self.steps > most:
            raise ArgenError(f"steps={self.steps} is above {most}")


def test_parse_options_converts_by_field_type_and_leaves_its_input_alone():
    given = {"steps": "3", "scale": "2", "on": "true", "limit": None}
    parsed = parse_options(Example, given, "example", most=10)
    assert parsed == Example(steps=3, scale=2.0, on=True, mode="a", limit=None)
    assert type(parsed.scale) is float and given == {"steps": "3", "scale": "2", "on": "true", "limit": None}
    with pytest.raises(ArgenError, match="steps=11 is above 10"):
        parse_options(Example, {"steps": 11}, "example", most=10)
    with pytest.raises(ArgenError, match=r"steps=2\.5 is not a whole number"):
        parse_options(Example, {"steps": 2.5}, "example", most=10)
    with pytest.raises(ArgenError, match=r"mode=3 is not text"):
        parse_options(Example, {"mode": 3}, "example", most=10)
    with pytest.raises(ArgenError, match=r"on='yes' is not true or false"):
        parse_options(Example, {"on": "yes"}, "example", most=10)
