"""Detection's edges (`HarmoCLIPModel.detect` and the image processor's post-processing) that the end-to-end
detection tests cannot see: sizes and thresholds exactly on their bounds, maps of one cell or none, patch vectors of
small norm, masked rows, ties, the frame's border and the background rule of the label map. Every expectation is
written out by hand."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from modeling_harmoclip.image_processing_harmoclip import (
    BACKGROUND_INDEX,
    check_target_sizes,
    resample_maps,
    select_detections,
    semantic_label_map,
)
from modeling_harmoclip.modeling_harmoclip import (
    detections_from_box_embeddings,
    detections_from_dense_map,
    propose_boxes,
    region_boxes,
    window_boxes,
)


def test_target_sizes_of_one_pixel_are_allowed_and_zero_is_not() -> None:
    assert check_target_sizes([(1, 1), (3, 2)], 2) == [(1, 1), (3, 2)]
    message = "`target_sizes`[0] must be a (height, width) of positive ints, got (0, 5)"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_target_sizes([(0, 5)], 1)
    message = "`target_sizes`[0] must be a (height, width) of positive ints, got ('h', 'w', 'x')"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_target_sizes([("h", "w", "x")], 1)
    message = "`target_sizes` must hold one (height, width) per image (2), got None"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_target_sizes(None, 2)


def test_a_map_of_one_cell_gives_its_cell_and_an_empty_map_gives_nothing() -> None:
    mask = torch.zeros(1, 4, 5, dtype=torch.bool)
    assert region_boxes(mask).shape == (0, 4)
    mask[0, 2, 3] = True  # row 2, column 3 of a 4 x 5 map
    torch.testing.assert_close(region_boxes(mask), torch.tensor([[3 / 5, 2 / 4, 4 / 5, 3 / 4]]))


def test_a_window_of_side_zero_is_refused() -> None:
    with pytest.raises(ValueError, match=re.escape("`window_scales` must hold fractions in (0, 1], got 0.0")):
        window_boxes((0.0,))
    torch.testing.assert_close(window_boxes((1.0,)), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))


def test_a_cell_exactly_at_a_map_level_is_proposed() -> None:
    probabilities = torch.zeros(1, 4, 4)
    probabilities[0, 1, 2] = 0.5
    boxes = propose_boxes(probabilities, map_thresholds=(0.5,), window_scales=(1.0,))
    torch.testing.assert_close(boxes, torch.tensor([[0.5, 0.25, 0.75, 0.5], [0.0, 0.0, 1.0, 1.0]]))


def hand_probabilities(dense: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
    """(1, D, h, w), (L, D) -> (1, L, h, w): softmax over labels of scale x cosine, each patch to unit length."""
    patches = dense[0].permute(1, 2, 0).double()
    patches = patches / patches.norm(dim=-1, keepdim=True)
    return (scale * patches @ labels.double().t()).softmax(dim=-1).permute(2, 0, 1)[None]


def small_dense(seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    direction = F.normalize(torch.randn(1, 8, 3, 4), dim=1)
    return direction * torch.linspace(0.02, 0.5, 12).reshape(1, 1, 3, 4)  # every patch shorter than 1


def test_dense_probabilities_use_unit_patches_even_when_patches_are_short() -> None:
    dense = small_dense()
    labels = F.normalize(torch.randn(3, 8), dim=-1)
    output = detections_from_dense_map(dense, labels, 10.0, max_proposals=5)
    torch.testing.assert_close(
        output.dense_probabilities.double(), hand_probabilities(dense, labels, 10.0), atol=1e-6, rtol=1e-6
    )
    assert output.pred_boxes.shape[1] <= 5 and int(output.box_mask.sum()) <= 5
    assert output.box_mask.dtype == torch.bool


def test_one_label_is_enough_and_no_label_is_refused() -> None:
    dense = small_dense(1)
    one = F.normalize(torch.randn(1, 8), dim=-1)
    output = detections_from_dense_map(dense, one, 10.0)
    torch.testing.assert_close(output.dense_probabilities, torch.ones(1, 1, 3, 4))  # softmax over one label
    for bad in (torch.zeros(0, 8), torch.zeros(8)):
        message = f"`label_embeds` must have shape (L, D) with L >= 1, got {tuple(bad.shape)}"
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            detections_from_dense_map(dense, bad, 10.0)


def test_user_boxes_are_pooled_with_unit_patches_by_default() -> None:
    dense = small_dense(2)
    labels = F.normalize(torch.randn(2, 8), dim=-1)
    boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0]]])  # the whole map: the mean of the (unit) patches
    output = detections_from_dense_map(dense, labels, 10.0, boxes=boxes)
    unit_patches = dense / dense.norm(dim=1, keepdim=True)
    region = F.normalize(unit_patches.mean(dim=(2, 3)), dim=-1)
    expected = (10.0 * region.double() @ labels.double().t()).softmax(dim=-1)
    torch.testing.assert_close(output.scores[0].double(), expected, atol=1e-5, rtol=1e-5)


def test_masked_rows_score_exactly_zero() -> None:
    torch.manual_seed(5)
    embeds = F.normalize(torch.randn(1, 3, 8), dim=-1)
    labels = F.normalize(torch.randn(2, 8), dim=-1)
    mask = torch.tensor([[True, False, True]])
    output = detections_from_box_embeddings(embeds, torch.rand(1, 3, 4), mask, labels, 10.0)
    assert torch.equal(output.scores[0, 1], torch.zeros(2))
    expected = (10.0 * embeds[0, 0].double() @ labels.double().t()).softmax(dim=-1)
    torch.testing.assert_close(output.scores[0, 0].double(), expected, atol=1e-6, rtol=1e-6)


def test_selection_defaults_keep_scores_from_a_tenth_and_ties_in_their_order() -> None:
    scores = torch.tensor([[0.1, 0.05], [0.6, 0.3], [0.6, 0.0]])
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
    kept = select_detections(scores, boxes, nms_threshold=None)  # no mask: every box; threshold 0.1
    assert kept["scores"].tolist() == pytest.approx([0.6, 0.6, 0.3, 0.1])
    assert kept["labels"].tolist() == [0, 0, 1, 0]
    # The tie (boxes 1 and 2, label 0) keeps the boxes' order.
    torch.testing.assert_close(kept["boxes"][:2], boxes[1:3])
    assert (
        select_detections(scores, boxes, threshold=0.6, nms_threshold=None)["scores"].tolist()
        == [pytest.approx(0.6)] * 2
    )


def test_the_map_reads_its_edge_patch_up_to_the_frame_border_and_nothing_beyond() -> None:
    maps = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # one 2 x 2 map
    frame = torch.tensor([-0.1, 0.0, 0.1, 0.9, 1.0, 1.1])
    out = resample_maps(maps, frame_x=frame, frame_y=torch.tensor([0.1]))[0, 0]
    # Within the outer half-patch the edge patch is read as it is (border padding), not blended with zero.
    assert out.tolist() == pytest.approx([0.0, 1.0, 1.0, 2.0, 2.0, 0.0])
    column = resample_maps(maps, frame_x=torch.tensor([0.1]), frame_y=frame)[0, :, 0]
    assert column.tolist() == pytest.approx([0.0, 1.0, 1.0, 3.0, 3.0, 0.0])


def test_the_label_map_background_rule() -> None:
    # Three pixels in one row (a 1 x 3 map read at its patch centres), two labels and a background.
    probabilities = torch.tensor([[[0.5, 0.2, 0.4]], [[0.1, 0.3, 0.2]]])
    background = torch.tensor([[0.4, 0.5, 0.4]])
    frame_x, frame_y = torch.tensor([1 / 6, 3 / 6, 5 / 6]), torch.tensor([0.5])
    labels, _ = semantic_label_map(probabilities, background, frame_x, frame_y)
    # pixel 0: label 0 beats the background; pixel 1: the background is higher; pixel 2: a tie keeps the label.
    assert labels.tolist() == [[0, BACKGROUND_INDEX, 0]]
    labels, _ = semantic_label_map(probabilities, background, frame_x, frame_y, threshold=0.45)
    # pixel 0's best (0.5) is above 0.45; pixel 2's (0.4) is below it: background, though above the background.
    assert labels.tolist() == [[0, BACKGROUND_INDEX, BACKGROUND_INDEX]]
    labels, _ = semantic_label_map(probabilities, background, frame_x, frame_y, threshold=0.4)
    assert labels.tolist() == [[0, BACKGROUND_INDEX, 0]]  # a best label exactly at the threshold stays
    labels, _ = semantic_label_map(probabilities, None, frame_x, frame_y)
    assert labels.tolist() == [[0, 1, 0]]  # no background, threshold 0: every pixel its best label


def test_the_pooling_order_given_reaches_the_user_boxes() -> None:
    dense = small_dense(2)
    labels = F.normalize(torch.randn(2, 8), dim=-1)
    boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0]]])
    output = detections_from_dense_map(dense, labels, 10.0, boxes=boxes, region_pooling="pool_then_normalize")
    region = F.normalize(dense.mean(dim=(2, 3)), dim=-1)  # the mean of the patches as they are
    expected = (10.0 * region.double() @ labels.double().t()).softmax(dim=-1)
    torch.testing.assert_close(output.scores[0].double(), expected, atol=1e-5, rtol=1e-5)


def test_the_nms_threshold_given_is_the_one_used() -> None:
    # Two boxes of one label overlapping at IoU 0.6 (areas 1 and 1, intersection 0.75).
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.25, 0.0, 1.25, 1.0]])
    scores = torch.tensor([[0.9], [0.8]])
    assert len(select_detections(scores, boxes, nms_threshold=0.5)["scores"]) == 1
    assert len(select_detections(scores, boxes, nms_threshold=0.7)["scores"]) == 2
