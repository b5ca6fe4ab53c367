"""Box operations at their edges, each expectation written by hand: the [0, 1] threshold check on both sides, the
box checks (a zero-width box, a box masked out, a mask of another shape, a tensor of another type), IoU of empty
boxes, and NMS exactly at its threshold, on empty input and across labels."""

from __future__ import annotations

import pytest
import torch

from modeling_harmoclip import configuration_harmoclip, image_processing_harmoclip, modeling_harmoclip


@pytest.mark.parametrize("value", [0, 0.0, 1, 1.0, 0.5])
def test_thresholds_on_the_edges_are_accepted_as_floats(value) -> None:
    checked = configuration_harmoclip.check_threshold(value, "score")
    assert checked == float(value) and type(checked) is float


@pytest.mark.parametrize("value", [-0.01, 1.01, True, False, "0.5", None, float("nan")])
def test_thresholds_outside_or_of_another_type_are_refused_by_name(value) -> None:
    with pytest.raises(ValueError) as error:
        configuration_harmoclip.check_threshold(value, "score")
    assert str(error.value) == f"`score` must be a number in [0, 1], got {value!r}"
    with pytest.raises(ValueError, match=r"^`threshold` must be a number"):
        configuration_harmoclip.check_threshold(value)


def test_check_boxes_returns_the_mask_of_valid_boxes() -> None:
    boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0], [0.2, 0.1, 0.3, 0.9]]])
    mask = modeling_harmoclip.check_boxes(boxes, None)
    assert mask.dtype == torch.bool and mask.tolist() == [[True, True]]
    given = modeling_harmoclip.check_boxes(boxes, torch.tensor([[1, 0]]))
    assert given.dtype == torch.bool and given.tolist() == [[True, False]]


@pytest.mark.parametrize(
    ("box", "kind"),
    [
        ([0.5, 0.0, 0.5, 1.0], "is empty or inverted"),  # zero width
        ([0.0, 0.5, 1.0, 0.5], "is empty or inverted"),  # zero height
        ([0.0, 0.6, 1.0, 0.5], "is empty or inverted"),  # inverted in y only
        ([0.0, 0.0, float("inf"), 1.0], "is not finite"),
        ([0.0, float("nan"), 1.0, 1.0], "is not finite"),
    ],
)
def test_check_boxes_names_the_first_bad_box_and_its_values(box, kind) -> None:
    boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]], [[0.0, 0.0, 1.0, 1.0], box]])
    with pytest.raises(ValueError) as error:
        modeling_harmoclip.check_boxes(boxes, None, "regions")
    assert str(error.value).startswith(f"`regions`[1, 1] {kind}")
    assert str(error.value).endswith(str(boxes[1, 1].tolist()))
    # The same box masked out is not checked.
    mask = torch.tensor([[True, True], [True, False]])
    assert modeling_harmoclip.check_boxes(boxes, mask, "regions").tolist() == mask.tolist()


def test_check_boxes_refuses_other_types_and_shapes_by_name() -> None:
    with pytest.raises(TypeError, match=r"^`regions` must be a torch.Tensor of shape \(B, N, 4\), got list$"):
        modeling_harmoclip.check_boxes([[[0.0, 0.0, 1.0, 1.0]]], None, "regions")
    with pytest.raises(ValueError, match=r"^`regions` must have shape \(B, N, 4\) \(xyxy per box\), got \(1, 4\)$"):
        modeling_harmoclip.check_boxes(torch.zeros(1, 4), None, "regions")
    with pytest.raises(ValueError, match=r"got \(1, 2, 5\)$"):
        modeling_harmoclip.check_boxes(torch.zeros(1, 2, 5), None, "regions")
    boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]])
    with pytest.raises(ValueError, match=r"^`box_mask` must have shape \(1, 2\) to match `regions`, got \(2, 1\)$"):
        modeling_harmoclip.check_boxes(boxes, torch.ones(2, 1, dtype=torch.bool), "regions")
    with pytest.raises(ValueError, match=r"^`box_mask` must have shape \(1, 2\) to match `regions`, got list$"):
        modeling_harmoclip.check_boxes(boxes, [[True, True]], "regions")


def test_iou_of_empty_and_inverted_boxes_is_zero() -> None:
    empty = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    inverted = torch.tensor([[2.0, 2.0, 0.0, 0.0]])  # its area counts as 0, not as (-2) * (-2)
    unit = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    assert image_processing_harmoclip.box_iou(empty, empty).tolist() == [[0.0]]
    assert image_processing_harmoclip.box_iou(inverted, unit).tolist() == [[0.0]]
    assert image_processing_harmoclip.box_iou(unit, inverted).tolist() == [[0.0]]
    # Partial overlap in x and y: intersection 1 x 2 = 2, union 2 * 4 + 3 * 2 - 2 = 12.
    first, second = torch.tensor([[0.0, 0.0, 2.0, 4.0]]), torch.tensor([[1.0, 2.0, 4.0, 4.0]])
    assert image_processing_harmoclip.box_iou(first, second).item() == pytest.approx(2 / 12, rel=1e-6)
    assert image_processing_harmoclip.box_iou(second, first).item() == pytest.approx(2 / 12, rel=1e-6)


def test_nms_keeps_a_box_whose_iou_equals_the_threshold() -> None:
    # IoU of the first two is 2 / 4 = 0.5 exactly: dropped only when it is above the threshold.
    boxes = torch.tensor([[0.0, 0.0, 3.0, 1.0], [1.0, 0.0, 4.0, 1.0], [10.0, 10.0, 11.0, 11.0]])
    scores = torch.tensor([0.2, 0.9, 0.5])
    assert image_processing_harmoclip.nms(boxes, scores, 0.5).tolist() == [1, 2, 0]
    assert image_processing_harmoclip.nms(boxes, scores, 0.49).tolist() == [1, 2]
    assert image_processing_harmoclip.nms(boxes, scores).tolist() == [1, 2, 0]  # the default is 0.5
    assert image_processing_harmoclip.NMS_IOU == 0.5


def test_nms_with_equal_scores_keeps_the_earlier_box() -> None:
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 5)
    assert image_processing_harmoclip.nms(boxes, torch.full((5,), 0.3), 0.5).tolist() == [0]
    kept = image_processing_harmoclip.batched_nms(boxes, torch.full((5,), 0.3), torch.tensor([2, 1, 2, 1, 0]), 0.5)
    assert kept.tolist() == [0, 1, 4]  # one per label, the earliest of each, in order of index at equal scores


def test_nms_of_no_boxes_is_an_empty_index_tensor() -> None:
    kept = image_processing_harmoclip.nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert kept.dtype == torch.int64 and kept.shape == (0,)
    kept = image_processing_harmoclip.batched_nms(
        torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5
    )
    assert kept.dtype == torch.int64 and kept.shape == (0,)
    with pytest.raises(ValueError, match="`iou_threshold` must be a number in"):
        image_processing_harmoclip.batched_nms(
            torch.zeros(1, 4), torch.zeros(1), torch.zeros(1, dtype=torch.int64), -0.1
        )


def test_batched_nms_suppresses_within_a_label_and_orders_by_score() -> None:
    boxes = torch.tensor(
        [[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0], [0.1, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0], [0.0, 0.0, 2.0, 2.0]]
    )
    scores = torch.tensor([0.5, 0.7, 0.9, 0.1, 0.6])
    labels = torch.tensor([0, 1, 0, 0, 1])
    # Label 0: box 2 (0.9) suppresses box 0 (IoU 0.95), box 3 stays; label 1: box 1 (0.7) suppresses box 4.
    assert image_processing_harmoclip.batched_nms(boxes, scores, labels, 0.5).tolist() == [2, 1, 3]
    assert image_processing_harmoclip.batched_nms(boxes, scores, labels, 1.0).tolist() == [2, 1, 4, 0, 3]
