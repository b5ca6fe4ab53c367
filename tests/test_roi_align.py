"""RoIAlign against a slow, loop-based reference written from torchvision's documented algorithm."""

from __future__ import annotations

import pytest
import torch

from modeling_harmoclip.image_processing_harmoclip import enlarge_boxes
from modeling_harmoclip.modeling_harmoclip import roi_align
from roi_reference import slow_roi_align


def _random_rois(generator: torch.Generator, count: int, batch: int, height: int, width: int) -> torch.Tensor:
    """Boxes anywhere from beyond the top-left border to beyond the bottom-right one, sub-pixel to large."""
    origin = torch.rand(count, 2, generator=generator) * torch.tensor([width + 4.0, height + 4.0]) - 3.0
    size = torch.rand(count, 2, generator=generator) ** 2 * torch.tensor([width * 1.2, height * 1.2]) + 0.01
    index = torch.randint(0, batch, (count, 1), generator=generator).double()
    return torch.cat([index, origin.double(), (origin + size).double()], dim=1)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 1, 2, 3])
@pytest.mark.parametrize("output_size", [(1, 1), (2, 3), (4, 4)])
def test_matches_slow_reference(aligned: bool, sampling_ratio: int, output_size: tuple[int, int]) -> None:
    generator = torch.Generator().manual_seed(hash((aligned, sampling_ratio, output_size)) % 2**31)
    features = torch.randn(2, 3, 7, 9, generator=generator, dtype=torch.float64)
    rois = _random_rois(generator, 16, 2, 7, 9)
    for spatial_scale in (1.0, 0.5):
        fast = roi_align(features.float(), rois.float(), output_size, spatial_scale, sampling_ratio, aligned)
        slow = slow_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)
        assert (fast.double() - slow).abs().max().item() <= 1e-5


def test_border_and_subpixel_cases() -> None:
    features = torch.arange(2 * 5 * 6, dtype=torch.float64).reshape(1, 2, 5, 6)
    rois = torch.tensor(
        [
            [0, 0.0, 0.0, 6.0, 5.0],  # the whole map
            [0, -3.0, -2.0, 0.5, 0.5],  # mostly beyond the top-left corner
            [0, 5.5, 4.5, 9.0, 8.0],  # beyond the bottom-right corner
            [0, 2.2, 1.3, 2.3, 1.35],  # sub-pixel
            [0, 20.0, 20.0, 30.0, 30.0],  # entirely outside: zeros
            [0, 3.0, 3.0, 3.0, 3.0],  # zero size
        ],
        dtype=torch.float64,
    )
    for aligned in (False, True):
        fast = roi_align(features, rois, (2, 2), 1.0, -1, aligned)
        slow = slow_roi_align(features, rois, (2, 2), 1.0, -1, aligned)
        assert (fast - slow).abs().max().item() <= 1e-9
    outside = roi_align(features, rois[4:5], (2, 2), aligned=True)
    assert outside.abs().max().item() == 0.0


def test_hand_computed_cell_centres() -> None:
    """With aligned=True, a box exactly covering cell (i, j) samples the cell centre: its value, exactly."""
    features = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    one_cell = roi_align(features, torch.tensor([[0, 2.0, 3.0, 3.0, 4.0]], dtype=torch.float64), 1, aligned=True)
    assert torch.allclose(one_cell[0, :, 0, 0], features[0, :, 3, 2])
    two_by_two = roi_align(features, torch.tensor([[0, 1.0, 1.0, 3.0, 3.0]], dtype=torch.float64), 1, aligned=True)
    assert torch.allclose(two_by_two[0, :, 0, 0], features[0, :, 1:3, 1:3].mean(dim=(-1, -2)))


def test_list_of_boxes_equals_batch_index_form() -> None:
    features = torch.randn(3, 2, 8, 8)
    per_image = [
        torch.tensor([[0.5, 0.5, 4.0, 6.0]]),
        torch.zeros(0, 4),
        torch.tensor([[1.0, 2.0, 7.5, 7.9], [0, 0, 8, 8]]),
    ]
    as_rois = torch.tensor([[0, 0.5, 0.5, 4.0, 6.0], [2, 1.0, 2.0, 7.5, 7.9], [2, 0, 0, 8, 8]])
    assert torch.equal(roi_align(features, per_image, 3, aligned=True), roi_align(features, as_rois, 3, aligned=True))


def test_gradient_reaches_input() -> None:
    features = torch.randn(1, 2, 5, 5, requires_grad=True)
    roi_align(features, torch.tensor([[0, 1.0, 1.0, 3.0, 4.0]]), 1, aligned=True).sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    assert features.grad[0, :, 0, 0].abs().sum() == 0  # a cell the box does not reach


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="boxes"):
        roi_align(torch.zeros(1, 1, 4, 4), torch.zeros(3, 4), 1)
    with pytest.raises(ValueError, match=r"boxes\[1\]"):
        roi_align(torch.zeros(2, 1, 4, 4), [torch.zeros(1, 4), torch.zeros(4)], 1)
    with pytest.raises(ValueError, match="batch index 5"):
        roi_align(torch.zeros(2, 1, 4, 4), torch.tensor([[5, 0, 0, 1, 1.0]]), 1)
    with pytest.raises(ValueError, match="input"):
        roi_align(torch.zeros(1, 4, 4), torch.zeros(0, 5), 1)


def test_enlarge_boxes_about_centre() -> None:
    boxes = torch.tensor([[2.0, 4.0, 6.0, 8.0]])
    assert torch.equal(enlarge_boxes(boxes, 1.5), torch.tensor([[1.0, 3.0, 7.0, 9.0]]))


def test_float32_arithmetic_under_autocast() -> None:
    """Mixed precision must not lower RoIAlign's arithmetic: same result inside and outside autocast."""
    features = torch.randn(2, 8, 7, 7)
    rois = torch.tensor([[0, 0.3, 0.2, 5.5, 6.1], [1, 1.0, 1.0, 3.0, 4.0]])
    reference = roi_align(features, rois, 2, aligned=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = roi_align(features, rois, 2, aligned=True)
    assert mixed.dtype == torch.float32 and torch.equal(mixed, reference)


@pytest.mark.parametrize("aligned", [False, True])
def test_per_image_form_equals_the_general_one(aligned: bool) -> None:
    """The batched form the model uses: the same boxes on every image, as matrix products, without a gather."""
    from modeling_harmoclip.modeling_harmoclip import roi_align_per_image

    generator = torch.Generator().manual_seed(7)
    features = torch.randn(3, 5, 6, 8, generator=generator, dtype=torch.float64)
    corner = torch.rand(3, 4, 2, generator=generator, dtype=torch.float64) * 8 - 1
    boxes = torch.cat(
        [corner, corner + torch.rand(3, 4, 2, generator=generator, dtype=torch.float64) * 5 + 0.1], dim=-1
    )
    batched = roi_align_per_image(features, boxes, (2, 3), 0.75, -1, aligned)
    rois = torch.cat([torch.arange(3, dtype=torch.float64).repeat_interleave(4)[:, None], boxes.reshape(-1, 4)], dim=1)
    general = roi_align(features, rois, (2, 3), 0.75, -1, aligned)
    assert batched.shape == (3, 4, 5, 2, 3)
    assert (batched.reshape(12, 5, 2, 3) - general).abs().max() <= 1e-12
    reference = slow_roi_align(features, rois, (2, 3), 0.75, -1, aligned)
    assert (general - reference).abs().max() <= 1e-9


@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
@pytest.mark.parametrize("output_size", [(1, 1), (2, 3)])
def test_reversed_boxes_sample_the_reflected_grid(sampling_ratio: int, output_size: tuple[int, int]) -> None:
    """A box with x2 < x1 (or y2 < y1) under aligned=True and a fixed sampling ratio: torchvision keeps the negative
    bin size and samples at start + (i + 0.5) * bin / grid over the reversed extent (values, not zeros)."""
    generator = torch.Generator().manual_seed(sampling_ratio * 10 + output_size[1])
    features = torch.randn(2, 3, 7, 9, generator=generator, dtype=torch.float64)
    rois = torch.tensor(
        [
            [0, 6.0, 1.0, 2.0, 5.0],  # x reversed
            [1, 1.0, 6.0, 8.0, 2.0],  # y reversed
            [0, 8.5, 6.5, 0.5, 0.2],  # both reversed
            [1, 3.0, 2.0, 2.5, 4.0],  # reversed by half a pixel
            [0, 0.2, 3.0, -2.0, 5.0],  # reversed across the left border
        ],
        dtype=torch.float64,
    )
    for spatial_scale in (1.0, 0.5):
        slow = slow_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, True)
        assert slow[:3].abs().max().item() > 0.1  # the reference reads the reflected grid, not zeros
        fast = roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned=True)
        assert (fast - slow).abs().max().item() <= 1e-9
        from modeling_harmoclip.modeling_harmoclip import roi_align_per_image

        per_image = roi_align_per_image(
            features[:1], rois[None, rois[:, 0] == 0, 1:], output_size, spatial_scale, sampling_ratio, aligned=True
        )
        assert (per_image[0] - slow[rois[:, 0] == 0]).abs().max().item() <= 1e-9
