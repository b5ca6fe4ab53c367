"""Evaluation data in its published formats, and lazy image loading in batches.

Retrieval (several captions per image):
- Karpathy split files `dataset_coco.json` / `dataset_flickr30k.json`:
  ``{"images": [{"filename", "filepath" (COCO only), "split": "test"|"val"|"train"|"restval", "sentences": [{"raw"}]}]}``;
- a JSONL manifest, one image per line: ``{"image": path, "caption": str or [str], "split": optional}``;
- a JSON list of such records (``caption-list``: the `flickr30k_test.json` / `coco_test.json` files FineCLIP's
  `test_flickr.py` / `test_mscoco.py` read, ALBEF/BLIP's format).

Box classification (ground-truth boxes with a class each):
- COCO `instances_*.json` (80 thing classes; xywh boxes; crowd boxes skipped);
- COCO `panoptic_*.json` (133 thing + stuff classes; ``annotations[].segments_info[]`` with `bbox`, `category_id`);
- a JSONL manifest whose ``regions`` carry a ``label``: ``{"image": path, "regions": [{"box": [x1, y1, x2, y2],
  "label": str, "phrase": optional}]}``.

Relative image paths resolve against `image_root` (default: the annotation file's folder). Boxes are kept in the
original image's pixels, xyxy; the processor maps them into the frame of `pixel_values`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from modeling_harmoclip.image_processing_harmoclip import read_image, xywh_to_xyxy
from plumbing.json_files import read_json

FORMATS = ("karpathy", "jsonl", "caption-list", "coco-instances", "coco-panoptic")


@dataclass
class RetrievalData:
    """Images and their captions; `caption_image[t]` is the index in `image_paths` of caption t's image."""

    image_paths: list[Path]
    captions: list[str]
    caption_image: list[int]
    source: str = ""
    split: str | None = None


@dataclass
class BoxImage:
    """One image's ground-truth boxes (original pixels, xyxy) and their class indices."""

    path: Path
    boxes: list[list[float]]
    labels: list[int]


@dataclass
class BoxClassificationData:
    """Images with labelled boxes; `class_names[c]` is the name of class c (as written in the annotations)."""

    images: list[BoxImage]
    class_names: list[str]
    source: str = ""
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def num_boxes(self) -> int:
        return sum(len(image.boxes) for image in self.images)


# ---------------------------------------------------------------------------------------------------- file formats


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {number}: not valid JSON: {error}") from error
            if not isinstance(record, dict) or "image" not in record:
                raise ValueError(f"{path}, line {number}: each line must be an object with an 'image' key")
            record["_line"] = number
            records.append(record)
    return records


def detect_format(path: str | Path) -> str:
    """Which of `FORMATS` an annotation file is, from its extension and top-level keys."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return "jsonl"
    data = read_json(path)
    if isinstance(data, list) and data and isinstance(data[0], dict) and {"image", "caption"} <= set(data[0]):
        return "caption-list"
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        first = data["images"][0] if data["images"] else {}
        if "sentences" in first:
            return "karpathy"
        annotations = data.get("annotations")
        if isinstance(annotations, list) and "categories" in data:
            if annotations and "segments_info" in annotations[0]:
                return "coco-panoptic"
            return "coco-instances"
    raise ValueError(
        f"cannot tell the format of {path}: expected a .jsonl manifest, a Karpathy split file or COCO json"
    )


def _resolve(root: Path, *parts: str) -> Path:
    return root.joinpath(*[part for part in parts if part])


def read_karpathy(path: str | Path, image_root: str | Path | None = None, split: str | None = "test") -> RetrievalData:
    """Reads `dataset_coco.json` / `dataset_flickr30k.json`; images of `split` (None: all), captions in file order.

    COCO images lie at ``image_root/filepath/filename`` (e.g. ``val2014/COCO_val2014_...jpg``), Flickr30k's at
    ``image_root/filename``.
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path} is not a Karpathy split file: no 'images' list")
    image_paths, captions, caption_image = [], [], []
    for index, entry in enumerate(data["images"]):
        if "filename" not in entry or "sentences" not in entry:
            raise ValueError(f"{path}: images[{index}] lacks 'filename' or 'sentences'")
        if split is not None and entry.get("split") != split:
            continue
        image_paths.append(_resolve(root, entry.get("filepath", ""), entry["filename"]))
        for sentence in entry["sentences"]:
            captions.append(sentence["raw"].strip())
            caption_image.append(len(image_paths) - 1)
    if not image_paths:
        raise ValueError(f"{path}: no image in split {split!r}")
    return RetrievalData(image_paths, captions, caption_image, source=str(path), split=split)


def read_retrieval_manifest(
    path: str | Path, image_root: str | Path | None = None, split: str | None = None
) -> RetrievalData:
    """Reads a JSONL manifest's images and captions (``caption`` a string or a list); with `split`, only the lines
    whose ``split`` equals it (lines without a ``split`` are kept)."""
    return _retrieval_records(Path(path), _read_jsonl(Path(path)), image_root, split)


def read_caption_list(
    path: str | Path, image_root: str | Path | None = None, split: str | None = None
) -> RetrievalData:
    """Reads a JSON list of ``{"image": path, "caption": str or [str]}`` (FineCLIP's and BLIP's retrieval test files)."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, list) or not all(isinstance(record, dict) and "image" in record for record in data):
        raise ValueError(f"{path} is not a caption list: expected a JSON list of objects with an 'image' key")
    records = [{**record, "_line": f"item {index}"} for index, record in enumerate(data)]
    return _retrieval_records(path, records, image_root, split)


def _retrieval_records(
    path: Path, records: list[dict[str, Any]], image_root: str | Path | None, split: str | None
) -> RetrievalData:
    """Images and captions of manifest records (``_line`` names each record in errors)."""
    root = Path(image_root) if image_root is not None else path.parent
    image_paths, captions, caption_image = [], [], []
    for record in records:
        if split is not None and record.get("split", split) != split:
            continue
        caption = record.get("caption", record.get("captions"))
        texts = [caption] if isinstance(caption, str) else caption
        if not isinstance(texts, list) or not texts or not all(isinstance(text, str) for text in texts):
            where = f"line {record['_line']}" if isinstance(record["_line"], int) else record["_line"]
            raise ValueError(
                f"{path}, {where}: 'caption' must be a string or a non-empty list of strings, got {caption!r}"
            )
        image_paths.append(root / record["image"])
        for text in texts:
            captions.append(text)
            caption_image.append(len(image_paths) - 1)
    if not image_paths:
        raise ValueError(f"{path}: no image" + (f" in split {split!r}" if split else ""))
    return RetrievalData(image_paths, captions, caption_image, source=str(path), split=split)


def _valid_box(box: Sequence[float]) -> bool:
    return len(box) == 4 and box[2] > box[0] and box[3] > box[1]


def _read_coco_boxes(
    path: str | Path,
    image_root: str | Path | None,
    kind: str,
    objects: Callable[[dict[str, Any]], Iterator[tuple[int, dict[str, Any]]]],
) -> BoxClassificationData:
    """Shared by the COCO readers: `objects(data)` yields ``(image_id, object)`` with the object's `bbox` (xywh),
    `category_id` and `iscrowd`. Classes follow `categories` sorted by id; crowd and empty boxes are skipped (and
    counted); images are kept in id order, those without a box left out."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    data = read_json(path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path} is not a COCO {kind} file: no '{key}' list")
    categories = sorted(data["categories"], key=lambda category: category["id"])
    class_index = {category["id"]: index for index, category in enumerate(categories)}
    files = {image["id"]: image["file_name"] for image in data["images"]}
    per_image: dict[int, BoxImage] = {}
    skipped = {"crowd": 0, "empty": 0}
    for image_id, item in objects(data):
        if image_id not in files:
            raise ValueError(f"{path}: object {item.get('id')} refers to unknown image_id {image_id}")
        if item.get("iscrowd", 0):
            skipped["crowd"] += 1
            continue
        box = xywh_to_xyxy(item["bbox"])
        if not _valid_box(box):
            skipped["empty"] += 1
            continue
        if item["category_id"] not in class_index:
            raise ValueError(
                f"{path}: object {item.get('id')} of image {image_id} has unknown category_id {item['category_id']}"
            )
        entry = per_image.setdefault(image_id, BoxImage(root / files[image_id], [], []))
        entry.boxes.append(box)
        entry.labels.append(class_index[item["category_id"]])
    images = [per_image[image_id] for image_id in sorted(per_image)]
    return BoxClassificationData(
        images, [category["name"] for category in categories], source=str(path), skipped=skipped
    )


def _instances(data: dict[str, Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    for annotation in data["annotations"]:
        yield annotation["image_id"], annotation


def _panoptic_segments(data: dict[str, Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    for annotation in data["annotations"]:
        for segment in annotation.get("segments_info", []):
            yield annotation["image_id"], segment


def read_coco_instances(path: str | Path, image_root: str | Path | None = None) -> BoxClassificationData:
    """Ground-truth boxes of COCO `instances_*.json` (80 thing classes for COCO), crowd and empty boxes skipped."""
    return _read_coco_boxes(path, image_root, "instances", _instances)


def read_coco_panoptic(path: str | Path, image_root: str | Path | None = None) -> BoxClassificationData:
    """Segment boxes of COCO `panoptic_*.json` (133 classes, things and stuff): one box per segment, crowd and empty
    segments skipped. Image files are the `images[].file_name` (the photographs, not the segmentation PNGs)."""
    return _read_coco_boxes(path, image_root, "panoptic", _panoptic_segments)


def read_box_manifest(
    path: str | Path,
    image_root: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    split: str | None = None,
) -> BoxClassificationData:
    """Labelled regions of a JSONL manifest. Classes: `class_names` if given (a label outside it is an error), else
    the sorted set of labels. Regions without a ``label`` are skipped."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    records = [record for record in _read_jsonl(path) if split is None or record.get("split", split) == split]
    if class_names is None:
        labels = {
            region["label"]
            for record in records
            for region in record.get("regions", [])
            if region.get("label") is not None
        }
        class_names = sorted(labels)
    class_index = {name: index for index, name in enumerate(class_names)}
    skipped = {"unlabelled": 0, "empty": 0}
    images = []
    for record in records:
        entry = BoxImage(root / record["image"], [], [])
        for number, region in enumerate(record.get("regions", [])):
            label = region.get("label")
            if label is None:
                skipped["unlabelled"] += 1
                continue
            box = region.get("box")
            if not isinstance(box, (list, tuple)) or len(box) != 4:
                raise ValueError(
                    f"{path}, line {record['_line']}: regions[{number}].box must be [x1, y1, x2, y2], got {box!r}"
                )
            box = [float(value) for value in box]
            if not _valid_box(box):
                skipped["empty"] += 1
                continue
            if label not in class_index:
                raise ValueError(
                    f"{path}, line {record['_line']}: regions[{number}].label {label!r} is not among the classes"
                )
            entry.boxes.append(box)
            entry.labels.append(class_index[label])
        if entry.boxes:
            images.append(entry)
    return BoxClassificationData(images, list(class_names), source=str(path), skipped=skipped)


def read_retrieval_data(
    path: str | Path, data_format: str = "auto", image_root: str | Path | None = None, split: str | None = "test"
) -> RetrievalData:
    """Karpathy split file or JSONL manifest, by `data_format` or detected."""
    data_format = detect_format(path) if data_format == "auto" else data_format
    if data_format == "karpathy":
        return read_karpathy(path, image_root, split)
    if data_format == "jsonl":
        return read_retrieval_manifest(path, image_root, split)
    if data_format == "caption-list":
        return read_caption_list(path, image_root, split)
    raise ValueError(
        f"`data_format` {data_format!r} holds no captions for retrieval: use 'karpathy', 'jsonl' or 'caption-list'"
    )


def read_box_data(
    path: str | Path, data_format: str = "auto", image_root: str | Path | None = None, split: str | None = None
) -> BoxClassificationData:
    """COCO instances, COCO panoptic or JSONL manifest, by `data_format` or detected."""
    data_format = detect_format(path) if data_format == "auto" else data_format
    if data_format == "coco-instances":
        return read_coco_instances(path, image_root)
    if data_format == "coco-panoptic":
        return read_coco_panoptic(path, image_root)
    if data_format == "jsonl":
        return read_box_manifest(path, image_root, split=split)
    raise ValueError(
        f"`data_format` {data_format!r} holds no labelled boxes: use 'coco-instances', 'coco-panoptic' or 'jsonl'"
    )


# ---------------------------------------------------------------------------------------------------- lazy loading


def load_image(path: Path) -> Image.Image:
    """The image at `path`, upright RGB as every entry point reads it (`modeling_harmoclip.image_processing_harmoclip.read_image`);
    a one-line `ValueError` naming the file when it cannot be read."""
    return read_image(path)


class ImageBoxDataset(Dataset):
    """Images read on demand, with their boxes (original pixels) when given: item i is ``(image, boxes or None)``."""

    def __init__(self, paths: Sequence[Path], boxes: Sequence[list[list[float]]] | None = None):
        if boxes is not None and len(boxes) != len(paths):
            raise ValueError(f"`boxes` must have one list per image ({len(paths)}), got {len(boxes)}")
        self.paths = list(paths)
        self.boxes = list(boxes) if boxes is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Image.Image, list[list[float]] | None]:
        return load_image(self.paths[index]), (self.boxes[index] if self.boxes is not None else None)


def region_processor(processor: Callable[..., Any]) -> Callable[..., Any]:
    """The processor's square, crop-free variant (`HarmoCLIPProcessor.as_region_mode`), so that every box stays whole;
    a processor without that variant is used as it is."""
    as_region_mode = getattr(processor, "as_region_mode", None)
    return as_region_mode() if callable(as_region_mode) else processor


class ProcessorCollate:
    """Turns a list of ``(image, boxes)`` into the processor's batch (runs in the DataLoader's workers).

    Without boxes: ``processor(images=...)`` -> `pixel_values`. With boxes, through the region variant of the
    processor: `pixel_values`, `boxes` (B, N, 4) normalised in the frame of `pixel_values`, `box_mask`; with a
    `crop_scale` also `crop_pixel_values` (B, N, 3, S, S) and `crop_mask`, each box's crop of the original image
    enlarged by that factor (the crop-and-encode baseline's input).
    """

    def __init__(self, processor: Callable[..., Any], with_boxes: bool, crop_scale: float | None = None):
        if crop_scale is not None and not with_boxes:
            raise ValueError(f"`crop_scale` ({crop_scale!r}) needs boxes: crops are cut around boxes")
        self.processor = region_processor(processor) if with_boxes else processor
        self.with_boxes = with_boxes
        self.crop_scale = crop_scale

    def __call__(self, items: list[tuple[Image.Image, list[list[float]] | None]]) -> dict[str, torch.Tensor]:
        images = [image for image, _ in items]
        if not self.with_boxes:
            batch = self.processor(images=images, return_tensors="pt")
            return {"pixel_values": batch["pixel_values"]}
        boxes = [box_list for _, box_list in items]
        crops = {} if self.crop_scale is None else {"return_crops": True, "crop_scale": self.crop_scale}
        batch = self.processor(images=images, boxes=boxes, return_tensors="pt", **crops)
        if "boxes" not in batch or "box_mask" not in batch:
            raise ValueError(
                "`processor` returned no `boxes`/`box_mask` for images with boxes: box classification needs a processor "
                "that maps boxes into the frame of `pixel_values` (HarmoCLIPProcessor)"
            )
        keys = ("pixel_values", "boxes", "box_mask") + (("crop_pixel_values", "crop_mask") if crops else ())
        return {key: batch[key] for key in keys}


def image_loader(
    paths: Sequence[Path],
    processor: Callable[..., Any],
    batch_size: int = 32,
    num_workers: int = 0,
    boxes: Sequence[list[list[float]]] | None = None,
    crop_scale: float | None = None,
) -> DataLoader:
    """Batches of processed images, in order, read lazily by `num_workers` worker processes; with `crop_scale`, also
    each box's crop of the original image (see `ProcessorCollate`)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}")
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"`num_workers` must be a non-negative int, got {num_workers!r}")
    return DataLoader(
        ImageBoxDataset(paths, boxes),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=ProcessorCollate(processor, with_boxes=boxes is not None, crop_scale=crop_scale),
    )


__all__ = [
    "FORMATS",
    "RetrievalData",
    "BoxImage",
    "BoxClassificationData",
    "detect_format",
    "read_karpathy",
    "read_retrieval_manifest",
    "read_caption_list",
    "read_coco_instances",
    "read_coco_panoptic",
    "read_box_manifest",
    "read_retrieval_data",
    "read_box_data",
    "load_image",
    "ImageBoxDataset",
    "ProcessorCollate",
    "image_loader",
]
