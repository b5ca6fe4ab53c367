"""The leaf modules box_ops and zero_shot: hand-computed values, and the old import paths still name the same objects."""

from __future__ import annotations

import math

import pytest
import torch

from modeling_harmoclip import (
    image_processing_harmoclip,
    modeling_harmoclip,
)


def test_xywh_and_xyxy_by_hand() -> None:
    assert image_processing_harmoclip.xywh_to_xyxy([10, 20, 30, 40]) == [10.0, 20.0, 40.0, 60.0]
    assert image_processing_harmoclip.xyxy_to_xywh([10, 20, 40, 60]) == [10.0, 20.0, 30.0, 40.0]
    boxes = torch.tensor([[[1.0, 2.0, 3.0, 4.0]], [[0.5, 0.0, 1.5, 2.0]]])
    assert torch.equal(
        image_processing_harmoclip.xywh_to_xyxy(boxes), torch.tensor([[[1.0, 2.0, 4.0, 6.0]], [[0.5, 0.0, 2.0, 2.0]]])
    )
    assert torch.equal(image_processing_harmoclip.xyxy_to_xywh(image_processing_harmoclip.xywh_to_xyxy(boxes)), boxes)


def test_iou_and_nms_by_hand() -> None:
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 0.0, 3.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
    iou = image_processing_harmoclip.box_iou(boxes, boxes)
    assert iou[0, 1].item() == pytest.approx(2 / 6)
    assert iou[0, 2].item() == 0.0
    scores = torch.tensor([0.9, 0.8, 0.1])
    assert image_processing_harmoclip.nms(boxes, scores, 0.4).tolist() == [0, 1, 2]
    assert image_processing_harmoclip.nms(boxes, scores, 0.3).tolist() == [0, 2]
    with pytest.raises(ValueError, match="iou_threshold"):
        image_processing_harmoclip.nms(boxes, scores, 1.5)


def test_check_boxes_names_the_bad_box() -> None:
    with pytest.raises(ValueError, match=r"`boxes`\[0, 1\] is empty or inverted"):
        modeling_harmoclip.check_boxes(torch.tensor([[[0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.4, 0.9]]]), None)


def test_scoring_with_and_without_background_by_hand() -> None:
    embeds = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([[1.0, 0.0], [math.sqrt(0.5), math.sqrt(0.5)]])
    background = torch.tensor([0.0, 1.0])
    scale = 10.0
    plain = modeling_harmoclip.label_probabilities(embeds, labels, scale)
    first = [math.exp(10.0), math.exp(10.0 * math.sqrt(0.5))]
    assert plain[0].tolist() == pytest.approx([value / sum(first) for value in first], rel=1e-5)
    probabilities, back = modeling_harmoclip.label_and_background_probabilities(embeds, labels, scale, background)
    second = [math.exp(0.0), math.exp(10.0 * math.sqrt(0.5)), math.exp(10.0)]
    assert probabilities[1].tolist() == pytest.approx([value / sum(second) for value in second[:2]], rel=1e-5)
    assert back[1].item() == pytest.approx(second[2] / sum(second), rel=1e-5)
    assert torch.equal(modeling_harmoclip.label_probabilities(embeds, labels, scale, background), probabilities)


def test_top_k_check() -> None:
    assert image_processing_harmoclip.check_top_k(None) is None and image_processing_harmoclip.check_top_k(3) == 3
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match="top_k"):
            image_processing_harmoclip.check_top_k(bad)


def test_each_public_name_has_one_home() -> None:
    """Every module of the package lists in `__all__` only what it defines itself (no re-export chains), and no name
    is defined by two modules: a public name has one import path (besides the package's own top-level API)."""
    import ast
    from pathlib import Path

    package = Path(image_processing_harmoclip.__file__).parent
    homes: dict[str, str] = {}
    for path in sorted(package.glob("*.py")):
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        defined = set()
        exported: list[str] = []
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [target.id for target in targets if isinstance(target, ast.Name)]
                if names == ["__all__"]:
                    exported = ast.literal_eval(node.value)
                defined.update(names)
        assert set(exported) <= defined, f"{path.name} exports names it does not define: {set(exported) - defined}"
        for name in exported:
            assert name not in homes, f"{name} is exported by {homes[name]} and {path.name}"
            homes[name] = path.name
