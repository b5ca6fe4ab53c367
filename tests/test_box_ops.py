"""The leaf modules box_ops and zero_shot: hand-computed values, and the old import paths still name the same objects."""

from __future__ import annotations

import math

import pytest
import torch

from modeling_harmoclip import box_ops, zero_shot


def test_xywh_and_xyxy_by_hand() -> None:
    assert box_ops.xywh_to_xyxy([10, 20, 30, 40]) == [10.0, 20.0, 40.0, 60.0]
    assert box_ops.xyxy_to_xywh([10, 20, 40, 60]) == [10.0, 20.0, 30.0, 40.0]
    boxes = torch.tensor([[[1.0, 2.0, 3.0, 4.0]], [[0.5, 0.0, 1.5, 2.0]]])
    assert torch.equal(box_ops.xywh_to_xyxy(boxes), torch.tensor([[[1.0, 2.0, 4.0, 6.0]], [[0.5, 0.0, 2.0, 2.0]]]))
    assert torch.equal(box_ops.xyxy_to_xywh(box_ops.xywh_to_xyxy(boxes)), boxes)


def test_iou_and_nms_by_hand() -> None:
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 0.0, 3.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
    iou = box_ops.box_iou(boxes, boxes)
    assert iou[0, 1].item() == pytest.approx(2 / 6)
    assert iou[0, 2].item() == 0.0
    scores = torch.tensor([0.9, 0.8, 0.1])
    assert box_ops.nms(boxes, scores, 0.4).tolist() == [0, 1, 2]
    assert box_ops.nms(boxes, scores, 0.3).tolist() == [0, 2]
    with pytest.raises(ValueError, match="iou_threshold"):
        box_ops.nms(boxes, scores, 1.5)


def test_check_boxes_names_the_bad_box() -> None:
    with pytest.raises(ValueError, match=r"`boxes`\[0, 1\] is empty or inverted"):
        box_ops.check_boxes(torch.tensor([[[0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.4, 0.9]]]), None)


def test_scoring_with_and_without_background_by_hand() -> None:
    embeds = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([[1.0, 0.0], [math.sqrt(0.5), math.sqrt(0.5)]])
    background = torch.tensor([0.0, 1.0])
    scale = 10.0
    plain = zero_shot.label_probabilities(embeds, labels, scale)
    first = [math.exp(10.0), math.exp(10.0 * math.sqrt(0.5))]
    assert plain[0].tolist() == pytest.approx([value / sum(first) for value in first], rel=1e-5)
    probabilities, back = zero_shot.label_and_background_probabilities(embeds, labels, scale, background)
    second = [math.exp(0.0), math.exp(10.0 * math.sqrt(0.5)), math.exp(10.0)]
    assert probabilities[1].tolist() == pytest.approx([value / sum(second) for value in second[:2]], rel=1e-5)
    assert back[1].item() == pytest.approx(second[2] / sum(second), rel=1e-5)
    assert torch.equal(zero_shot.label_probabilities(embeds, labels, scale, background), probabilities)


def test_top_k_check() -> None:
    assert zero_shot.check_top_k(None) is None and zero_shot.check_top_k(3) == 3
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match="top_k"):
            zero_shot.check_top_k(bad)


def test_old_import_paths_name_the_same_objects() -> None:
    import importlib

    detection, modeling_harmoclip, pipeline_detection, pipeline_harmoclip, roi_align = (
        importlib.import_module(f"modeling_harmoclip.{name}")
        for name in ("detection", "modeling_harmoclip", "pipeline_detection", "pipeline_harmoclip", "roi_align")
    )
    assert modeling_harmoclip.check_boxes is box_ops.check_boxes
    assert roi_align.enlarge_boxes is box_ops.enlarge_boxes
    assert detection.nms is box_ops.nms and detection.check_threshold is box_ops.check_threshold
    assert pipeline_harmoclip.label_probabilities is zero_shot.label_probabilities
    assert pipeline_harmoclip.resolve_label_embeddings is zero_shot.resolve_label_embeddings
    assert pipeline_detection.encode_candidates is zero_shot.encode_candidates
