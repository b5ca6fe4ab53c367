"""The dense map and region pooling (in `modeling_harmoclip/modeling_harmoclip.py`) where the common tiny model cannot see a
mistake: a trunk of more than two layers, a frame that is not square, gradient checkpointing, a config that asks for
tuples, the other pooling order, patch vectors of small norm and boxes in float64. Every expectation is computed
from the definitions (`region_reference`, the loop RoIAlign of `roi_reference`), not from the module under test."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPModel

from conftest import tiny_clip_config
from modeling_harmoclip import HarmoCLIPConfig, HarmoCLIPModel
from modeling_harmoclip.modeling_harmoclip import dense_map, image_features_and_regions, pool_regions, vision_trunk
from region_reference import reference_regions, value_path_dense
from roi_reference import slow_roi_align

BOXES = torch.tensor([[0.0, 0.0, 0.5, 0.75], [0.25, 0.125, 1.0, 1.0], [0.1, 0.6, 0.4, 0.9]])


def tiny_clip_config_with(vision_layers: int):
    config = tiny_clip_config()
    config.vision_config.num_hidden_layers = vision_layers
    return config


def model_with(vision_layers: int = 2, seed: int = 0, **settings) -> HarmoCLIPModel:
    torch.manual_seed(seed)
    return HarmoCLIPModel(HarmoCLIPConfig.from_clip_config(tiny_clip_config_with(vision_layers), **settings)).eval()


def text_inputs(batch: int = 1) -> torch.Tensor:
    return torch.tensor([[2512, 40, 41, 42, 2513]] * batch)


@pytest.mark.parametrize("layers", [3, 4])
def test_a_deeper_trunk_runs_every_layer_but_the_last_then_the_value_path(layers: int) -> None:
    model = model_with(vision_layers=layers)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected_dense = value_path_dense(model, pixels)
        torch.testing.assert_close(model.get_dense_features(pixels), F.normalize(expected_dense, dim=1))
        output = model(pixel_values=pixels, input_ids=text_inputs(2), boxes=BOXES.expand(2, -1, -1))
        reference_image = CLIPModel(tiny_clip_config_with(layers))
        reference_image.load_state_dict(model.state_dict(), strict=False)
        expected_image = reference_image.eval().get_image_features(pixel_values=pixels).pooler_output
    for image in range(2):
        expected = reference_regions(model, pixels[image : image + 1], BOXES)
        torch.testing.assert_close(output.region_embeds[image].double(), expected, atol=1e-5, rtol=1e-5)
    # The one trunk pass shared with the global embedding left CLIP's image embedding as it is.
    torch.testing.assert_close(output.image_embeds, F.normalize(expected_image, dim=-1), atol=1e-5, rtol=1e-5)


def test_a_frame_that_is_not_square_gives_a_map_of_its_own_shape() -> None:
    model = model_with(vision_layers=3)
    pixels = torch.randn(1, 3, 32, 48)  # a 4 x 6 patch grid
    with torch.no_grad():
        dense = model.get_dense_features(pixels, interpolate_pos_encoding=True)
        expected = F.normalize(value_path_dense(model, pixels, interpolate_pos_encoding=True), dim=1)
        assert dense.shape == (1, 16, 4, 6)
        torch.testing.assert_close(dense, expected)
        regions = model.get_region_features(pixels, BOXES[None], interpolate_pos_encoding=True)
        output = model(pixel_values=pixels, input_ids=text_inputs(), boxes=BOXES[None], interpolate_pos_encoding=True)
        without_boxes = model(pixel_values=pixels, input_ids=text_inputs(), interpolate_pos_encoding=True)
    torch.testing.assert_close(without_boxes.image_embeds, output.image_embeds)  # the same global pass
    expected_regions = reference_regions(model, pixels, BOXES, interpolate_pos_encoding=True)
    torch.testing.assert_close(regions[0].double(), expected_regions, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(output.region_embeds[0].double(), expected_regions, atol=1e-5, rtol=1e-5)


def test_another_frame_is_refused_unless_interpolation_is_asked() -> None:
    model = model_with()
    pixels = torch.randn(1, 3, 32, 48)
    mask = torch.ones(1, len(BOXES), dtype=torch.bool)
    with torch.no_grad():
        for call in (
            lambda: dense_map(model, pixels),
            lambda: vision_trunk(model, pixels),
            lambda: image_features_and_regions(model, pixels, BOXES[None], mask),
        ):
            with pytest.raises(ValueError, match="doesn't match model"):
                call()


def count_calls(module: torch.nn.Module) -> list[int]:
    """How often `module` is entered (a pre-hook: the checkpoint's recomputation stops once it has what the backward
    pass needs, before a forward hook would run)."""
    calls = [0]
    module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_gradient_checkpointing_recomputes_the_value_path_and_keeps_its_gradient() -> None:
    pixels = torch.randn(2, 3, 32, 32)
    gradients = {}
    for checkpointing in (False, True):
        model = model_with(vision_layers=3).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        last_mlp_calls = count_calls(model.vision_model.encoder.layers[-1].mlp)
        dense = dense_map(model, pixels)
        assert last_mlp_calls[0] == 1
        dense.square().sum().backward()
        # Under checkpointing the value path runs again in the backward pass instead of keeping its activations.
        assert last_mlp_calls[0] == (2 if checkpointing else 1)
        with torch.no_grad():
            torch.testing.assert_close(dense.detach(), value_path_dense(model, pixels))
        gradients[checkpointing] = model.vision_model.encoder.layers[-1].self_attn.v_proj.weight.grad.clone()
    torch.testing.assert_close(gradients[True], gradients[False])


def test_a_config_that_asks_for_tuples_still_gives_regions_and_the_image_embedding() -> None:
    model = model_with(vision_layers=3)
    model.config.return_dict = False
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        output = model(pixel_values=pixels, input_ids=text_inputs(), boxes=BOXES[None], return_dict=True)
        without_boxes = model(pixel_values=pixels, input_ids=text_inputs(), return_dict=True)
        model.config.return_dict = True
        expected = model(pixel_values=pixels, input_ids=text_inputs(), boxes=BOXES[None])
    torch.testing.assert_close(output.region_embeds[0].double(), reference_regions(model, pixels, BOXES))
    torch.testing.assert_close(output.image_embeds, expected.image_embeds)
    torch.testing.assert_close(without_boxes.image_embeds, expected.image_embeds)


def test_the_config_pooling_order_reaches_the_forward_pass() -> None:
    model = model_with(region_pooling="pool_then_normalize")
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        output = model(pixel_values=pixels, input_ids=text_inputs(), boxes=BOXES[None])
    expected = reference_regions(model, pixels, BOXES)  # pools the projected patches as they are
    torch.testing.assert_close(output.region_embeds[0].double(), expected, atol=1e-5, rtol=1e-5)
    normalised_first = model_with(region_pooling="normalize_then_pool")
    with torch.no_grad():
        other = normalised_first(pixel_values=pixels, input_ids=text_inputs(), boxes=BOXES[None]).region_embeds
    assert not torch.allclose(other, output.region_embeds, atol=1e-3)


def by_hand(dense: torch.Tensor, boxes: torch.Tensor, normalise_first: bool) -> torch.Tensor:
    """(1, D, h, w) map, (N, 4) normalised boxes -> (N, D): each patch to unit length (if asked), the loop RoIAlign
    1x1 (aligned, adaptive sampling), unit length."""
    dense = dense.double()
    if normalise_first:
        dense = dense / dense.norm(dim=1, keepdim=True)
    height, width = dense.shape[-2:]
    rois = torch.cat([torch.zeros(len(boxes), 1), boxes.double() * torch.tensor([width, height] * 2)], dim=1)
    pooled = slow_roi_align(dense, rois.double(), (1, 1), 1.0, -1, True)[:, :, 0, 0]
    return pooled / pooled.norm(dim=-1, keepdim=True)


def test_pooling_normalises_patches_of_small_norm_first_by_default() -> None:
    torch.manual_seed(3)
    direction = F.normalize(torch.randn(1, 8, 4, 6), dim=1)
    norms = torch.linspace(0.01, 0.6, 24).reshape(1, 1, 4, 6)  # every patch shorter than 1, all of other lengths
    dense = direction * norms
    mask = torch.ones(1, len(BOXES), dtype=torch.bool)
    pooled = pool_regions(dense, BOXES[None], mask)
    torch.testing.assert_close(pooled[0].double(), by_hand(dense, BOXES, normalise_first=True), atol=1e-5, rtol=1e-5)
    pooled_as_is = pool_regions(dense, BOXES[None], mask, "pool_then_normalize")
    torch.testing.assert_close(
        pooled_as_is[0].double(), by_hand(dense, BOXES, normalise_first=False), atol=1e-5, rtol=1e-5
    )
    assert not torch.allclose(pooled, pooled_as_is, atol=1e-3)


def test_boxes_of_any_float_type_pool_in_float32_and_masked_rows_are_zero() -> None:
    torch.manual_seed(4)
    dense = torch.randn(2, 8, 4, 4)
    boxes = torch.rand(2, 3, 2).sort(dim=-1).values.repeat_interleave(2, dim=-1)[..., [0, 2, 1, 3]]
    boxes[..., 2:] += 0.05
    mask = torch.tensor([[True, False, True], [False, True, True]])
    expected = pool_regions(dense, boxes, mask)
    assert expected.dtype == torch.float32
    for image in range(2):
        kept = mask[image]
        torch.testing.assert_close(
            expected[image, kept].double(),
            by_hand(dense[image : image + 1], boxes[image, kept], True),
            atol=1e-5,
            rtol=1e-5,
        )
        assert torch.equal(expected[image, ~kept], torch.zeros_like(expected[image, ~kept]))
    for dtype in (torch.float64, torch.bfloat16, torch.float16):
        pooled = pool_regions(dense, boxes.to(dtype), mask)
        assert pooled.dtype == torch.float32, dtype
        if dtype == torch.float64:
            torch.testing.assert_close(pooled, expected)
