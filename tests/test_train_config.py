"""The training configuration is typed: YAML strings become the field's type, wrong types and values are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from conversion.convert_clip import build_parser as convert_parser
from modeling_harmoclip.configuration_harmoclip import (
    DENSE_MODES,
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
    assert training_config.CHOICES["lexeme_mode"] is LEXEME_MODES
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
        offered = modes + tuple(TEACHER_ALIASES) if name == "gr_teacher" else modes
        assert tuple(train_actions[name]) == tuple(convert_actions[name]) == offered
        for mode in offered:  # every mode the parsers offer is one the model's config accepts, and the other way
            meant = TEACHER_ALIASES.get(mode, mode) if name == "gr_teacher" else mode
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
