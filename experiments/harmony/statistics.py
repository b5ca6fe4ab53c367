"""Statistics of the harmony benchmark, pure functions of the per-seed figures: means, paired differences with
t intervals, the evaluation sample's standard error, the pre-trained model's property, and the verdict.

Every figure is in percent. A row is {"key", "seeds", "figures": {name: {"mean", "sd", "n", "per_seed"}}, ...}.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Any

from .rows import GC_ONLY, GOAL_ROW, HARMONY_CANDIDATES, PRETRAINED, REGION_REFERENCES

# Two-sided 95 % quantiles of Student's t (0.975), by degrees of freedom; beyond the table, the normal's.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131)
NORMAL_975 = 1.960
CROP_OVER_DENSE = 1.5  # CLIP's property: crop-and-encode Top-1 at least this multiple of dense-region Top-1
RETRIEVAL_OVER_CHANCE = 5.0  # "well above chance": mean R@1 at least this multiple of chance
GLOBAL_TOLERANCE = 1.0  # points of mean R@1 a default may lose against GC-only fine-tuning
GLOBAL_FIGURE, REGION_FIGURE = "mean_R@1", "box_top1_dense_held_out"
GROUNDING_FIGURE = "grounding_annotated_held_out"  # phrase grounding among the annotated boxes, held-out phrases
DELTA_FIGURES = (
    "mean_R@1",
    "box_top1_dense_seen",
    "box_top1_dense_held_out",
    "grounding_annotated_seen",
    "grounding_annotated_held_out",
    "absent_auroc",
)
# The recipe rule (`recipe_rule`): a configuration with LRC is non-inferior to GC only in retrieval when the 95 % t
# interval of its paired Δ mean R@1 lies above -NONINFERIORITY_MARGIN points.
NONINFERIORITY_MARGIN = 1.0
# The recipes set side by side with `harmoclip` on the three axes (`side_by_side`).
SIDE_BY_SIDE = ("harmoclip", ("gc-gr", "fineclip"))
SIDE_BY_SIDE_FIGURES = ("mean_R@1", "box_top1_dense_held_out", "grounding_annotated_held_out")


def t_quantile_975(degrees_of_freedom: int) -> float:
    """The 0.975 quantile of Student's t with `degrees_of_freedom` >= 1 (table above; 1.96 past 15)."""
    if degrees_of_freedom < 1:
        raise ValueError(f"`degrees_of_freedom` must be >= 1, got {degrees_of_freedom!r}")
    return T_975[degrees_of_freedom - 1] if degrees_of_freedom <= len(T_975) else NORMAL_975


def mean_sd(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (n - 1; 0 for one value) of the values that are not None."""
    present = [float(value) for value in values if value is not None]
    if not present:
        return {"mean": None, "sd": None, "n": 0}
    mean = sum(present) / len(present)
    sd = math.sqrt(sum((value - mean) ** 2 for value in present) / (len(present) - 1)) if len(present) > 1 else 0.0
    return {"mean": mean, "sd": sd, "n": len(present)}


def t_interval(values: Sequence[float | None]) -> dict[str, Any]:
    """`mean_sd` plus the 95 % t interval of the mean, `low` and `high` (None with fewer than 2 values)."""
    summary = mean_sd(values)
    if summary["n"] < 2:
        return {**summary, "low": None, "high": None}
    half = t_quantile_975(summary["n"] - 1) * summary["sd"] / math.sqrt(summary["n"])
    return {**summary, "low": summary["mean"] - half, "high": summary["mean"] + half}


def area_under_roc(positives: Sequence[float], negatives: Sequence[float]) -> float | None:
    """The area under the ROC curve of scores that should rank `positives` above `negatives`: the share of
    (positive, negative) pairs in that order, ties counted half (the Mann-Whitney statistic). None without both."""
    if not positives or not negatives:
        return None
    ordered = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return ordered / (len(positives) * len(negatives))


def proportion_standard_error(top1: float | None, count: int | None) -> float | None:
    """Standard error (points) of a Top-1 of `top1` percent measured on `count` boxes: sqrt(p (1 - p) / count); the
    noise of the evaluation sample alone, for a fixed model."""
    if top1 is None or not count:
        return None
    p = top1 / 100.0
    return 100.0 * math.sqrt(p * (1.0 - p) / count)


def aggregate_rows(per_seed: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One table row from the same configuration's per-seed records: {figure: {mean, sd, n, per_seed: [...]}}."""
    first = per_seed[0]
    figures = {}
    for name in first["figures"]:
        values = [record["figures"].get(name) for record in per_seed]
        figures[name] = {**mean_sd(values), "per_seed": values}
    for name in ("train_seconds", "eval_seconds"):  # the cost of each row, as measured (shared cores: see the report)
        values = [record.get(name) for record in per_seed]
        figures[name] = {**mean_sd(values), "per_seed": values}
    return {
        "key": first["key"],
        "label": first["label"],
        "losses": first["losses"],
        "loss_weights": first["loss_weights"],
        "fields": first["fields"],
        "seeds": [record["seed"] for record in per_seed],
        "figures": figures,
        "per_seed": list(per_seed),
    }


def paired_differences(rows: Sequence[dict[str, Any]], figure: str, reference_key: str) -> dict[str, dict[str, Any]]:
    """Per row: `figure` minus the reference row's, seed by seed, as {mean, sd, n, low, high, per_seed} (`t_interval`).
    Seeds share the data and the pre-trained model, so the paired difference is far more precise than the difference
    of the two means (whose sd carries the seeds' spread). Empty when the reference row is absent."""
    reference = next((row for row in rows if row["key"] == reference_key), None)
    if reference is None or figure not in reference["figures"]:
        return {}
    by_seed = dict(zip(reference["seeds"], reference["figures"][figure]["per_seed"]))
    differences = {}
    for row in rows:
        per_seed = row["figures"].get(figure, {}).get("per_seed") or [None] * len(row["seeds"])
        values = [
            None if value is None or by_seed.get(seed) is None else value - by_seed[seed]
            for seed, value in zip(row["seeds"], per_seed)
        ]
        differences[row["key"]] = {**t_interval(values), "per_seed": values}
    return differences


def deltas_against_gc(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{figure: paired_differences against GC only} for the global figure, the seen and held-out region ones and the
    seen and held-out grounding ones."""
    return {figure: paired_differences(rows, figure, GC_ONLY.key) for figure in DELTA_FIGURES}


def held_out_standard_errors(row: dict[str, Any]) -> dict[str, Any]:
    """The evaluation sample's standard error of the row's held-out region Top-1, seed by seed and its mean, beside
    the seeds' sd: where the former is not far below the latter, more held-out boxes are needed."""
    per_seed = [
        proportion_standard_error(record["figures"].get(REGION_FIGURE), record["figures"].get("num_boxes_held_out"))
        for record in row["per_seed"]
    ]
    return {"per_seed": per_seed, "mean": mean_sd(per_seed)["mean"], "seed_sd": row["figures"][REGION_FIGURE]["sd"]}


def clip_property(pretrained: dict[str, Any], chance_r1: float) -> dict[str, Any]:
    """Whether the pre-trained model has CLIP's key property, on means over seeds: crop-and-encode Top-1 at least
    `CROP_OVER_DENSE` times its dense-region Top-1, and mean R@1 at least `RETRIEVAL_OVER_CHANCE` times chance."""
    figures = pretrained["figures"]
    crop, dense, r1 = (figures[name]["mean"] for name in ("box_top1_crop", "box_top1_dense", "mean_R@1"))
    per_seed = [
        None if d is None or c is None or d == 0 else c / d
        for c, d in zip(figures["box_top1_crop"]["per_seed"], figures["box_top1_dense"]["per_seed"])
    ]
    ratio = None if not dense else crop / dense
    crop_met = ratio is not None and ratio >= CROP_OVER_DENSE
    retrieval_met = r1 is not None and r1 >= RETRIEVAL_OVER_CHANCE * chance_r1
    return {
        "crop_top1": crop,
        "dense_top1": dense,
        "crop_over_dense": ratio,
        "crop_over_dense_per_seed": per_seed,
        "mean_R@1": r1,
        "chance_R@1": chance_r1,
        "crop_met": crop_met,
        "retrieval_met": retrieval_met,
        "met": crop_met and retrieval_met,
    }


def rows_identical(rows: Sequence[dict[str, Any]]) -> bool:
    """Whether every fine-tuned row has the same global and region figures, seed by seed (nothing to compare)."""
    tuned = [row for row in rows if row["key"] != PRETRAINED.key]
    signatures = {
        tuple(tuple(row["figures"].get(name, {}).get("per_seed") or ()) for name in DELTA_FIGURES) for row in tuned
    }
    return len(tuned) > 1 and len(signatures) == 1


def rule_verdict(
    deltas: dict[str, dict[str, dict[str, Any]]],
    region: dict[str, dict[str, dict[str, Any]]],
    candidate: str,
    same_training: Collection[str] = (),
) -> dict[str, Any] | None:
    """The stricter rule for `candidate`: mean R@1 within `GLOBAL_TOLERANCE` of GC only's, and a higher held-out region
    Top-1 than each of `REGION_REFERENCES` other than itself and the rows in `same_training` (the same training under
    another name, e.g. defaults that are GC+GR: a row cannot beat itself). `deltas`: `deltas_against_gc`; `region`: {reference:
    paired_differences of the held-out region figure against that reference}. Each comparison is "met", "not met" or
    "unresolved" (its 95 % t interval straddles the bound); the rule is met when all are met, not met when one is
    not met, else "not informative". None when a row it needs is missing."""
    global_delta = deltas[GLOBAL_FIGURE].get(candidate)
    references = [key for key in REGION_REFERENCES if key != candidate and key not in same_training]
    if (
        global_delta is None
        or global_delta["mean"] is None
        or any(candidate not in region.get(k, {}) for k in references)
    ):
        return None

    def judge(difference: dict[str, Any], bound: float, strict: bool) -> str:
        mean, low, high = difference["mean"], difference["low"], difference["high"]
        if mean is None:
            return "unresolved"
        if low is None:  # one seed: no interval, nothing settled
            return "unresolved"
        if low > bound or (not strict and low >= bound):
            return "met"
        if high < bound or (strict and high <= bound):
            return "not met"
        return "unresolved"

    checks = {
        "global": {
            **_brief(global_delta),
            "bound": -GLOBAL_TOLERANCE,
            "state": judge(global_delta, -GLOBAL_TOLERANCE, False),
        }
    }
    for key in references:
        difference = region[key][candidate]
        checks[f"region_vs_{key}"] = {**_brief(difference), "bound": 0.0, "state": judge(difference, 0.0, True)}
    states = [check["state"] for check in checks.values()]
    verdict = "met" if all(s == "met" for s in states) else "not met" if "not met" in states else "not informative"
    # On the means alone (what a single estimate suggests, settled or not):
    on_means = global_delta["mean"] >= -GLOBAL_TOLERANCE and all(
        region[key][candidate]["mean"] is not None and region[key][candidate]["mean"] > 0 for key in references
    )
    return {"candidate": candidate, "checks": checks, "verdict": verdict, "met_on_means": on_means}


def _brief(difference: dict[str, Any]) -> dict[str, Any]:
    return {name: difference[name] for name in ("mean", "low", "high", "n")}


def region_differences(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{reference: paired_differences of held-out region Top-1 against it} for each of `REGION_REFERENCES` present."""
    return {
        key: paired_differences(rows, REGION_FIGURE, key)
        for key in REGION_REFERENCES
        if any(row["key"] == key for row in rows)
    }


def same_training(rows: Sequence[dict[str, Any]], candidate: str) -> list[str]:
    """The keys of the other rows trained exactly as `candidate` on every seed (the same fingerprints)."""

    def fingerprints(row: dict[str, Any]) -> list[Any]:
        return [record.get("fingerprint") for record in row.get("per_seed", [])]

    row = next(row for row in rows if row["key"] == candidate)
    mine = fingerprints(row)
    if not mine or None in mine:
        return []
    return [other["key"] for other in rows if other["key"] != candidate and fingerprints(other) == mine]


def recipe_rule(rows: Sequence[dict[str, Any]], deltas: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The rule that chooses the `harmoclip` recipe's free choices: among the rows that train the paper's
    phrase-region term (LRC weight > 0), those whose retrieval is non-inferior to GC only (the 95 % t interval of the
    paired Δ mean R@1 above -`NONINFERIORITY_MARGIN`), and of those the best on held-out regions and grounding (the
    larger sum of the mean paired Δ of held-out region Top-1 and of held-out grounding accuracy against GC only).

    Returns {"margin", "candidates": {key: {"retrieval": interval, "non_inferior": "met" / "not met" / "unresolved",
    "held_out_region", "held_out_grounding", "score"}}, "chosen": key or None, "reason"}."""
    candidates = {}
    for row in rows:
        if row["key"] == PRETRAINED.key or not row["loss_weights"].get("lrc", 0) > 0:
            continue
        retrieval = deltas[GLOBAL_FIGURE].get(row["key"])
        if retrieval is None or retrieval["mean"] is None:
            continue
        if retrieval["low"] is None:
            state = "unresolved"
        else:
            state = (
                "met"
                if retrieval["low"] > -NONINFERIORITY_MARGIN
                else ("not met" if retrieval["high"] <= -NONINFERIORITY_MARGIN else "unresolved")
            )
        region = deltas[REGION_FIGURE].get(row["key"], {}).get("mean")
        grounding = deltas.get(GROUNDING_FIGURE, {}).get(row["key"], {}).get("mean")
        score = None if region is None or grounding is None else region + grounding
        candidates[row["key"]] = {
            "retrieval": _brief(retrieval),
            "non_inferior": state,
            "held_out_region": region,
            "held_out_grounding": grounding,
            "score": score,
        }
    eligible = [key for key, c in candidates.items() if c["non_inferior"] == "met" and c["score"] is not None]
    if not candidates:
        reason = "no row trains LRC"
    elif not eligible:
        reason = (
            f"no row with LRC is non-inferior to GC only in retrieval at the {NONINFERIORITY_MARGIN:g}-point margin"
        )
    else:
        reason = "non-inferior in retrieval, and the best held-out region plus held-out grounding Δ among those"
    chosen = max(eligible, key=lambda key: candidates[key]["score"]) if eligible else None
    return {"margin": NONINFERIORITY_MARGIN, "candidates": candidates, "chosen": chosen, "reason": reason}


def _interval_state(difference: dict[str, Any] | None, bound: float) -> str:
    """ "met" when the 95 % interval lies above `bound`, "not met" when it lies at or below it, else "unresolved"."""
    if difference is None or difference.get("low") is None:
        return "unresolved"
    return "met" if difference["low"] > bound else "not met" if difference["high"] <= bound else "unresolved"


def harmony_rule(rows: Sequence[dict[str, Any]], deltas: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The rule written before the candidates' runs (docs/harmony_candidates.md), in one world: a candidate
    (`HARMONY_CANDIDATES`) qualifies here when its retrieval is non-inferior to GC only (the 95 % t interval of the
    paired Δ mean R@1 above -`NONINFERIORITY_MARGIN`) and its held-out grounding is above GC only's (the interval of
    the paired Δ above 0). Its score is the sum of the mean paired Δ of held-out grounding and held-out regions; the
    winner, over both worlds, is chosen by `decide_harmony` from the two worlds' reports.

    Returns {"margin", "candidates": {key: {"retrieval", "non_inferior", "grounding", "grounding_above",
    "held_out_region", "score", "qualifies"}}}."""
    candidates = {}
    present = {row["key"] for row in rows}
    for key in HARMONY_CANDIDATES:
        if key not in present:
            continue
        retrieval = deltas[GLOBAL_FIGURE].get(key)
        grounding = deltas.get(GROUNDING_FIGURE, {}).get(key)
        region = deltas[REGION_FIGURE].get(key, {}).get("mean")
        non_inferior = _interval_state(retrieval, -NONINFERIORITY_MARGIN)
        grounding_above = _interval_state(grounding, 0.0)
        grounding_mean = None if grounding is None else grounding.get("mean")
        candidates[key] = {
            "retrieval": None if retrieval is None else _brief(retrieval),
            "non_inferior": non_inferior,
            "grounding": None if grounding is None else _brief(grounding),
            "grounding_above": grounding_above,
            "held_out_region": region,
            "score": None if region is None or grounding_mean is None else region + grounding_mean,
            "qualifies": non_inferior == "met" and grounding_above == "met",
        }
    return {"margin": NONINFERIORITY_MARGIN, "candidates": candidates}


def decide_harmony(worlds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The rule over both worlds, from each world's `harmony_rule` ({world: rule}): a candidate qualifies when it
    qualifies in every world; among qualifiers the largest sum over the worlds of its score (mean Δ held-out
    grounding + mean Δ held-out regions) wins. Returns {"qualifiers": [...], "scores": {key: sum}, "winner": key or
    None, "reason"}."""
    keys = [key for key in HARMONY_CANDIDATES if all(key in rule["candidates"] for rule in worlds.values())]
    qualifiers = [key for key in keys if all(rule["candidates"][key]["qualifies"] for rule in worlds.values())]
    scores = {key: sum(rule["candidates"][key]["score"] or 0.0 for rule in worlds.values()) for key in keys}
    if not keys:
        return {"qualifiers": [], "scores": {}, "winner": None, "reason": "no candidate was run in every world"}
    if not qualifiers:
        reason = (
            "no candidate qualifies in every world (retrieval non-inferior to GC only at the "
            f"{NONINFERIORITY_MARGIN:g}-point margin and held-out grounding above GC only's, both settled)"
        )
        return {"qualifiers": [], "scores": scores, "winner": None, "reason": reason}
    winner = max(qualifiers, key=lambda key: scores[key])
    reason = "it qualifies in every world, with the largest sum of held-out grounding and region gains among those"
    return {"qualifiers": qualifiers, "scores": scores, "winner": winner, "reason": reason}


def side_by_side(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """`harmoclip` against each of `gc-gr` and `fineclip` on the three axes (retrieval, held-out regions, held-out
    grounding): the paired difference harmoclip minus the other, and its state, "settled for" (interval above 0),
    "against" (below 0) or "unsettled". {other: {figure: {..., "state"}}}; rows not run are left out."""
    candidate, others = SIDE_BY_SIDE
    keys = {row["key"] for row in rows}
    result: dict[str, dict[str, dict[str, Any]]] = {}
    if candidate not in keys:
        return result
    for other in others:
        if other not in keys:
            continue
        result[other] = {}
        for figure in SIDE_BY_SIDE_FIGURES:
            difference = paired_differences(rows, figure, other).get(candidate)
            if difference is None or difference["mean"] is None:
                continue
            low, high = difference["low"], difference["high"]
            state = "unsettled" if low is None else "settled for" if low > 0 else "against" if high < 0 else "unsettled"
            result[other][figure] = {**_brief(difference), "state": state}
    return result


def conclude(rows: Sequence[dict[str, Any]], chance_r1: float) -> dict[str, Any]:
    """The benchmark's verdict: the pre-trained model's property, the rule for every fine-tuned row, and for
    `GOAL_ROW` the verdict, "not informative" with its reasons when the property is missing, when fewer than 2 seeds
    give no interval, when the rows cannot be told apart, or when the intervals settle nothing."""
    pretrained = next(row for row in rows if row["key"] == PRETRAINED.key)
    prop = clip_property(pretrained, chance_r1)
    deltas, region = deltas_against_gc(rows), region_differences(rows)
    rules = {
        row["key"]: verdict
        for row in rows
        if row["key"] != PRETRAINED.key
        and (verdict := rule_verdict(deltas, region, row["key"], same_training(rows, row["key"]))) is not None
    }
    reasons = []
    if not prop["crop_met"]:
        ratio = "-" if prop["crop_over_dense"] is None else f"{prop['crop_over_dense']:.2f}"
        reasons.append(
            f"the pre-trained model lacks CLIP's property: crop-and-encode Top-1 is {ratio} times its dense-region "
            f"Top-1, below {CROP_OVER_DENSE:g}"
        )
    if not prop["retrieval_met"]:
        reasons.append(
            f"the pre-trained model's retrieval is not well above chance: mean R@1 {prop['mean_R@1']:.1f}, below "
            f"{RETRIEVAL_OVER_CHANCE:g} times chance ({chance_r1:.1f})"
        )
    seeds = len(pretrained["seeds"])
    if seeds < 2:
        reasons.append("one seed: no interval for any difference")
    if rows_identical(rows):
        reasons.append("every fine-tuned row has the same figures: the run is too small to tell rows apart")
    goal = rules.get(GOAL_ROW)
    if goal is None:
        verdict = None
    elif reasons:
        verdict = "not informative"
    else:
        verdict = goal["verdict"]
        if verdict == "not informative":
            reasons.append("the 95 % intervals of the deciding differences straddle their bounds: more seeds needed")
    return {
        "property": prop,
        "rules": rules,
        "goal_row": GOAL_ROW,
        "verdict": verdict,
        "reasons": reasons,
        "recipe_rule": recipe_rule(rows, deltas),
        "harmony_rule": harmony_rule(rows, deltas),
        "side_by_side": side_by_side(rows),
    }
