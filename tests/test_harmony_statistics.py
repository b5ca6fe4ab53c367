"""The harmony benchmark on hand numbers: its statistics (means, paired differences, t intervals), the property, the
rule and the verdict, the report's order, the seen / held-out weighting and the settings files (the runs themselves:
test_harmony.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.harmony.command_line import build_parser, settings_from_args
from experiments.harmony.report import markdown_table
from experiments.harmony.rows import (
    parse_row,
)
from experiments.harmony.runs import group_top1
from experiments.harmony.statistics import (
    aggregate_rows,
    clip_property,
    conclude,
    mean_sd,
    paired_differences,
    proportion_standard_error,
    rule_verdict,
    same_training,
    t_interval,
    t_quantile_975,
)
from harmony_cases import FIGURES


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
    from experiments.harmony.report import build_report

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
        "command": "python -m experiments.harmony",
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

    bad, unknown = tmp_path / "bad.yaml", tmp_path / "unknown.yaml"
    bad.write_text("seeds: [0, 1\n")
    unknown.write_text("seeds: [0]\nsteps: 3\n")
    with pytest.raises(ValueError, match=f"^config file {bad} is not valid YAML: [^\n]*$"):
        settings_from_args(build_parser().parse_args(["--config", str(bad)]))
    with pytest.raises(ValueError, match=rf"^config file {unknown}: unknown setting\(s\) \['steps'\]; known: \["):
        settings_from_args(build_parser().parse_args(["--config", str(unknown)]))


def test_area_under_roc_by_hand() -> None:
    from experiments.harmony.statistics import area_under_roc

    assert area_under_roc([0.9, 0.8], [0.1]) == 1.0
    assert area_under_roc([0.1], [0.9, 0.8]) == 0.0
    # 3 positives x 2 negatives: (0.5 > 0.4, 0.5 > 0.2, 0.3 < 0.4, 0.3 > 0.2, 0.4 = 0.4 half, 0.4 > 0.2) = 4.5 of 6
    assert area_under_roc([0.5, 0.3, 0.4], [0.4, 0.2]) == pytest.approx(4.5 / 6)
    assert area_under_roc([], [0.1]) is None and area_under_roc([0.1], []) is None


def test_wise_alpha_is_chosen_by_the_rule_written_before_the_runs() -> None:
    from experiments.harmony.runs import choose_wise_alpha

    def dev(r1: float, grounding: float, region: float) -> dict:
        return {"mean_R@1": r1, "grounding_annotated_held_out": grounding, "box_top1_dense_held_out": region}

    gc = dev(30.0, 40.0, 10.0)
    by_alpha = {
        0.25: dev(30.5, 41.0, 10.0),
        0.5: dev(29.2, 45.0, 12.0),
        0.75: dev(28.9, 60.0, 20.0),
        1.0: dev(27.0, 70.0, 25.0),
    }
    assert choose_wise_alpha(by_alpha, gc) == 0.5  # 0.75 and 1.0 lose more than 1 point of dev R@1
    assert choose_wise_alpha({**by_alpha, 0.5: dev(29.2, 41.0, 10.0)}, gc) == 0.25  # a tie goes to the smaller alpha
    everything_loses = {a: dev(20.0 + a, 50.0, 10.0) for a in (0.25, 0.5)}
    assert choose_wise_alpha(everything_loses, gc) == 0.5  # none within the margin: the best dev R@1


def _candidate_rows(retrieval: dict[str, list[float]], grounding: dict[str, list[float]]) -> list[dict]:
    rows = []
    for key in retrieval:
        per_seed = [
            {"key": key, "label": key, "losses": "GC", "loss_weights": {}, "fields": {}, "seed": seed,
             "figures": {"mean_R@1": r1, "box_top1_dense_held_out": 10.0 + seed, "grounding_annotated_held_out": g}}
            for seed, (r1, g) in enumerate(zip(retrieval[key], grounding[key]))
        ]  # fmt: skip
        rows.append(aggregate_rows(per_seed))
    return rows


def test_the_harmony_rule_and_its_decision_over_both_worlds() -> None:
    from experiments.harmony.statistics import decide_harmony, deltas_against_gc, harmony_rule

    retrieval = {
        "gc": [30.0, 32.0, 31.0],
        "harmoclip": [28.0, 29.5, 28.5],  # settled below GC by about 2.3: not non-inferior
        "head-only": [30.1, 32.0, 30.9],  # Δ about 0: non-inferior
        "lexeme-head": [30.0, 32.1, 31.0],
    }
    grounding = {
        "gc": [40.0, 41.0, 39.0],
        "harmoclip": [50.0, 52.0, 49.0],
        "head-only": [45.0, 46.0, 44.5],  # above GC, settled
        "lexeme-head": [40.5, 40.0, 39.5],  # not settled above GC
    }
    rows = _candidate_rows(retrieval, grounding)
    rule = harmony_rule(rows, deltas_against_gc(rows))
    assert set(rule["candidates"]) == {"harmoclip", "head-only", "lexeme-head"}
    assert rule["candidates"]["harmoclip"]["non_inferior"] == "not met"
    assert rule["candidates"]["head-only"]["qualifies"] is True
    assert rule["candidates"]["lexeme-head"]["grounding_above"] == "unresolved"
    expected_score = sum(g - c for g, c in zip(grounding["head-only"], grounding["gc"])) / 3  # regions: Δ 0
    assert rule["candidates"]["head-only"]["score"] == pytest.approx(expected_score)
    # Over both worlds: it must qualify in each; the larger sum of scores wins among qualifiers.
    other = harmony_rule(rows, deltas_against_gc(rows))
    decision = decide_harmony({"basic": rule, "rich": other})
    assert decision["qualifiers"] == ["head-only"] and decision["winner"] == "head-only"
    assert decision["scores"]["head-only"] == pytest.approx(2 * expected_score)
    failing = {
        **other,
        "candidates": {**other["candidates"], "head-only": {**other["candidates"]["head-only"], "qualifies": False}},
    }
    none = decide_harmony({"basic": rule, "rich": failing})
    assert none["winner"] is None and "no candidate qualifies in every world" in none["reason"]


def test_the_decision_command_reads_both_worlds(tmp_path: Path, capsys) -> None:
    from experiments.harmony.decide import main
    from experiments.harmony.statistics import deltas_against_gc, harmony_rule

    rows = _candidate_rows(
        {"gc": [30.0, 32.0, 31.0], "head-only": [30.1, 32.0, 30.9]},
        {"gc": [40.0, 41.0, 39.0], "head-only": [45.0, 46.0, 44.5]},
    )
    for world in ("basic", "rich"):
        report = {
            "settings": {"synthetic_vocabulary": world},
            "rows": [{"key": row["key"], "label": row["label"]} for row in rows],
            "conclusion": {"harmony_rule": harmony_rule(rows, deltas_against_gc(rows))},
        }
        (tmp_path / f"{world}.json").write_text(json.dumps(report))
    assert main([str(tmp_path / "basic.json"), str(tmp_path / "rich.json"), "--out", str(tmp_path / "d.md")]) == 0
    text = (tmp_path / "d.md").read_text()
    assert "| head-only | yes | yes |" in text and "Winner: **head-only**" in text
    assert json.loads((tmp_path / "d.json").read_text())["winner"] == "head-only"
    capsys.readouterr()
    assert main([str(tmp_path / "basic.json"), str(tmp_path / "basic.json")]) == 1
    assert "two reports of the 'basic' world" in capsys.readouterr().err


def test_loss_names_read_runs_made_before_gd() -> None:
    from experiments.harmony.rows import loss_names

    before_gd = {"loss_gc_weight": 1.0, "loss_lrc_weight": 0.5, "loss_rla_weight": 0.0, "loss_gr_weight": 1.0}
    assert loss_names({**before_gd, "gr_teacher": "frozen"}) == "GC+LRC+GR"
    assert loss_names({**before_gd, "gr_teacher": "frozen", "loss_gd_weight": 1.0}) == "GC+LRC+GR+GD"
