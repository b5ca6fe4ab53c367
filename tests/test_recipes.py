"""Named recipes: one table (`RECIPES`), each name doing what its method does, explicit fields over it, recorded in the
saved config and the model card; the defaults and the ViT configs are the `harmoclip` recipe."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import ROOT, tiny_harmoclip_model
from conversion.convert_clip import build_parser as convert_parser
from conversion.convert_clip import harmoclip_settings_from_args
from conversion.model_card import CardInfo, render_model_card
from modeling_harmoclip.configuration_harmoclip import RECIPE_FIELDS, RECIPES, HarmoCLIPConfig, loss_weights
from training.config import TrainConfig, build_argument_parser, config_from_args, load_config

NAMES = ["clip", "clipself", "fineclip", "gc-gr", "harmoclip", "harmoclip-rla", "harmoclip-gd"]
UNKNOWN = f"`recipe` must be one of {NAMES}, got 'clipp'"


def terms(config) -> set[str]:
    """The loss terms a config trains, read from its weights (GR only with a teacher)."""
    return {name.removesuffix("_weight") for name, weight in loss_weights(config).items() if weight > 0}


def test_the_table_names_the_methods() -> None:
    assert list(RECIPES) == NAMES
    for name, fields in RECIPES.items():
        assert set(fields) <= set(RECIPE_FIELDS), name
    expected = {
        "clip": ({"gc"}, None, False),
        "clipself": ({"gr"}, "frozen", False),  # CLIPSelf: a frozen copy is the teacher
        "fineclip": ({"gc", "rla", "gr"}, "self_with_grad", True),  # FineCLIP: the live model, text tower trained
        "gc-gr": ({"gc", "gr"}, "frozen", False),
        "harmoclip": ({"gc", "lrc", "gr"}, "frozen", False),  # the paper's three terms
        "harmoclip-rla": ({"gc", "lrc", "rla", "gr"}, "frozen", False),
        "harmoclip-gd": ({"gc", "lrc", "gr", "gd"}, "frozen", False),  # the paper's terms and a distillation (LwF)
    }
    for name, (trained, teacher, text_grad) in expected.items():
        config = HarmoCLIPConfig.from_recipe(name)
        assert config.recipe_name == name and config.recipe_overrides == {}
        assert terms(config) == trained, name
        assert config.region_text_grad is text_grad, name
        if teacher is not None:
            assert config.gr_teacher == teacher, name
    assert HarmoCLIPConfig.from_recipe("harmoclip").lexeme_mode == "token"  # LRC's phrases are lexemes


def test_the_defaults_are_the_harmoclip_recipe() -> None:
    defaults, recipe = HarmoCLIPConfig(), HarmoCLIPConfig.from_recipe("harmoclip")
    assert defaults.recipe_settings == recipe.recipe_settings and defaults.recipe_name == "harmoclip"
    assert (defaults.loss_lrc_weight, defaults.region_text_grad) == (0.5, False)
    train = TrainConfig()
    assert train.recipe == "harmoclip" and train.recipe_overrides == {}
    assert {name: getattr(train, name) for name in RECIPE_FIELDS} == defaults.recipe_settings


@pytest.mark.parametrize("path", ["configs/vitb16_finetune.yaml", "configs/vitl14_336_finetune.yaml"])
def test_the_vit_configs_are_the_harmoclip_recipe(path: str) -> None:
    config = load_config(ROOT / path)
    assert config.recipe == "harmoclip" and config.recipe_overrides == {}
    assert terms(config) == {"gc", "lrc", "gr"}


def test_the_main_jobs_config_keeps_its_own_choice() -> None:
    config = load_config(ROOT / "configs" / "synthetic_tiny.yaml")
    assert config.recipe is None and config.recipe_overrides == {}
    assert terms(config) == {"gc", "lrc", "rla"} and config.region_text_grad is True


def test_explicit_fields_override_the_recipe(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("recipe: clipself\nloss_gc_weight: 0.5\n")
    config = load_config(path)
    assert (config.loss_gc_weight, config.loss_gr_weight, config.loss_lrc_weight) == (0.5, 1.0, 0.0)
    assert config.recipe_overrides == {"loss_gc_weight": 0.5}
    # The command line's recipe is over the file's fields, its own fields over its recipe.
    parser = build_argument_parser("train")
    args = parser.parse_args(["--config", str(path), "--recipe", "fineclip", "--loss_rla_weight", "0.25"])
    config = config_from_args(args)
    assert config.recipe == "fineclip" and config.gr_teacher == "self_with_grad"
    assert (config.loss_gc_weight, config.loss_rla_weight) == (1.0, 0.25)
    # A model config: the same rule.
    model_config = HarmoCLIPConfig.from_recipe("gc-gr", loss_lrc_weight=0.25, projection_dim=32)
    assert model_config.recipe_overrides == {"loss_lrc_weight": 0.25} and model_config.projection_dim == 32


def test_an_unknown_recipe_is_one_line_listing_the_names(tmp_path: Path, capsys) -> None:
    from training.train import main

    with pytest.raises(ValueError, match=f"^{re.escape(UNKNOWN)}$"):
        HarmoCLIPConfig.from_recipe("clipp")
    path = tmp_path / "run.yaml"
    path.write_text("recipe: clipp\n")
    with pytest.raises(ValueError, match=f"^{re.escape(UNKNOWN)}$"):
        load_config(path)
    with pytest.raises(ValueError, match="^config `recipe` must be one of"):
        TrainConfig(recipe="clipp")
    with pytest.raises(ValueError, match="^HarmoCLIPConfig: `recipe_name` must be one of"):
        HarmoCLIPConfig(recipe_name="clipp")
    assert main(["--recipe", "clipp", "--output_dir", str(tmp_path / "out"), "--report_to", "none"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: {UNKNOWN}"
    assert not (tmp_path / "out").exists()


def test_the_converter_takes_a_recipe() -> None:
    args = convert_parser().parse_args(
        ["--source", "hf", "--checkpoint", "c", "--output", "o", "--recipe", "clipself", "--loss-gc-weight", "0.5"]
    )
    settings = harmoclip_settings_from_args(args)
    assert settings["recipe_name"] == "clipself" and settings["loss_gc_weight"] == 0.5
    assert settings["loss_gr_weight"] == 1.0 and settings["loss_lrc_weight"] == 0.0
    args = convert_parser().parse_args(["--source", "hf", "--checkpoint", "c", "--output", "o", "--recipe", "x"])
    with pytest.raises(ValueError, match="^`recipe` must be one of"):
        harmoclip_settings_from_args(args)


def test_the_saved_config_and_the_card_record_the_recipe(tmp_path: Path) -> None:
    model = tiny_harmoclip_model(recipe_name="fineclip", **{**RECIPES["fineclip"], "loss_rla_weight": 0.5})
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["recipe_name"] == "fineclip"
    assert all(name in saved for name in RECIPES["fineclip"])
    card = render_model_card(HarmoCLIPConfig.from_pretrained(tmp_path), CardInfo(repo_id="org/m"), None)
    line = next(line for line in card.splitlines() if line.startswith("| Named recipe"))
    assert "`fineclip`" in line
    fields = next(line for line in card.splitlines() if line.startswith("| Fields the recipe set"))
    assert "`gr_teacher` 'self_with_grad'" in fields and "`loss_rla_weight` 1.0" in fields
    given = next(line for line in card.splitlines() if line.startswith("| Fields given over the recipe"))
    assert given == "| Fields given over the recipe | `loss_rla_weight` 0.5 |"
    assert "| `harmoclip` | GC + LRC 0.5 + GR" in card  # the table of recipes


def test_the_harmony_benchmark_takes_recipes_as_rows(tmp_path: Path) -> None:
    from experiments.harmony.command_line import build_parser, settings_from_args
    from experiments.harmony.runs import finetune_config

    args = build_parser().parse_args(["--quick", "--recipe", "clipself", "--recipe", "fineclip"])
    settings = settings_from_args(args)
    rows = {row.key: row for row in settings.finetune_configurations()}
    assert {"recipe-clipself", "recipe-fineclip"} <= set(rows)
    config = finetune_config(settings, tmp_path, rows["recipe-clipself"], None, tmp_path / "run", 0)
    assert config.recipe == "clipself" and terms(config) == {"gr"}
    config = finetune_config(settings, tmp_path, rows["recipe-fineclip"], None, tmp_path / "run", 0)
    assert config.gr_teacher == "self_with_grad" and config.region_text_grad is True
    from experiments.harmony.rows import parse_row

    row = parse_row("half:loss_lrc_weight=0.5,recipe=clipself")
    assert row.fields["loss_lrc_weight"] == 0.5 and row.fields["loss_gr_weight"] == 1.0 and row.losses == "LRC+GR"
    with pytest.raises(ValueError, match="^`recipe` must be one of"):
        parse_row("bad:recipe=clipp")
    with pytest.raises(Exception, match=r"--recipe: invalid choice: 'clipp' \(choose from 'clip', 'clipself'"):
        build_parser().parse_args(["--recipe", "clipp"])


def test_a_converted_model_records_the_recipe(tmp_path: Path) -> None:
    import torch

    from clip_reference import ReferenceCLIP
    from conftest import BPE_PATH
    from conversion.convert_clip import main

    torch.manual_seed(0)
    torch.save(ReferenceCLIP().eval().state_dict(), tmp_path / "model.pt")
    common = ["--source", "openai", "--checkpoint", str(tmp_path / "model.pt"), "--bpe-path", str(BPE_PATH)]
    assert main([*common, "--output", str(tmp_path / "out"), "--recipe", "clipself", "--loss-gc-weight", "0.25"]) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["recipe_name"] == "clipself"
    assert (config["loss_gc_weight"], config["loss_gr_weight"], config["loss_lrc_weight"]) == (0.25, 1.0, 0.0)
    assert main([*common, "--output", str(tmp_path / "bad"), "--recipe", "clipp"]) == 1
    assert not (tmp_path / "bad").exists()
