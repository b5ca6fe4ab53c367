"""Open-vocabulary semantic segmentation: mIoU of the label maps (`post_process_semantic_segmentation`, each image at
its own size) against the objects' masks of a JSONL manifest (the synthetic generator writes each object's pixels as
COCO RLE in its region's "mask"; everything else is background).

    python -m evaluation.evaluate --model PATH --task segmentation --data outputs/synthetic/val.jsonl
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from modeling_harmoclip.image_processing_harmoclip import BACKGROUND_INDEX, SEGMENTATION_THRESHOLD
from modeling_harmoclip.pipeline_harmoclip import DEFAULT_BACKGROUND_LABEL, DEFAULT_TEMPLATES, encode_candidates


def manifest_class_names(manifest: str | Path, records: Sequence[dict[str, Any]]) -> list[str]:
    """The candidate labels of a manifest: its data set's `classes.json` beside it (the synthetic generator's: every
    class, also those the split does not show), else the sorted labels of its regions."""
    classes = Path(manifest).parent / "classes.json"
    if classes.is_file():
        return list(json.loads(classes.read_text()))
    return sorted(
        {region["label"] for record in records for region in record.get("regions", []) if region.get("label")}
    )


def decode_mask(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE (`counts` as text or bytes) -> (H, W) bool."""
    from pycocotools import mask as mask_utils

    counts = rle["counts"].encode("ascii") if isinstance(rle["counts"], str) else rle["counts"]
    return mask_utils.decode({"size": list(rle["size"]), "counts": counts}).astype(bool)


def ground_truth_map(
    regions: Sequence[dict[str, Any]], class_index: dict[str, int], size: tuple[int, int]
) -> np.ndarray:
    """(H, W) int64 class map of one image: each labelled region's mask painted with its class, -1 elsewhere."""
    label_map = np.full(size, BACKGROUND_INDEX, dtype=np.int64)
    for number, region in enumerate(regions):
        if not region.get("label"):
            continue
        if region.get("mask") is None:
            raise ValueError(
                f"regions[{number}] ({region['label']!r}) has no 'mask'; a synthetic set made before masks were written "
                "gets them with training.data.synthetic.add_missing_masks(folder)"
            )
        mask = decode_mask(region["mask"])
        if mask.shape != size:
            raise ValueError(
                f"regions[{number}].mask is {mask.shape[1]} x {mask.shape[0]}, the image {size[1]} x {size[0]}"
            )
        label_map[mask] = class_index[region["label"]]
    return label_map


def iou_table(predicted: np.ndarray, truth: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class (background last, index `num_classes`) the pixels of intersection and of union of two label maps."""
    predicted = np.where(predicted < 0, num_classes, predicted)
    truth = np.where(truth < 0, num_classes, truth)
    confusion = np.bincount(truth.ravel() * (num_classes + 1) + predicted.ravel(), minlength=(num_classes + 1) ** 2)
    confusion = confusion.reshape(num_classes + 1, num_classes + 1)
    intersection = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - intersection
    return intersection, union


@torch.no_grad()
def evaluate_segmentation(
    model: torch.nn.Module,
    processor: Any,
    manifest: str | Path,
    class_names: Sequence[str] | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    background_label: str | None = DEFAULT_BACKGROUND_LABEL,
    threshold: float = SEGMENTATION_THRESHOLD,
    image_size: int | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """mIoU over the object classes present in the ground truth (intersections and unions summed over the images),
    with the background's IoU and the pixel accuracy beside it.

    Args:
        class_names: the candidate labels (default: the manifest's labels, sorted).
        threshold, background_label: the label maps' background rule (`post_process_semantic_segmentation`).
        image_size: the model's input side (default the model's own; the position embedding is interpolated).
    Returns:
        `{"mIoU", "background_IoU", "pixel_accuracy"}` in percent, `"per_class"` IoU, `"num_images"`.
    """
    manifest = Path(manifest)
    records = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    if class_names is None:
        class_names = manifest_class_names(manifest, records)
    class_index = {name: index for index, name in enumerate(class_names)}
    region_processor = processor.as_region_mode()
    options = {"size": {"height": image_size, "width": image_size}} if image_size is not None else {}
    label_embeds, background_embed = encode_candidates(
        model, region_processor.tokenizer, list(class_names), background_label, templates
    )
    parameter = next(model.parameters())
    intersection = np.zeros(len(class_names) + 1, dtype=np.int64)
    union = np.zeros_like(intersection)
    pixels = 0
    for record in tqdm(records, desc="segmentation", disable=not show_progress):
        image = Image.open(manifest.parent / record["image"]).convert("RGB")
        pixel_values = region_processor(images=image, return_tensors="pt", **options)["pixel_values"]
        outputs = model.detect(
            pixel_values.to(parameter.device, parameter.dtype),
            label_embeds,
            background_embed,
            interpolate_pos_encoding=image_size is not None,
            window_scales=(1.0,),  # only the maps are read here
        )
        predicted = region_processor.post_process_semantic_segmentation(
            outputs, [(image.height, image.width)], threshold
        )[0].numpy()
        truth = ground_truth_map(record["regions"], class_index, (image.height, image.width))
        image_intersection, image_union = iou_table(predicted, truth, len(class_names))
        intersection += image_intersection
        pixels += image.width * image.height
        union += image_union
    present = union[:-1] > 0
    per_class = {
        name: 100.0 * float(intersection[index]) / float(union[index])
        for index, name in enumerate(class_names)
        if present[index]
    }
    return {
        "mIoU": float(np.mean(list(per_class.values()))) if per_class else 0.0,
        "background_IoU": 100.0 * float(intersection[-1]) / max(1.0, float(union[-1])),
        "pixel_accuracy": 100.0 * float(intersection.sum()) / max(1, pixels),
        "per_class": per_class,
        "num_images": len(records),
        "class_names": list(class_names),
    }


def segmentation_markdown(results: dict[str, Any], title: str) -> str:
    """A markdown summary of `evaluate_segmentation`'s figures."""
    lines = [
        f"## {title}",
        "",
        "| mIoU | background IoU | pixel accuracy | images |",
        "| --- | --- | --- | --- |",
        f"| {results['mIoU']:.1f} | {results['background_IoU']:.1f} | {results['pixel_accuracy']:.1f} | "
        f"{results['num_images']} |",
    ]
    return "\n".join(lines) + "\n"


__all__ = [
    "manifest_class_names",
    "decode_mask",
    "ground_truth_map",
    "iou_table",
    "evaluate_segmentation",
    "segmentation_markdown",
]


def draw_segments(
    image: Image.Image, segments: Sequence[dict[str, Any]], out_path: str | Path | None = None, alpha: float = 0.55
) -> Image.Image:
    """The `image-segmentation` pipeline's results (`{"label", "score", "mask"}`, masks of any size, read nearest)
    overlaid on `image` in distinct colours, with a legend of the labels and scores; written as PNG when `out_path` is
    given. Returns the RGB picture at `image`'s size."""
    from PIL import ImageDraw, ImageFont

    from plumbing.atomic_files import write_bytes_atomic

    from .visualize import BOX_COLOURS

    picture = np.asarray(image.convert("RGB")).astype(np.float32)
    for index, segment in enumerate(segments):
        mask = np.asarray(segment["mask"].resize(image.size, Image.NEAREST)) > 0
        colour = np.array(BOX_COLOURS[index % len(BOX_COLOURS)], dtype=np.float32)
        picture[mask] = (1 - alpha) * picture[mask] + alpha * colour
    result = Image.fromarray(picture.round().astype(np.uint8))
    draw, font = ImageDraw.Draw(result), ImageFont.load_default()
    for index, segment in enumerate(segments):
        text = f"{segment['label']} {segment['score']:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        y = 2 + index * (bottom - top + 4)
        draw.rectangle([2, y, 6 + right - left, y + bottom - top + 2], fill=BOX_COLOURS[index % len(BOX_COLOURS)])
        draw.text((4 - left, y + 1 - top), text, fill=(255, 255, 255), font=font)
    if out_path is not None:
        if Path(out_path).suffix.lower() != ".png":
            raise ValueError(f"`out_path` must end in .png, got {out_path}")
        buffer = io.BytesIO()
        result.save(buffer, format="PNG")
        write_bytes_atomic(out_path, buffer.getvalue())
    return result
