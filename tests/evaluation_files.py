"""Evaluation data files in their real formats (Karpathy's COCO and Flickr30k splits, a JSONL manifest, COCO
instances and panoptic json), with small generated images beside them: shared by the evaluation tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from conftest import tiny_harmoclip_model, tiny_processor

CAPTIONS = [
    ["a red square on a white wall", "a red box", "red on white", "a square", "something red"],
    ["a blue circle", "a round blue shape", "blue disc on grey", "a circle", "blue"],
    ["a green stripe", "green line across", "a stripe of green", "green", "a band"],
    ["a yellow dot", "small yellow spot", "a dot", "yellow", "a speck of yellow"],
]
COLOURS = [(220, 30, 30), (30, 30, 220), (30, 200, 30), (230, 220, 20)]
SIZES = [(48, 40), (64, 64), (40, 56), (50, 50)]


def write_image(path: Path, index: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", SIZES[index % 4], (240, 240, 240) if index % 2 == 0 else (120, 120, 120))
    draw = ImageDraw.Draw(image)
    width, height = image.size
    draw.rectangle([width // 4, height // 4, 3 * width // 4, 3 * height // 4], fill=COLOURS[index % 4])
    draw.ellipse([index, index, index + 8, index + 8], fill=(10 * index, 255 - 20 * index, 60))  # every image unique
    image.save(path, format="PNG")


def write_karpathy_coco(tmp_path: Path) -> Path:
    """`dataset_coco.json`: 6 images over splits test/val/restval; COCO's `filepath` folders."""
    splits = ["test", "val", "test", "restval", "test", "test"]
    entries = []
    for index, split in enumerate(splits):
        folder = "val2014" if index % 2 == 0 else "train2014"
        filename = f"COCO_{folder}_{index:012d}.png"
        write_image(tmp_path / "coco" / folder / filename, index)
        entries.append(
            {
                "filepath": folder,
                "filename": filename,
                "imgid": index,
                "split": split,
                "cocoid": 1000 + index,
                "sentids": list(range(5 * index, 5 * index + 5)),
                "sentences": [
                    {"tokens": caption.split(), "raw": caption + " ", "imgid": index, "sentid": 5 * index + number}
                    for number, caption in enumerate(CAPTIONS[index % 4])
                ],
            }
        )
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": entries, "dataset": "coco"}))
    return path


def write_karpathy_flickr(tmp_path: Path) -> Path:
    entries = []
    for index in range(4):
        filename = f"{1000092795 + index}.png"
        write_image(tmp_path / "flickr30k-images" / filename, index)
        entries.append(
            {
                "filename": filename,
                "imgid": index,
                "split": "test" if index < 3 else "train",
                "sentences": [{"raw": caption, "tokens": caption.split()} for caption in CAPTIONS[index][:4]],
            }
        )
    path = tmp_path / "dataset_flickr30k.json"
    path.write_text(json.dumps({"images": entries, "dataset": "flickr30k"}))
    return path


def write_manifest(tmp_path: Path) -> Path:
    """JSONL manifest with captions (a string or a list) and labelled regions, images beside it."""
    lines = []
    for index in range(4):
        write_image(tmp_path / "images" / f"{index}.png", index)
        width, height = SIZES[index]
        regions = [
            {
                "box": [width / 4, height / 4, 3 * width / 4, 3 * height / 4],
                "phrase": "a shape",
                "label": ["square", "circle"][index % 2],
            },
            {"box": [0, 0, width, height / 4], "phrase": "the background"},
        ]
        lines.append(
            {
                "image": f"images/{index}.png",
                "caption": CAPTIONS[index][0] if index == 0 else CAPTIONS[index][:2],
                "regions": regions,
                "split": "val" if index == 3 else "test",
            }
        )
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


COCO_CATEGORIES = [
    {"supercategory": "person", "id": 1, "name": "person"},
    {"supercategory": "vehicle", "id": 3, "name": "car"},
    {"supercategory": "animal", "id": 18, "name": "dog"},
    {"supercategory": "kitchen", "id": 44, "name": "bottle"},
]


def write_coco_instances(tmp_path: Path) -> Path:
    """`instances_val2017.json`: non-contiguous category ids, a crowd box, an empty box, an image without boxes."""
    images, annotations = [], []
    for index in range(4):
        file_name = f"{139 + index:012d}.png"
        write_image(tmp_path / "val2017" / file_name, index)
        width, height = SIZES[index]
        images.append({"id": 139 + index, "file_name": file_name, "width": width, "height": height})
    boxes = [  # (image_id, category_id, xywh, iscrowd)
        (139, 1, [4, 5, 20, 18], 0),
        (139, 18, [10, 2, 30, 30], 0),
        (139, 1, [0, 0, 48, 40], 1),
        (140, 3, [16, 16, 32, 32], 0),
        (140, 1, [2, 2, 10.5, 20.25], 0),
        (140, 3, [5, 5, 0, 10], 0),
        (141, 18, [0, 0, 40, 56], 0),
    ]
    for number, (image_id, category, bbox, crowd) in enumerate(boxes):
        annotations.append(
            {
                "id": number + 1,
                "image_id": image_id,
                "category_id": category,
                "bbox": bbox,
                "iscrowd": crowd,
                "area": bbox[2] * bbox[3],
                "segmentation": [[0, 0, 1, 0, 1, 1]],
            }
        )
    path = tmp_path / "annotations" / "instances_val2017.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(
        json.dumps(
            {"info": {}, "licenses": [], "images": images, "annotations": annotations, "categories": COCO_CATEGORIES}
        )
    )
    return path


def write_coco_panoptic(tmp_path: Path) -> Path:
    """`panoptic_val2017.json` with thing and stuff classes."""
    categories = [
        {"supercategory": "person", "isthing": 1, "id": 1, "name": "person", "color": [220, 20, 60]},
        {"supercategory": "animal", "isthing": 1, "id": 18, "name": "dog", "color": [0, 0, 142]},
        {"supercategory": "wall", "isthing": 0, "id": 199, "name": "wall-other-merged", "color": [102, 102, 156]},
        {"supercategory": "ground", "isthing": 0, "id": 149, "name": "grass-merged", "color": [0, 153, 0]},
    ]
    images, annotations = [], []
    for index in range(3):
        file_name = f"{285 + index:012d}.png"
        write_image(tmp_path / "val2017" / file_name, index)
        images.append({"id": 285 + index, "file_name": file_name, "width": SIZES[index][0], "height": SIZES[index][1]})
    segments = {
        285: [(1, [2, 3, 20, 20], 0), (199, [0, 0, 48, 10], 0), (149, [0, 30, 48, 10], 0)],
        286: [(18, [10, 10, 30, 30], 0), (1, [0, 0, 64, 64], 1)],
        287: [(199, [0, 0, 40, 56], 0)],
    }
    for image_id, image_segments in segments.items():
        annotations.append(
            {
                "image_id": image_id,
                "file_name": f"{image_id:012d}.png",
                "segments_info": [
                    {
                        "id": 1000 * image_id + n,
                        "category_id": c,
                        "iscrowd": crowd,
                        "bbox": bbox,
                        "area": bbox[2] * bbox[3],
                    }
                    for n, (c, bbox, crowd) in enumerate(image_segments)
                ],
            }
        )
    path = tmp_path / "annotations" / "panoptic_val2017.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(
        json.dumps({"info": {}, "licenses": [], "images": images, "annotations": annotations, "categories": categories})
    )
    return path


# The fixtures the evaluation tests share (imported by the test modules that use them).


@pytest.fixture(scope="module")
def processor(tiny_tokenizer):
    # CLIP's crop geometry: box tasks switch to the processor's square variant themselves.
    return tiny_processor(tiny_tokenizer, region_mode=False)


@pytest.fixture(scope="module")
def model():
    return tiny_harmoclip_model(seed=3)


@pytest.fixture
def karpathy_coco(tmp_path) -> Path:
    return write_karpathy_coco(tmp_path)


@pytest.fixture
def karpathy_flickr(tmp_path) -> Path:
    return write_karpathy_flickr(tmp_path)


@pytest.fixture
def manifest(tmp_path) -> Path:
    return write_manifest(tmp_path)


@pytest.fixture
def coco_instances(tmp_path) -> Path:
    return write_coco_instances(tmp_path)


@pytest.fixture
def coco_panoptic(tmp_path) -> Path:
    return write_coco_panoptic(tmp_path)
