"""The recipe's one check (`configuration_harmoclip.check_recipe`) at its boundaries, through `HarmoCLIPConfig` and
through training's `TrainConfig`: each accepted value just inside, each refused value just outside, with the one-line
error naming the field and the value; and the rules every part of the project reads (`gr_enabled`, `loss_weights`)
against values written by hand."""

from __future__ import annotations

import dataclasses
import math

import pytest

from modeling_harmoclip.configuration_harmoclip import (
    LOSS_WEIGHT_FIELDS,
    RECIPE_CHOICES,
    HarmoCLIPConfig,
    check_recipe,
    gr_enabled,
    loss_weights,
    recipe_defaults,
)
from training.config import TrainConfig

# (field, value) pairs the recipe accepts: the edges of each range.
ACCEPTED = [
    *[(name, 0) for name in LOSS_WEIGHT_FIELDS],
    *[(name, 0.0) for name in LOSS_WEIGHT_FIELDS],
    *[(name, 2.5) for name in LOSS_WEIGHT_FIELDS],
    ("gr_crop_scale", 1e-6),
    ("gr_crop_scale", 1),
    ("region_logit_scale_init_value", 0),
    ("region_logit_scale_init_value", 4.6052),
    ("region_text_grad", True),
    ("lrc_mask_categories", False),
    *[(name, value) for name, allowed in RECIPE_CHOICES.items() for value in allowed],
]
# (field, value, message) the recipe refuses.
REFUSED = [
    *[(name, -1e-9, "must be a non-negative number, got -1e-09") for name in LOSS_WEIGHT_FIELDS],
    *[(name, True, "must be a non-negative number, got True") for name in LOSS_WEIGHT_FIELDS],
    *[(name, "1", "must be a non-negative number, got '1'") for name in LOSS_WEIGHT_FIELDS],
    *[(name, math.nan, "must be a non-negative number, got nan") for name in LOSS_WEIGHT_FIELDS],
    ("gr_crop_scale", 0, "must be a positive number, got 0"),
    ("gr_crop_scale", -1.5, "must be a positive number, got -1.5"),
    ("gr_crop_scale", True, "must be a positive number, got True"),
    ("gr_crop_scale", "1.5", "must be a positive number, got '1.5'"),
    ("region_logit_scale_init_value", -0.1, "must be a non-negative number, got -0.1"),
    ("region_logit_scale_init_value", False, "must be a non-negative number, got False"),
    ("region_logit_scale_init_value", "2", "must be a non-negative number, got '2'"),
    ("region_text_grad", 1, "must be true or false, got 1"),
    ("lrc_mask_categories", "yes", "must be true or false, got 'yes'"),
    *[(name, "nope", f"must be one of {allowed}, got 'nope'") for name, allowed in RECIPE_CHOICES.items()],
]


@pytest.mark.parametrize(("name", "value"), ACCEPTED)
def test_values_at_the_edges_are_accepted(name: str, value) -> None:
    assert getattr(HarmoCLIPConfig(**{name: value}), name) == value
    check_recipe(_train_config_with(name, value), "config `{}`")


@pytest.mark.parametrize(("name", "value", "message"), REFUSED)
def test_values_past_the_edges_are_refused_by_name(name: str, value, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        HarmoCLIPConfig(**{name: value})
    assert str(caught.value) == f"HarmoCLIPConfig: `{name}` {message}"
    recipe = _train_config_with(name, value)
    with pytest.raises(ValueError) as caught:
        check_recipe(recipe, "config `{}`")
    assert str(caught.value) == f"config `{name}` {message}"


def _train_config_with(name: str, value):
    """A `TrainConfig` holding `value` in `name` without running its validation (the check under test runs after)."""
    recipe = TrainConfig.__new__(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        if field.default is not dataclasses.MISSING:
            object.__setattr__(recipe, field.name, field.default)
        elif field.default_factory is not dataclasses.MISSING:
            object.__setattr__(recipe, field.name, field.default_factory())
    object.__setattr__(recipe, name, value)
    return recipe


def test_the_rules_read_from_a_recipe_by_hand() -> None:
    shipped = HarmoCLIPConfig()
    assert recipe_defaults() == {  # the named recipe `harmoclip`: GC + 0.5 LRC + GR under a frozen teacher
        "dense_mode": "value",
        "lexeme_mode": "token",
        "region_pooling": "normalize_then_pool",
        "loss_gc_weight": 1.0,
        "loss_lrc_weight": 0.5,
        "loss_rla_weight": 0.0,
        "loss_gr_weight": 1.0,
        "gr_teacher": "frozen",
        "gr_crop_scale": 1.5,
        "region_logit_scale_mode": "shared",
        "region_logit_scale_init_value": 2.6592,
        "region_text_grad": False,
        "lrc_mask_categories": True,
        "loss_gd_weight": 0.0,
        "region_heads": False,
        "region_grad_reach": "all",
        "vision_trunk_lr_scale": 1.0,
    }
    assert shipped.recipe_settings == recipe_defaults() and shipped.gr_enabled is True
    weights = dict(loss_gc_weight=1, loss_lrc_weight=0.5, loss_rla_weight=0.25, loss_gr_weight=2)
    assert loss_weights(HarmoCLIPConfig(**weights)) == {
        "gc_weight": 1.0,
        "lrc_weight": 0.5,
        "rla_weight": 0.25,
        "gr_weight": 2.0,
        "gd_weight": 0.0,
    }
    assert all(isinstance(value, float) for value in loss_weights(HarmoCLIPConfig(**weights)).values())
    # GR is off with no teacher, or with weight 0, whatever the other says.
    no_teacher = HarmoCLIPConfig(**weights, gr_teacher="none")
    assert not no_teacher.gr_enabled and loss_weights(no_teacher)["gr_weight"] == 0.0
    assert not gr_enabled(HarmoCLIPConfig(loss_gr_weight=0.0, gr_teacher="frozen"))
    assert gr_enabled(HarmoCLIPConfig(loss_gr_weight=1e-6, gr_teacher="cached"))
    # The older teacher name is read as what it meant.
    assert HarmoCLIPConfig(gr_teacher="self").gr_teacher == "self_stop_grad"


def test_from_clip_config_keeps_the_towers_and_takes_the_settings() -> None:
    from transformers import CLIPConfig

    clip = CLIPConfig(projection_dim=24, logit_scale_init_value=3.0)
    config = HarmoCLIPConfig.from_clip_config(clip, loss_lrc_weight=0.5, dense_mode="full")
    assert config.model_type == "harmoclip" and config.projection_dim == 24 and config.logit_scale_init_value == 3.0
    assert config.loss_lrc_weight == 0.5 and config.dense_mode == "full"
    assert config.text_config.hidden_size == clip.text_config.hidden_size
    # What names the CLIP checkpoint's own class and code is not carried over to a HarmoCLIP config.
    named = CLIPConfig(projection_dim=24, architectures=["CLIPModel"])
    named.auto_map = {"AutoModel": "modeling_clip.CLIPModel"}
    carried = HarmoCLIPConfig.from_clip_config(named).to_dict()
    assert carried.get("architectures") in (None, []) and "CLIPModel" not in str(carried.get("auto_map"))
    with pytest.raises(TypeError, match="from_clip_config: `clip_config` must be a CLIPConfig, got dict"):
        HarmoCLIPConfig.from_clip_config({"projection_dim": 24})
