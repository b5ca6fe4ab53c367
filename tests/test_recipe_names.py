"""The recipe table's lookups at their edges, expectations written by hand: an unknown or missing name is refused
with the names listed, no recipe means only the given fields, and overrides are read from a mapping."""

from __future__ import annotations

import pytest

from modeling_harmoclip.configuration_harmoclip import (
    RECIPES,
    HarmoCLIPConfig,
    apply_recipe,
    recipe_fields,
    recipe_overrides,
)

NAMES = ["clip", "clipself", "fineclip", "gc-gr", "harmoclip", "harmoclip-rla", "harmoclip-gd"]


@pytest.mark.parametrize("name", ["clipp", None, 3, ""])
def test_an_unknown_recipe_is_refused_with_the_names(name) -> None:
    assert list(RECIPES) == NAMES
    with pytest.raises(ValueError) as error:
        recipe_fields(name)
    assert str(error.value) == f"`recipe` must be one of {NAMES}, got {name!r}"


def test_an_unknown_recipe_name_in_a_config_is_refused_by_name() -> None:
    with pytest.raises(ValueError) as error:
        HarmoCLIPConfig(recipe_name="clipp")
    assert str(error.value) == f"HarmoCLIPConfig: `recipe_name` must be one of {NAMES}, got 'clipp'"


def test_no_recipe_means_the_given_fields_alone() -> None:
    assert apply_recipe(None, {"loss_gc_weight": 2.0}) == {"loss_gc_weight": 2.0}
    assert apply_recipe("clip", {"loss_gc_weight": 2.0})["loss_gc_weight"] == 2.0
    assert recipe_overrides(None, {"loss_gc_weight": 2.0}) == {}


def test_overrides_are_read_from_a_mapping_as_from_a_config() -> None:
    values = dict(recipe_fields("harmoclip"))
    assert recipe_overrides("harmoclip", values) == {}
    values["loss_gc_weight"] = 3.0
    assert recipe_overrides("harmoclip", values) == {"loss_gc_weight": 3.0}
