"""The harmony benchmark, end to end at its --quick size: every row of every seed trained from that seed's one
pre-trained model, evaluated, aggregated over seeds, reported (JSON, markdown, PNG) with a "not informative" verdict,
and reused when the command runs again; the statistics, the verdict and the seen / held-out split on hand numbers.
Which configuration wins is not tested."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from benchmarks.harmony.command_line import build_parser, main, run_harmony, settings_from_args
from benchmarks.harmony.report import markdown_table
from benchmarks.harmony.rows import (
    CONFIGURATION_KEYS,
    FINETUNE_CONFIGURATIONS,
    PRETRAINED,
    QUICK_SETTINGS,
    HarmonySettings,
    gr_enabled,
    parse_row,
)
from benchmarks.harmony.runs import finetune_config, fingerprint, group_top1, pretrain_config, synthetic_folder
from benchmarks.harmony.statistics import (
    NONINFERIORITY_MARGIN,
    aggregate_rows,
    clip_property,
    conclude,
    mean_sd,
    paired_differences,
    proportion_standard_error,
    recipe_rule,
    rule_verdict,
    same_training,
    side_by_side,
    t_interval,
    t_quantile_975,
)
from conftest import ROOT
from evaluation.evaluate import DEFAULT_TEMPLATES

FIGURES = (
    "i2t_R@1",
    "t2i_R@1",
    "mean_R@1",
    "box_top1_dense",
    "box_top1_crop",
    "box_top1_dense_seen",
    "box_top1_dense_held_out",
    "grounding_annotated",
    "grounding_proposals",
)
SEEDS = list(QUICK_SETTINGS["seeds"])


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
        name: getattr(TrainConfig, f"loss_{name}_weight") for name in ("gc", "lrc", "rla", "gr")
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
    assert saved["command"] == f"python -m benchmarks.harmony --quick --out {out}"
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
    assert "command: python -m benchmarks.harmony --quick" in (out / "harmony.log").read_text()


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
    assert rows["rla"]["loss_weights"] == {"gc": 1.0, "lrc": 0.0, "rla": 1.0, "gr": 1.0}
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
    from benchmarks.harmony.statistics import deltas_against_gc

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


def test_mean_and_sample_sd_by_hand() -> None:
    assert mean_sd([30.0, 32.0, 37.0]) == {"mean": 33.0, "sd": pytest.approx(((9 + 1 + 16) / 2) ** 0.5), "n": 3}
    assert mean_sd([12.5]) == {"mean": 12.5, "sd": 0.0, "n": 1}
    assert mean_sd([None, 4.0, 6.0]) == {"mean": 5.0, "sd": pytest.approx(2**0.5), "n": 2}
    assert mean_sd([None]) == {"mean": None, "sd": None, "n": 0}
    per_seed = [
        {
            "key": "gc",
            "label": "GC only",
            "losses": "GC",
            "loss_weights": {},
            "fields": {},
            "seed": seed,
            "figures": {"mean_R@1": value, "box_top1_dense_held_out": None if seed == 2 else 10.0 * seed},
        }
        for seed, value in ((0, 30.0), (1, 32.0), (2, 37.0))
    ]
    row = aggregate_rows(per_seed)
    assert row["seeds"] == [0, 1, 2] and row["figures"]["mean_R@1"]["mean"] == 33.0
    assert row["figures"]["mean_R@1"]["per_seed"] == [30.0, 32.0, 37.0]
    assert row["figures"]["box_top1_dense_held_out"] == {
        "mean": 5.0,
        "sd": pytest.approx(50**0.5),
        "n": 2,
        "per_seed": [0.0, 10.0, None],
    }


def _row(
    key: str,
    seeds: list[int],
    mean_r1: list[float | None],
    held_out: list[float | None],
    crop: list[float] | None = None,
    dense: list[float] | None = None,
) -> dict:
    return aggregate_rows(
        [
            {
                "key": key,
                "label": key.upper(),
                "losses": "GC",
                "loss_weights": {},
                "fields": {},
                "seed": seed,
                "figures": {
                    **dict.fromkeys(FIGURES),
                    "mean_R@1": r1,
                    "box_top1_dense_held_out": top1,
                    "box_top1_crop": None if crop is None else crop[number],
                    "box_top1_dense": None if dense is None else dense[number],
                },
            }
            for number, (seed, r1, top1) in enumerate(zip(seeds, mean_r1, held_out))
        ]
    )


def test_paired_differences_are_taken_seed_by_seed() -> None:
    gc = _row("gc", [0, 1, 2], [20.0, 30.0, 40.0], [5.0, 5.0, 5.0])
    # Means 29 against 30: the plain difference of means (sd 10 each) settles nothing, the paired one (-1 every seed)
    # is exact. Seed order differs and a seed missing from a row drops out.
    harmo = _row("harmoclip", [2, 0, 1], [39.0, 19.0, 29.0], [9.0, 9.0, 9.0])
    partial = _row("gr", [1, 3], [35.0, 50.0], [7.0, 7.0])
    differences = paired_differences([gc, harmo, partial], "mean_R@1", "gc")
    assert differences["gc"] == {"mean": 0.0, "sd": 0.0, "n": 3, "low": 0.0, "high": 0.0, "per_seed": [0.0] * 3}
    assert differences["harmoclip"] == {
        "mean": -1.0,
        "sd": 0.0,
        "n": 3,
        "low": -1.0,
        "high": -1.0,
        "per_seed": [-1.0, -1.0, -1.0],
    }
    assert differences["gr"] == {"mean": 5.0, "sd": 0.0, "n": 1, "low": None, "high": None, "per_seed": [5.0, None]}
    assert paired_differences([harmo], "mean_R@1", "gc") == {}


def test_t_interval_and_standard_error_by_hand() -> None:
    assert t_quantile_975(1) == 12.706 and t_quantile_975(4) == 2.776 and t_quantile_975(100) == 1.96
    interval = t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, n 3: half-width 4.303 / sqrt(3)
    assert interval["mean"] == 2.0 and interval["sd"] == 1.0
    assert interval["low"] == pytest.approx(2 - 4.303 / 3**0.5) and interval["high"] == pytest.approx(
        2 + 4.303 / 3**0.5
    )
    assert t_interval([4.0])["low"] is None and t_interval([None, None])["mean"] is None
    assert proportion_standard_error(50.0, 100) == pytest.approx(5.0)  # sqrt(0.25 / 100) = 5 points
    assert proportion_standard_error(10.0, 900) == pytest.approx(1.0)  # sqrt(0.09 / 900)
    assert proportion_standard_error(None, 10) is None and proportion_standard_error(50.0, 0) is None
    with pytest.raises(ValueError, match="degrees_of_freedom"):
        t_quantile_975(0)


def _pretrained(crop: list[float], dense: list[float], r1: list[float]) -> dict:
    rows = _row("pretrained", list(range(len(crop))), r1, [None] * len(crop), crop=crop, dense=dense)
    return rows


def test_property_needs_crops_well_above_dense_and_retrieval_above_chance() -> None:
    has = clip_property(_pretrained([30.0, 36.0], [20.0, 20.0], [10.0, 12.0]), chance_r1=0.5)
    assert has["crop_over_dense"] == pytest.approx(33 / 20) and has["crop_over_dense_per_seed"] == [1.5, 1.8]
    assert has["crop_met"] and has["retrieval_met"] and has["met"]
    # The benchmark as it was: dense-region Top-1 above crop-and-encode.
    lacks = clip_property(_pretrained([18.4, 15.7], [22.4, 22.2], [10.0, 12.0]), chance_r1=0.5)
    assert not lacks["crop_met"] and lacks["retrieval_met"] and not lacks["met"]
    near_chance = clip_property(_pretrained([30.0, 36.0], [20.0, 20.0], [2.0, 2.9]), chance_r1=0.5)
    assert near_chance["crop_met"] and not near_chance["retrieval_met"]  # 2.45 < 5 x 0.5


def _rows_for_rule(harmoclip_held_out: list[float]) -> list[dict]:
    return [
        _pretrained([30.0, 36.0, 33.0], [20.0, 20.0, 20.0], [10.0, 12.0, 11.0]),
        _row("gc", [0, 1, 2], [30.0, 32.0, 34.0], [10.0, 12.0, 14.0]),
        _row("gr", [0, 1, 2], [10.0, 10.0, 10.0], [20.0, 21.0, 22.0]),
        _row("gc-gr", [0, 1, 2], [30.0, 31.0, 32.0], [22.0, 23.0, 24.0]),
        _row("harmoclip", [0, 1, 2], [29.5, 31.5, 33.5], harmoclip_held_out),
    ]


def test_rule_and_verdict_on_hand_numbers() -> None:
    # Global: -0.5 every seed (within 1 point); held-out: +15, +6 [+3.5, +8.5] and +4 [+1.5, +6.5] above the three.
    rows = _rows_for_rule([25.0, 27.0, 29.0])
    conclusion = conclude(rows, chance_r1=0.5)
    rule = conclusion["rules"]["harmoclip"]
    assert rule["verdict"] == "met" and rule["met_on_means"] and conclusion["verdict"] == "met"
    assert conclusion["reasons"] == [] and conclusion["property"]["met"]
    assert rule["checks"]["global"]["mean"] == pytest.approx(-0.5) and rule["checks"]["global"]["state"] == "met"
    vs_gc_gr = rule["checks"]["region_vs_gc-gr"]
    assert vs_gc_gr["low"] == pytest.approx(4 - 4.303 / 3**0.5) and vs_gc_gr["state"] == "met"
    # GR only against the others: far below GC only's R@1, settled.
    assert conclusion["rules"]["gr"]["checks"]["global"]["state"] == "not met"
    assert "region_vs_gr" not in conclusion["rules"]["gr"]["checks"]  # not compared with itself
    # +0, +2, +1 over GC+GR: the interval straddles 0, nothing settled although the means say met.
    unsettled = conclude(_rows_for_rule([22.0, 25.0, 25.0]), chance_r1=0.5)
    assert unsettled["rules"]["harmoclip"]["met_on_means"] and unsettled["verdict"] == "not informative"
    assert "more seeds" in unsettled["reasons"][0]
    # -2 every seed against GC+GR: settled against.
    assert conclude(_rows_for_rule([20.0, 21.0, 22.0]), chance_r1=0.5)["verdict"] == "not met"
    # Without the property the verdict is not informative, whatever the rows say.
    rows[0] = _pretrained([18.4, 15.7, 15.7], [22.4, 22.2, 20.3], [10.0, 12.0, 11.0])
    lacking = conclude(rows, chance_r1=0.5)
    assert lacking["rules"]["harmoclip"]["verdict"] == "met" and lacking["verdict"] == "not informative"
    assert "lacks CLIP's property" in lacking["reasons"][0]
    # Rows that cannot be told apart, and a row missing.
    same = [rows[0], *(_row(key, [0, 1, 2], [30.0] * 3, [10.0] * 3) for key in ("gc", "gr", "gc-gr", "harmoclip"))]
    assert any("tell rows apart" in reason for reason in conclude(same, chance_r1=0.5)["reasons"])
    assert conclude(rows[:2], chance_r1=0.5)["verdict"] is None
    assert rule_verdict({"mean_R@1": {}}, {}, "harmoclip") is None


def test_defaults_trained_as_a_reference_row_are_not_asked_to_beat_it() -> None:
    # Defaults that are GC+GR: the same fingerprints, the same figures. Against GC+GR itself the difference is 0, so
    # the rule leaves that reference out (a row cannot beat itself) and compares with GC only and GR only.
    rows = _rows_for_rule([22.0, 23.0, 24.0])
    gc_gr, harmoclip = rows[3], rows[4]
    harmoclip["figures"]["mean_R@1"] = gc_gr["figures"]["mean_R@1"]
    for mine, theirs in zip(harmoclip["per_seed"], gc_gr["per_seed"]):
        mine["fingerprint"] = theirs["fingerprint"] = f"f{theirs['seed']}"
        mine["figures"] = theirs["figures"]
    harmoclip["figures"] = gc_gr["figures"]
    assert same_training(rows, "harmoclip") == ["gc-gr"] and same_training(rows, "gc") == []
    rule = conclude(rows, chance_r1=0.5)["rules"]["harmoclip"]
    assert set(rule["checks"]) == {"global", "region_vs_gc", "region_vs_gr"} and rule["met_on_means"]
    # Another fingerprint on one seed: another training, compared as before (and not above GC+GR: +0).
    harmoclip["per_seed"][0] = {**harmoclip["per_seed"][0], "fingerprint": "other"}
    rule = conclude(rows, chance_r1=0.5)["rules"]["harmoclip"]
    assert "region_vs_gc-gr" in rule["checks"] and not rule["met_on_means"]


def test_report_puts_the_verdict_and_the_property_first() -> None:
    from benchmarks.harmony.report import build_report

    rows = _rows_for_rule([22.0, 25.0, 25.0])
    records = {row["key"]: row["per_seed"] for row in rows}
    for per_seed in records.values():
        for record in per_seed:
            record["figures"]["num_boxes_held_out"] = 100
    settings = {
        "seeds": [0, 1, 2],
        "synthetic_num_val": 10,
        "synthetic_held_out": 2,
        "pretrain_recipe": "configs/toy_clip_pretrain.yaml",
        "finetune_steps": 3,
        "finetune_batch_size": 2,
        "finetune_learning_rate": 1e-4,
    }
    chance = {"num_boxes": 30, "num_classes": 4, "num_held_out_boxes": 100, "R@1": 0.5, "box_top1": 25.0}
    extra = {
        "environment": {
            "device": "cpu",
            "torch_threads": 1,
            "load_average_at_start": [0.0],
            "load_average_at_end": [0],
        },
        "wall_seconds": 60.0,
        "rows_reused": 0,
        "rows_run": 15,
        "command": "python -m benchmarks.harmony",
    }
    pretrain = {"max_steps": 5, "losses": "GC", "object_views": 0.5, "eval_templates": ["{}", "a {}"]}
    report = build_report(records, settings, chance, pretrain, extra)
    table = markdown_table(report)
    first, *_ = table.splitlines()
    assert first.startswith("Goal (") and "**not informative**" in first
    assert table.index("Pre-trained toy CLIP") < table.index("| configuration | losses |")
    assert "1.65 times" in table and "more seeds" in table
    assert "Box Top-1 asks for each class with the prompt(s) '{}', 'a {}'." in table
    assert "| HARMOCLIP | -0.5 [-0.5, -0.5] | - | +12.0 [" in table  # global, seen (no figure), held-out vs GC
    # Held-out sample standard error: sqrt(p (1 - p) / 100) at p = 0.22, 0.25, 0.25.
    expected = sum(100 * (p * (1 - p) / 100) ** 0.5 for p in (0.22, 0.25, 0.25)) / 3
    assert report["held_out_standard_error"]["harmoclip"]["mean"] == pytest.approx(expected)
    assert f"harmoclip {expected:.1f} (seeds' sd" in table


def test_seen_and_held_out_top1_weigh_classes_by_their_boxes() -> None:
    # Three classes: 4 boxes at 50 %, 1 box at 100 %, 5 boxes at 20 %; the last two held out.
    per_class, counts, held = [50.0, 100.0, 20.0], [4, 1, 5], [False, True, True]
    assert group_top1(per_class, counts, held) == pytest.approx((1 * 100 + 5 * 20) / 6)  # 2 of 6 boxes right
    assert group_top1(per_class, counts, [not h for h in held]) == pytest.approx(50.0)
    assert group_top1([None, 100.0], [0, 2], [True, False]) is None  # a group without boxes


def test_extra_rows_are_parsed_with_the_fields_types() -> None:
    row = parse_row("t100:region_logit_scale_init_value=4.6,loss_rla_weight=1,gr_teacher=self")
    assert row.key == "t100" and row.fields == {
        "region_logit_scale_init_value": 4.6,
        "loss_rla_weight": 1.0,
        "gr_teacher": "self",
    }
    assert row.losses == "GC+LRC+RLA+GR" and row.loss_weights["rla"] == 1.0
    for bad, match in (
        ("gc:loss_lrc_weight=1", "new name"),
        ("x:seed=3", "field other than"),
        ("x", "at least one"),
        ("x:loss_rla_weight", "field=value"),
        ("x:no_such_field=1", "unknown option"),
        ("x:eval_templates={}", "field other than"),  # the benchmark's, the same for every row
    ):
        with pytest.raises(ValueError, match=match):
            parse_row(bad)


def test_a_settings_file_that_is_not_yaml_or_names_unknown_settings_is_refused_in_one_line(tmp_path: Path) -> None:
    from benchmarks.harmony.command_line import build_parser, settings_from_args

    bad, unknown = tmp_path / "bad.yaml", tmp_path / "unknown.yaml"
    bad.write_text("seeds: [0, 1\n")
    unknown.write_text("seeds: [0]\nsteps: 3\n")
    with pytest.raises(ValueError, match=f"^config file {bad} is not valid YAML: [^\n]*$"):
        settings_from_args(build_parser().parse_args(["--config", str(bad)]))
    with pytest.raises(ValueError, match=rf"^config file {unknown}: unknown setting\(s\) \['steps'\]; known: \["):
        settings_from_args(build_parser().parse_args(["--config", str(unknown)]))
