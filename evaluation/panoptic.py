"""COCO panoptic boxes as FineCLIP and CLIPSelf evaluate box classification (their `COCOPanopticDataset`).

Every segment of `panoptic_*.json` gives one box and its class (133 for COCO, things and stuff):
- a thing's box is the segment's `bbox` (xywh) from the json;
- a stuff box is read from the segmentation PNG (`segm_root/<file_name with .png>`, id = R + 256 G + 256^2 B):
  x from the leftmost to the rightmost pixel of the segment, y likewise, as the references' `mask2box` computes it
  (max minus min, so a box one pixel narrower than the mask);
- boxes with area below `min_size`^2 or above `max_size`^2 pixels are left out, and only an image's first
  `max_segments` segments are read (the references' 8, 1024 and 100). Crowd segments are kept, as the references
  keep them.
Boxes stay in the original image's pixels, xyxy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from modeling_harmoclip.image_processing_harmoclip import xywh_to_xyxy
from plumbing.json_files import read_json

from .eval_data import BoxClassificationData, BoxImage

MIN_SIZE = 8
MAX_SIZE = 1024
MAX_SEGMENTS = 100


@dataclass
class PanopticBoxes:
    """Box-classification data plus which classes are things (the rest are stuff)."""

    data: BoxClassificationData
    class_is_thing: list[bool]


def segment_ids(png_path: Path) -> np.ndarray:
    """(H, W) int64 segment ids of a COCO panoptic PNG."""
    try:
        with Image.open(png_path) as image:
            rgb = np.asarray(image.convert("RGB"), dtype=np.int64)
    except (FileNotFoundError, OSError) as error:
        raise ValueError(f"cannot read panoptic segmentation {png_path}: {error}") from error
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def mask_box(mask: np.ndarray) -> list[float] | None:
    """[x_min, y_min, x_max, y_max] of the True pixels (inclusive indices, as the references), None if empty."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]


def _read_panoptic_json(path: Path) -> dict:
    data = read_json(path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path} is not a COCO panoptic file: no '{key}' list")
    return data


def read_panoptic_categories(path: str | Path) -> tuple[list[str], list[bool]]:
    """Class names (sorted by category id, as the references number them) and whether each is a thing."""
    categories = sorted(_read_panoptic_json(Path(path))["categories"], key=lambda category: category["id"])
    return [category["name"] for category in categories], [bool(category.get("isthing", 1)) for category in categories]


def read_panoptic_boxes(
    path: str | Path,
    image_root: str | Path | None = None,
    segm_root: str | Path | None = None,
    min_size: float = MIN_SIZE,
    max_size: float = MAX_SIZE,
    max_segments: int = MAX_SEGMENTS,
) -> PanopticBoxes:
    """Reads `panoptic_*.json` and its PNGs as described in the module docstring.

    Args:
        path: the panoptic json.
        image_root: folder of the photographs (default: the json's folder).
        segm_root: folder of the segmentation PNGs (default: beside the json, named like it without `.json`,
            e.g. `annotations/panoptic_val2017/`).
    Returns:
        `PanopticBoxes`; classes follow `categories` sorted by id; `data.skipped` counts boxes left out by size
        ("small", "large"), segments beyond `max_segments` ("beyond_max_segments") and stuff segments absent from
        their PNG ("empty").
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    segm = Path(segm_root) if segm_root is not None else path.with_suffix("")
    data = _read_panoptic_json(path)
    categories = sorted(data["categories"], key=lambda category: category["id"])
    class_index = {category["id"]: index for index, category in enumerate(categories)}
    is_thing = {category["id"]: bool(category.get("isthing", 1)) for category in categories}
    images = {image["id"]: image for image in data["images"]}
    skipped = {"small": 0, "large": 0, "beyond_max_segments": 0, "empty": 0}
    result: list[BoxImage] = []
    for annotation in sorted(data["annotations"], key=lambda item: item["image_id"]):
        image = images.get(annotation["image_id"])
        if image is None:
            raise ValueError(f"{path}: annotation of unknown image_id {annotation['image_id']}")
        segments = annotation.get("segments_info", [])
        skipped["beyond_max_segments"] += max(0, len(segments) - max_segments)
        entry = BoxImage(root / image["file_name"], [], [])
        ids = None
        for segment in segments[:max_segments]:
            category = segment["category_id"]
            if category not in class_index:
                raise ValueError(
                    f"{path}: segment {segment.get('id')} of image {image['id']} has unknown category_id {category}"
                )
            if is_thing[category]:
                box = xywh_to_xyxy(segment["bbox"])
            else:
                if ids is None:
                    ids = segment_ids(
                        segm / annotation.get("file_name", Path(image["file_name"]).with_suffix(".png").name)
                    )
                box = mask_box(ids == segment["id"])
                if box is None:
                    skipped["empty"] += 1
                    continue
            area = (box[2] - box[0]) * (box[3] - box[1])
            if area < min_size**2:
                skipped["small"] += 1
                continue
            if area > max_size**2:
                skipped["large"] += 1
                continue
            entry.boxes.append(box)
            entry.labels.append(class_index[category])
        if entry.boxes:
            result.append(entry)
    names = [category["name"] for category in categories]
    return PanopticBoxes(
        BoxClassificationData(result, names, source=str(path), skipped=skipped),
        [is_thing[category["id"]] for category in categories],
    )


__all__ = [
    "PanopticBoxes",
    "MIN_SIZE",
    "MAX_SIZE",
    "MAX_SEGMENTS",
    "segment_ids",
    "mask_box",
    "read_panoptic_categories",
    "read_panoptic_boxes",
]
