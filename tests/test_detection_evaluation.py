"""Detection and segmentation evaluation: the synthetic objects' masks against their drawn pixels, COCO AP by
pycocotools on detections worked out by hand, mIoU counts by hand, and the `evaluation.evaluate` command end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import save_tiny_folder, tiny_harmoclip_model, tiny_processor
from evaluation.detection import (
    coco_average_precision,
    detect_dataset,
    image_detections,
    read_detection_data,
)
from evaluation.evaluate import main as evaluate_main
from evaluation.segmentation import decode_mask, ground_truth_map, iou_table
from modeling_harmoclip.pipeline_harmoclip import ZeroShotRegionDetectionPipeline, encode_candidates
from training.data.synthetic import (
    COLOURS,
    SyntheticSettings,
    add_missing_masks,
    generate_synthetic_dataset,
    object_mask_rle,
    render_sample,
)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    settings = SyntheticSettings(num_train=0, num_val=6, seed=3, image_size=64, held_out=2)
    return generate_synthetic_dataset(tmp_path_factory.mktemp("shapes") / "data", settings)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("detection_model") / "model"
    save_tiny_folder(folder, tiny_tokenizer, seed=2, region_mode=True)
    return folder


def test_synthetic_masks_are_the_objects_drawn_pixels() -> None:
    settings = SyntheticSettings(image_size=64)
    for index in range(4):
        image, record = render_sample(settings, "val", index)
        pixels = np.asarray(image)
        for region in record["regions"]:
            mask = decode_mask(region["mask"])
            x1, y1, x2, y2 = region["box"]
            colour = np.array(COLOURS[region["label"].split()[0]])
            painted = np.zeros_like(mask)
            painted[y1:y2, x1:x2] = (pixels[y1:y2, x1:x2] == colour).all(axis=-1)
            assert mask.shape == (64, 64) and mask.any()
            assert np.array_equal(mask, painted)  # the shape's colour never occurs in the grey background


def test_add_missing_masks_draws_the_same_masks_again(shapes: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("settings.json", "val.jsonl"):
        (copy / name).write_text((shapes / name).read_text())
    records = [json.loads(line) for line in (copy / "val.jsonl").read_text().splitlines()]
    first = records[0]
    stripped = [{**first, "regions": [{k: v for k, v in r.items() if k != "mask"} for r in first["regions"]]}]
    (copy / "val.jsonl").write_text("".join(json.dumps(record) + "\n" for record in stripped + records[1:]))
    assert add_missing_masks(copy) == len(records[0]["regions"])
    assert [json.loads(line) for line in (copy / "val.jsonl").read_text().splitlines()] == records
    assert add_missing_masks(copy) == 0


def test_manifest_becomes_coco_ground_truth(shapes: Path) -> None:
    data = read_detection_data(shapes / "val.jsonl")
    classes = json.loads((shapes / "classes.json").read_text())
    assert data.class_names == classes and data.category_ids == list(range(1, len(classes) + 1))
    first = json.loads((shapes / "val.jsonl").read_text().splitlines()[0])
    annotations = [a for a in data.coco["annotations"] if a["image_id"] == 1]
    for annotation, region in zip(annotations, first["regions"]):
        x1, y1, x2, y2 = region["box"]
        assert annotation["bbox"] == [x1, y1, x2 - x1, y2 - y1] and annotation["area"] == (x2 - x1) * (y2 - y1)
        assert classes[annotation["category_id"] - 1] == region["label"]
        assert annotation["segmentation"] == region["mask"]
    assert data.coco["images"][0] == {"id": 1, "file_name": first["image"], "width": 64, "height": 64}


def test_coco_average_precision_on_detections_worked_out_by_hand(shapes: Path) -> None:
    data = read_detection_data(shapes / "val.jsonl")
    exact = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in data.coco["annotations"]
    ]
    assert coco_average_precision(data.coco, exact) == {"mAP": pytest.approx(100), "AP50": 100, "AP75": 100}
    # Every box widened by half its width: IoU 1 / 1.5 = 0.67, a hit at IoU 0.5 but a miss at 0.75.
    wide = [{**d, "bbox": [d["bbox"][0], d["bbox"][1], d["bbox"][2] * 1.5, d["bbox"][3]]} for d in exact]
    figures = coco_average_precision(data.coco, wide)
    assert figures["AP50"] == pytest.approx(100) and figures["AP75"] == 0
    # The wrong class everywhere finds nothing.
    wrong = [{**d, "category_id": d["category_id"] % len(data.category_ids) + 1} for d in exact]
    assert coco_average_precision(data.coco, wrong)["AP50"] == 0
    assert coco_average_precision(data.coco, [])["mAP"] == 0


def test_dataset_detections_are_the_pipelines(shapes: Path, tiny_tokenizer) -> None:
    model = tiny_harmoclip_model(seed=2)
    processor = tiny_processor(tiny_tokenizer, region_mode=True)
    data = read_detection_data(shapes / "val.jsonl")
    detections = detect_dataset(model, processor, data)
    detector = ZeroShotRegionDetectionPipeline(model=model, processor=processor)
    from PIL import Image

    image = Image.open(data.paths[0]).convert("RGB")
    expected = detector(image, candidate_labels=data.class_names, threshold=0.0, top_k=100)
    mine = [d for d in detections if d["image_id"] == 1]
    assert len(mine) == len(expected) == 100
    for ours, theirs in zip(mine, expected):
        box = theirs["box"]
        assert data.class_names[ours["category_id"] - 1] == theirs["label"]
        assert ours["score"] == pytest.approx(theirs["score"], abs=1e-6)
        xywh = [box["xmin"], box["ymin"], box["xmax"] - box["xmin"], box["ymax"] - box["ymin"]]
        assert ours["bbox"] == pytest.approx(xywh, abs=1e-3)
    # Crop-and-encode scores the same proposals: every box it reports is one of the dense path's proposals.
    label_embeds, background = encode_candidates(model, tiny_tokenizer, data.class_names)
    crop = image_detections(model, processor, image, label_embeds, background, scorer="crop")
    dense = image_detections(model, processor, image, label_embeds, background, scorer="dense", max_detections=10**6)
    proposals = {tuple(round(v, 2) for v in box) for box in dense["boxes"].tolist()}
    assert crop["boxes"].shape[0] == 100 and all(
        tuple(round(v, 2) for v in b) in proposals for b in crop["boxes"].tolist()
    )
    assert not torch.allclose(crop["scores"], dense["scores"][:100])


def test_iou_table_by_hand() -> None:
    truth = np.array([[0, 0, -1], [1, 1, -1]])
    predicted = np.array([[0, -1, -1], [1, 0, 1]])
    intersection, union = iou_table(predicted, truth, num_classes=2)
    # class 0: truth {(0,0),(0,1)}, predicted {(0,0),(1,1)} -> 1 / 3; class 1: truth {(1,0),(1,1)}, predicted
    # {(1,0),(1,2)} -> 1 / 3; background: truth {(0,2),(1,2)}, predicted {(0,1),(0,2)} -> 1 / 3.
    assert intersection.tolist() == [1, 1, 1] and union.tolist() == [3, 3, 3]


def test_ground_truth_map_needs_masks_that_fit() -> None:
    mask = object_mask_rle("square", (1, 1, 3, 3), 4)
    regions = [{"label": "red circle", "mask": mask}]
    expected = np.full((4, 4), -1)
    expected[1:3, 1:3] = 0
    assert np.array_equal(ground_truth_map(regions, {"red circle": 0}, (4, 4)), expected)
    with pytest.raises(ValueError, match=r"regions\[0\].mask is 4 x 4, the image 5 x 4"):
        ground_truth_map(regions, {"red circle": 0}, (4, 5))
    with pytest.raises(ValueError, match=r"regions\[0\] \('red circle'\) has no 'mask'; .*add_missing_masks"):
        ground_truth_map([{"label": "red circle"}], {"red circle": 0}, (4, 4))


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_evaluate_command_writes_its_report(shapes: Path, model_dir: Path, tmp_path: Path, task: str, capsys) -> None:
    out = tmp_path / f"{task}.json"
    argv = ["--model", str(model_dir), "--task", task, "--data", str(shapes / "val.jsonl"), "--out", str(out)]
    assert evaluate_main(argv + ["--num-workers", "0"]) == 0
    report = json.loads(out.read_text())
    results = report["results"]
    if task == "detection":
        assert set(results) >= {"dense", "crop"} and 0 <= results["dense"]["AP50"] <= 100
        assert results["num_images"] == 6 and 6 <= results["dense"]["num_detections"] <= 600  # COCO keeps 100 each
    else:
        assert 0 <= results["mIoU"] <= 100 and 0 <= results["pixel_accuracy"] <= 100 and results["num_images"] == 6
    assert "Command:" in out.with_suffix(".md").read_text()
    assert evaluate_main(argv + ["--protocol", "clipself"]) == 1
    assert "takes no --protocol" in capsys.readouterr().err
