"""Report and plot of the harmony benchmark: harmony.md (the verdict and the pre-trained model's property first, then
the table, the paired differences against GC only with their intervals, the evaluation sample's standard error and
the rule for each row), harmony.json and harmony.png."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from plumbing.atomic_files import write_text_atomic

from .rows import PRETRAINED, REGION_REFERENCES
from .statistics import (
    CROP_OVER_DENSE,
    DELTA_FIGURES,
    GLOBAL_TOLERANCE,
    RETRIEVAL_OVER_CHANCE,
    aggregate_rows,
    conclude,
    deltas_against_gc,
    held_out_standard_errors,
)

RESULTS_NAME = "harmony"
TABLE_COLUMNS = (
    ("I2T R@1", "i2t_R@1"),
    ("T2I R@1", "t2i_R@1"),
    ("mean R@1 (global)", "mean_R@1"),
    ("box Top-1 dense, seen", "box_top1_dense_seen"),
    ("box Top-1 dense, held-out (region)", "box_top1_dense_held_out"),
    ("box Top-1 dense, all", "box_top1_dense"),
    ("box Top-1 crop, all", "box_top1_crop"),
    ("grounding, seen", "grounding_annotated_seen"),
    ("grounding, held-out", "grounding_annotated_held_out"),
    ("grounding at IoU 0.5, own proposals", "grounding_proposals"),
    ("absent phrase below present median", "absent_below_median"),
    ("absent-phrase AUROC", "absent_auroc"),
    ("training s", "train_seconds"),
)
DELTA_LABELS = {
    "mean_R@1": "Δ mean R@1 (global)",
    "box_top1_dense_seen": "Δ region Top-1, seen",
    "box_top1_dense_held_out": "Δ region Top-1, held-out",
    "grounding_annotated_seen": "Δ grounding, seen",
    "grounding_annotated_held_out": "Δ grounding, held-out",
    "absent_auroc": "Δ absent-phrase AUROC",
}
SIDE_LABELS = {
    "mean_R@1": "retrieval (mean R@1)",
    "box_top1_dense_held_out": "held-out regions (box Top-1)",
    "grounding_annotated_held_out": "held-out grounding",
}
_MISSING = {"mean": None, "sd": None, "n": 0}


def _format(figure: dict[str, Any], signed: bool = False) -> str:
    if figure["mean"] is None:
        return "-"
    mean = f"{figure['mean']:+.1f}" if signed else f"{figure['mean']:.1f}"
    return f"{mean} ± {figure['sd']:.1f}" if figure["n"] > 1 else mean


def _interval(difference: dict[str, Any] | None) -> str:
    if difference is None or difference["mean"] is None:
        return "-"
    if difference.get("low") is None:
        return f"{difference['mean']:+.1f}"
    return f"{difference['mean']:+.1f} [{difference['low']:+.1f}, {difference['high']:+.1f}]"


def property_lines(conclusion: dict[str, Any]) -> list[str]:
    """The pre-trained model's property, measured (printed before any ablation)."""
    prop = conclusion["property"]
    ratio = "-" if prop["crop_over_dense"] is None else f"{prop['crop_over_dense']:.2f}"
    per_seed = ", ".join("-" if value is None else f"{value:.2f}" for value in prop["crop_over_dense_per_seed"])
    return [
        f"Pre-trained toy CLIP (the starting model of every row): crop-and-encode box Top-1 {prop['crop_top1']:.1f}, "
        f"dense-region {prop['dense_top1']:.1f}: {ratio} times (per seed: {per_seed}; needed: {CROP_OVER_DENSE:g}, "
        f"{'met' if prop['crop_met'] else 'NOT met'}). Mean retrieval R@1 {prop['mean_R@1']:.1f} against chance "
        f"{prop['chance_R@1']:.1f} (needed: {RETRIEVAL_OVER_CHANCE:g} times chance, "
        f"{'met' if prop['retrieval_met'] else 'NOT met'}).",
        "",
    ]


def verdict_lines(conclusion: dict[str, Any], rows: Sequence[dict[str, Any]]) -> list[str]:
    """The verdict on the goal row, with the reasons it is not informative where it is not."""
    if conclusion["verdict"] is None:
        return ["Goal: not evaluated (the TrainConfig defaults' row or a reference row was not run).", ""]
    labels = {row["key"]: row["label"] for row in rows}
    lines = [
        f"Goal ({labels[conclusion['goal_row']]}: mean R@1 within {GLOBAL_TOLERANCE:g} point of GC only's, and a "
        f"higher held-out region Top-1 than each of {', '.join(labels.get(k, k) for k in REGION_REFERENCES)}, "
        f"settled by 95 % t intervals of the paired differences): **{conclusion['verdict']}**."
    ]
    lines += [f"- not informative: {reason}." for reason in conclusion["reasons"]]
    return lines + [""]


def delta_table(report: dict[str, Any]) -> list[str]:
    """Each row's paired difference against GC only, mean [95 % t interval], global and region."""
    deltas = report["deltas_vs_gc"]
    if not deltas[DELTA_FIGURES[0]]:
        return []
    lines = [
        "| configuration | " + " | ".join(DELTA_LABELS[f] for f in DELTA_FIGURES) + " | rule | rule on means |",
        "|---|" + "---|" * (len(DELTA_FIGURES) + 2),
    ]
    rules = report["conclusion"]["rules"]
    for row in report["rows"]:
        if row["key"] == PRETRAINED.key:
            continue
        rule = rules.get(row["key"])
        cells = [row["label"], *(_interval(deltas[f].get(row["key"])) for f in DELTA_FIGURES)]
        cells += ["-", "-"] if rule is None else [rule["verdict"], "met" if rule["met_on_means"] else "not met"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [
        "",
        "Paired by seed: each row's figure minus GC only's on the same seed (same data, same pre-trained model), "
        "mean [95 % t interval over seeds]. Grounding: accuracy of each caption phrase's choice among its image's "
        "annotated boxes (the phrase as its lexeme). The rule: global Δ within "
        f"{GLOBAL_TOLERANCE:g} point and held-out region Top-1 above each of "
        f"{', '.join(REGION_REFERENCES)} (other than the row itself and a row trained the same way); 'rule' settles each comparison by its interval "
        "(met, not met, or not informative where an interval straddles its bound), 'rule on means' uses the means "
        "alone.",
        "",
    ]


def recipe_rule_lines(report: dict[str, Any]) -> list[str]:
    """The recipe rule's candidates (rows with LRC), their retrieval non-inferiority and scores, and its choice."""
    rule = report["conclusion"].get("recipe_rule")
    if not rule or not rule["candidates"]:
        return []
    labels = {row["key"]: row["label"] for row in report["rows"]}

    def value(number: float | None) -> str:
        return "-" if number is None else f"{number:+.1f}"

    lines = [
        f"**Recipe rule** (chooses the `harmoclip` recipe's free choices): among the rows with LRC, those whose "
        f"retrieval is non-inferior to GC only (the 95 % t interval of Δ mean R@1 above -{rule['margin']:g} point), "
        "the best on held-out regions plus held-out grounding (sum of the two mean Δ against GC only).",
        "",
        "| configuration | Δ mean R@1 [95 % t] | non-inferior | Δ held-out regions | Δ held-out grounding | sum |",
        "|---|---|---|---|---|---|",
    ]
    for key, candidate in rule["candidates"].items():
        lines.append(
            f"| {labels.get(key, key)} | {_interval(candidate['retrieval'])} | {candidate['non_inferior']} | "
            f"{value(candidate['held_out_region'])} | {value(candidate['held_out_grounding'])} | "
            f"{value(candidate['score'])} |"
        )
    chosen = labels.get(rule["chosen"], rule["chosen"]) if rule["chosen"] else "none"
    return lines + ["", f"Chosen: **{chosen}** ({rule['reason']}).", ""]


def harmony_rule_lines(report: dict[str, Any]) -> list[str]:
    """The harmony rule's candidates in this world: retrieval non-inferiority, held-out grounding above GC only, the
    score, and whether each qualifies here (the winner over both worlds: `decide_harmony`)."""
    rule = report["conclusion"].get("harmony_rule")
    if not rule or not rule["candidates"]:
        return []
    labels = {row["key"]: row["label"] for row in report["rows"]}

    def value(number: float | None) -> str:
        return "-" if number is None else f"{number:+.1f}"

    lines = [
        f"**Harmony rule** (docs/harmony_candidates.md, written before the runs): a candidate qualifies in this world "
        f"when its Δ mean R@1 against GC only has its 95 % t interval above -{rule['margin']:g} point and its Δ "
        "held-out grounding has its interval above 0; its score is the sum of the mean Δ held-out grounding and held-out "
        "regions. The winner must qualify in both worlds.",
        "",
        "| candidate | Δ mean R@1 [95 % t] | non-inferior | Δ held-out grounding [95 % t] | above GC | Δ held-out regions "
        "| score | qualifies here |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, candidate in rule["candidates"].items():
        lines.append(
            f"| {labels.get(key, key)} | {_interval(candidate['retrieval'])} | {candidate['non_inferior']} | "
            f"{_interval(candidate['grounding'])} | {candidate['grounding_above']} | "
            f"{value(candidate['held_out_region'])} | {value(candidate['score'])} | "
            f"{'yes' if candidate['qualifies'] else 'no'} |"
        )
    return lines + [""]


def side_by_side_lines(report: dict[str, Any]) -> list[str]:
    """`harmoclip` minus `gc-gr` and minus `fineclip` on the three axes, each settled for it, against it or not."""
    comparison = report["conclusion"].get("side_by_side") or {}
    if not comparison:
        return []
    lines = [
        "**`harmoclip` side by side** (paired Δ, harmoclip minus the other, mean [95 % t]; state):",
        "",
        "| against | " + " | ".join(SIDE_LABELS.values()) + " |",
        "|---|" + "---|" * len(SIDE_LABELS),
    ]
    for other, figures in comparison.items():
        cells = [
            f"{_interval(figures[figure])} {figures[figure]['state']}" if figure in figures else "-"
            for figure in SIDE_LABELS
        ]
        lines.append(f"| `{other}` | " + " | ".join(cells) + " |")
    return lines + [""]


def standard_error_lines(report: dict[str, Any]) -> list[str]:
    """The evaluation sample's standard error of held-out region Top-1 beside the seeds' sd."""
    errors = report["held_out_standard_error"]
    if not errors or all(e["mean"] is None for e in errors.values()):
        return []
    cells = ", ".join(
        f"{key} {e['mean']:.1f} (seeds' sd {e['seed_sd']:.1f})" for key, e in errors.items() if e["mean"] is not None
    )
    return [
        f"Held-out evaluation sample: about {report['chance']['num_held_out_boxes']} boxes per seed; its own standard "
        f"error of held-out region Top-1, sqrt(p(1-p)/n), mean over seeds: {cells}.",
        "",
    ]


def pretrain_prompts(pretrain: dict[str, Any]) -> str:
    """The box-classification prompts as written in the report: each one quoted, or the size of the ensemble."""
    templates = pretrain.get("eval_templates") or []
    if not templates:
        return "of the evaluation's default"
    if len(templates) > 3:
        return f"of an ensemble of {len(templates)} ({templates[0]!r}, ...)"
    return ", ".join(repr(template) for template in templates)


def grounding_chance(rows: Sequence[dict[str, Any]]) -> str:
    """ ", grounding among the annotated boxes C" (mean over seeds of 1 / candidates per phrase), or "" without it."""
    figure = rows[0]["figures"].get("grounding_chance") if rows else None
    return "" if not figure or figure["mean"] is None else f", grounding among the annotated boxes {figure['mean']:.1f}"


def markdown_table(report: dict[str, Any]) -> str:
    """The verdict, the property, the table of every row (mean ± sd over seeds), the differences against GC only,
    chance levels, the protocol and the command."""
    settings = report["settings"]
    conclusion = report["conclusion"]
    lines = [*verdict_lines(conclusion, report["rows"]), *property_lines(conclusion)]
    lines += [
        "| configuration | losses | " + " | ".join(name for name, _ in TABLE_COLUMNS) + " |",
        "|---|---|" + "---|" * len(TABLE_COLUMNS),
    ]
    for row in report["rows"]:
        cells = [row["label"], row["losses"]] + [_format(row["figures"].get(key, _MISSING)) for _, key in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    chance, environment = report["chance"], report["environment"]
    seeds = settings["seeds"]
    pretrain = report.get("pretrain", {})
    lines += [
        "",
        f"Mean ± sample standard deviation over {len(seeds)} seed(s) ({', '.join(map(str, seeds))}: data, initialisation "
        f"and sampling). Held-out split per seed: {settings['synthetic_num_val']} images with unique captions "
        f"(about {chance['num_boxes']} boxes, {chance['num_classes']} classes; {settings['synthetic_held_out']} colour-shape "
        f"combinations never in a training image or caption, about {chance['num_held_out_boxes']} of the boxes). "
        f"Chance: R@1 {chance['R@1']:.1f}, box Top-1 {chance['box_top1']:.1f}{grounding_chance(report['rows'])}. "
        "Figures in percent. "
        f"Every fine-tuned row starts from the same pre-trained toy CLIP of its seed ({settings['pretrain_recipe']}: "
        f"{pretrain.get('max_steps', '?')} steps of {pretrain.get('losses', '?')} from scratch, object views "
        f"{pretrain.get('object_views', '?')}) with the same budget: {settings['finetune_steps']} steps of batch "
        f"{settings['finetune_batch_size']} at learning rate {settings['finetune_learning_rate']:g}. "
        f"Box Top-1 asks for each class with the prompt(s) {pretrain_prompts(pretrain)}.",
        "",
        *delta_table(report),
        *recipe_rule_lines(report),
        *harmony_rule_lines(report),
        *side_by_side_lines(report),
        *standard_error_lines(report),
        f"Wall-clock time of this run: {report['wall_seconds'] / 60:.1f} min ({report['rows_reused']} of "
        f"{report['rows_run']} seed-row(s) reused) on {environment['device']} with {environment['torch_threads']} threads; "
        f"1-minute load average {environment['load_average_at_start'][0]:.1f} at the start, "
        f"{environment['load_average_at_end'][0]:.1f} at the end.",
        "",
        "Command:",
        "",
        "```",
        report["command"],
        "```",
        "",
    ]
    return "\n".join(lines)


LEGEND_LABEL_LIMIT = 48  # longer labels (ablation rows list their fields) are shown by key: the table has the fields


def plot_harmony(rows: Sequence[dict[str, Any]], path: Path, chance: dict[str, float] | None = None) -> Path:
    """Global accuracy (mean retrieval R@1) against region accuracy on held-out combinations (box Top-1, dense; all
    boxes when nothing was held out), one labelled point per row with ± sd error bars over seeds; the pre-trained
    reference is a star. Written as PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8.5, 5.5), dpi=110)
    markers = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
    region_key = (
        "box_top1_dense_held_out"
        if all(row["figures"]["box_top1_dense_held_out"]["mean"] is not None for row in rows)
        else "box_top1_dense"
    )
    for index, row in enumerate(rows):
        x, y = row["figures"][region_key], row["figures"]["mean_R@1"]
        reference = row["key"] == PRETRAINED.key
        axis.errorbar(
            [x["mean"]],
            [y["mean"]],
            xerr=[x["sd"]],
            yerr=[y["sd"]],
            fmt="*" if reference else markers[index % len(markers)],
            markersize=14 if reference else 8,
            color="black" if reference else f"C{index}",
            ecolor="grey",
            elinewidth=1,
            capsize=3,
            zorder=3,
            label=row["label"] if len(row["label"]) <= LEGEND_LABEL_LIMIT else f"{row['key']} ({row['losses']})",
            alpha=0.85,
        )
        # Alternate above / below: neighbouring rows often land close together.
        axis.annotate(
            "pre-trained" if reference else row["key"],
            (x["mean"], y["mean"]),
            textcoords="offset points",
            xytext=(7, 5 if index % 2 == 0 else -12),
            fontsize=8,
        )
    if chance:
        axis.axhline(chance["R@1"], color="grey", linestyle=":", linewidth=1, label="chance")
        axis.axvline(chance["box_top1"], color="grey", linestyle=":", linewidth=1)
    axis.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7)
    axis.set_xlabel(
        "region: box Top-1, dense features, "
        + ("held-out combinations (%)" if region_key.endswith("held_out") else "all boxes (%)")
    )
    axis.set_ylabel("global: mean retrieval R@1, I2T and T2I (%)")
    axis.set_title("Harmony benchmark (synthetic shapes, held-out split; mean ± sd over seeds)")
    axis.grid(alpha=0.3)
    axis.margins(0.15)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary, bbox_inches="tight")  # the legend sits outside the axes
    plt.close(figure)
    os.replace(temporary, path)
    return path


def write_outputs(report: dict[str, Any], out: Path) -> None:
    """harmony.json, harmony.md and harmony.png in `out`."""
    write_text_atomic(out / f"{RESULTS_NAME}.json", json.dumps(report, indent=2) + "\n")
    write_text_atomic(out / f"{RESULTS_NAME}.md", markdown_table(report))
    plot_harmony(report["rows"], out / f"{RESULTS_NAME}.png", report["chance"])


def build_report(
    records: dict[str, list[dict[str, Any]]],
    settings: dict[str, Any],
    chance: dict[str, Any],
    pretrain: dict[str, Any],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The report from {row key: per-seed records}: rows (mean ± sd), paired differences against GC only, the
    evaluation sample's standard error, the property and the verdict (`conclude`), plus `extra` (command, timing)."""
    rows = [aggregate_rows(per_seed) for per_seed in records.values()]
    return {
        "benchmark": "harmony",
        "settings": settings,
        "pretrain": pretrain,
        "rows": rows,
        "deltas_vs_gc": deltas_against_gc(rows),
        "held_out_standard_error": {row["key"]: held_out_standard_errors(row) for row in rows},
        "conclusion": conclude(rows, chance["R@1"]),
        "chance": chance,
        **extra,
    }
