"""Rendering the Hub README of a HarmoCLIP model from the template `model_card.md` and an evaluation JSON.

The template holds `{{ name }}` placeholders; values that go into the YAML metadata are written as JSON (valid YAML,
quoted as needed). Every placeholder must be filled: an unknown or missing name is an error, never left in the card.

Evaluation JSON schema (all fields optional except as noted; metric values are percentages, 0-100):

    {
      "retrieval": {"dataset": "Flickr30k", "split": "test",
                    "i2t_R@1": 0.0, "i2t_R@5": 0.0, "i2t_R@10": 0.0,
                    "t2i_R@1": 0.0, "t2i_R@5": 0.0, "t2i_R@10": 0.0},
      "box_classification": {"dataset": "COCO", "split": "val2017", "top1": 0.0, "top5": 0.0},
      "zero_shot_classification": {"dataset": "ImageNet-1k", "split": "validation", "top1": 0.0, "top5": 0.0}
    }

Each task (a top-level key; the three above have display names, others are shown as written) maps to one result or
a list of results. A result needs `"dataset"` (a string), may have `"split"` and `"notes"` (strings), and at least
one metric: every other key, with a finite number as value. Only the numbers in the file are shown; without a file
the card says the model was not evaluated.

The reports of `python -m evaluation.evaluate` (`{"task", "settings", "results", ...}`) and the end-of-training
`eval.json` of `training/train.py` (`{"tasks": {task: report}}`) are read too, through `results_from_reports`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard

from modeling_harmoclip.configuration_harmoclip import recipe_fields, recipe_overrides

DEFAULT_TEMPLATE = Path(__file__).resolve().parents[1] / "model_card.md"
# The card of the plain-CLIP export's own repository: the one that carries the widget metadata.
EXPORT_TEMPLATE = Path(__file__).resolve().parents[1] / "model_card_clip.md"
# Tasks the plain-CLIP export can do (no region features): the rows its card shows.
GLOBAL_TASKS = ("Image-text retrieval", "Zero-shot classification")
TASK_NAMES = {
    "retrieval": "Image-text retrieval",
    "box_classification": "Box classification",
    "zero_shot_classification": "Zero-shot classification",
}
TEXT_FIELDS = ("dataset", "split", "notes")
NOT_EVALUATED = "Not evaluated: no evaluation results were provided for this checkpoint."
_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


@dataclass(frozen=True)
class CardInfo:
    """What the card says beyond the model's config."""

    repo_id: str
    license: str = "apache-2.0"
    base_model: str | None = None
    datasets: tuple[str, ...] = ()
    tags: tuple[str, ...] = ("clip", "harmoclip", "vision", "zero-shot-image-classification", "region-classification")
    clip_export: str | None = None  # "subfolder" (plain CLIP in `clip/`), a repo id, or None
    extra: dict[str, str] = field(default_factory=dict)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"evaluation JSON: {where} must be a finite number, got {value!r}")
    return float(value)


def parse_eval_results(data: Any) -> list[dict[str, Any]]:
    """Validates evaluation results (schema in the module docstring) -> table rows
    {task, dataset, split, metric, value}, in the file's order."""
    if not isinstance(data, dict):
        raise ValueError(f"evaluation JSON: the top level must be an object of tasks, got {type(data).__name__}")
    rows = []
    for task, results in data.items():
        entries = results if isinstance(results, list) else [results]
        for index, entry in enumerate(entries):
            where = f"[{task!r}]" + (f"[{index}]" if isinstance(results, list) else "")
            if not isinstance(entry, dict):
                raise ValueError(f"evaluation JSON: {where} must be an object, got {type(entry).__name__}")
            for name in TEXT_FIELDS:
                if name in entry and not isinstance(entry[name], str):
                    raise ValueError(f"evaluation JSON: {where}[{name!r}] must be a string, got {entry[name]!r}")
            if not entry.get("dataset"):
                raise ValueError(f"evaluation JSON: {where} needs a 'dataset' name")
            metrics = {
                key: _number(value, f"{where}[{key!r}]") for key, value in entry.items() if key not in TEXT_FIELDS
            }
            if not metrics:
                raise ValueError(f"evaluation JSON: {where} has no metric")
            for metric, value in metrics.items():
                rows.append(
                    {
                        "task": TASK_NAMES.get(task, task),
                        "dataset": entry["dataset"],
                        "split": entry.get("split", ""),
                        "metric": metric,
                        "value": value,
                        "notes": entry.get("notes", ""),
                    }
                )
    return rows


RETRIEVAL_METRICS = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10")
BOX_METRICS = ("top1", "top5", "mean_class_top1", "mean_class_top5")
BOX_METHOD_NOTES = {"dense": "region features of one image pass (RoIAlign)", "crop": "crop-and-encode baseline"}


def _is_report(value: Any) -> bool:
    return isinstance(value, dict) and {"task", "settings", "results"} <= set(value)


def results_from_reports(data: Any) -> Any:
    """Evaluation reports of `evaluation/evaluate.py` (one, or `{"tasks": {...}}`) -> the card schema; anything else
    is returned unchanged."""
    if isinstance(data, dict) and isinstance(data.get("tasks"), dict) and all(map(_is_report, data["tasks"].values())):
        reports = list(data["tasks"].values())
    elif _is_report(data):
        reports = [data]
    else:
        return data
    card: dict[str, list[dict[str, Any]]] = {}
    for report in reports:
        settings, results = report["settings"], report["results"]
        common = {"dataset": Path(str(settings.get("data", "unknown"))).name, "split": str(settings.get("split") or "")}
        if report["task"] == "retrieval":
            card.setdefault("retrieval", []).append(
                {**common, **{k: results[k] for k in RETRIEVAL_METRICS if k in results}}
            )
        elif report["task"] == "boxcls":
            for method in settings.get("methods", ["dense"]):
                figures = results[method]
                card.setdefault("box_classification", []).append(
                    {
                        **common,
                        "notes": BOX_METHOD_NOTES.get(method, method),
                        **{k: figures[k] for k in BOX_METRICS if k in figures},
                    }
                )
    return card


def load_eval_results(path: str | Path | None) -> list[dict[str, Any]] | None:
    """Table rows from an evaluation JSON file, or None without a file."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`eval_json`: file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"`eval_json`: {path} is not valid JSON: {error}") from None
    return parse_eval_results(results_from_reports(data))


def evaluation_markdown(rows: list[dict[str, Any]] | None) -> str:
    if not rows:
        return NOT_EVALUATED
    lines = ["| Task | Dataset | Split | Metric | Value |", "|---|---|---|---|---|"]
    for row in rows:
        metric = f"{row['metric']} ({row['notes']})" if row.get("notes") else row["metric"]
        lines.append(f"| {row['task']} | {row['dataset']} | {row['split']} | {metric} | {row['value']:.2f} |")
    return "\n".join(lines)


def clip_export_markdown(repo_id: str, clip_export: str | None) -> str:
    """The card's "Without remote code" section: where the plain-CLIP export of the global towers is."""
    if clip_export is None:
        return (
            "The hosted widget and the `zero-shot-image-classification` pipeline do not run remote code. The global "
            "towers can be exported as a plain `CLIPModel` with `python -m conversion.export_clip`."
        )
    if clip_export == "subfolder":
        repo, subfolder = repo_id, ', subfolder="clip"'
        where = (
            "in the `clip/` folder of this repository (the hosted widget serves a repository's root only, so it "
            "does not run it)"
        )
    else:
        repo, subfolder = clip_export, ""
        where = f"as its own repository, [{clip_export}](https://huggingface.co/{clip_export}), where the hosted widget runs it"
    return (
        f"The global towers are also published as a plain transformers `CLIPModel` {where}: no remote code, the same "
        "image and text embeddings, no region features. The `zero-shot-image-classification` pipeline serves it:\n\n"
        "```python\nfrom transformers import CLIPModel, CLIPProcessor\n\n"
        f'model = CLIPModel.from_pretrained("{repo}"{subfolder})\n'
        f'processor = CLIPProcessor.from_pretrained("{repo}"{subfolder})\n```'
    )


def fill_template(template: str, values: dict[str, str]) -> str:
    """Replaces every `{{ name }}`; raises `ValueError` for a name without a value."""
    missing = sorted({name for name in _PLACEHOLDER.findall(template) if name not in values})
    if missing:
        raise ValueError(f"model card template: no value for {missing}")
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def _card_values(config: Any, info: CardInfo, repo_id: str) -> dict[str, str]:
    """The placeholders both cards share: metadata lists and the towers' geometry."""
    vision, text = config.vision_config, config.text_config
    return {
        "license": json.dumps(info.license),
        "tags": json.dumps(list(info.tags)),
        "datasets": json.dumps(list(info.datasets)),
        "model_name": repo_id.split("/")[-1],
        "repo_id": repo_id,
        "image_size": str(vision.image_size),
        "patch_size": str(vision.patch_size),
        "vision_width": str(vision.hidden_size),
        "vision_layers": str(vision.num_hidden_layers),
        "text_width": str(text.hidden_size),
        "text_layers": str(text.num_hidden_layers),
        "context_length": str(text.max_position_embeddings),
        "projection_dim": str(config.projection_dim),
    }


def recipe_card_values(config: Any) -> dict[str, str]:
    """The card's lines on the named recipe: its name, every field it set, and the fields given over it."""
    name = getattr(config, "recipe_name", None)
    if name is None:
        return {"recipe_name": "none (the fields below as given)", "recipe_fields": "-", "recipe_overrides": "-"}
    overrides = recipe_overrides(name, config)
    listed = ", ".join(f"`{field}` {value!r}" for field, value in recipe_fields(name).items())
    return {
        "recipe_name": f"`{name}`",
        "recipe_fields": listed,
        "recipe_overrides": ", ".join(f"`{field}` {value!r}" for field, value in overrides.items()) or "none",
    }


def render_model_card(
    config: Any, info: CardInfo, eval_rows: list[dict[str, Any]] | None, template_path: str | Path = DEFAULT_TEMPLATE
) -> str:
    """The README text for a HarmoCLIP model with `config` (a `HarmoCLIPConfig`), checked to parse as a ModelCard."""
    values = {
        **_card_values(config, info, info.repo_id),
        "base_model": json.dumps(info.base_model) if info.base_model else "null",
        "base_model_text": f"[{info.base_model}](https://huggingface.co/{info.base_model})"
        if info.base_model
        else "not recorded",
        "clip_export_usage": clip_export_markdown(info.repo_id, info.clip_export),
        **recipe_card_values(config),
        "dense_mode": f"`{config.dense_mode}`",
        "loss_weights": " / ".join(
            f"{getattr(config, f'loss_{term}_weight'):g}" for term in ("gc", "lrc", "rla", "gr")
        ),
        "region_text_grad": "yes" if config.region_text_grad else "no (GC alone trains the text tower)",
        "gr_teacher": f"`{config.gr_teacher}`",
        "gr_crop_scale": f"{config.gr_crop_scale:g}",
        "lexeme_mode": f"`{config.lexeme_mode}`",
        "region_pooling": f"`{config.region_pooling}`",
        "region_logit_scale_mode": f"`{config.region_logit_scale_mode}`",
        "region_logit_scale_start": "unused (the global `logit_scale`)"
        if config.region_logit_scale_mode == "shared"
        else f"{config.region_logit_scale_init_value:.4g} (log scale)",
        "lrc_mask_categories": "yes" if config.lrc_mask_categories else "no (only those of the same phrase text)",
        "datasets_text": ", ".join(info.datasets) if info.datasets else "not recorded",
        "evaluation": evaluation_markdown(eval_rows),
        **info.extra,
    }
    card_text = fill_template(Path(template_path).read_text(encoding="utf-8"), values)
    ModelCard(card_text)  # raises if the YAML metadata does not parse
    return card_text


def render_export_card(
    config: Any,
    info: CardInfo,
    export_repo_id: str,
    eval_rows: list[dict[str, Any]] | None,
    template_path: str | Path = EXPORT_TEMPLATE,
) -> str:
    """The README of the plain-CLIP export's own repository `export_repo_id`: the widget metadata, a link back to the
    HarmoCLIP model `info.repo_id` (also its `base_model`), and the evaluation rows of the global tasks."""
    global_rows = [row for row in eval_rows if row["task"] in GLOBAL_TASKS] if eval_rows else None
    values = {
        **_card_values(config, info, export_repo_id),
        "tags": json.dumps([tag for tag in info.tags if tag != "region-classification"]),  # it has no region features
        "harmoclip_repo_id": info.repo_id,
        "harmoclip_repo_id_json": json.dumps(info.repo_id),
        "evaluation": evaluation_markdown(global_rows),
    }
    card_text = fill_template(Path(template_path).read_text(encoding="utf-8"), values)
    ModelCard(card_text)
    return card_text


__all__ = [
    "CardInfo",
    "DEFAULT_TEMPLATE",
    "NOT_EVALUATED",
    "parse_eval_results",
    "load_eval_results",
    "evaluation_markdown",
    "fill_template",
    "render_model_card",
    "render_export_card",
]
