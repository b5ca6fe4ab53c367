"""Runs and fingerprints of the harmony benchmark: each row's `TrainConfig`, the hash that names its folder, training
or reusing it, its evaluation, and the loop over seeds and rows."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from evaluation.evaluate import BOX_METHODS, DEFAULT_TEMPLATES
from plumbing.atomic_files import save_model_atomically, write_text_atomic
from training.config import PROJECT_ROOT, TrainConfig, load_config
from training.data.synthetic import read_held_out

from .rows import (
    BASE_FIELDS,
    FINETUNE_CONFIGURATIONS,
    GC_ONLY,
    LOSS_NAMES,
    POST_HOC_ROWS,
    PRETRAINED,
    WISE_ALPHAS,
    Configuration,
    HarmonySettings,
    loss_names,
    uses_frozen_teacher,
)
from .statistics import area_under_roc

logger = logging.getLogger("harmoclip.harmony")

ROW_FILE = "row.json"  # written last in a row's folder: the row is finished


def synthetic_folder(settings: HarmonySettings, out: Path, seed: int) -> Path:
    """The data set's folder, named by its settings (one folder per distinct data set)."""
    return out / (
        f"synthetic-{settings.synthetic_num_train}-{settings.synthetic_num_val}-{settings.synthetic_image_size}px-"
        f"min{settings.synthetic_min_shapes}-heldout{settings.synthetic_held_out}"
        + ("" if settings.synthetic_vocabulary == "basic" else f"-{settings.synthetic_vocabulary}")
        + f"-seed{seed}"
    )


def dev_folder(settings: HarmonySettings, out: Path, seed: int) -> Path:
    """The seed's dev split (validation for choices; never reported), made once beside its data: the same world,
    held-out classes and drawing as `val`, from a stream of its own (`training.data.synthetic`)."""
    from training.data.synthetic import VOCABULARIES, SyntheticSettings, generate_synthetic_dataset

    folder = synthetic_folder(settings, out, seed).with_name(
        synthetic_folder(settings, out, seed).name + f"-dev{settings.synthetic_num_dev}"
    )
    colours, shapes = VOCABULARIES[settings.synthetic_vocabulary]
    dev = SyntheticSettings(
        num_train=0,
        num_val=0,
        num_dev=settings.synthetic_num_dev,
        seed=seed,
        image_size=settings.synthetic_image_size,
        colours=colours,
        shapes=shapes,
        min_shapes=settings.synthetic_min_shapes,
        held_out=settings.synthetic_held_out,
    )
    return generate_synthetic_dataset(folder, dev)


def recipe_path(settings: HarmonySettings) -> Path:
    """The pre-training recipe's file: as given, else relative to the project root."""
    path = Path(settings.pretrain_recipe)
    if not path.is_file() and not path.is_absolute() and (PROJECT_ROOT / path).is_file():
        path = PROJECT_ROOT / path
    if not path.is_file():
        raise FileNotFoundError(f"`pretrain_recipe`: file not found: {settings.pretrain_recipe}")
    return path


def evaluation_templates(settings: HarmonySettings) -> tuple[str, ...]:
    """The box-classification prompts of every row: the pre-training recipe's `eval_templates` (the toy CLIP's own
    caption language), else the default ensemble."""
    return load_config(recipe_path(settings)).eval_templates or tuple(DEFAULT_TEMPLATES)


def _benchmark_values(settings: HarmonySettings, out: Path, output_dir: Path, seed: int, steps: int) -> dict[str, Any]:
    """The fields every run of a seed shares: the data, the model's shape, the evaluation's prompts, the places and
    the logging."""
    return dict(
        data_format="synthetic",
        train_data=None,
        val_data=None,
        synthetic_dir=str(synthetic_folder(settings, out, seed)),
        synthetic_num_train=settings.synthetic_num_train,
        synthetic_num_val=settings.synthetic_num_val,
        synthetic_image_size=settings.synthetic_image_size,
        synthetic_min_shapes=settings.synthetic_min_shapes,
        synthetic_held_out=settings.synthetic_held_out,
        synthetic_vocabulary=settings.synthetic_vocabulary,
        model_preset=settings.model_preset,
        image_size=settings.image_size,
        patch_size=settings.patch_size,
        seed=seed,
        output_dir=str(output_dir),
        log_every=max(1, min(10, steps // 10)),
        checkpoint_every=max(1, steps // 2),
        keep_checkpoints=1,
        resume=True,
        evaluate_at_end=False,
        eval_batch_size=settings.eval_batch_size,
        eval_templates=evaluation_templates(settings),
        report_to="none",
    )


def pretrain_config(settings: HarmonySettings, out: Path, output_dir: Path, seed: int) -> TrainConfig:
    """The seed's pre-training: the recipe (`pretrain_recipe`) on the benchmark's data and model, with the
    `pretrain_*` settings that are given."""
    recipe = load_config(recipe_path(settings))
    overrides = {
        name: value
        for name, value in (
            ("max_steps", settings.pretrain_steps),
            ("batch_size", settings.pretrain_batch_size),
            ("learning_rate", settings.pretrain_learning_rate),
            ("warmup_steps", settings.pretrain_warmup_steps),
        )
        if value is not None
    }
    steps = overrides.get("max_steps", recipe.max_steps)
    values = _benchmark_values(settings, out, output_dir, seed, steps)
    values.update(overrides, init_from=None, extra={"harmony_row": PRETRAINED.key, "harmony_stage": "pretrain"})
    return dataclasses.replace(recipe, **values)


def finetune_config(
    settings: HarmonySettings,
    out: Path,
    configuration: Configuration,
    init_from: Path | None,
    output_dir: Path,
    seed: int,
    teacher_cache: Path | None = None,
) -> TrainConfig:
    """One row's fine-tuning of the seed's pre-trained model (`init_from`): the benchmark's budget, the row's fields;
    a frozen teacher is replaced by its cached embeddings where `teacher_cache` is given (the same targets)."""
    steps = settings.finetune_steps
    values: dict[str, Any] = _benchmark_values(settings, out, output_dir, seed, steps)
    values.update(
        init_from=str(init_from) if init_from else None,
        **configuration.values(),
        batch_size=settings.finetune_batch_size,
        max_steps=steps,
        learning_rate=settings.finetune_learning_rate,
        warmup_steps=settings.finetune_warmup_steps,
        weight_decay=settings.weight_decay,
        extra={"harmony_row": configuration.key, "harmony_stage": "finetune"},
    )
    values["gr_crop_scale"] = settings.gr_crop_scale  # a recipe field the benchmark sets, unless the row does
    values.update(configuration.fields)
    if teacher_cache is not None and uses_frozen_teacher(values):
        values.update(gr_teacher="cached", teacher_cache=str(teacher_cache))
    config = TrainConfig(**values)
    if not config.uses_phrases:
        # No phrase term, so no region-term text gradients whatever the flag: it takes the base value, so that the
        # same training has one fingerprint (defaults that are GC+GR share the GC+GR row's run).
        config = dataclasses.replace(config, region_text_grad=BASE_FIELDS["region_text_grad"])
    return config


def teacher_cache_for(
    settings: HarmonySettings, out: Path, pretrained_model: Path, pretrain_fingerprint: str, seed: int
) -> Path:
    """The frozen teacher's crop embeddings of the seed's training boxes under its pre-trained model (built once)."""
    from training.cache_teacher import build_teacher_cache_folder
    from training.teacher import INDEX_FILE

    folder = out / "runs" / f"teacher-cache-{pretrain_fingerprint}"
    if not (folder / INDEX_FILE).is_file():
        config = finetune_config(
            settings, out, FINETUNE_CONFIGURATIONS[0], pretrained_model, out / "runs" / "pending", seed
        )
        build_teacher_cache_folder(config, folder, batch_size=settings.eval_batch_size, overwrite=True)
    return folder


# Fields that name places or control logging, not what the weights become (the BPE file is the shipped one).
_NOT_FINGERPRINTED = (
    "recipe",  # a name: the recipe fields it set are fingerprinted themselves
    "eval_templates",  # in the evaluation protocol below, with the default spelled out
    "synthetic_dir",
    "output_dir",
    "init_from",
    "teacher_cache",
    "tokenizer_bpe",
    "resume",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "report_to",
    "evaluate_at_end",
    "num_workers",
    "extra",
)
# Options added after runs were made, with the value that trains as before they existed: at that value they are left
# out of the fingerprint, so finished runs stay reusable; any other value is a new recipe.
_ADDED_LATER: dict[str, Any] = {
    "region_text_grad": True,
    "object_views": 0.0,
    "object_view_scale": 1.5,
    "synthetic_vocabulary": "basic",
    "loss_gd_weight": 0.0,
    "region_heads": False,
    "region_grad_reach": "all",
    "vision_trunk_lr_scale": 1.0,
}
_UNSET = object()


def fingerprint(config: TrainConfig, parent: str | None = None) -> str:
    """A short hash of what a row's model and figures depend on: its training settings, the fingerprint of the model
    it starts from (`parent`) and the evaluation protocol."""
    recipe = {
        key: value
        for key, value in config.to_dict().items()
        if key not in _NOT_FINGERPRINTED and _ADDED_LATER.get(key, _UNSET) != value
    }
    recipe.update(
        parent=parent, eval_methods=list(BOX_METHODS), eval_templates=list(config.eval_templates or DEFAULT_TEMPLATES)
    )
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]


# ---------------------------------------------------------------------------------------------------- figures


def group_top1(per_class_top1: Sequence[float | None], counts: Sequence[int], members: Sequence[bool]) -> float | None:
    """Top-1 (%) over the boxes of the classes in a group, from per-class Top-1 (%) and per-class box counts: the
    box-weighted mean of the members' per-class figures (None if the group has no box)."""
    total = sum(count for count, member in zip(counts, members) if member)
    if total == 0:
        return None
    hits = sum((top1 or 0.0) * count for top1, count, member in zip(per_class_top1, counts, members) if member)
    return hits / total


def summarize(
    evaluation: dict[str, Any], class_counts: Sequence[int] | None = None, held_out: Sequence[bool] | None = None
) -> dict[str, float | None]:
    """The benchmark's figures (percent) from `evaluate_model`'s {task: results}; with the held-out split's box count
    per class and which classes were held out of training, box Top-1 on seen and on held-out combinations too, and
    the number of boxes of each group (`num_boxes_seen`, `num_boxes_held_out`)."""
    retrieval, boxcls = evaluation["retrieval"], evaluation["boxcls"]
    figures: dict[str, float | None] = {
        "i2t_R@1": float(retrieval["i2t_R@1"]),
        "t2i_R@1": float(retrieval["t2i_R@1"]),
        "box_top1_dense": float(boxcls["dense"]["top1"]),
        "box_top1_crop": float(boxcls["crop"]["top1"]),
        "box_mean_class_top1_dense": float(boxcls["dense"]["mean_class_top1"]),
        "i2t_R@5": float(retrieval["i2t_R@5"]),
        "t2i_R@5": float(retrieval["t2i_R@5"]),
    }
    figures["mean_R@1"] = (figures["i2t_R@1"] + figures["t2i_R@1"]) / 2
    for group, members in (
        ("seen", None if held_out is None else [not h for h in held_out]),
        ("held_out", held_out),
    ):
        for method in ("dense", "crop"):
            figures[f"box_top1_{method}_{group}"] = (
                None
                if members is None or class_counts is None
                else group_top1(boxcls[method]["per_class_top1"], class_counts, members)
            )
        figures[f"num_boxes_{group}"] = (
            None if members is None or class_counts is None else sum(c for c, m in zip(class_counts, members) if m)
        )
    return figures


def grounding_figures(
    model: Any, processor: Any, data_dir: Path, manifest: str = "val.jsonl", proposals: bool = True
) -> dict[str, float | None]:
    """Phrase grounding on a split of the seed's data (`evaluation.grounding`, the `phrase-grounding` pipeline's
    functions, each phrase as its lexeme): accuracy among the image's annotated boxes and at IoU >= 0.5 with the
    model's own proposals, over all phrases and over those of seen and of held-out combinations, and their numbers."""
    from evaluation.grounding import evaluate_grounding, read_grounding_manifest

    results = evaluate_grounding(model, processor, read_grounding_manifest(data_dir / manifest), proposals=proposals)
    figures: dict[str, float | None] = {}
    for group, suffix in (("all", ""), ("seen", "_seen"), ("held_out", "_held_out")):
        row = results.get(group, {})
        figures[f"grounding_annotated{suffix}"] = row.get("accuracy_annotated")
        figures[f"grounding_proposals{suffix}"] = row.get("accuracy_proposals_iou50")
        figures[f"num_phrases{suffix}"] = row.get("phrases")
    figures["grounding_chance"] = results["all"]["chance_annotated"]
    return figures


# An absent phrase names a colour-shape combination that no object of the image shows, in the captions' words.
ABSENT_SIZE_WORDS = ("small", "big")


@torch.no_grad()
def absent_phrase_figures(model: Any, processor: Any, data_dir: Path, manifest: str = "val.jsonl") -> dict[str, Any]:
    """The fourth axis: asked, beside an image's own phrases, for one that names no object there, does the model say
    it fits worse? For every image of the split, a combination absent from it ("small green star") is appended to its
    caption (" and a small green star": CLIP's text tower is causal, so the present phrases' lexemes do not change)
    and every phrase is grounded among the image's annotated boxes (`ground_phrases`, one encoder pass). A phrase's
    grounding score is the cosine of its best box, the `phrase-grounding` pipeline's choice (any score that rises
    with it, a calibrated sigmoid of it among them, ranks the phrases the same).

    Returns `absent_below_median`: % of images whose absent phrase scores below the median of its present phrases';
    `absent_auroc`: the AUROC (%) of present against absent phrases over all images, by that score (the
    Mann-Whitney statistic, ties counted half); `num_absent`: the images asked."""
    from evaluation.eval_data import load_image
    from modeling_harmoclip.pipeline_harmoclip import embed_phrases, ground_phrases

    classes = json.loads((data_dir / "classes.json").read_text())
    present_scores, absent_scores, below = [], [], 0
    processor = processor.as_region_mode()
    scale = float(model.logit_scale.detach().exp())
    records = [json.loads(line) for line in (data_dir / manifest).read_text().splitlines() if line.strip()]
    for index, record in enumerate(records):
        regions = record["regions"]
        shown = {region["label"] for region in regions}
        absent = [name for name in classes if name not in shown]
        rng = np.random.default_rng([index, 4099])  # the same absent phrase for every row of a seed
        phrase = f"{ABSENT_SIZE_WORDS[int(rng.integers(2))]} {absent[int(rng.integers(len(absent)))]}"
        caption = f"{record['caption']} and a {phrase}"
        spans = [tuple(region["span"]) for region in regions] + [(len(caption) - len(phrase), len(caption))]
        batch = processor(images=[load_image(data_dir / record["image"])], boxes=[[r["box"] for r in regions]])
        pixel_values = batch["pixel_values"].to(dtype=model.dtype, device=next(model.parameters()).device)
        embeds = embed_phrases(model, processor, caption, spans)
        logits, _, box_mask = ground_phrases(model, pixel_values, embeds, batch["boxes"], batch["box_mask"])
        best = (logits / scale).masked_fill(~box_mask[None], float("-inf")).max(dim=-1).values.tolist()
        present, missing = best[:-1], best[-1]
        present_scores.extend(present)
        absent_scores.append(missing)
        below += missing < float(np.median(present))
    auroc = area_under_roc(present_scores, absent_scores)
    return {
        "absent_below_median": 100.0 * below / len(records) if records else None,
        "absent_auroc": None if auroc is None else 100.0 * auroc,
        "num_absent": len(records),
    }


# Figure groups a finished row may lack (measured since it ran), each added on reuse by what measures it.
LATER_FIGURES = {
    "grounding_annotated": lambda model, processor, data: grounding_figures(model, processor, data),
    "absent_auroc": lambda model, processor, data: absent_phrase_figures(model, processor, data),
}


def add_missing_figures(record: dict[str, Any], config: TrainConfig) -> dict[str, Any]:
    """A finished row made before some figures were measured (`LATER_FIGURES`), with them added (its saved model
    evaluated; row.json rewritten atomically): earlier runs stay reusable."""
    from modeling_harmoclip import HarmoCLIPModel
    from training.builders import load_processor

    missing = [name for name in LATER_FIGURES if name not in record["figures"]]
    if not missing:
        return record
    model_dir = Path(config.output_dir) / Path(record["model"]).relative_to(record["folder"])
    model = HarmoCLIPModel.from_pretrained(model_dir).eval()
    processor = load_processor(model_dir, region_mode=config.processor_region_mode)
    figures = dict(record["figures"])
    for name in missing:
        logger.info("%s, seed %d: adding its %s figures", record["label"], record["seed"], name)
        figures.update(LATER_FIGURES[name](model, processor, Path(config.synthetic_dir)))
    record = {**record, "figures": figures}
    write_text_atomic(Path(config.output_dir) / ROW_FILE, json.dumps(record, indent=2) + "\n")
    return record


def class_counts_and_held_out(
    data_dir: Path, class_names: Sequence[str], manifest: str = "val.jsonl"
) -> tuple[list[int], list[bool]]:
    """Per class of `class_names` (the evaluation's order): the split's box count, and whether the training split
    never saw the class."""
    held = set(read_held_out(data_dir))
    counts = {name: 0 for name in class_names}
    for line in (data_dir / manifest).read_text().splitlines():
        for region in json.loads(line)["regions"]:
            counts[region["label"]] += 1
    return [counts[name] for name in class_names], [name in held for name in class_names]


def evaluated_class_names(folder: Path) -> list[str]:
    """The classes of a row's box classification, in the order of its per-class figures."""
    return json.loads((folder / "eval.json").read_text())["tasks"]["boxcls"]["settings"]["class_names"]


def chance_levels(pretrained_folders: Sequence[Path], data_dirs: Sequence[Path]) -> dict[str, Any]:
    """Chance R@1 (one correct image among N) and box Top-1 (1 / classes), from the reference rows' evaluations (box
    counts averaged over seeds)."""
    tasks = [json.loads((folder / "eval.json").read_text())["tasks"] for folder in pretrained_folders]
    num_images = tasks[0]["retrieval"]["results"]["num_images"]
    num_classes = len(tasks[0]["boxcls"]["settings"]["class_names"])
    held_out_boxes = [
        sum(count for count, held in zip(*class_counts_and_held_out(data_dir, evaluated_class_names(folder))) if held)
        for folder, data_dir in zip(pretrained_folders, data_dirs)
    ]
    return {
        "R@1": 100.0 / num_images,
        "box_top1": 100.0 / num_classes,
        "num_classes": num_classes,
        "num_boxes": round(sum(task["boxcls"]["results"]["num_boxes"] for task in tasks) / len(tasks)),
        "num_held_out_boxes": round(sum(held_out_boxes) / len(held_out_boxes)),
    }


# ---------------------------------------------------------------------------------------------------- rows


def read_finished_row(folder: Path, expected_fingerprint: str) -> dict[str, Any] | None:
    """The record of a finished row in `folder` made with `expected_fingerprint`, else None."""
    path = folder / ROW_FILE
    if not path.is_file() or not (folder / "model" / "config.json").is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return record if record.get("fingerprint") == expected_fingerprint else None


def evaluate_saved_model(
    model_dir: Path, config: TrainConfig, show_progress: bool = True
) -> tuple[dict[str, float | None], float]:
    """A row's figures on the seed's test split (`val`), from its saved folder (what a user would load), not the
    in-memory weights: retrieval, box classification (eval.json beside it), grounding (the third axis) and absent
    phrases (the fourth). Returns (figures, seconds)."""
    from modeling_harmoclip import HarmoCLIPModel
    from training.builders import evaluate_model, load_processor

    folder, data_dir = Path(config.output_dir), Path(config.synthetic_dir)
    model = HarmoCLIPModel.from_pretrained(model_dir).eval()
    processor = load_processor(model_dir, region_mode=config.processor_region_mode)
    started = time.perf_counter()
    evaluation = evaluate_model(model, processor, config, folder, show_progress=show_progress)
    figures = grounding_figures(model, processor, data_dir) | absent_phrase_figures(model, processor, data_dir)
    eval_seconds = time.perf_counter() - started
    counts, held_out = class_counts_and_held_out(data_dir, evaluated_class_names(folder))
    return summarize(evaluation, counts, held_out) | figures, eval_seconds


def dev_figures(model: Any, processor: Any, config: TrainConfig, dev_dir: Path) -> dict[str, float | None]:
    """The figures a choice is made on, measured on the dev split: mean R@1, held-out region Top-1 (dense) and
    held-out grounding among the annotated boxes (no proposals)."""
    from evaluation.evaluate import run_evaluation

    path = dev_dir / "dev.jsonl"
    evaluation = {
        task: run_evaluation(
            model,
            processor,
            task,
            str(path),
            split=None,
            batch_size=config.eval_batch_size,
            show_progress=False,
            templates=list(config.eval_templates or DEFAULT_TEMPLATES),
        )
        for task in ("retrieval", "boxcls")
    }
    names = evaluation["boxcls"]["settings"]["class_names"]
    counts, held_out = class_counts_and_held_out(dev_dir, names, "dev.jsonl")
    figures = summarize({task: report["results"] for task, report in evaluation.items()}, counts, held_out)
    grounding = grounding_figures(model, processor, dev_dir, "dev.jsonl", proposals=False)
    return {
        "mean_R@1": figures["mean_R@1"],
        "box_top1_dense_held_out": figures["box_top1_dense_held_out"],
        "grounding_annotated_held_out": grounding["grounding_annotated_held_out"],
    }


def choose_wise_alpha(by_alpha: dict[float, dict[str, float | None]], gc_dev: dict[str, float | None]) -> float:
    """WiSE-FT's mixing weight, by the rule written before the runs (docs/harmony_candidates.md): among the alphas
    whose dev mean R@1 is at least GC only's dev mean R@1 minus `NONINFERIORITY_MARGIN`, the one with the largest dev
    held-out grounding plus held-out region Top-1; if none, the one with the largest dev mean R@1. Ties: the smaller
    alpha (nearer the start)."""
    from .statistics import NONINFERIORITY_MARGIN

    def gains(alpha: float) -> float:
        figures = by_alpha[alpha]
        return (figures["grounding_annotated_held_out"] or 0.0) + (figures["box_top1_dense_held_out"] or 0.0)

    alphas = sorted(by_alpha)
    kept = [a for a in alphas if by_alpha[a]["mean_R@1"] >= gc_dev["mean_R@1"] - NONINFERIORITY_MARGIN]
    if kept:
        return max(kept, key=lambda alpha: (gains(alpha), -alpha))
    return max(alphas, key=lambda alpha: (by_alpha[alpha]["mean_R@1"], -alpha))


def weight_ensemble_row(
    configuration: Configuration,
    config: TrainConfig,
    row_fingerprint: str,
    start: dict[str, Any],
    finetuned: dict[str, Any],
    gc: dict[str, Any],
    dev_dir: Path,
    alphas: Sequence[float],
    show_progress: bool = True,
) -> dict[str, Any]:
    """WiSE-FT of one seed (reused when finished): the `finetuned` row's weights mixed with the pre-trained `start`
    at each of `alphas`, every mix and the `gc` row measured on the dev split, the alpha chosen there
    (`choose_wise_alpha`), and that mix saved and measured on the test split like a trained row."""
    from modeling_harmoclip import HarmoCLIPModel
    from training.builders import load_processor
    from training.weight_ensembling import weight_ensemble

    folder = Path(config.output_dir)
    record = read_finished_row(folder, row_fingerprint)
    if record is not None:
        logger.info("%s, seed %d: reusing the finished row in %s", configuration.label, config.seed, folder)
        record = add_missing_figures(record, config)
        model = folder / Path(record["model"]).relative_to(record["folder"])
        return {**record, "folder": str(folder), "model": str(model), "reused": True}
    started = time.perf_counter()
    start_model = HarmoCLIPModel.from_pretrained(start["model"]).eval()
    tuned_model = HarmoCLIPModel.from_pretrained(finetuned["model"]).eval()
    processor = load_processor(Path(finetuned["model"]), region_mode=config.processor_region_mode)
    gc_model = HarmoCLIPModel.from_pretrained(gc["model"]).eval()
    gc_dev = dev_figures(gc_model, processor, config, dev_dir)
    by_alpha = {
        float(alpha): dev_figures(weight_ensemble(start_model, tuned_model, alpha), processor, config, dev_dir)
        for alpha in alphas
    }
    alpha = choose_wise_alpha(by_alpha, gc_dev)
    model_dir = folder / "model"
    save_model_atomically(weight_ensemble(start_model, tuned_model, alpha), processor, model_dir)
    choose_seconds = time.perf_counter() - started
    figures, eval_seconds = evaluate_saved_model(model_dir, config, show_progress)
    record = {
        "key": configuration.key,
        "label": configuration.label,
        "losses": finetuned["losses"],
        "loss_weights": finetuned["loss_weights"],
        "fields": {"made_from": finetuned["key"], "alphas": list(by_alpha)},
        "seed": config.seed,
        "fingerprint": row_fingerprint,
        "folder": str(folder),
        "model": str(model_dir),
        "init_from": config.init_from,
        "figures": figures,
        "wise": {"alpha": alpha, "dev": {str(a): f for a, f in by_alpha.items()}, "gc_dev": gc_dev},
        # Its cost: the fine-tuned row's training plus the mixing and its choice on dev.
        "train_seconds": finetuned.get("train_seconds", 0.0) + choose_seconds,
        "train_cpu_seconds": finetuned.get("train_cpu_seconds"),
        "eval_seconds": eval_seconds,
        "train_config": finetuned.get("train_config"),
    }
    write_text_atomic(folder / ROW_FILE, json.dumps(record, indent=2) + "\n")
    logger.info(
        "%s, seed %d: alpha %.2f chosen on dev; %s", configuration.label, config.seed, alpha, json.dumps(figures)
    )
    return {**record, "reused": False}


def run_row(
    configuration: Configuration, config: TrainConfig, row_fingerprint: str, show_progress: bool = True
) -> dict[str, Any]:
    """Trains (or resumes) and evaluates one row of one seed, or reuses it when finished. Returns the row's record."""
    from training.train import train

    folder = Path(config.output_dir)
    record = read_finished_row(folder, row_fingerprint)
    if record is not None:
        logger.info("%s, seed %d: reusing the finished row in %s", configuration.label, config.seed, folder)
        record = add_missing_figures(record, config)
        # The places as seen from here: the record keeps those of the run that made it (another `--out` spelling or
        # working directory), which the report would otherwise follow.
        model = folder / Path(record["model"]).relative_to(record["folder"])
        return {**record, "folder": str(folder), "model": str(model), "reused": True}
    logger.info(
        "%s, seed %d: training in %s (losses %s, %d steps)",
        configuration.label,
        config.seed,
        folder,
        loss_names(config.to_dict()),
        config.max_steps,
    )
    started, cpu_started = time.perf_counter(), time.process_time()
    model_dir = train(config)
    train_seconds, train_cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    figures, eval_seconds = evaluate_saved_model(model_dir, config, show_progress)
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # the model is saved; optimiser states are not needed
    record = {
        "key": configuration.key,
        "label": configuration.label,
        "losses": loss_names(config.to_dict()),
        "loss_weights": {name: float(getattr(config, f"loss_{name}_weight")) for name in LOSS_NAMES},
        "fields": configuration.fields,
        "seed": config.seed,
        "fingerprint": row_fingerprint,
        "folder": str(folder),
        "model": str(model_dir),
        "init_from": config.init_from,
        "figures": figures,
        "train_seconds": train_seconds,
        "train_cpu_seconds": train_cpu_seconds,
        "eval_seconds": eval_seconds,
        "train_config": config.to_dict(),
    }
    write_text_atomic(folder / ROW_FILE, json.dumps(record, indent=2) + "\n")
    logger.info(
        "%s, seed %d: %s (train %.0f s, eval %.0f s)",
        configuration.label,
        config.seed,
        json.dumps(record["figures"]),
        train_seconds,
        eval_seconds,
    )
    return {**record, "reused": False}


def pretrain_seed(
    settings: HarmonySettings, out: Path, seed: int, show_progress: bool = True
) -> tuple[dict[str, Any], str]:
    """The seed's pre-trained toy CLIP, trained once and reused after (its folder is named by its fingerprint):
    (its record, its fingerprint)."""
    runs = out / "runs"
    config = pretrain_config(settings, out, runs / "pending", seed)
    pretrain_fingerprint = fingerprint(config)
    config = dataclasses.replace(config, output_dir=str(runs / f"{PRETRAINED.key}-{pretrain_fingerprint}"))
    return run_row(PRETRAINED, config, pretrain_fingerprint, show_progress), pretrain_fingerprint


def run_seeds(
    settings: HarmonySettings, out: Path, show_progress: bool = True, pretrain_only: bool = False
) -> dict[str, list[dict[str, Any]]]:
    """For each seed: pre-trains (or reuses) its toy CLIP, then fine-tunes (or reuses) and evaluates every row from
    it (none with `pretrain_only`). Returns {row key: [its record per seed]}, the pre-trained reference first."""
    runs = out / "runs"
    configurations = [] if pretrain_only else settings.finetune_configurations()
    progress = tqdm(
        total=len(settings.seeds) * (1 + len(configurations)),
        desc="harmony rows",
        unit="row",
        disable=not show_progress,
        dynamic_ncols=True,
    )
    records: dict[str, list[dict[str, Any]]] = {PRETRAINED.key: [], **{c.key: [] for c in configurations}}
    for seed in settings.seeds:
        pretrained, pretrain_fingerprint = pretrain_seed(settings, out, seed, show_progress)
        records[PRETRAINED.key].append(pretrained)
        progress.update(1)
        cache = None
        if settings.cache_teacher and any(uses_frozen_teacher(c.values()) for c in configurations):
            cache = teacher_cache_for(settings, out, Path(pretrained["model"]), pretrain_fingerprint, seed)
        done: dict[
            str, dict[str, Any]
        ] = {}  # fingerprint -> record: a row equal to an earlier one is not trained twice
        for configuration in configurations:
            if configuration.key in POST_HOC_ROWS:
                continue  # made from trained rows, below
            config = finetune_config(
                settings, out, configuration, Path(pretrained["model"]), runs / "pending", seed, cache
            )
            row_fingerprint = fingerprint(config, parent=pretrain_fingerprint)
            if row_fingerprint in done:
                logger.info(
                    "%s, seed %d: the same training as %s, figures shared",
                    configuration.label,
                    seed,
                    done[row_fingerprint]["label"],
                )
                record = {
                    **done[row_fingerprint],
                    "key": configuration.key,
                    "label": configuration.label,
                    "same_as": done[row_fingerprint]["key"],
                }
            else:
                folder = runs / f"{configuration.key}-{row_fingerprint}"
                if not folder.exists():  # the same training finished earlier under another row's name
                    folder = next(
                        (f for f in sorted(runs.glob(f"*-{row_fingerprint}")) if read_finished_row(f, row_fingerprint)),
                        folder,
                    )
                config = dataclasses.replace(config, output_dir=str(folder))
                record = run_row(configuration, config, row_fingerprint, show_progress)
                record = done[row_fingerprint] = {**record, "key": configuration.key, "label": configuration.label}
            records[configuration.key].append(record)
            progress.update(1)
        for configuration in configurations:
            if configuration.key not in POST_HOC_ROWS:
                continue
            made_from = next(c for c in configurations if c.key == POST_HOC_ROWS[configuration.key])
            config = finetune_config(settings, out, made_from, Path(pretrained["model"]), runs / "pending", seed, cache)
            finetuned, gc = records[made_from.key][-1], records[GC_ONLY.key][-1]
            row_fingerprint = hashlib.sha256(
                json.dumps(
                    {
                        "made_from": finetuned["fingerprint"],
                        "gc": gc["fingerprint"],
                        "alphas": list(WISE_ALPHAS),
                        "dev": settings.synthetic_num_dev,
                        "rule": "wise-alpha-1",
                    },
                    sort_keys=True,
                ).encode()
            ).hexdigest()[:10]
            config = dataclasses.replace(config, output_dir=str(runs / f"{configuration.key}-{row_fingerprint}"))
            record = weight_ensemble_row(
                configuration,
                config,
                row_fingerprint,
                pretrained,
                finetuned,
                gc,
                dev_folder(settings, out, seed),
                WISE_ALPHAS,
                show_progress,
            )
            records[configuration.key].append({**record, "key": configuration.key, "label": configuration.label})
            progress.update(1)
    progress.close()
    return records


def environment(load_at_start: tuple[float, float, float]) -> dict[str, Any]:
    """What the wall-clock time depends on: threads, cores, OpenMP's wait policy, other jobs (load averages)."""
    import torch

    return {
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_at_start": [round(value, 2) for value in load_at_start],
        "load_average_at_end": [round(value, 2) for value in os.getloadavg()],
    }
