"""`TrainConfig`'s checks at their boundaries: every count that must be > 0 accepts 1 and refuses 0, every amount
that must be >= 0 accepts 0 and refuses -1, each with the one-line error naming the field and the value; the rules
between fields (patch size, data format, streaming, cached teacher, region temperature, all weights 0) on both sides
of their line; the properties read from the recipe, by hand."""

from __future__ import annotations

import math

import pytest

from training.config import TrainConfig, tracker_names

POSITIVE = (
    "batch_size",
    "gradient_accumulation_steps",
    "max_steps",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "max_boxes",
    "max_nonfinite_steps",
)
NON_NEGATIVE = ("weight_decay", "warmup_steps", "lock_vision_layers", "num_workers", "min_box_size", "shuffle_buffer")


@pytest.mark.parametrize("name", POSITIVE)
def test_counts_must_be_positive(name: str) -> None:
    assert getattr(TrainConfig(**{name: 1}), name) == 1
    with pytest.raises(ValueError) as caught:
        TrainConfig(**{name: 0})
    assert str(caught.value) == f"config `{name}` must be > 0, got 0"


@pytest.mark.parametrize("name", NON_NEGATIVE)
def test_amounts_must_not_be_negative(name: str) -> None:
    assert getattr(TrainConfig(**{name: 0}), name) == 0
    with pytest.raises(ValueError) as caught:
        TrainConfig(**{name: -1})
    assert str(caught.value) in (f"config `{name}` must be >= 0, got -1", f"config `{name}` must be >= 0, got -1.0")


def test_sizes_learning_rate_and_patch_grid() -> None:
    assert TrainConfig(image_size=16, patch_size=16).image_size == 16
    for name in ("image_size", "patch_size"):
        with pytest.raises(ValueError, match=rf"^config `{name}` must be > 0, got 0$"):
            TrainConfig(**{name: 0})
    with pytest.raises(ValueError, match=r"^config `image_size` \(36\) must be a multiple of `patch_size` \(8\)$"):
        TrainConfig(image_size=36, patch_size=8)
    assert TrainConfig(learning_rate=1e-12).learning_rate == 1e-12
    for bad in (0.0, -1e-4, math.nan):
        with pytest.raises(ValueError, match=r"^config `learning_rate` must be > 0, got "):
            TrainConfig(learning_rate=bad)


def test_data_format_and_streaming_rules(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"^config `train_data` is required with data_format='jsonl'$"):
        TrainConfig(data_format="jsonl")
    assert TrainConfig(data_format="jsonl", train_data=str(tmp_path / "a.jsonl")).train_data.endswith("a.jsonl")
    with pytest.raises(ValueError, match=r"^config `val_data` \('v.jsonl'\) is not read with data_format='synthetic'"):
        TrainConfig(val_data="v.jsonl")
    with pytest.raises(ValueError, match=r"^config `train_data` \('t.jsonl'\) is not read with data_format="):
        TrainConfig(train_data="t.jsonl", val_data="v.jsonl")
    with pytest.raises(ValueError, match=r"^config `streaming` needs data_format='hf', got data_format='jsonl'$"):
        TrainConfig(data_format="jsonl", train_data="t.jsonl", streaming=True)
    assert TrainConfig(data_format="hf", train_data="shards", streaming=True).streaming is True
    with pytest.raises(ValueError, match=r"^config `object_views` needs a map-style data set"):
        TrainConfig(data_format="hf", train_data="shards", streaming=True, object_views=1)
    with pytest.raises(ValueError, match=r"^config `hf_columns` must map field names to column names, got \{'a': 1\}$"):
        TrainConfig(hf_columns={"a": 1})
    assert TrainConfig(hf_columns={"image": "jpg"}).hf_columns == {"image": "jpg"}


def test_teacher_temperature_and_weight_rules() -> None:
    with pytest.raises(ValueError, match=r"^config `teacher_cache` is required with gr_teacher='cached'"):
        TrainConfig(gr_teacher="cached")
    assert TrainConfig(gr_teacher="cached", loss_gr_weight=0.0).gr_enabled is False  # GR off: no cache needed
    assert TrainConfig(gr_teacher="cached", teacher_cache="cache").teacher_cache == "cache"
    with pytest.raises(ValueError, match=r"^config `object_views` does not apply with gr_teacher='cached'"):
        TrainConfig(gr_teacher="cached", teacher_cache="cache", object_views=1)
    assert TrainConfig(gr_teacher="cached", teacher_cache="cache", object_views=1, loss_gr_weight=0.0).object_views == 1
    # The region temperature may start at log(max_logit_scale) exactly, not above, in "separate" mode only.
    edge = math.log(100.0)
    assert TrainConfig(region_logit_scale_mode="separate", region_logit_scale_init_value=edge).max_logit_scale == 100.0
    with pytest.raises(ValueError, match=r"^config `region_logit_scale_init_value` must be at most log\(max_logit_sc"):
        TrainConfig(region_logit_scale_mode="separate", region_logit_scale_init_value=edge + 1e-6)
    assert TrainConfig(region_logit_scale_mode="shared", region_logit_scale_init_value=edge + 1).max_logit_scale == 100
    with pytest.raises(ValueError, match=r"^config: all loss weights are 0; nothing to train$"):
        TrainConfig(loss_gc_weight=0.0, loss_lrc_weight=0.0, loss_rla_weight=0.0, loss_gr_weight=0.0)
    for name in ("loss_gc_weight", "loss_lrc_weight", "loss_rla_weight", "loss_gr_weight"):
        weights = dict(loss_gc_weight=0.0, loss_lrc_weight=0.0, loss_rla_weight=0.0, loss_gr_weight=0.0)
        assert getattr(TrainConfig(**{**weights, name: 0.5}), name) == 0.5


def test_what_a_batch_needs_follows_the_terms() -> None:
    none = dict(loss_lrc_weight=0.0, loss_rla_weight=0.0, loss_gr_weight=0.0)
    assert not TrainConfig(**none).uses_phrases and not TrainConfig(**none).uses_regions
    assert TrainConfig(**{**none, "loss_lrc_weight": 0.1}).uses_phrases
    assert TrainConfig(**{**none, "loss_rla_weight": 0.1}).uses_phrases
    gr_only = TrainConfig(**{**none, "loss_gr_weight": 0.1})
    assert gr_only.uses_regions and not gr_only.uses_phrases
    assert not TrainConfig(**{**none, "loss_gr_weight": 0.1, "gr_teacher": "none"}).uses_regions
    assert TrainConfig(**{**none, "loss_rla_weight": 0.1}).uses_regions


def test_trackers_are_read_from_a_list() -> None:
    assert tracker_names("none") == [] and tracker_names(" tensorboard , wandb ") == ["tensorboard", "wandb"]
    assert TrainConfig(report_to="none").trackers == []
    for bad in ("", "none,wandb", "tensorboard,nope"):
        with pytest.raises(ValueError, match=r"^config `report_to` must name trackers among"):
            tracker_names(bad)
