"""The stock `zero-shot-object-detection` and `image-segmentation` calls that tools written for transformers' own
pipelines make: labels inside the input items and per image, whole-pixel boxes, the segmentation options, and an image
alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import run_isolated, tiny_harmoclip_model, tiny_processor
from modeling_harmoclip.pipeline_harmoclip import (
    COCO_PANOPTIC_LABELS,
    DenseSegmentationPipeline,
    ZeroShotRegionDetectionPipeline,
    prompt_name,
)
from training_runs import tiny_model_folder

LABELS = ["red square", "blue circle"]
OTHER_LABELS = ["green triangle", "cat", "dog"]


def _picture(size: tuple[int, int] = (160, 96)) -> Image.Image:
    image = Image.new("RGB", size, (120, 120, 120))
    draw = ImageDraw.Draw(image)
    draw.rectangle([20, 12, 60, 45], fill=(220, 30, 30))
    draw.ellipse([100, 45, 140, 80], fill=(30, 30, 220))
    return image


@pytest.fixture(scope="module")
def pipelines(tiny_tokenizer):
    model = tiny_harmoclip_model(seed=11)
    processor = tiny_processor(tiny_tokenizer)
    return (
        ZeroShotRegionDetectionPipeline(model=model, processor=processor),
        DenseSegmentationPipeline(model=model, processor=processor),
    )


def test_labels_inside_input_items(pipelines) -> None:
    detector, _ = pipelines
    image = _picture()
    expected = detector(image, candidate_labels=LABELS, threshold=0.0)
    assert detector({"image": image, "candidate_labels": LABELS}, threshold=0.0) == expected
    items = [{"image": image, "candidate_labels": LABELS}, {"image": image, "candidate_labels": OTHER_LABELS}]
    results = detector(items, threshold=0.0)
    assert results == [expected, detector(image, candidate_labels=OTHER_LABELS, threshold=0.0)]
    assert {item["label"] for item in results[1]} <= set(OTHER_LABELS)
    # The item's labels win over the call's (as in the stock pipeline).
    assert detector([items[1]], candidate_labels=LABELS, threshold=0.0) == [results[1]]


def test_per_image_label_lists(pipelines) -> None:
    detector, _ = pipelines
    images = [_picture(), _picture((96, 160))]
    results = detector(images, candidate_labels=[LABELS, OTHER_LABELS], threshold=0.0)
    assert results == [
        detector(images[0], candidate_labels=LABELS, threshold=0.0),
        detector(images[1], candidate_labels=OTHER_LABELS, threshold=0.0),
    ]
    # One flat list still means the same labels for every image.
    same = detector(images, candidate_labels=LABELS, threshold=0.0)
    assert same[1] == detector(images[1], candidate_labels=LABELS, threshold=0.0)
    with pytest.raises(ValueError, match="`candidate_labels` holds 1 label lists for 2 images"):
        detector(images, candidate_labels=[LABELS])
    with pytest.raises(TypeError, match=r"`candidate_labels\[1\]`\[0\] must be a string, got int: 3"):
        detector(images, candidate_labels=[LABELS, [3]])


def test_boxes_are_whole_pixels_as_the_stock_task_gives_them(pipelines) -> None:
    detector, _ = pipelines
    found = detector(_picture(), candidate_labels=LABELS, threshold=0.0)
    assert found and all(type(value) is int for item in found for value in item["box"].values())
    # The user's boxes come back truncated like `box.int().tolist()`, with no pixel lost to float noise.
    mine = detector(
        _picture(), candidate_labels=LABELS, boxes=[[20.7, 12.2, 60.9, 45.5], [100, 45, 140, 80]], threshold=0.0
    )
    assert {tuple(item["box"].values()) for item in mine} == {(20, 12, 60, 45), (100, 45, 140, 80)}
    image = np.asarray(_picture())
    box = found[0]["box"]
    assert (
        image[box["ymin"] : box["ymax"], box["xmin"] : box["xmax"]].size > 0
    )  # slices as code for the stock task does


def test_segmentation_takes_the_stock_options(pipelines) -> None:
    _, segmenter = pipelines
    plain = segmenter(_picture(), candidate_labels=LABELS)
    stock = segmenter(
        _picture(), candidate_labels=LABELS, subtask="semantic", mask_threshold=0.5, overlap_mask_area_threshold=0.5
    )
    assert [(item["label"], item["mask"].tobytes()) for item in plain] == [
        (item["label"], item["mask"].tobytes()) for item in stock
    ]
    assert segmenter(_picture(), candidate_labels=LABELS, subtask=None) == segmenter(
        _picture(), candidate_labels=LABELS
    )
    with pytest.raises(ValueError, match="`subtask` must be 'semantic' .* got 'panoptic'"):
        segmenter(_picture(), candidate_labels=LABELS, subtask="panoptic")
    with pytest.raises(ValueError, match=r"`mask_threshold` must be a number in \[0, 1\], got 2"):
        segmenter(_picture(), candidate_labels=LABELS, mask_threshold=2)
    with pytest.raises(ValueError, match=r"`overlap_mask_area_threshold` must be a number in \[0, 1\], got -1"):
        segmenter(_picture(), candidate_labels=LABELS, overlap_mask_area_threshold=-1)


def test_segmentation_of_an_image_alone_uses_coco_panoptic_names(pipelines) -> None:
    _, segmenter = pipelines
    image = _picture()
    results = segmenter(image, threshold=0.0)
    assert results and all(set(item) == {"score", "label", "mask"} for item in results)
    assert all(item["label"] in COCO_PANOPTIC_LABELS and item["mask"].size == image.size for item in results)
    # The same as naming the 133 classes by their words, and reporting COCO's names.
    prompts = [prompt_name(name) for name in COCO_PANOPTIC_LABELS]
    named = segmenter(image, candidate_labels=prompts, threshold=0.0)
    by_prompt = dict(zip(prompts, COCO_PANOPTIC_LABELS))
    assert [(item["label"], item["mask"].tobytes()) for item in results] == [
        (by_prompt[item["label"]], item["mask"].tobytes()) for item in named
    ]
    assert len(segmenter([image, image], threshold=0.0)) == 2
    assert len(COCO_PANOPTIC_LABELS) == 133 and prompt_name("sky-other-merged") == "sky"


def test_an_image_alone_from_a_saved_folder_where_the_project_is_not_installed(tmp_path: Path) -> None:
    folder, work = tiny_model_folder(tmp_path / "model"), tmp_path / "work"
    work.mkdir()
    _picture().save(work / "picture.png")
    code = f"""
from transformers import pipeline
segmenter = pipeline("image-segmentation", model={str(folder)!r}, trust_remote_code=True)
results = segmenter("picture.png", threshold=0.0, subtask="semantic", mask_threshold=0.5)
assert results and all(item["mask"].size == (160, 96) for item in results), results
detector = pipeline("zero-shot-object-detection", model={str(folder)!r}, trust_remote_code=True)
found = detector([{{"image": "picture.png", "candidate_labels": ["cat", "dog"]}}], threshold=0.0)
assert found[0] and all(type(v) is int for item in found[0] for v in item["box"].values()), found
print("LABELS", sorted({{item["label"] for item in results}})[:3])
"""
    result = run_isolated(code, cwd=work)
    assert "LABELS" in result.stdout
