"""The training configuration is typed: YAML strings become the field's type, wrong types and values are named."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from conversion.convert_clip import build_parser as convert_parser
from modeling_harmoclip.configuration_harmoclip import (
    DENSE_MODES,
    LEXEME_ALIASES,
    LEXEME_MODES,
    REGION_LOGIT_SCALE_MODES,
    REGION_POOLING_MODES,
    TEACHER_ALIASES,
    TEACHER_MODES,
    HarmoCLIPConfig,
)
from plumbing.command_line import UsageError
from training.config import TRACKERS, TrainConfig, build_argument_parser, config_from_args, load_config


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_yaml_strings_become_the_field_types(tmp_path: Path) -> None:
    # YAML 1.1 reads 1e-5 (no dot) as a string and "false" in quotes as a string.
    config = load_config(
        write_yaml(
            tmp_path,
            'learning_rate: 1e-5\nlock_text: "false"\nresume: "yes"\n'
            'max_grad_norm: none\nbatch_size: "8"\nweight_decay: 0\n',
        )
    )
    assert config.learning_rate == 1e-5 and type(config.learning_rate) is float
    assert config.lock_text is False and config.resume is True
    assert config.max_grad_norm is None
    assert config.batch_size == 8 and type(config.batch_size) is int
    assert config.weight_decay == 0.0 and type(config.weight_decay) is float  # an int where a float is wanted


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("learning_rate: fast\n", "config `learning_rate`: expected float, got 'fast'"),
        ('lock_text: "maybe"\n', "config `lock_text`: expected bool, got 'maybe'"),
        ("lock_text: 1\n", "config `lock_text`: expected bool, got 1"),  # an int is not a bool
        ("batch_size: 8.5\n", "config `batch_size`: expected int, got 8.5"),
        ("batch_size: true\n", "config `batch_size`: expected int, got True"),  # a bool is not an int
        ("dense_mode: 3\n", "config `dense_mode`: expected str, got 3"),
        ("learning_rate: [1, 2]\n", "config `learning_rate`: expected float, got [1, 2]"),
        ("init_from: 7\n", "config `init_from`: expected str | None, got 7"),
        ("learning_rate: -1\n", "config `learning_rate` must be > 0, got -1.0"),
    ],
)
def test_wrong_types_and_values_name_the_key_and_the_value(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        load_config(write_yaml(tmp_path, text))
    assert str(caught.value) == message


def test_unreadable_yaml_names_the_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "learning_rate: [1e-5\n")
    with pytest.raises(ValueError, match=f"config file {path} is not valid YAML") as caught:
        load_config(path)
    assert "\n" not in str(caught.value)


def test_command_line_values_are_typed_and_named() -> None:
    parser = build_argument_parser("test")
    config = config_from_args(
        parser.parse_args(["--learning_rate", "1e-5", "--lock-text", "off", "--report_to", "none"])
    )
    assert (config.learning_rate, config.lock_text, config.trackers) == (1e-5, False, [])
    with pytest.raises(ValueError, match=r"^option `--learning_rate`: expected float, got 'fast'$"):
        config_from_args(parser.parse_args(["--learning_rate", "fast"]))
    with pytest.raises(UsageError, match="argument --dense_mode/--dense-mode: invalid choice: 'values'"):
        parser.parse_args(["--dense_mode", "values"])


def test_eval_templates_are_a_list_of_prompts_with_a_place_for_the_class(tmp_path: Path) -> None:
    assert TrainConfig().eval_templates == ()  # the default ensemble
    assert load_config(write_yaml(tmp_path, 'eval_templates: ["{}", "a {}"]\n')).eval_templates == ("{}", "a {}")
    assert load_config(write_yaml(tmp_path, "eval_templates: 'a {}'\n")).eval_templates == ("a {}",)
    parser = build_argument_parser("test")
    args = parser.parse_args(["--eval_templates", "{}", "a big {}", "--report_to", "none"])
    assert config_from_args(args).eval_templates == ("{}", "a big {}")
    for text, message in (
        (
            "eval_templates: ['a photo']\n",
            "config `eval_templates`[0] must contain '{}' where the class name goes, got 'a photo'",
        ),
        ("eval_templates: [3]\n", "config `eval_templates`: expected str, got 3"),
        ("eval_templates: {a: 1}\n", "config `eval_templates`: expected a list of str, got {'a': 1}"),
    ):
        with pytest.raises(ValueError) as caught:
            load_config(write_yaml(tmp_path, text))
        assert str(caught.value) == message


def test_synthetic_data_ignores_no_data_file() -> None:
    with pytest.raises(
        ValueError, match=r"config `train_data` \('missing.jsonl'\) is not read with data_format='synthetic'"
    ):
        TrainConfig(train_data="missing.jsonl")
    assert TrainConfig(data_format="jsonl", train_data="missing.jsonl").train_data == "missing.jsonl"


def test_report_to_takes_accelerates_trackers() -> None:
    from accelerate.utils import LoggerType

    assert set(TRACKERS) == {str(kind) for kind in LoggerType}  # the same list as Accelerate's
    assert TrainConfig().trackers == ["tensorboard"]  # the default
    assert TrainConfig(report_to="none").trackers == []
    assert TrainConfig(report_to="wandb, mlflow").trackers == ["wandb", "mlflow"]
    for bad in ("tensorbord", "", "none,wandb"):
        with pytest.raises(ValueError, match=f"config `report_to` must name trackers .* got {bad!r}"):
            TrainConfig(report_to=bad)


def test_report_to_a_tracker_that_is_not_installed_is_an_error(tmp_path: Path) -> None:
    from accelerate.tracking import get_available_trackers

    from training.train import train

    missing = [name for name in TRACKERS if name != "all" and name not in {str(t) for t in get_available_trackers()}]
    if not missing:
        pytest.skip("every tracker is installed")
    with pytest.raises(ValueError, match=rf"config `report_to`: tracker\(s\) \['{missing[0]}'\] not installed"):
        train(TrainConfig(report_to=missing[0], output_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()  # checked before anything is written


def test_mode_choices_come_from_the_modeling_config() -> None:
    from training import config as training_config

    assert training_config.CHOICES["dense_mode"] is DENSE_MODES
    assert training_config.CHOICES["lexeme_mode"] == LEXEME_MODES + tuple(LEXEME_ALIASES)  # likewise
    assert training_config.CHOICES["gr_teacher"] == TEACHER_MODES + tuple(TEACHER_ALIASES)  # older names still read
    train_actions = {action.dest: action.choices for action in build_argument_parser("t")._actions}
    convert_actions = {action.dest: action.choices for action in convert_parser()._actions}
    for name, modes in (
        ("dense_mode", DENSE_MODES),
        ("lexeme_mode", LEXEME_MODES),
        ("gr_teacher", TEACHER_MODES),
        ("region_pooling", REGION_POOLING_MODES),
        ("region_logit_scale_mode", REGION_LOGIT_SCALE_MODES),
    ):
        aliases = {"gr_teacher": TEACHER_ALIASES, "lexeme_mode": LEXEME_ALIASES}.get(name, {})
        offered = modes + tuple(aliases)
        assert tuple(train_actions[name]) == tuple(convert_actions[name]) == offered
        for mode in offered:  # every mode the parsers offer is one the model's config accepts, and the other way
            meant = aliases.get(mode, mode)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # an older name (tests/test_deprecated_names.py)
                assert getattr(TrainConfig(**{name: mode, "teacher_cache": "cache"}), name) == meant
                assert getattr(HarmoCLIPConfig(**{name: mode}), name) == meant


def test_init_from_that_is_neither_a_folder_nor_a_repo_id_fails_at_once(tmp_path, capsys) -> None:
    from training.builders import check_init_from
    from training.train import main

    missing = tmp_path / "runs" / "model"  # two separators: a local path, never a Hub repository id
    with pytest.raises(ValueError, match=r"config `init_from` '.*runs/model': no such folder \(and not a Hub"):
        check_init_from(str(missing))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(ValueError, match="is a file: give the model's folder"):
        check_init_from(str(weights))
    check_init_from(str(tmp_path))  # a folder: from_pretrained's turn
    check_init_from("org/harmoclip-vitb16")  # may be on the Hub: from_pretrained's turn
    out = tmp_path / "out"
    assert main(["--init_from", str(missing), "--output_dir", str(out), "--report_to", "none"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: config `init_from`") and "no such folder" in err[-1]


def test_the_recipe_is_the_model_configs_fields_and_defaults() -> None:
    """TrainConfig's recipe fields are `RECIPE_FIELDS` with `HarmoCLIPConfig`'s defaults, so training with the default
    TrainConfig and `model(**batch, return_loss=True)` under the default model config compute the same loss."""
    from modeling_harmoclip.configuration_harmoclip import RECIPE_FIELDS
    from training.builders import harmoclip_settings

    model_defaults, train_defaults = HarmoCLIPConfig(), TrainConfig()
    assert {name: getattr(train_defaults, name) for name in RECIPE_FIELDS} == {
        name: getattr(model_defaults, name) for name in RECIPE_FIELDS
    }
    # The shipped recipe, `harmoclip`: GC 1, LRC 0.5, GR 1 under the frozen teacher, RLA off, region terms without
    # text gradients.
    assert (model_defaults.loss_gc_weight, model_defaults.loss_lrc_weight) == (1.0, 0.5)
    assert (model_defaults.loss_rla_weight, model_defaults.loss_gr_weight) == (0.0, 1.0)
    assert model_defaults.gr_teacher == "frozen" and model_defaults.region_text_grad is False
    assert model_defaults.recipe_name == train_defaults.recipe == "harmoclip"
    custom = TrainConfig(loss_lrc_weight=0.25, region_text_grad=True, lrc_mask_categories=False)
    assert harmoclip_settings(custom) == {name: getattr(custom, name) for name in RECIPE_FIELDS} | {
        "recipe_name": "harmoclip"
    }
    assert custom.recipe_overrides == {"loss_lrc_weight": 0.25, "region_text_grad": True}
    assert set(RECIPE_FIELDS) <= set(HarmoCLIPConfig().to_dict())  # every recipe field is saved with the model
    convert_options = {action.dest for action in convert_parser()._actions}
    assert set(RECIPE_FIELDS) <= convert_options  # conversion offers the whole recipe (RLA and region_text_grad too)


@pytest.mark.parametrize(
    ("weight", "teacher", "enabled"),
    [(1.0, "frozen", True), (0.5, "cached", True), (0.0, "frozen", False), (1.0, "none", False)],
)
def test_gr_is_on_by_one_rule(weight: float, teacher: str, enabled: bool) -> None:
    """GR is on with a weight > 0 and a teacher; the model config and the training config answer alike."""
    settings = dict(loss_gr_weight=weight, gr_teacher=teacher)
    assert HarmoCLIPConfig(**settings).gr_enabled is enabled
    assert TrainConfig(**settings, teacher_cache="cache").gr_enabled is enabled


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(loss_rla_weight=-1.0), "`loss_rla_weight` must be a non-negative number, got -1.0"),
        (dict(region_logit_scale_init_value=-0.5), "`region_logit_scale_init_value` must be a non-negative number"),
        (dict(gr_crop_scale=0.0), "`gr_crop_scale` must be a positive number, got 0.0"),
        (dict(region_pooling="mean"), "`region_pooling` must be one of"),
    ],
)
def test_the_recipe_is_checked_once_for_both_configs(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"^HarmoCLIPConfig: {message}"):
        HarmoCLIPConfig(**settings)
    with pytest.raises(ValueError, match=f"^config {message}"):
        TrainConfig(**settings)


def test_convert_reads_the_recipe_options_as_their_types() -> None:
    from conversion.convert_clip import harmoclip_settings_from_args

    args = convert_parser().parse_args(
        ["--source", "hf", "--checkpoint", "c", "--output", "o", "--region-text-grad", "true", "--loss-rla-weight", "2"]
    )
    assert harmoclip_settings_from_args(args) == {"region_text_grad": True, "loss_rla_weight": 2.0}
    args = convert_parser().parse_args(
        ["--source", "hf", "--checkpoint", "c", "--output", "o", "--loss-gr-weight", "x"]
    )
    with pytest.raises(ValueError, match=r"^option `--loss-gr-weight`: expected float, got 'x'$"):
        harmoclip_settings_from_args(args)


def test_the_model_records_the_recipe_and_the_region_temperature_it_starts_from(tmp_path: Path) -> None:
    """The model training builds carries the run's recipe in its config, and `region_logit_scale_init_value` is the
    value `region_logit_scale` starts from: the knob in "separate" mode (also over a saved value), the loaded scale in
    "from_global" mode."""
    import torch

    from training.builders import build_model_and_processor

    common = dict(model_preset="micro", image_size=32, patch_size=8, report_to="none")
    config = TrainConfig(
        **common, region_logit_scale_mode="separate", region_logit_scale_init_value=1.25, loss_lrc_weight=0.3
    )
    model, processor = build_model_and_processor(config)
    assert model.config.recipe_settings == {
        name: value for name, value in config.recipe_settings.items() if name != "recipe_name"
    }
    assert model.config.recipe_name == config.recipe
    assert float(model.region_logit_scale) == pytest.approx(1.25)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    with torch.no_grad():  # a trained value, different from the knob
        model.region_logit_scale.fill_(3.0)
    model.save_pretrained(tmp_path / "trained")
    processor.save_pretrained(tmp_path / "trained")

    again = TrainConfig(**common, init_from=str(tmp_path / "trained"), region_logit_scale_mode="separate")
    separate, _ = build_model_and_processor(again)
    assert float(separate.region_logit_scale) == pytest.approx(again.region_logit_scale_init_value)
    assert separate.config.region_logit_scale_init_value == pytest.approx(again.region_logit_scale_init_value)
    follow = TrainConfig(**common, init_from=str(tmp_path / "trained"), region_logit_scale_mode="from_global")
    from_global, _ = build_model_and_processor(follow)
    assert float(from_global.region_logit_scale) == pytest.approx(3.0)
    assert from_global.config.region_logit_scale_init_value == pytest.approx(3.0)  # what training started from
    assert from_global.config.loss_lrc_weight == follow.loss_lrc_weight == 0.5  # the run's recipe, not the folder's


def test_a_renamed_option_names_its_new_name(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"unknown option\(s\) \['region_mode'\] \(region_mode is now processor_region_mode\)"
    ):
        load_config(write_yaml(tmp_path, "region_mode: true\n"))
