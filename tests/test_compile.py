"""torch.compile of the region and dense features: one graph, no graph break, the same numbers as eager."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_harmoclip_model
from modeling_harmoclip.modeling_harmoclip import roi_align_per_image
from roi_reference import slow_roi_align


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _boxes(generator: torch.Generator, batch: int, count: int) -> torch.Tensor:
    """(B, N, 4) normalised xyxy boxes: sub-patch to whole-image."""
    corner = torch.rand(batch, count, 2, generator=generator) * 0.7
    return torch.cat([corner, corner + torch.rand(batch, count, 2, generator=generator) * 0.3 + 0.02], dim=-1)


def test_region_and_dense_features_trace_without_graph_breaks() -> None:
    model = tiny_harmoclip_model()
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(2, 3, 32, 32, generator=generator)
    boxes = _boxes(generator, 2, 5)
    box_mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    with torch.no_grad():
        region = torch._dynamo.explain(model.get_region_features)(pixel_values, boxes, box_mask)
        torch._dynamo.reset()
        dense = torch._dynamo.explain(model.get_dense_features)(pixel_values)
    assert (region.graph_break_count, region.graph_count) == (0, 1), [str(b.reason) for b in region.break_reasons]
    assert (dense.graph_break_count, dense.graph_count) == (0, 1), [str(b.reason) for b in dense.break_reasons]


def test_compiled_region_features_equal_eager() -> None:
    model = tiny_harmoclip_model()
    generator = torch.Generator().manual_seed(1)
    pixel_values = torch.randn(3, 3, 32, 32, generator=generator)
    boxes = _boxes(generator, 3, 4)
    box_mask = torch.tensor([[True] * 4, [True, False, True, False], [False, True, True, True]])
    compiled = model.compiled_region_features(backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        eager = model.get_region_features(pixel_values, boxes, box_mask)
        fast = compiled(pixel_values, boxes, box_mask)
        compiled_dense = torch.compile(model.get_dense_features, backend="aot_eager", fullgraph=True)(pixel_values)
        eager_dense = model.get_dense_features(pixel_values)
    assert (fast - eager).abs().max() <= 1e-5
    assert torch.equal(fast[~box_mask], torch.zeros_like(fast[~box_mask]))
    assert (compiled_dense - eager_dense).abs().max() <= 1e-5


def test_compiled_call_still_checks_the_boxes_eagerly() -> None:
    model = tiny_harmoclip_model()
    compiled = model.compiled_region_features(backend="aot_eager")
    boxes = torch.tensor([[[0.1, 0.1, 0.5, 0.5], [0.6, 0.2, 0.4, 0.9]]])
    with pytest.raises(ValueError, match=r"`boxes`\[0, 1\] is empty or inverted"):
        compiled(torch.zeros(1, 3, 32, 32), boxes)
    boxes[0, 1] = torch.tensor([0.2, float("nan"), 0.3, 0.4])
    with pytest.raises(ValueError, match=r"`boxes`\[0, 1\] is not finite"):
        compiled(torch.zeros(1, 3, 32, 32), boxes)


@pytest.mark.parametrize("output_size", [(1, 1), (2, 3)])
def test_compiled_roi_align_with_the_static_sample_bound_matches_the_reference(output_size: tuple[int, int]) -> None:
    """Compiled, the adaptive sampling grid is enumerated up to a bound known from the map's size alone; boxes far
    larger than the map (hundreds of sample points per bin, most of them off the map) still match torchvision's
    arithmetic."""
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(2, 3, 5, 6, generator=generator, dtype=torch.float64)
    corner = torch.rand(2, 6, 2, generator=generator, dtype=torch.float64) * 8 - 2
    sides = torch.rand(2, 6, 2, generator=generator, dtype=torch.float64) * 4 + 0.05
    sides[0, :2] = torch.tensor([300.0, 450.0], dtype=torch.float64)  # a bin hundreds of pixels wide
    corner[0, :2] = torch.tensor([-200.0, -150.0], dtype=torch.float64)
    boxes = torch.cat([corner, corner + sides], dim=-1)
    compiled = torch.compile(roi_align_per_image, backend="aot_eager", fullgraph=True)
    fast = compiled(features.float(), boxes.float(), output_size, 1.0, -1, True)
    rois = torch.cat([torch.arange(2, dtype=torch.float64).repeat_interleave(6)[:, None], boxes.reshape(-1, 4)], dim=1)
    reference = slow_roi_align(features, rois, output_size, 1.0, -1, True)
    assert (fast.reshape(12, 3, *output_size).double() - reference).abs().max() <= 1e-5
    eager = roi_align_per_image(features.float(), boxes.float(), output_size, 1.0, -1, True)
    assert (fast - eager).abs().max() <= 1e-5
