"""Open-vocabulary detection scored by COCO's reference implementation (pycocotools' `COCOeval`): mAP (IoU 0.50:0.95)
and AP50 of the objects found with no boxes given, on a COCO instances json or a JSONL manifest (the synthetic
held-out split).

    python -m evaluation.evaluate --model PATH --task detection --data outputs/synthetic/val.jsonl
    python -m evaluation.evaluate --model PATH --task detection --data instances_val2017.json --image-root val2017 \\
        --baseline-model GC_ONLY_PATH

The same proposals (`HarmoCLIPModel.detect`: the model's label maps and windows) are scored two ways by the model,
``dense`` (HarmoCLIP's region embeddings, one encoder pass) and ``crop`` (crop-and-encode: each box's crop through the
global image encoder), and, with a baseline model (e.g. one trained with the global contrast alone), ``baseline`` (its
own proposals and region embeddings).
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from modeling_harmoclip.image_processing_harmoclip import DEFAULT_CROP_SCALE, xyxy_to_xywh
from modeling_harmoclip.pipeline_harmoclip import DEFAULT_BACKGROUND_LABEL, DEFAULT_TEMPLATES, encode_candidates

from .crop_detection import crop_detections
from .segmentation import evaluate_segmentation, manifest_class_names, segmentation_markdown

SCORERS = ("dense", "crop")
# COCO keeps at most 100 detections per image (`maxDets`); the least score kept is 0 so that recall is not cut short.
MAX_DETECTIONS = 100


@dataclass
class DetectionData:
    """Ground truth in COCO's instances format (`coco`: images, annotations with xywh `bbox`, categories) and, per
    COCO image (same order as `coco["images"]`), its file; `class_names[i]` is the prompt text of category
    `category_ids[i]`."""

    coco: dict[str, Any]
    paths: list[Path]
    class_names: list[str]
    category_ids: list[int]


def _readable(name: str) -> str:
    return name.replace("-", " ").replace("_", " ").strip()


def read_detection_data(path: str | Path, image_root: str | Path | None = None) -> DetectionData:
    """A COCO instances json (crowd annotations kept as COCO keeps them) or a JSONL manifest whose regions carry a
    "label" (its "mask", COCO RLE, becomes the annotation's segmentation); a manifest's classes are
    `manifest_class_names`' (a label outside them is an error)."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    if path.suffix == ".jsonl":
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        names = manifest_class_names(path, records)
        if not names:
            raise ValueError(f"{path} holds no labelled region")
        ids = {name: number + 1 for number, name in enumerate(names)}
        images, annotations = [], []
        for number, record in enumerate(records, start=1):
            width, height = Image.open(root / record["image"]).size
            images.append({"id": number, "file_name": record["image"], "width": width, "height": height})
            for region in record.get("regions", []):
                if not region.get("label"):
                    continue
                if region["label"] not in ids:
                    raise ValueError(f"{path}: region label {region['label']!r} is not among the classes {names}")
                x1, y1, x2, y2 = (float(value) for value in region["box"])
                annotation = {
                    "id": len(annotations) + 1,
                    "image_id": number,
                    "category_id": ids[region["label"]],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
                if region.get("mask") is not None:
                    annotation["segmentation"] = region["mask"]
                annotations.append(annotation)
        categories = [{"id": ids[name], "name": name} for name in names]
        coco = {"images": images, "annotations": annotations, "categories": categories}
    else:
        coco = json.loads(path.read_text())
        if not isinstance(coco, dict) or not {"images", "annotations", "categories"} <= set(coco):
            raise ValueError(f"{path} is not a COCO instances json (needs 'images', 'annotations', 'categories')")
        categories = sorted(coco["categories"], key=lambda category: category["id"])
    paths = [root / image["file_name"] for image in coco["images"]]
    return DetectionData(
        coco, paths, [_readable(category["name"]) for category in categories], [c["id"] for c in categories]
    )


def coco_average_precision(coco_gt: dict[str, Any], detections: list[dict[str, Any]]) -> dict[str, float]:
    """`COCOeval` (bbox) of `detections` (`{"image_id", "category_id", "bbox": xywh, "score"}`) against the ground truth
    -> {"mAP", "AP50", "AP75"} in percent, COCO's own figures (0 when nothing was detected)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and table
        truth = COCO()
        truth.dataset = json.loads(json.dumps(coco_gt))
        truth.createIndex()
        if not detections:
            return {"mAP": 0.0, "AP50": 0.0, "AP75": 0.0}
        evaluation = COCOeval(truth, truth.loadRes(detections), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = [max(0.0, float(value)) * 100 for value in evaluation.stats[:3]]  # -1: no ground truth of any kind
    return {"mAP": stats[0], "AP50": stats[1], "AP75": stats[2]}


@torch.no_grad()
def image_detections(
    model: torch.nn.Module,
    processor: Any,
    image: Image.Image,
    label_embeds: torch.Tensor,
    background_embed: torch.Tensor | None,
    scorer: str = "dense",
    crop_scale: float = DEFAULT_CROP_SCALE,
    max_detections: int = MAX_DETECTIONS,
) -> dict[str, torch.Tensor]:
    """One image's detections in its pixels (`post_process_object_detection`, threshold 0): the model's proposals
    scored by `scorer` ("dense": region embeddings; "crop": each proposal's crop through the global encoder)."""
    if scorer not in SCORERS:
        raise ValueError(f"`scorer` must be one of {SCORERS}, got {scorer!r}")
    processor = processor.as_region_mode()
    parameter = next(model.parameters())
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"].to(parameter.device, parameter.dtype)
    outputs = model.detect(pixel_values, label_embeds, background_embed)
    if scorer == "crop":
        outputs = crop_detections(model, processor, [image], outputs, label_embeds, background_embed, crop_scale)
    return processor.post_process_object_detection(
        outputs, threshold=0.0, target_sizes=[(image.height, image.width)], top_k=max_detections
    )[0]


def detect_dataset(
    model: torch.nn.Module,
    processor: Any,
    data: DetectionData,
    scorer: str = "dense",
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    background_label: str | None = DEFAULT_BACKGROUND_LABEL,
    crop_scale: float = DEFAULT_CROP_SCALE,
    show_progress: bool = False,
) -> list[dict[str, Any]]:
    """Every image's detections in COCO's results format (xywh `bbox` in pixels, the data's `category_id`)."""
    label_embeds, background_embed = encode_candidates(
        model, processor.tokenizer, data.class_names, background_label, templates
    )
    results = []
    images = zip(data.coco["images"], data.paths)
    for image_info, path in tqdm(
        images, total=len(data.paths), desc=f"detection ({scorer})", disable=not show_progress
    ):
        image = Image.open(path).convert("RGB")
        found = image_detections(model, processor, image, label_embeds, background_embed, scorer, crop_scale)
        for score, label, box in zip(found["scores"].tolist(), found["labels"].tolist(), found["boxes"].tolist()):
            results.append(
                {
                    "image_id": image_info["id"],
                    "category_id": data.category_ids[label],
                    "bbox": xyxy_to_xywh(box),
                    "score": score,
                }
            )
    return results


def evaluate_detection(
    model: torch.nn.Module,
    processor: Any,
    data: DetectionData,
    scorers: Sequence[str] = SCORERS,
    baseline: tuple[torch.nn.Module, Any] | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    background_label: str | None = DEFAULT_BACKGROUND_LABEL,
    crop_scale: float = DEFAULT_CROP_SCALE,
    show_progress: bool = False,
) -> dict[str, Any]:
    """COCO AP of each scorer of `model` and, if given, of the `baseline` (model, processor) scored "dense".

    Returns:
        `{scorer: {"mAP", "AP50", "AP75", "num_detections"}, ..., "num_images", "num_objects", "class_names"}`.
    """
    unknown = [scorer for scorer in scorers if scorer not in SCORERS]
    if unknown or not scorers:
        raise ValueError(f"`scorers` must be a non-empty subset of {SCORERS}, got {list(scorers)!r}")
    runs = [(scorer, model, processor, scorer) for scorer in scorers]
    if baseline is not None:
        runs.append(("baseline", baseline[0], baseline[1], "dense"))
    results: dict[str, Any] = {}
    for name, run_model, run_processor, scorer in runs:
        detections = detect_dataset(
            run_model, run_processor, data, scorer, templates, background_label, crop_scale, show_progress
        )
        results[name] = coco_average_precision(data.coco, detections) | {"num_detections": len(detections)}
    results.update(num_images=len(data.paths), num_objects=len(data.coco["annotations"]), class_names=data.class_names)
    return results


def detection_markdown(results: dict[str, Any], title: str) -> str:
    """A markdown table of `evaluate_detection`'s figures."""
    lines = [f"## {title}", "", "| scoring | mAP | AP50 | AP75 | detections |", "| --- | --- | --- | --- | --- |"]
    for name in (*SCORERS, "baseline"):
        if name in results:
            row = results[name]
            lines.append(
                f"| {name} | {row['mAP']:.1f} | {row['AP50']:.1f} | {row['AP75']:.1f} | {row['num_detections']} |"
            )
    lines += [
        "",
        f"{results['num_images']} images, {results['num_objects']} objects, {len(results['class_names'])} classes.",
    ]
    return "\n".join(lines) + "\n"


DENSE_TASKS = ("detection", "segmentation")


def run_dense_task(
    model: torch.nn.Module,
    processor: Any,
    task: str,
    data_path: str | Path,
    image_root: str | Path | None = None,
    baseline: tuple[torch.nn.Module, Any] | None = None,
    command: str = "",
) -> tuple[dict[str, Any], str]:
    """The `--task detection` / `--task segmentation` of `evaluation.evaluate`: (report, its markdown)."""
    if task == "detection":
        data = read_detection_data(data_path, image_root)
        results = evaluate_detection(model, processor, data, baseline=baseline, show_progress=True)
        markdown = detection_markdown(results, f"detection on {Path(data_path).name} (pycocotools COCOeval, bbox)")
    elif task == "segmentation":
        if Path(data_path).suffix != ".jsonl":
            raise ValueError(f"--task segmentation reads a JSONL manifest whose regions have masks, got {data_path}")
        results = evaluate_segmentation(model, processor, data_path, show_progress=True)
        markdown = segmentation_markdown(results, f"segmentation on {Path(data_path).name}")
    else:
        raise ValueError(f"`task` must be one of {DENSE_TASKS}, got {task!r}")
    settings = {"data": str(data_path), "image_root": str(image_root) if image_root else None}
    report = {"task": task, "settings": settings, "results": results, "command": command}
    return report, markdown


__all__ = [
    "DENSE_TASKS",
    "run_dense_task",
    "SCORERS",
    "DetectionData",
    "read_detection_data",
    "coco_average_precision",
    "image_detections",
    "detect_dataset",
    "evaluate_detection",
    "detection_markdown",
]
