"""The harmony benchmark, end to end at its --quick size: every row of every seed trained from that seed's one
pre-trained model, evaluated, aggregated over seeds, reported (JSON, markdown, PNG), and reused when the command runs
again; the aggregation and the seen / held-out split on hand numbers. Which configuration wins is not tested."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from benchmarks.harmony import (
    CONFIGURATION_KEYS,
    FINETUNE_CONFIGURATIONS,
    PRETRAINED,
    QUICK_SETTINGS,
    HarmonySettings,
    _train_config,
    aggregate_rows,
    fingerprint,
    goal_verdict,
    group_top1,
    main,
    markdown_table,
    mean_sd,
    paired_differences,
    parse_row,
    run_harmony,
)

FIGURES = (
    "i2t_R@1",
    "t2i_R@1",
    "mean_R@1",
    "box_top1_dense",
    "box_top1_crop",
    "box_top1_dense_seen",
    "box_top1_dense_held_out",
)
SEEDS = list(QUICK_SETTINGS["seeds"])


def weights(row: dict) -> dict[str, torch.Tensor]:
    return load_file(str(Path(row["model"]) / "model.safetensors"))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("harmony")
    return out, run_harmony(["--quick", "--out", str(out)])


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
    with Image.open(out / "harmony.png") as image:
        assert image.format == "PNG" and image.width > 300 and image.height > 300
    assert "command: python -m benchmarks.harmony --quick" in (out / "harmony.log").read_text()


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
            "same:loss_gc_weight=1,loss_lrc_weight=1,loss_rla_weight=0,loss_gr_weight=1,region_logit_scale_init=none",
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
            "twin:"
            + "loss_gc_weight=1,loss_lrc_weight=1,loss_rla_weight=0,loss_gr_weight=1,region_logit_scale_init=none",
        ]
    )
    twin = {row["key"]: row for row in later["rows"]}["twin"]
    assert twin["label"].startswith("twin (") and twin["per_seed"][0]["reused"]
    assert twin["per_seed"][0]["folder"] == rows["gc-lrc-gr"]["folder"] and not list((out / "runs").glob("twin-*"))


def test_fingerprint_follows_settings_not_places(tmp_path: Path) -> None:
    settings = HarmonySettings(**QUICK_SETTINGS)
    gc = FINETUNE_CONFIGURATIONS[0]
    here = _train_config(settings, tmp_path / "a", gc, "finetune", tmp_path / "a" / "model", tmp_path / "a" / "run", 0)
    there = _train_config(settings, tmp_path / "b", gc, "finetune", tmp_path / "b" / "model", tmp_path / "b" / "run", 0)
    assert fingerprint(here, "p") == fingerprint(there, "p")
    assert fingerprint(here, "p") != fingerprint(here, "other pre-trained model")
    longer = _train_config(dataclasses.replace(settings, finetune_steps=3), tmp_path, gc, "finetune", None, tmp_path, 0)
    assert fingerprint(longer, "p") != fingerprint(here, "p")
    assert fingerprint(_train_config(settings, tmp_path, gc, "finetune", None, tmp_path, 1), "p") != fingerprint(
        here, "p"
    )
    assert fingerprint(
        _train_config(settings, tmp_path, FINETUNE_CONFIGURATIONS[1], "finetune", None, tmp_path, 0), "p"
    ) != fingerprint(here, "p")
    # An option added later leaves runs made before it reusable at the value that trains as they did, not otherwise.
    assert fingerprint(dataclasses.replace(here, region_text_grad=True), "p") == fingerprint(here, "p")
    assert fingerprint(dataclasses.replace(here, region_text_grad=False), "p") != fingerprint(here, "p")


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
    assert main(["--finetune-steps", "many"]) == 2
    assert capsys.readouterr().err == "error: argument --finetune-steps/--finetune_steps: invalid int value: 'many'\n"
    assert not (tmp_path / "out").exists()


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


def _row(key: str, seeds: list[int], mean_r1: list[float | None], held_out: list[float]) -> dict:
    return aggregate_rows(
        [
            {
                "key": key,
                "label": key.upper(),
                "losses": "GC",
                "loss_weights": {},
                "fields": {},
                "seed": seed,
                "figures": {**dict.fromkeys(FIGURES), "mean_R@1": r1, "box_top1_dense_held_out": top1},
            }
            for seed, r1, top1 in zip(seeds, mean_r1, held_out)
        ]
    )


def test_paired_differences_are_taken_seed_by_seed() -> None:
    gc = _row("gc", [0, 1, 2], [20.0, 30.0, 40.0], [5.0, 5.0, 5.0])
    # Means 29 against 30: the plain difference of means (sd 10 each) settles nothing, the paired one (-1 every seed)
    # is exact. Seed order differs and a seed missing from a row drops out.
    harmo = _row("harmoclip", [2, 0, 1], [39.0, 19.0, 29.0], [9.0, 9.0, 9.0])
    partial = _row("gr", [1, 3], [35.0, 50.0], [7.0, 7.0])
    differences = paired_differences([gc, harmo, partial], "mean_R@1", "gc")
    assert differences["gc"] == {"mean": 0.0, "sd": 0.0, "n": 3, "per_seed": [0.0, 0.0, 0.0]}
    assert differences["harmoclip"] == {"mean": -1.0, "sd": 0.0, "n": 3, "per_seed": [-1.0, -1.0, -1.0]}
    assert differences["gr"] == {"mean": 5.0, "sd": 0.0, "n": 1, "per_seed": [5.0, None]}
    assert paired_differences([harmo], "mean_R@1", "gc") == {}


def test_goal_verdict_on_hand_numbers() -> None:
    gc = _row("gc", [0, 1], [30.0, 32.0], [4.0, 6.0])  # mean R@1 31
    gr = _row("gr", [0, 1], [10.0, 12.0], [20.0, 22.0])  # held-out 21
    gc_gr = _row("gc-gr", [0, 1], [30.0, 30.0], [24.0, 26.0])  # held-out 25: the best region-only row
    exactly = _row("harmoclip", [0, 1], [29.5, 30.5], [25.0, 25.0])  # -1.0 and +0.0: both met, at the edges
    verdict = goal_verdict([gc, gr, gc_gr, exactly])
    assert verdict == {
        "global_gap": -1.0,
        "global_met": True,
        "region_reference": "gc-gr",
        "region_gap": 0.0,
        "region_met": True,
        "met": True,
    }
    short = _row("harmoclip", [0, 1], [29.0, 30.8], [30.0, 30.0])  # -1.1: the global side fails
    verdict = goal_verdict([gc, gr, gc_gr, short])
    assert verdict["global_met"] is False and verdict["region_met"] is True and verdict["met"] is False
    assert goal_verdict([gc, gr]) is None  # no HarmoCLIP row
    report = {
        "settings": {
            "seeds": [0, 1],
            "synthetic_num_val": 10,
            "synthetic_held_out": 2,
            "pretrain_steps": 5,
            "finetune_steps": 3,
            "finetune_batch_size": 2,
            "finetune_learning_rate": 1e-4,
        },
        "rows": [gc, gr, gc_gr, short],
        "paired_mean_R@1_vs_gc": paired_differences([gc, gr, gc_gr, short], "mean_R@1", "gc"),
        "goal": verdict,
        "chance": {"num_boxes": 30, "num_classes": 4, "num_held_out_boxes": 10, "R@1": 10.0, "box_top1": 25.0},
        "environment": {
            "device": "cpu",
            "torch_threads": 1,
            "load_average_at_start": [0.0],
            "load_average_at_end": [0],
        },
        "wall_seconds": 60.0,
        "rows_reused": 0,
        "rows_run": 8,
        "command": "python -m benchmarks.harmony",
    }
    table = markdown_table(report)
    assert "| HARMOCLIP | GC |" in table and "| -1.1 ± 0.1 |" in table.split("| HARMOCLIP | GC |")[1].splitlines()[0]
    assert "**not met**" in table and "Mean R@1 -1.1 against GC only (not met)" in table


def test_seen_and_held_out_top1_weigh_classes_by_their_boxes() -> None:
    # Three classes: 4 boxes at 50 %, 1 box at 100 %, 5 boxes at 20 %; the last two held out.
    per_class, counts, held = [50.0, 100.0, 20.0], [4, 1, 5], [False, True, True]
    assert group_top1(per_class, counts, held) == pytest.approx((1 * 100 + 5 * 20) / 6)  # 2 of 6 boxes right
    assert group_top1(per_class, counts, [not h for h in held]) == pytest.approx(50.0)
    assert group_top1([None, 100.0], [0, 2], [True, False]) is None  # a group without boxes


def test_extra_rows_are_parsed_with_the_fields_types() -> None:
    row = parse_row("t100:region_logit_scale_init=4.6,loss_rla_weight=1,gr_teacher=self")
    assert row.key == "t100" and row.fields == {
        "region_logit_scale_init": 4.6,
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
    ):
        with pytest.raises(ValueError, match=match):
            parse_row(bad)
