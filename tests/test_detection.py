"""Open-vocabulary detection and segmentation: torch NMS against a slow loop-based reference, proposals against boxes
worked out by hand, scores against the region definitions (`region_reference`), post-processing in the pixels of a
640 x 360 image whose objects sit at known places, the pipelines in process (batching, options, bad input) and from a
saved folder / offline Hub cache in fresh processes that cannot import the project."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from conftest import offline_hub_cache, run_isolated, save_tiny_folder, tiny_harmoclip_model, tiny_processor
from modeling_harmoclip.image_processing_harmoclip import BACKGROUND_INDEX, batched_nms, box_iou, nms
from modeling_harmoclip.modeling_harmoclip import (
    MAP_THRESHOLDS,
    HarmoCLIPDetectionOutput,
    connected_components,
    propose_boxes,
    region_boxes,
    window_boxes,
)
from modeling_harmoclip.pipeline_harmoclip import (
    DEFAULT_TEMPLATES,
    DenseSegmentationPipeline,
    ZeroShotRegionDetectionPipeline,
    encode_candidates,
)
from region_reference import reference_label_embeds, reference_regions, value_path_dense

WIDTH, HEIGHT = 640, 360
# Two objects at known places of the 640 x 360 picture (xyxy pixels).
RED_BOX = [80.0, 45.0, 240.0, 180.0]
BLUE_BOX = [400.0, 180.0, 560.0, 315.0]
LABELS = ["red square", "blue circle"]


def _picture() -> Image.Image:
    image = Image.new("RGB", (WIDTH, HEIGHT), (120, 120, 120))
    pen = ImageDraw.Draw(image)
    pen.rectangle([80, 45, 239, 179], fill=(220, 30, 30))
    pen.ellipse([400, 180, 559, 314], fill=(30, 60, 220))
    return image


# ---------------------------------------------------------------------------------------------- NMS


def slow_iou(a: list[float], b: list[float]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def slow_nms(boxes: list[list[float]], scores: list[float], labels: list[int], threshold: float) -> list[int]:
    """Class-wise greedy NMS written as the textbook loop: best remaining box first, equal scores by index."""
    order = sorted(range(len(boxes)), key=lambda index: (-scores[index], index))
    kept: list[int] = []
    for index in order:
        if all(labels[k] != labels[index] or slow_iou(boxes[k], boxes[index]) <= threshold for k in kept):
            kept.append(index)
    return kept


def _random_boxes(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(count, 2, generator=generator) * 30
    sizes = torch.rand(count, 2, generator=generator) * 30 + 10
    return torch.cat([corners, corners + sizes], dim=1)


@pytest.mark.parametrize("seed, threshold", [(0, 0.5), (1, 0.3), (2, 0.7), (3, 0.0)])
def test_nms_matches_the_slow_reference(seed: int, threshold: float) -> None:
    boxes = _random_boxes(120, seed)
    generator = torch.Generator().manual_seed(seed + 100)
    # Rounded scores: many ties, which must keep the earlier box as the reference does.
    scores = (torch.rand(120, generator=generator) * 10).round() / 10
    labels = torch.randint(0, 3, (120,), generator=generator)
    expected = slow_nms(boxes.tolist(), scores.tolist(), labels.tolist(), threshold)
    assert batched_nms(boxes, scores, labels, threshold).tolist() == expected
    single = slow_nms(boxes.tolist(), scores.tolist(), [0] * 120, threshold)
    assert nms(boxes, scores, threshold).tolist() == single
    assert len(expected) > len(single)  # other labels' boxes never suppress


def test_box_iou_against_hand_computed_values() -> None:
    first = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    second = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
    expected = torch.tensor([[1 / 7, 1.0, 0.0], [0.0, 0.25, 0.0]])
    assert torch.allclose(box_iou(first, second), expected)


# ---------------------------------------------------------------------------------------------- proposals


def test_connected_regions_and_their_boxes_by_hand() -> None:
    mask = torch.tensor(
        [
            [1, 1, 0, 0],
            [0, 1, 0, 1],
            [0, 0, 0, 1],
            [1, 0, 1, 1],
        ],
        dtype=torch.bool,
    )[None]
    labels = connected_components(mask)[0]
    # Three regions: {(0,0),(0,1),(1,1)}, {(1,3),(2,3),(3,3),(3,2)}, {(3,0)}; diagonal cells are not neighbours.
    assert labels[0, 0] == labels[0, 1] == labels[1, 1] == 0
    assert labels[1, 3] == labels[2, 3] == labels[3, 3] == labels[3, 2] == 7
    assert labels[3, 0] == 12 and labels[0, 2] == 16
    boxes = sorted(region_boxes(mask).tolist())
    assert boxes == sorted([[0, 0, 0.5, 0.5], [0.5, 0.25, 1.0, 1.0], [0.0, 0.75, 0.25, 1.0]])


def test_windows_tile_the_frame_at_each_scale() -> None:
    windows = window_boxes((1.0, 0.5))
    assert windows[0].tolist() == [0, 0, 1, 1] and len(windows) == 1 + 9
    assert torch.allclose((windows[1:, 2:] - windows[1:, :2]), torch.full((9, 2), 0.5))
    with pytest.raises(ValueError, match=r"`window_scales` must hold fractions in \(0, 1\], got 1.5"):
        window_boxes((1.5,))


def _known_maps() -> torch.Tensor:
    """(2, 8, 8) label maps over the 640 x 360 picture's square frame: each object's patches at 0.9."""
    maps = torch.full((2, 8, 8), 0.05)
    maps[0, 1:4, 1:3] = 0.9  # columns 1-2 of 8 = x 80..240, rows 1-3 of 8 = y 45..180: RED_BOX
    maps[1, 4:7, 5:7] = 0.9  # x 400..560, y 180..315: BLUE_BOX
    return maps


def test_proposals_from_label_maps_land_on_the_objects_in_pixels(tiny_tokenizer) -> None:
    maps = _known_maps()
    proposals = propose_boxes(maps, window_scales=(1.0,))
    assert proposals.tolist() == [[1 / 8, 1 / 8, 3 / 8, 4 / 8], [5 / 8, 4 / 8, 7 / 8, 7 / 8], [0, 0, 1, 1]]
    # Each object's box scores its label; the whole frame scores little.
    scores = torch.tensor([[[0.9, 0.05], [0.1, 0.8], [0.2, 0.2]]])
    outputs = HarmoCLIPDetectionOutput(
        scores=scores, pred_boxes=proposals[None], box_mask=torch.ones(1, 3, dtype=torch.bool)
    )
    processor = tiny_processor(tiny_tokenizer, region_mode=True)
    found = processor.post_process_object_detection(outputs, threshold=0.3, target_sizes=[(HEIGHT, WIDTH)])[0]
    assert found["labels"].tolist() == [0, 1]
    assert found["boxes"].tolist() == [RED_BOX, BLUE_BOX]
    assert found["scores"].tolist() == pytest.approx([0.9, 0.8])


def test_post_process_puts_boxes_back_through_a_centre_crop(tiny_tokenizer) -> None:
    """OWLv2's padding bug is the warning: boxes normalised by the processor's own resize and crop must come back to
    the same pixels of a non-square image."""
    processor = tiny_processor(tiny_tokenizer, region_mode=False)  # shortest edge 32, centre crop 32 x 32
    inside = [[200.0, 40.0, 300.0, 200.0], [330.0, 100.0, 420.0, 350.0]]  # both within the cropped middle
    batch = processor(images=_picture(), boxes=inside, return_tensors="pt")
    scores = torch.tensor([[[0.7, 0.2], [0.1, 0.6]]])
    outputs = HarmoCLIPDetectionOutput(scores=scores, pred_boxes=batch["boxes"], box_mask=batch["box_mask"])
    found = processor.post_process_object_detection(outputs, threshold=0.5, target_sizes=[(HEIGHT, WIDTH)])[0]
    assert torch.allclose(found["boxes"], torch.tensor(inside), atol=1e-3)
    assert processor.post_process_object_detection(outputs, threshold=0.5)[0]["boxes"].max() <= 1.0


def test_post_process_threshold_nms_and_top_k(tiny_tokenizer) -> None:
    processor = tiny_processor(tiny_tokenizer, region_mode=True)
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.55], [0.5, 0.5, 1.0, 1.0]]])
    scores = torch.tensor([[[0.6, 0.4], [0.7, 0.3], [0.2, 0.45]]])
    outputs = HarmoCLIPDetectionOutput(scores=scores, pred_boxes=boxes, box_mask=torch.tensor([[True, True, False]]))
    found = processor.post_process_object_detection(outputs, threshold=0.35)[0]
    # (box 1, label 0) suppresses its twin box 0 for label 0; label 1 keeps box 0 (0.4); box 2 is masked.
    assert found["labels"].tolist() == [0, 1] and found["scores"].tolist() == pytest.approx([0.7, 0.4])
    kept = processor.post_process_object_detection(outputs, threshold=0.35, nms_threshold=None, top_k=2)[0]
    assert kept["scores"].tolist() == pytest.approx([0.7, 0.6])


# ---------------------------------------------------------------------------------------------- the model's scores


def test_detect_objects_scores_are_the_region_definitions(tiny_tokenizer) -> None:
    model = tiny_harmoclip_model(seed=3)
    processor = tiny_processor(tiny_tokenizer, region_mode=True)
    label_embeds = reference_label_embeds(model, tiny_tokenizer, LABELS, DEFAULT_TEMPLATES).float()
    background = reference_label_embeds(model, tiny_tokenizer, ["background"], DEFAULT_TEMPLATES)[0].float()
    batch = processor(images=_picture(), boxes=[RED_BOX, BLUE_BOX], return_tensors="pt")
    outputs = model.detect(batch["pixel_values"], label_embeds, background, batch["boxes"], batch["box_mask"])
    regions = reference_regions(model, batch["pixel_values"], batch["boxes"][0])
    classes = torch.cat([label_embeds, background[None]]).double()
    expected = (model.logit_scale.exp().item() * regions @ classes.t()).softmax(dim=-1)
    assert torch.allclose(outputs.scores[0].double(), expected[:, :2], atol=1e-5)
    # Without background, the label maps are the softmax over labels of every normalised value-path patch, by hand.
    plain = model.detect(batch["pixel_values"], label_embeds)
    patches = F.normalize(value_path_dense(model, batch["pixel_values"]).double()[0], dim=0)  # (D, h, w)
    cosine = torch.einsum("dhw,ld->lhw", patches, label_embeds.double())
    reference_maps = (model.logit_scale.exp().item() * cosine).softmax(dim=0)
    assert torch.allclose(plain.dense_probabilities[0].double(), reference_maps, atol=1e-5)
    assert plain.background_probabilities is None and plain.box_mask.all()
    # The proposals are the bounding boxes of the 4-connected regions of each map above each level (a flood fill
    # here), and the whole image, each once.
    expected = {(0.0, 0.0, 1.0, 1.0)}
    for level in MAP_THRESHOLDS:
        for label_map in plain.dense_probabilities[0]:  # the maps checked above
            expected |= _flood_fill_boxes((label_map >= level).tolist())
    found = {tuple(round(value, 4) for value in box) for box in plain.pred_boxes[0].tolist()}
    assert len(found) == plain.pred_boxes.shape[1] and found == {tuple(round(v, 4) for v in box) for box in expected}


def _flood_fill_boxes(mask: list[list[bool]]) -> set[tuple[float, ...]]:
    """Bounding boxes (normalised xyxy, cell edges) of the 4-connected True regions of an (h, w) grid, by a loop."""
    height, width = len(mask), len(mask[0])
    seen, boxes = set(), set()
    for row in range(height):
        for col in range(width):
            if not mask[row][col] or (row, col) in seen:
                continue
            stack, cells = [(row, col)], []
            seen.add((row, col))
            while stack:
                r, c = stack.pop()
                cells.append((r, c))
                for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                    if 0 <= nr < height and 0 <= nc < width and mask[nr][nc] and (nr, nc) not in seen:
                        seen.add((nr, nc))
                        stack.append((nr, nc))
            rows, cols = [r for r, _ in cells], [c for _, c in cells]
            boxes.add((min(cols) / width, min(rows) / height, (max(cols) + 1) / width, (max(rows) + 1) / height))
    return boxes


# ---------------------------------------------------------------------------------------------- segmentation


def test_semantic_segmentation_at_the_image_size_with_its_background_rule(tiny_tokenizer) -> None:
    processor = tiny_processor(tiny_tokenizer, region_mode=True)
    maps = _known_maps()[None]
    background = 1 - maps.sum(dim=1)
    outputs = HarmoCLIPDetectionOutput(dense_probabilities=maps, background_probabilities=background)
    label_map = processor.post_process_semantic_segmentation(outputs, target_sizes=[(HEIGHT, WIDTH)])[0]
    assert label_map.shape == (HEIGHT, WIDTH) and label_map.dtype == torch.int64
    # Well inside each object its label, well outside background; the labelled area is the boxes' within a margin.
    assert (label_map[60:165, 95:225] == 0).all() and (label_map[195:300, 415:545] == 1).all()
    assert (label_map[:30] == BACKGROUND_INDEX).all() and (label_map[:, 260:380] == BACKGROUND_INDEX).all()
    for label, box in enumerate((RED_BOX, BLUE_BOX)):
        area = (box[2] - box[0]) * (box[3] - box[1])
        assert abs(int((label_map == label).sum()) - area) < 0.1 * area
    # Without a background, every pixel takes its best label unless a threshold says otherwise.
    plain = HarmoCLIPDetectionOutput(dense_probabilities=maps)
    assert (processor.post_process_semantic_segmentation(plain, [(HEIGHT, WIDTH)])[0] >= 0).all()
    cut = processor.post_process_semantic_segmentation(plain, [(HEIGHT, WIDTH)], threshold=0.5)[0]
    # The threshold (0.5) is a little stricter than the background's competition (0.475 here): a thin rim apart.
    assert ((label_map == BACKGROUND_INDEX) <= (cut == BACKGROUND_INDEX)).all()
    assert int((cut != label_map).sum()) < 0.02 * HEIGHT * WIDTH
    assert processor.post_process_semantic_segmentation(plain)[0].shape == (8, 8)


def test_semantic_segmentation_leaves_what_a_centre_crop_cut_as_background(tiny_tokenizer) -> None:
    processor = tiny_processor(tiny_tokenizer, region_mode=False)  # shortest edge 32, centre crop 32 x 32
    outputs = HarmoCLIPDetectionOutput(dense_probabilities=torch.full((1, 1, 4, 4), 0.9))
    label_map = processor.post_process_semantic_segmentation(outputs, [(HEIGHT, WIDTH)])[0]
    seen = (label_map == 0).any(dim=0).nonzero().flatten()
    # Resized to 56 x 32 (shortest edge 32), columns 12..44 kept: pixel centres x + 0.5 in [12, 44] * 640 / 56.
    assert (int(seen.min()), int(seen.max())) == (137, 502)


@pytest.mark.parametrize(
    "sizes, message",
    [
        (None, None),
        ([(10, 10), (5, 5)], r"per image \(1\), got 2 entries"),
        ([(0, 10)], r"`target_sizes`\[0\] must be a \(height, width\) of positive ints, got \(0, 10\)"),
        ([(10.5, 10)], r"`target_sizes`\[0\] must be a \(height, width\) of positive ints"),
    ],
)
def test_post_processing_rejects_sizes_that_do_not_fit(tiny_tokenizer, sizes, message) -> None:
    processor = tiny_processor(tiny_tokenizer, region_mode=True)
    outputs = HarmoCLIPDetectionOutput(
        scores=torch.zeros(1, 1, 1),
        pred_boxes=torch.tensor([[[0.0, 0.0, 1.0, 1.0]]]),
        dense_probabilities=torch.zeros(1, 1, 2, 2),
    )
    if sizes is not None:  # None is allowed for detection: boxes stay normalised
        with pytest.raises(ValueError, match=message):
            processor.post_process_object_detection(outputs, 0.1, sizes)
        with pytest.raises(ValueError, match=message):
            processor.post_process_semantic_segmentation(outputs, sizes)
    with pytest.raises(ValueError, match=r"`threshold` must be a number in \[0, 1\], got 1.5"):
        processor.post_process_object_detection(outputs, 1.5)


# ---------------------------------------------------------------------------------------------- pipelines


@pytest.fixture(scope="module")
def pipelines(tiny_tokenizer):
    model = tiny_harmoclip_model(seed=11)
    processor = tiny_processor(tiny_tokenizer, region_mode=False)  # the pipelines switch to the region preset
    return (
        ZeroShotRegionDetectionPipeline(model=model, processor=processor),
        DenseSegmentationPipeline(model=model, processor=processor),
    )


def test_detection_pipeline_output_format_options_and_user_boxes(pipelines) -> None:
    detector, _ = pipelines
    results = detector(_picture(), candidate_labels=LABELS, threshold=0.0)
    assert results and all(set(item) == {"score", "label", "box"} for item in results)
    assert [item["score"] for item in results] == sorted((item["score"] for item in results), reverse=True)
    assert all(item["label"] in LABELS for item in results)
    for item in results:
        box = item["box"]
        assert 0 <= box["xmin"] < box["xmax"] <= WIDTH and 0 <= box["ymin"] < box["ymax"] <= HEIGHT
    assert detector(_picture(), candidate_labels=LABELS, threshold=0.0, top_k=3) == results[:3]
    assert detector(_picture(), candidate_labels=" red square,blue circle ", threshold=0.0) == results  # stock form
    above = detector(_picture(), candidate_labels=LABELS, threshold=0.5)
    assert above == [item for item in results if item["score"] >= 0.5]
    # Windows as proposals too: each of the nine half-side windows comes back, with every label.
    windows = detector(_picture(), candidate_labels=LABELS, threshold=0.0, nms_threshold=None, window_scales=(0.5,))
    found = {tuple(item["box"].values()) for item in windows}
    for x in (0.0, 160.0, 320.0):
        for y in (0.0, 90.0, 180.0):
            assert (x, y, x + 320.0, y + 180.0) in found
    # The user's boxes come back in their own pixels, each with each label above the threshold.
    mine = detector(_picture(), candidate_labels=LABELS, boxes=[RED_BOX, BLUE_BOX], threshold=0.0, nms_threshold=None)
    assert sorted(tuple(item["box"].values()) for item in mine) == sorted([tuple(RED_BOX), tuple(BLUE_BOX)] * 2)
    probabilities = {(tuple(item["box"].values()), item["label"]): item["score"] for item in mine}
    assert probabilities[(tuple(RED_BOX), LABELS[0])] + probabilities[(tuple(RED_BOX), LABELS[1])] < 1  # background


def _assert_same_detections(first: list[list[dict]], second: list[list[dict]]) -> None:
    """Per image the same labels in the same order, boxes within 1/1000 pixel and scores within 1e-5."""
    assert len(first) == len(second) and all(first)
    for one, other in zip(first, second):
        assert [item["label"] for item in one] == [item["label"] for item in other]
        for a, b in zip(one, other):
            assert a["box"] == pytest.approx(b["box"], abs=1e-3) and a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_pipelines_batch_size_gives_the_results_of_one_at_a_time(pipelines) -> None:
    detector, segmenter = pipelines
    images = [_picture(), _picture().transpose(Image.FLIP_LEFT_RIGHT).resize((300, 500)), _picture().rotate(90)]
    _assert_same_detections(
        detector(images, candidate_labels=LABELS, threshold=0.2),
        detector(images, candidate_labels=LABELS, threshold=0.2, batch_size=2),
    )
    items = [{"image": _picture(), "boxes": [RED_BOX]}, {"image": _picture(), "boxes": [RED_BOX, BLUE_BOX]}]
    _assert_same_detections(
        detector(items, candidate_labels=LABELS, threshold=0.0),
        detector(items, candidate_labels=LABELS, threshold=0.0, batch_size=2),
    )
    masks_one = segmenter(images, candidate_labels=LABELS)
    masks_batched = segmenter(images, candidate_labels=LABELS, batch_size=3)
    for single, together in zip(masks_one, masks_batched):
        assert [item["label"] for item in single] == [item["label"] for item in together]
        assert all(a["mask"].tobytes() == b["mask"].tobytes() for a, b in zip(single, together))


def test_segmentation_pipeline_masks_at_the_image_size(pipelines) -> None:
    detector, segmenter = pipelines
    results = segmenter(_picture(), candidate_labels=LABELS, background_label=None, threshold=0.0)
    assert results and all(set(item) == {"score", "label", "mask"} for item in results)
    union = torch.zeros(HEIGHT, WIDTH, dtype=torch.int64)
    for item in results:
        assert item["mask"].size == (WIDTH, HEIGHT) and item["mask"].mode == "L" and 0 < item["score"] <= 1
        union += torch.from_numpy(np.asarray(item["mask"]) > 0).long()
    assert (union == 1).all()  # without a background every pixel has exactly one label
    # The label map of the processor, from the model's maps at a finer input (interpolated position embedding).
    fine = segmenter(_picture(), candidate_labels=LABELS, image_size=64, threshold=0.0)
    batch = detector.processor(images=_picture(), size={"height": 64, "width": 64}, return_tensors="pt")
    label_embeds, background = encode_candidates(detector.model, detector.tokenizer, LABELS)
    outputs = detector.model.detect(batch["pixel_values"], label_embeds, background, interpolate_pos_encoding=True)
    assert outputs.dense_probabilities.shape == (1, 2, 8, 8)
    label_map = detector.processor.post_process_semantic_segmentation(outputs, [(HEIGHT, WIDTH)])[0]
    for item in fine:
        expected = label_map == LABELS.index(item["label"])
        assert torch.equal(torch.from_numpy(np.asarray(item["mask"]) > 0), expected)


@pytest.mark.parametrize(
    "task, call, error, message",
    [
        ("detect", dict(), ValueError, "needs `candidate_labels`"),
        ("detect", dict(candidate_labels=[]), TypeError, "`candidate_labels` must be a non-empty list of strings"),
        (
            "detect",
            dict(candidate_labels=LABELS, threshold=1.5),
            ValueError,
            r"`threshold` must be a number in \[0, 1\], got 1.5",
        ),
        (
            "detect",
            dict(candidate_labels=LABELS, threshold=-0.1),
            ValueError,
            r"`threshold` must be a number in \[0, 1\]",
        ),
        (
            "detect",
            dict(candidate_labels=LABELS, nms_threshold=2),
            ValueError,
            r"`nms_threshold` must be a number in \[0, 1\], got 2",
        ),
        ("detect", dict(candidate_labels=LABELS, top_k=0), ValueError, "`top_k` must be a positive int or None, got 0"),
        ("detect", dict(candidate_labels=LABELS, boxes=[]), ValueError, "`boxes` must hold at least one"),
        ("detect", dict(candidate_labels=LABELS, window_scales="big"), TypeError, "`window_scales` must be a list"),
        ("detect", dict(candidate_labels=LABELS, map_thresholds=[2]), ValueError, r"`map_thresholds` must be a num"),
        (
            "detect",
            dict(candidate_labels=["background"]),
            ValueError,
            "`background_label` 'background' is also a candidate",
        ),
        (
            "segment",
            dict(candidate_labels=LABELS, image_size=30),
            ValueError,
            "`image_size` must be a positive multiple of the patch size 8, got 30",
        ),
        (
            "segment",
            dict(candidate_labels=LABELS, threshold=7),
            ValueError,
            r"`threshold` must be a number in \[0, 1\], got 7",
        ),
        ("segment", dict(candidate_labels=LABELS, boxes=[RED_BOX]), TypeError, "takes no parameter `boxes`"),
    ],
)
def test_pipelines_bad_input_names_the_argument(pipelines, task, call, error, message) -> None:
    detector, segmenter = pipelines
    with pytest.raises(error, match=message):
        (detector if task == "detect" else segmenter)(_picture(), **call)


# ---------------------------------------------------------------------------------------------- remote code

ISOLATED = """
import json
import numpy as np
from PIL import Image
from transformers import pipeline
image = Image.open({image!r})
detector = pipeline("zero-shot-object-detection", model={model!r}, trust_remote_code=True)
segmenter = pipeline("image-segmentation", model={model!r}, trust_remote_code=True)
for task in (detector, segmenter):
    assert type(task).__module__.startswith("transformers_modules"), type(task).__module__
found = detector(image, candidate_labels={labels!r}, threshold=0.0, top_k=6)
mine = detector(image, candidate_labels={labels!r}, boxes={boxes!r}, threshold=0.0)
masks = segmenter(image, candidate_labels={labels!r})
print(json.dumps({{"found": found, "mine": mine, "masks": [[m["label"], m["score"], list(m["mask"].size),
    int((np.asarray(m["mask"]) == 255).sum())] for m in masks]}}))
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_tokenizer):
    folder = tmp_path_factory.mktemp("detection_pipeline") / "model"
    save_tiny_folder(folder, tiny_tokenizer, seed=11)
    return folder


def _in_process(pipelines) -> dict:
    detector, segmenter = pipelines
    masks = segmenter(_picture(), candidate_labels=LABELS)
    return {
        "found": detector(_picture(), candidate_labels=LABELS, threshold=0.0, top_k=6),
        "mine": detector(_picture(), candidate_labels=LABELS, boxes=[RED_BOX, BLUE_BOX], threshold=0.0),
        "masks": [
            [m["label"], m["score"], list(m["mask"].size), int((np.asarray(m["mask"]) == 255).sum())] for m in masks
        ],
    }


@pytest.mark.parametrize("source", ["folder", "hub cache"])
def test_detection_and_segmentation_pipelines_from_remote_code(saved, pipelines, tmp_path: Path, source) -> None:
    _picture().save(tmp_path / "image.png")
    model = str(saved) if source == "folder" else "org/harmoclip-vitb16"
    env = offline_hub_cache(saved, tmp_path) if source == "hub cache" else None
    code = ISOLATED.format(image=str(tmp_path / "image.png"), model=model, labels=LABELS, boxes=[RED_BOX, BLUE_BOX])
    remote = json.loads(run_isolated(code, cwd=tmp_path, env=env).stdout.strip().splitlines()[-1])
    local = _in_process(pipelines)
    assert len(remote["found"]) == 6 and len(remote["mine"]) >= 2 and remote["masks"]
    _assert_same_detections([remote["found"], remote["mine"]], [local["found"], local["mine"]])
    assert [mask[:1] + mask[2:] for mask in remote["masks"]] == [mask[:1] + mask[2:] for mask in local["masks"]]


def test_region_embeddings_are_unit_vectors_so_background_probabilities_sum_up(pipelines) -> None:
    detector, _ = pipelines
    batch = detector.processor(images=_picture(), return_tensors="pt")
    label_embeds, background = encode_candidates(detector.model, detector.tokenizer, LABELS)
    outputs = detector.model.detect(batch["pixel_values"], label_embeds, background)
    total = outputs.dense_probabilities.sum(dim=1) + outputs.background_probabilities
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)
    assert torch.allclose(F.normalize(label_embeds, dim=-1), label_embeds, atol=1e-6)
