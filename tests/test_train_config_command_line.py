"""The training config's command line and its helpers (`training/config.py`): the help a user reads, the options it
does not take, a single option read as its field's type, the data-format message and the config as a dict. The
expected values are written out by hand."""

from __future__ import annotations

import re

import pytest

from plumbing.command_line import UsageError
from training.config import TrainConfig, build_argument_parser, config_field_value, config_from_args, load_config


def test_the_help_names_the_command_and_the_config_file() -> None:
    text = build_argument_parser("Train HarmoCLIP with Accelerate.").format_help()
    assert "Train HarmoCLIP with Accelerate." in text
    assert "YAML file of options (configs/*.yaml); command-line options override it" in " ".join(text.split())
    assert "--loss_lrc_weight" in text and "--loss-lrc-weight" in text


def test_the_free_form_notes_are_not_a_command_line_option() -> None:
    # `extra` is YAML-only (a mapping of notes); on the command line it is refused, not silently dropped.
    with pytest.raises(UsageError, match="unrecognized arguments: --extra"):
        build_argument_parser("train").parse_args(["--extra", "note"])


@pytest.mark.parametrize(
    ("name", "text", "value"),
    [
        ("learning_rate", "1e-4", 1e-4),
        ("max_steps", "12", 12),
        ("streaming", "true", True),
        ("recipe", "clipself", "clipself"),
        ("max_grad_norm", "none", None),
        ("eval_templates", "a photo of a {}.", ("a photo of a {}.",)),
    ],
)
def test_one_option_is_read_as_its_fields_type(name: str, text: str, value) -> None:
    assert config_field_value(name, text) == value
    assert type(config_field_value(name, text)) is type(value)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("extra", "x", "unknown option 'extra'"),
        ("learning_rat", "1e-4", "unknown option 'learning_rat'"),
        ("max_steps", "twelve", "option `max_steps`: expected int, got 'twelve'"),
    ],
)
def test_one_option_refused_names_itself(name: str, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        config_field_value(name, text)


def test_an_unknown_option_is_named() -> None:
    with pytest.raises(ValueError, match=r"^unknown option 'loss_lrc_weigth'$"):
        load_config(overrides={"loss_lrc_weigth": 0.5})


def test_a_data_file_with_synthetic_data_lists_the_other_formats() -> None:
    message = (
        "config `train_data` ('train.jsonl') is not read with data_format='synthetic': "
        "set `data_format` to one of ('jsonl', 'coco', 'flickr30k', 'hf')"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        TrainConfig(train_data="train.jsonl")


def test_an_unknown_recipe_lists_the_names() -> None:
    message = (
        "config `recipe` must be one of ['clip', 'clipself', 'fineclip', 'gc-gr', 'harmoclip', 'harmoclip-rla', "
        "'harmoclip-gd'], "
        "got 'clipp'"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        TrainConfig(recipe="clipp")
    assert TrainConfig(recipe=None).recipe is None  # no named recipe is allowed


def test_the_config_as_a_dict_has_every_field_and_builds_the_same_config() -> None:
    config = TrainConfig(max_steps=7, learning_rate=1e-5, eval_templates=("a {}",), extra={"note": "x"})
    as_dict = config.to_dict()
    assert as_dict["max_steps"] == 7 and as_dict["learning_rate"] == 1e-5 and as_dict["extra"] == {"note": "x"}
    assert as_dict["eval_templates"] == ("a {}",)
    assert len(as_dict) == len(TrainConfig.__dataclass_fields__)
    assert TrainConfig(**as_dict) == config


def test_the_config_file_is_read_and_the_command_line_is_over_it(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("max_steps: 7\nlearning_rate: 2.0e-4\n")
    parser = build_argument_parser("train")
    config = config_from_args(parser.parse_args(["--config", str(path), "--learning_rate", "1e-3"]))
    assert (config.max_steps, config.learning_rate) == (7, 1e-3)
