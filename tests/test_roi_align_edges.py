"""RoIAlign's edges against the loop reference (`roi_reference.slow_roi_align`, torchvision's documented algorithm):
sample points exactly on the border of the window that still counts ([-1, size]), boxes that start far outside the
map with adaptive sampling, the per-image form with its defaults, under autocast and in half precision, and its
one-line errors."""

from __future__ import annotations

import pytest
import torch

from modeling_harmoclip.modeling_harmoclip import roi_align, roi_align_per_image
from roi_reference import slow_roi_align


def _map(seed: int, batch: int = 1, channels: int = 3, height: int = 6, width: int = 7) -> torch.Tensor:
    return torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(seed)).double()


def test_a_sample_exactly_on_the_window_border_still_counts() -> None:
    """One sample per bin at the centre of the box: at -1 (read as row/column 0) and at `size` (read as the last)."""
    features = _map(0)
    height, width = features.shape[-2:]
    rois = torch.tensor(
        [
            [0, -2.0, -2.0, 0.0, 0.0],  # centre (-1, -1): on the border, counts
            [0, width - 1.0, height - 1.0, width + 1.0, height + 1.0],  # centre (width, height): counts
            [0, -2.5, 1.0, -0.5, 2.0],  # centre x = -1.5: outside, reads 0
            [0, 1.0, height - 0.5, 2.0, height + 1.5],  # centre y = height + 0.5: outside, reads 0
        ],
        dtype=torch.float64,
    )
    fast = roi_align(features, rois, 1, 1.0, 1, False)
    slow = slow_roi_align(features, rois, (1, 1), 1.0, 1, False)
    assert torch.allclose(fast, slow, atol=1e-12)
    # By hand: the clamped corners of the map, and zeros.
    assert torch.allclose(fast[0, :, 0, 0], features[0, :, 0, 0]) and torch.allclose(
        fast[1, :, 0, 0], features[0, :, -1, -1]
    )
    assert fast[2].abs().max() == 0 and fast[3].abs().max() == 0


@pytest.mark.parametrize("aligned", [False, True])
def test_boxes_reaching_far_outside_the_map_with_adaptive_sampling(aligned: bool) -> None:
    """Bins that begin many pixels before the map: the first sample that reaches it must not be skipped."""
    features = _map(1, batch=2)
    rois = torch.tensor(
        [
            [0, -20.0, -15.0, 3.0, 4.0],
            [1, -9.3, 0.5, 2.7, 5.5],
            [0, 0.5, -11.7, 6.5, 1.2],
            [1, -30.0, -30.0, 10.0, 9.0],
        ],
        dtype=torch.float64,
    )
    for output_size in ((1, 1), (2, 3), (5, 4)):
        fast = roi_align(features, rois, output_size, 1.0, -1, aligned)
        slow = slow_roi_align(features, rois, output_size, 1.0, -1, aligned)
        assert (fast - slow).abs().max() <= 1e-12, output_size


def test_per_image_defaults_are_torchvisions() -> None:
    """spatial_scale 1, adaptive sampling, aligned False: the defaults written out in the reference call."""
    features = _map(2, batch=2)
    boxes = torch.tensor([[[0.5, 0.2, 4.0, 5.5], [1.0, 1.0, 1.5, 2.0]], [[2.0, 0.0, 7.0, 6.0], [0.2, 3.1, 3.3, 5.9]]])
    pooled = roi_align_per_image(features, boxes.double(), 2)
    rois = torch.cat([torch.tensor([[0.0], [0.0], [1.0], [1.0]]), boxes.reshape(4, 4)], dim=1).double()
    reference = slow_roi_align(features, rois, (2, 2), 1.0, -1, False)
    assert (pooled.reshape(4, 3, 2, 2) - reference).abs().max() <= 1e-12


def test_per_image_arithmetic_stays_float32_under_autocast_and_for_half_inputs() -> None:
    features = _map(3, batch=2, channels=16, height=9, width=9)
    boxes = torch.tensor([[[0.3, 0.2, 8.5, 7.1], [1.0, 2.0, 6.0, 8.0]], [[0.0, 0.0, 9.0, 9.0], [2.2, 3.3, 4.4, 8.8]]])
    rois = torch.cat([torch.tensor([[0.0], [0.0], [1.0], [1.0]]), boxes.reshape(4, 4)], dim=1).double()
    reference = slow_roi_align(features, rois, (3, 3), 1.0, -1, True).reshape(2, 2, 16, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = roi_align_per_image(features.float(), boxes, 3, aligned=True)
    assert mixed.dtype == torch.float32 and (mixed.double() - reference).abs().max() <= 1e-5
    # A bfloat16 map: computed in float32, rounded once: within half a bfloat16 step of the exact result.
    half = features.to(torch.bfloat16)
    exact = slow_roi_align(half.double(), rois, (3, 3), 1.0, -1, True).reshape(2, 2, 16, 3, 3)
    pooled = roi_align_per_image(half, boxes, 3, aligned=True)
    step = torch.finfo(torch.bfloat16).eps * exact.abs().clamp(min=torch.finfo(torch.bfloat16).tiny)
    assert pooled.dtype == torch.bfloat16 and ((pooled.double() - exact).abs() <= step / 2 + 1e-30).all()


@pytest.mark.parametrize(
    ("input_shape", "boxes_shape"),
    [((2, 3, 4), (2, 1, 4)), ((2, 3, 4, 4), (2, 4)), ((2, 3, 4, 4), (3, 1, 4)), ((2, 3, 4, 4), (2, 1, 5))],
)
def test_per_image_errors_name_both_shapes(input_shape: tuple, boxes_shape: tuple) -> None:
    message = (
        r"roi_align_per_image: need `input` \(B, C, H, W\) and `boxes` \(B, N, 4\), "
        + rf"got {tuple(input_shape)} and {tuple(boxes_shape)}".replace("(", r"\(").replace(")", r"\)")
    )
    with pytest.raises(ValueError, match=message):
        roi_align_per_image(torch.zeros(input_shape), torch.zeros(boxes_shape), 1)


def test_sampling_ratio_zero_is_the_adaptive_grid_and_tiny_maps_get_every_point() -> None:
    """torchvision reads sampling_ratio <= 0 as adaptive; on a 3 x 4 map a box a hundred pixels wide has a grid far
    beyond the enumeration's bound, whose points (about one per pixel) must all still be found."""
    features = _map(4, height=3, width=4)
    rois = torch.tensor([[0, 0.4, 0.3, 3.6, 2.7], [0, -60.0, -40.0, 64.0, 43.0], [0, -1.0, 0.5, 4.5, 2.5]]).double()
    for output_size in ((1, 1), (2, 2)):
        for ratio in (0, -1):
            fast = roi_align(features, rois, output_size, 1.0, ratio, True)
            slow = slow_roi_align(features, rois, output_size, 1.0, ratio, True)
            assert (fast - slow).abs().max() <= 1e-12, (output_size, ratio)


def test_enlarge_boxes_of_a_batch_by_hand() -> None:
    from modeling_harmoclip.image_processing_harmoclip import enlarge_boxes

    boxes = torch.tensor([[[0.0, 0.0, 2.0, 4.0], [1.0, 1.0, 3.0, 2.0]], [[2.0, 2.0, 4.0, 4.0], [0.0, 1.0, 1.0, 3.0]]])
    expected = torch.tensor(
        [[[-0.5, -1.0, 2.5, 5.0], [0.5, 0.75, 3.5, 2.25]], [[1.5, 1.5, 4.5, 4.5], [-0.25, 0.5, 1.25, 3.5]]]
    )
    assert torch.equal(enlarge_boxes(boxes, 1.5), expected)


def test_bad_boxes_are_named_with_their_shape_or_type() -> None:
    features = torch.zeros(2, 1, 4, 4)
    cases = [
        (
            torch.zeros(3, 4),
            r"roi_align: `boxes` must be a \(K, 5\) tensor or a list of \(K_i, 4\) tensors, got \(3, 4\)$",
        ),
        (torch.zeros(5, 3), r"must be a \(K, 5\) tensor or a list of \(K_i, 4\) tensors, got \(5, 3\)$"),
        ("boxes", r"must be a \(K, 5\) tensor or a list of \(K_i, 4\) tensors, got str$"),
        ([torch.zeros(1, 4), torch.zeros(2, 5)], r"roi_align: `boxes\[1\]` must be a \(K, 4\) tensor, got \(2, 5\)$"),
        ([torch.zeros(4, 1)], r"roi_align: `boxes\[0\]` must be a \(K, 4\) tensor, got \(4, 1\)$"),
        ([torch.zeros(1, 4), [0, 0, 1, 1]], r"roi_align: `boxes\[1\]` must be a \(K, 4\) tensor, got list$"),
        ([], r"^roi_align: `boxes` is an empty list$"),
    ]
    for boxes, message in cases:
        with pytest.raises(ValueError, match=message):
            roi_align(features, boxes, 1)


def test_defaults_empty_boxes_many_boxes_and_float32_boxes_on_a_float64_map() -> None:
    features = _map(5, batch=2, channels=2, height=5, width=6)
    generator = torch.Generator().manual_seed(5)
    corner = torch.rand(150, 2, generator=generator) * 6 - 1
    rois = torch.cat(
        [torch.randint(0, 2, (150, 1), generator=generator).float(), corner, corner + torch.rand(150, 2) * 4 + 0.1],
        dim=1,
    )  # float32 boxes, more than one chunk of 64
    pooled = roi_align(features, rois, (2, 3))  # torchvision's defaults: scale 1, adaptive, not aligned
    reference = slow_roi_align(features, rois.double(), (2, 3), 1.0, -1, False)
    assert pooled.dtype == torch.float64 and (pooled - reference).abs().max() <= 1e-12
    per_image = roi_align_per_image(features, rois[:8, 1:].reshape(2, 4, 4), (2, 3))
    rows = torch.cat([torch.tensor([[0.0]] * 4 + [[1.0]] * 4), rois[:8, 1:]], dim=1).double()
    assert (per_image.reshape(8, 2, 2, 3) - slow_roi_align(features, rows, (2, 3), 1.0, -1, False)).abs().max() <= 1e-12
    empty = roi_align(features, torch.zeros(0, 5), (2, 3))
    assert empty.shape == (0, 2, 2, 3) and empty.dtype == torch.float64
    with pytest.raises(ValueError, match=r"^roi_align: batch index 2 in `boxes` is outside \[0, 2\)$"):
        roi_align(features, torch.tensor([[2, 0.0, 0.0, 1.0, 1.0]]), 1)


def test_a_bfloat16_map_is_pooled_in_float32() -> None:
    features = _map(6, channels=16, height=9, width=9).to(torch.bfloat16)
    rois = torch.tensor([[0, 0.3, 0.2, 8.5, 7.1], [0, 1.0, 2.0, 6.0, 8.0]])
    exact = slow_roi_align(features.double(), rois.double(), (3, 3), 1.0, -1, True)
    pooled = roi_align(features, rois, 3, aligned=True)
    step = torch.finfo(torch.bfloat16).eps * exact.abs().clamp(min=torch.finfo(torch.bfloat16).tiny)
    assert pooled.dtype == torch.bfloat16 and ((pooled.double() - exact).abs() <= step / 2 + 1e-30).all()
