"""The harmony benchmark, end to end at its --quick size: every row of every seed trained from that seed's one
pre-trained model, evaluated, aggregated over seeds, reported (JSON, markdown, PNG) with a "not informative" verdict,
and reused when the command runs again (the statistics, the verdict and the seen / held-out split on hand numbers:
test_harmony_statistics.py). Which configuration wins is not tested."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from conftest import ROOT
from evaluation.evaluate import DEFAULT_TEMPLATES
from experiments.harmony.command_line import build_parser, main, run_harmony, settings_from_args
from experiments.harmony.report import markdown_table
from experiments.harmony.rows import (
    CONFIGURATION_KEYS,
    FINETUNE_CONFIGURATIONS,
    PRETRAINED,
    QUICK_SETTINGS,
    HarmonySettings,
    gr_enabled,
    parse_row,
)
from experiments.harmony.runs import finetune_config, fingerprint, pretrain_config, synthetic_folder
from experiments.harmony.statistics import (
    NONINFERIORITY_MARGIN,
    aggregate_rows,
    recipe_rule,
    side_by_side,
)
from harmony_cases import FIGURES, SEEDS


def weights(row: dict) -> dict[str, torch.Tensor]:
    return load_file(str(Path(row["model"]) / "model.safetensors"))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("harmony")
    return out, run_harmony(["--quick", "--out", str(out)])


@pytest.mark.slow
def test_every_row_is_trained_from_its_seeds_pretrained_model(first_run) -> None:
    out, report = first_run
    rows = {row["key"]: row for row in report["rows"]}
    assert list(rows) == [PRETRAINED.key, *CONFIGURATION_KEYS]
    assert sorted(path.name.split("-")[0] for path in (out / "runs").iterdir()).count("pretrained") == len(SEEDS)
    for position, seed in enumerate(SEEDS):
        pretrained = rows[PRETRAINED.key]["per_seed"][position]
        assert pretrained["seed"] == seed and pretrained["train_config"]["seed"] == seed
        assert pretrained["init_from"] is None and pretrained["train_config"]["loss_lrc_weight"] == 0
        assert f"seed{seed}" in pretrained["train_config"]["synthetic_dir"]
        for configuration in FINETUNE_CONFIGURATIONS:
            row = rows[configuration.key]["per_seed"][position]
            assert row["seed"] == seed and row["init_from"] == pretrained["model"], configuration.key
            assert row["loss_weights"] == configuration.loss_weights
            assert row["train_config"]["max_steps"] == QUICK_SETTINGS["finetune_steps"]
            assert row["train_config"]["synthetic_dir"] == pretrained["train_config"]["synthetic_dir"]
    # Seeds give other data and other models.
    first, second = (record["model"] for record in rows[PRETRAINED.key]["per_seed"])
    assert first != second
    # The default configuration is TrainConfig's: its weights are the defaults'.
    from training.config import TrainConfig

    assert rows["harmoclip"]["loss_weights"] == {
        name: getattr(TrainConfig, f"loss_{name}_weight") for name in ("gc", "lrc", "rla", "gr", "gd")
    }
    # GR alone trains the vision tower only: the text tower is the pre-trained one, bit for bit, and vision moved.
    start, tuned = weights(rows[PRETRAINED.key]["per_seed"][0]), weights(rows["gr"]["per_seed"][0])
    text = [name for name in start if name.startswith("text_model.")]
    vision = [name for name in start if name.startswith("vision_model.encoder.")]
    assert text and vision
    assert all(torch.equal(start[name], tuned[name]) for name in text)
    assert any(not torch.equal(start[name], tuned[name]) for name in vision)


@pytest.mark.slow
def test_outputs_hold_every_row_and_figures_in_range(first_run) -> None:
    out, report = first_run
    saved = json.loads((out / "harmony.json").read_text())
    assert saved["command"] == f"python -m experiments.harmony --quick --out {out}"
    assert (
        saved["settings"]["finetune_steps"] == QUICK_SETTINGS["finetune_steps"] and saved["settings"]["seeds"] == SEEDS
    )
    assert [row["key"] for row in saved["rows"]] == [PRETRAINED.key, *CONFIGURATION_KEYS]
    for row in saved["rows"]:
        assert row["seeds"] == SEEDS
        for name in FIGURES:
            per_seed = [record["figures"][name] for record in row["per_seed"]]
            assert row["figures"][name]["per_seed"] == per_seed
            assert all(0.0 <= value <= 100.0 for value in per_seed), (row["key"], name)
            assert row["figures"][name]["mean"] == pytest.approx(sum(per_seed) / len(per_seed))
        for record in row["per_seed"]:
            assert (Path(record["folder"]) / "eval.json").is_file() and (Path(record["folder"]) / "row.json").is_file()
            assert not (Path(record["folder"]) / "checkpoints").exists()
    assert 0 < saved["chance"]["R@1"] <= 100 and 0 < saved["chance"]["box_top1"] <= 100
    assert saved["environment"]["torch_threads"] >= 1 and len(saved["environment"]["load_average_at_end"]) == 3
    table = (out / "harmony.md").read_text()
    for row in saved["rows"]:
        i2t = row["figures"]["i2t_R@1"]
        assert f"| {row['label']} | {row['losses']} | {i2t['mean']:.1f} ± {i2t['sd']:.1f} |" in table
    assert saved["command"] in table
    prompts = yaml.safe_load((ROOT / "configs" / "toy_clip_pretrain.yaml").read_text())["eval_templates"]
    assert saved["pretrain"]["eval_templates"] == prompts
    assert f"with the prompt(s) {', '.join(repr(p) for p in prompts)}." in table
    evaluated = json.loads((Path(saved["rows"][1]["per_seed"][0]["folder"]) / "eval.json").read_text())
    assert evaluated["tasks"]["boxcls"]["settings"]["templates"] == prompts
    # A smoke run settles nothing, and says so at the top rather than "met".
    assert table.splitlines()[0].startswith("Goal (") and "**not informative**" in table.splitlines()[0]
    assert saved["conclusion"]["verdict"] == "not informative" and saved["conclusion"]["reasons"]
    assert table.index("Pre-trained toy CLIP") < table.index("| configuration | losses |")
    with Image.open(out / "harmony.png") as image:
        assert image.format == "PNG" and image.width > 300 and image.height > 300
    assert "command: python -m experiments.harmony --quick" in (out / "harmony.log").read_text()


@pytest.mark.slow
def test_rerun_reuses_finished_rows_and_retrains_only_what_changed(first_run) -> None:
    out, report = first_run

    def stamps(rows):
        return {
            (row["key"], record["seed"]): (Path(record["model"]) / "model.safetensors").stat().st_mtime_ns
            for row in rows
            for record in row["per_seed"]
        }

    before = stamps(report["rows"])
    again = run_harmony(["--quick", "--out", str(out)])
    assert all(record["reused"] for row in again["rows"] for record in row["per_seed"])
    assert [row["figures"] for row in again["rows"]] == [row["figures"] for row in report["rows"]]
    assert stamps(again["rows"]) == before

    changed = run_harmony(
        ["--quick", "--out", str(out), "--finetune-steps", "1", "--configurations", "gc", "--seeds", str(SEEDS[0])]
    )
    pretrained, tuned = (row["per_seed"][0] for row in changed["rows"])
    assert pretrained["reused"] and pretrained["model"] == report["rows"][0]["per_seed"][0]["model"]
    assert not tuned["reused"] and tuned["train_config"]["max_steps"] == 1 and tuned["init_from"] == pretrained["model"]
    old = report["rows"][1]["per_seed"][0]["folder"]
    assert tuned["folder"] != old and Path(old).is_dir()

    # An extra row (an ablation) is one more row from the same pre-trained model; a row equal to another is shared.
    extra = run_harmony(
        [
            "--quick",
            "--out",
            str(out),
            "--configurations",
            "gc-lrc-gr",
            "--seeds",
            str(SEEDS[0]),
            "--row",
            "rla:loss_gc_weight=1,loss_lrc_weight=0,loss_rla_weight=1,loss_gr_weight=1",
            "--row",
            "same:loss_gc_weight=1,loss_lrc_weight=1,loss_rla_weight=0,loss_gr_weight=1",
        ]
    )
    rows = {row["key"]: row["per_seed"][0] for row in extra["rows"]}
    assert rows["gc-lrc-gr"]["reused"] and rows["rla"]["init_from"] == pretrained["model"] and not rows["rla"]["reused"]
    assert rows["rla"]["loss_weights"] == {"gc": 1.0, "lrc": 0.0, "rla": 1.0, "gr": 1.0, "gd": 0.0}
    assert rows["same"]["same_as"] == "gc-lrc-gr" and rows["same"]["figures"] == rows["gc-lrc-gr"]["figures"]
    # ... and in a later run, a row whose training finished under another row's name reuses that run.
    later = run_harmony(
        [
            "--quick",
            "--out",
            str(out),
            "--configurations",
            "gc",
            "--seeds",
            str(SEEDS[0]),
            "--row",
            "twin:" + "loss_gc_weight=1,loss_lrc_weight=1,loss_rla_weight=0,loss_gr_weight=1",
        ]
    )
    twin = {row["key"]: row for row in later["rows"]}["twin"]
    assert twin["label"].startswith("twin (") and twin["per_seed"][0]["reused"]
    assert twin["per_seed"][0]["folder"] == rows["gc-lrc-gr"]["folder"] and not list((out / "runs").glob("twin-*"))


@pytest.mark.slow
def test_grounding_is_the_third_axis(first_run) -> None:
    """Every row is asked phrase grounding on its seed's held-out split (every phrase of val.jsonl once); the report
    has its columns, its paired Δ, the recipe rule and harmoclip side by side with gc-gr and fineclip."""
    out, report = first_run
    rows = {row["key"]: row for row in report["rows"]}
    for position, seed in enumerate(SEEDS):
        data = synthetic_folder(HarmonySettings(**QUICK_SETTINGS), out, seed) / "val.jsonl"
        phrases = sum(len(json.loads(line)["regions"]) for line in data.read_text().splitlines())
        for row in rows.values():
            figures = row["per_seed"][position]["figures"]
            assert figures["num_phrases"] == phrases, row["key"]
            assert figures["num_phrases_seen"] + (figures["num_phrases_held_out"] or 0) == phrases
    assert set(report["deltas_vs_gc"]["grounding_annotated_seen"]) == set(rows)
    table = markdown_table(report)  # the first run's (harmony.md is rewritten by later runs of the module)
    assert "| grounding, seen | grounding, held-out |" in table and "Δ grounding, held-out" in table
    chance = rows[PRETRAINED.key]["figures"]["grounding_chance"]["mean"]
    assert 0 < chance < 100 and f", grounding among the annotated boxes {chance:.1f}." in table
    rule = report["conclusion"]["recipe_rule"]
    with_lrc = {key for key, row in rows.items() if row["loss_weights"]["lrc"] > 0}
    assert set(rule["candidates"]) == with_lrc and "harmoclip" in with_lrc and "gc-gr" not in with_lrc
    assert "**Recipe rule**" in table and f"above -{NONINFERIORITY_MARGIN:g} point" in table
    assert set(report["conclusion"]["side_by_side"]) == {"gc-gr", "fineclip"}
    assert "**`harmoclip` side by side**" in table

    # A finished row made before grounding was measured gets its figures added on reuse, without retraining.
    record = rows["gc"]["per_seed"][0]
    path = Path(record["folder"]) / "row.json"
    saved = json.loads(path.read_text())
    stripped = {k: v for k, v in saved["figures"].items() if not k.startswith(("grounding", "num_phrases"))}
    path.write_text(json.dumps({**saved, "figures": stripped}))
    again = run_harmony(["--quick", "--out", str(out), "--configurations", "gc", "--seeds", str(SEEDS[0])])
    regained = {row["key"]: row for row in again["rows"]}["gc"]["per_seed"][0]
    assert regained["reused"] and regained["figures"] == record["figures"]
    assert json.loads(path.read_text())["figures"] == record["figures"]


def _axes_row(key: str, lrc: float, r1: list[float], region: list[float], grounding: list[float]) -> dict:
    return aggregate_rows(
        [
            {
                "key": key,
                "label": key,
                "losses": "-",
                "loss_weights": {"gc": 1.0, "lrc": lrc, "rla": 0.0, "gr": 1.0},
                "fields": {},
                "seed": seed,
                "figures": {
                    "mean_R@1": r1[seed],
                    "box_top1_dense_held_out": region[seed],
                    "grounding_annotated_held_out": grounding[seed],
                },
            }
            for seed in range(3)
        ]
    )


def test_the_recipe_rule_on_hand_numbers() -> None:
    """Among rows with LRC: non-inferior retrieval (95 % interval of Δ R@1 above -1), then the largest held-out region
    plus grounding Δ."""
    gc = _axes_row("gc", 0.0, [20, 30, 40], [10, 10, 10], [20, 20, 20])
    rows = [
        gc,
        _axes_row("a", 1.0, [19.5, 29.5, 39.5], [12, 12, 12], [23, 23, 23]),  # Δ R@1 -0.5 exactly: met; 2 + 3
        _axes_row("b", 0.5, [19.8, 29.8, 39.8], [14, 14, 14], [24, 24, 24]),  # met; 4 + 4: the best eligible
        _axes_row("c", 1.0, [17, 27, 37], [30, 30, 30], [30, 30, 30]),  # Δ -3: not met, however good
        _axes_row("d", 1.0, [20, 27, 41], [30, 30, 30], [30, 30, 30]),  # Δ 0, -3, +1: interval straddles -1
        _axes_row("e", 0.0, [20, 30, 40], [40, 40, 40], [40, 40, 40]),  # no LRC: not a candidate
    ]
    from experiments.harmony.statistics import deltas_against_gc

    rule = recipe_rule(rows, deltas_against_gc(rows))
    assert set(rule["candidates"]) == {"a", "b", "c", "d"}
    states = {key: candidate["non_inferior"] for key, candidate in rule["candidates"].items()}
    assert states == {"a": "met", "b": "met", "c": "not met", "d": "unresolved"}
    assert rule["candidates"]["a"]["score"] == pytest.approx(5.0) and rule["candidates"]["b"]["score"] == pytest.approx(
        8.0
    )
    assert rule["chosen"] == "b"
    assert recipe_rule(rows[:1] + rows[3:4], deltas_against_gc(rows[:1] + rows[3:4]))["chosen"] is None


def test_harmoclip_side_by_side_on_hand_numbers() -> None:
    rows = [
        _axes_row("gc-gr", 0.0, [20, 30, 40], [10, 11, 12], [20, 20, 20]),
        _axes_row("fineclip", 0.0, [21, 31, 41], [13, 14, 15], [20, 20, 20]),
        _axes_row("harmoclip", 0.5, [19, 29, 39], [12, 14, 16], [21, 19, 20]),
    ]
    comparison = side_by_side(rows)
    assert {figure: c["state"] for figure, c in comparison["gc-gr"].items()} == {
        "mean_R@1": "against",  # -1 on every seed
        "box_top1_dense_held_out": "settled for",  # +2, +3, +4
        "grounding_annotated_held_out": "unsettled",  # +1, -1, 0
    }
    assert comparison["fineclip"]["mean_R@1"]["mean"] == pytest.approx(-2.0)
    assert side_by_side(rows[:2]) == {}


@pytest.mark.slow
def test_pretrain_only_measures_the_property_of_the_cached_models(first_run, capsys) -> None:
    out, report = first_run
    only = run_harmony(["--quick", "--out", str(out), "--pretrain-only"])
    assert [row["key"] for row in only["rows"]] == [PRETRAINED.key]
    assert all(record["reused"] for record in only["rows"][0]["per_seed"])  # trained once, by the first run
    assert only["conclusion"]["verdict"] is None
    prop = only["conclusion"]["property"]
    crop, dense = (report["rows"][0]["figures"][name]["mean"] for name in ("box_top1_crop", "box_top1_dense"))
    assert prop["crop_top1"] == crop and prop["dense_top1"] == dense
    assert capsys.readouterr().out.startswith("Pre-trained toy CLIP (the starting model of every row)")


def test_fingerprint_follows_settings_not_places(tmp_path: Path) -> None:
    settings = HarmonySettings(**QUICK_SETTINGS)
    gc = FINETUNE_CONFIGURATIONS[0]
    here = finetune_config(settings, tmp_path / "a", gc, tmp_path / "a" / "model", tmp_path / "a" / "run", 0)
    there = finetune_config(settings, tmp_path / "b", gc, tmp_path / "b" / "model", tmp_path / "b" / "run", 0)
    assert fingerprint(here, "p") == fingerprint(there, "p")
    assert fingerprint(here, "p") != fingerprint(here, "other pre-trained model")
    longer = finetune_config(dataclasses.replace(settings, finetune_steps=3), tmp_path, gc, None, tmp_path, 0)
    assert fingerprint(longer, "p") != fingerprint(here, "p")
    assert fingerprint(finetune_config(settings, tmp_path, gc, None, tmp_path, 1), "p") != fingerprint(here, "p")
    assert fingerprint(
        finetune_config(settings, tmp_path, FINETUNE_CONFIGURATIONS[1], None, tmp_path, 0), "p"
    ) != fingerprint(here, "p")
    # An option added later leaves runs made before it reusable at the value that trains as they did, not otherwise.
    assert fingerprint(dataclasses.replace(here, region_text_grad=True), "p") == fingerprint(here, "p")
    assert fingerprint(dataclasses.replace(here, region_text_grad=False), "p") != fingerprint(here, "p")
    # The defaults' row is the `harmoclip` recipe's training, the same as the GC+LRC 0.5+GR row without text
    # gradients: one fingerprint, trained once.
    by_key = {configuration.key: configuration for configuration in FINETUNE_CONFIGURATIONS}
    rows_of = {
        key: finetune_config(settings, tmp_path, by_key[key], None, tmp_path, 0)
        for key in ("gc-gr", "harmoclip", "gc-lrc-half-gr-notext")
    }
    assert by_key["harmoclip"].values()["region_text_grad"] is False
    assert by_key["harmoclip"].losses == "GC+LRC+GR"  # the shipped recipe
    assert fingerprint(rows_of["harmoclip"], "p") == fingerprint(rows_of["gc-lrc-half-gr-notext"], "p")
    assert fingerprint(rows_of["harmoclip"], "p") != fingerprint(rows_of["gc-gr"], "p")
    # Without a phrase term the region terms' text gradients do not exist: a row's flag then takes the base value.
    gc_gr_notext = dataclasses.replace(by_key["gc-gr"], fields={**by_key["gc-gr"].fields, "region_text_grad": False})
    assert fingerprint(finetune_config(settings, tmp_path, gc_gr_notext, None, tmp_path, 0), "p") == fingerprint(
        rows_of["gc-gr"], "p"
    )
    gc_rla = finetune_config(settings, tmp_path, by_key["gc-rla"], None, tmp_path, 0)
    assert gc_rla.region_text_grad is False  # with a phrase term the flag is the row's
    assert fingerprint(dataclasses.replace(here, object_views=0.0), "p") == fingerprint(here, "p")
    # Pre-training follows the recipe file, with the benchmark's data and model and the pretrain_* options given.
    recipe = yaml.safe_load((ROOT / "configs" / "toy_clip_pretrain.yaml").read_text())
    pretrain = pretrain_config(HarmonySettings(), tmp_path, tmp_path / "run", 0)
    assert pretrain.max_steps == recipe["max_steps"] and pretrain.object_views == recipe["object_views"]
    assert pretrain.synthetic_num_val == HarmonySettings.synthetic_num_val and pretrain.init_from is None
    other = tmp_path / "recipe.yaml"
    other.write_text(yaml.safe_dump({**recipe, "object_views": 0.25}))
    changed = pretrain_config(HarmonySettings(pretrain_recipe=str(other)), tmp_path, tmp_path / "run", 0)
    assert changed.object_views == 0.25 and fingerprint(changed) != fingerprint(pretrain)
    shorter = pretrain_config(HarmonySettings(pretrain_steps=7), tmp_path, tmp_path / "run", 0)
    assert shorter.max_steps == 7 and shorter.checkpoint_every == 3
    # Every row is evaluated with the recipe's prompts (the toy CLIP's caption language), which the fingerprint holds.
    assert recipe["eval_templates"] and pretrain.eval_templates == tuple(recipe["eval_templates"])
    assert finetune_config(HarmonySettings(), tmp_path, gc, None, tmp_path, 0).eval_templates == pretrain.eval_templates
    other.write_text(yaml.safe_dump({**recipe, "eval_templates": ["a {}"]}))
    asked = HarmonySettings(pretrain_recipe=str(other))
    row = finetune_config(asked, tmp_path, gc, None, tmp_path, 0)
    assert row.eval_templates == ("a {}",) and pretrain_config(asked, tmp_path, tmp_path / "run", 0).eval_templates == (
        "a {}",
    )
    default_row = finetune_config(HarmonySettings(), tmp_path, gc, None, tmp_path, 0)
    assert fingerprint(row, "p") != fingerprint(default_row, "p")
    # The richer vocabulary is another world: its own data folder, passed to every run of it; the basic one keeps its
    # folder names and fingerprints.
    rich = HarmonySettings(synthetic_vocabulary="rich")
    assert synthetic_folder(rich, tmp_path, 3).name == "synthetic-2000-300-64px-min2-heldout4-rich-seed3"
    assert synthetic_folder(HarmonySettings(), tmp_path, 3).name == "synthetic-2000-300-64px-min2-heldout4-seed3"
    rich_row = finetune_config(rich, tmp_path, gc, None, tmp_path, 0)
    assert (
        rich_row.synthetic_vocabulary == "rich"
        and pretrain_config(rich, tmp_path, tmp_path, 0).synthetic_vocabulary == "rich"
    )
    assert fingerprint(rich_row, "p") != fingerprint(default_row, "p")
    assert fingerprint(dataclasses.replace(default_row, synthetic_vocabulary="basic"), "p") == fingerprint(
        default_row, "p"
    )
    with pytest.raises(ValueError, match="`synthetic_vocabulary` must be one of \\('basic', 'rich'\\), got 'huge'"):
        HarmonySettings(synthetic_vocabulary="huge")
    # Without prompts in the recipe the default ensemble is asked, and fingerprinted as it was before the option.
    assert fingerprint(dataclasses.replace(default_row, eval_templates=()), "p") == fingerprint(
        dataclasses.replace(default_row, eval_templates=tuple(DEFAULT_TEMPLATES)), "p"
    )


def test_gr_rule_is_one_place() -> None:
    by_key = {configuration.key: configuration for configuration in FINETUNE_CONFIGURATIONS}
    assert gr_enabled(by_key["gr"].values()) and not gr_enabled(by_key["gc-lrc"].values())
    assert not gr_enabled({**by_key["gr"].values(), "gr_teacher": "none"})
    assert by_key["gc-rla-gr"].losses == "GC+RLA+GR" and by_key["gc-rla"].losses == "GC+RLA"
    assert parse_row("off:gr_teacher=none").losses == "GC+LRC"  # a weight without a teacher trains no GR


def test_bad_settings_are_named(tmp_path: Path, capsys) -> None:
    with pytest.raises(ValueError, match="configurations"):
        HarmonySettings(configurations=("gc", "lrc-only"))
    with pytest.raises(ValueError, match="seeds"):
        HarmonySettings(seeds=(1, 1))
    with pytest.raises(ValueError, match="rows"):
        HarmonySettings(rows=("a:loss_lrc_weight=1", "a:loss_gr_weight=0"))
    with pytest.raises(ValueError, match="finetune_batch_size"):
        HarmonySettings(synthetic_num_train=8, finetune_batch_size=16, pretrain_batch_size=8)
    config = tmp_path / "settings.yaml"
    config.write_text("finetune_steps: 5\nlearning_rate: 0.1\n")
    assert main(["--config", str(config), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "learning_rate" in err and len(err.strip().splitlines()) == 1
    config.write_text("finetune_steps: many\n")
    assert main(["--config", str(config), "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == f"error: config file {config}: `finetune_steps`: expected int, got 'many'\n"
    assert main(["--finetune-steps", "many"]) == 1
    assert capsys.readouterr().err == "error: option `--finetune_steps`: expected int, got 'many'\n"
    assert main(["--configurations", "lrc-only"]) == 2
    assert "invalid choice: 'lrc-only'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_options_are_read_as_their_types(tmp_path: Path) -> None:
    def parse(*argv: str) -> HarmonySettings:
        return settings_from_args(build_parser().parse_args(list(argv)))

    # `type=bool` read any non-empty string, "false" included, as True.
    assert parse("--cache-teacher", "false").cache_teacher is False
    assert parse("--cache_teacher", "true").cache_teacher is True
    assert HarmonySettings().cache_teacher is True and parse().cache_teacher is True
    settings = parse("--seeds", "3", "4", "--finetune-learning-rate", "1e-5", "--pretrain-steps", "none")
    assert settings.seeds == (3, 4) and settings.finetune_learning_rate == 1e-5 and settings.pretrain_steps is None
    assert parse("--quick", "--pretrain-steps", "3").pretrain_steps == 3 and parse("--quick").finetune_steps == 2
    config = tmp_path / "settings.yaml"
    config.write_text("cache_teacher: false\nseeds: [5, 6]\nfinetune_steps: 9\n")
    from_file = parse("--config", str(config), "--finetune-steps", "8")
    assert from_file.cache_teacher is False and from_file.seeds == (5, 6) and from_file.finetune_steps == 8


def test_an_appended_absent_phrase_leaves_the_present_phrases_alone(tiny_tokenizer, tmp_path) -> None:
    """The fourth axis appends the absent phrase to the caption: CLIP's text tower is causal, so the present phrases'
    lexemes are those of the caption alone, and its figures are the same on a second run (the same absent phrases)."""
    from conftest import tiny_harmoclip_model, tiny_processor
    from experiments.harmony.runs import absent_phrase_figures
    from modeling_harmoclip.pipeline_harmoclip import embed_phrases
    from training.data.synthetic import SyntheticSettings, generate_synthetic_dataset

    model, processor = tiny_harmoclip_model(seed=6), tiny_processor(tiny_tokenizer, region_mode=True)
    caption = "a small red circle and a big blue square"
    spans = [(2, 18), (25, 40)]
    longer = caption + " and a small green star"
    before = embed_phrases(model, processor, caption, spans)
    after = embed_phrases(model, processor, longer, [*spans, (len(longer) - 16, len(longer))])
    torch.testing.assert_close(after[:2], before, atol=1e-6, rtol=0)
    data = generate_synthetic_dataset(
        tmp_path / "data", SyntheticSettings(num_train=0, num_val=6, min_shapes=2, image_size=32, held_out=2)
    )
    first, second = (absent_phrase_figures(model, processor, data) for _ in range(2))
    assert first == second and first["num_absent"] == 6
    assert 0.0 <= first["absent_auroc"] <= 100.0 and 0.0 <= first["absent_below_median"] <= 100.0
