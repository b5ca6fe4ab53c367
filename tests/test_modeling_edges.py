"""`HarmoCLIPModel` where the common tests cannot see a mistake: the model as its own GR teacher, embeddings shorter
than 1 before normalising, the caption's own position ids, the region and dense features of one pass, and the crop
embeddings in half precision. Expectations come from transformers' `CLIPModel` with the same weights and from the
definitions in `region_reference`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPModel

from conftest import tiny_clip_config, tiny_harmoclip_model
from region_reference import reference_regions, value_path_dense

BOXES = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 1.0, 1.0]]])
TEXT = torch.tensor([[2512, 40, 41, 42, 2513]])


def clip_twin(model) -> CLIPModel:
    """transformers' CLIPModel holding `model`'s weights."""
    twin = CLIPModel(tiny_clip_config())
    twin.load_state_dict(model.state_dict(), strict=False)
    return twin.eval()


@pytest.mark.parametrize("teacher", ["self_stop_grad", "self_with_grad"])
def test_the_model_as_its_own_teacher_gives_gr_by_hand(teacher: str) -> None:
    model = tiny_harmoclip_model(seed=3, gr_teacher=teacher, loss_gc_weight=0.0, loss_lrc_weight=0.0).train()
    pixels, crops = torch.randn(1, 3, 32, 32), torch.randn(1, 2, 3, 32, 32)
    crop_mask = torch.tensor([[True, False]])
    output = model(
        pixel_values=pixels,
        input_ids=TEXT,
        boxes=BOXES,
        box_mask=crop_mask,  # the second box is padding: no box, no crop
        crop_pixel_values=crops,
        crop_mask=crop_mask,
        return_loss=True,
    )
    with torch.no_grad():
        target = F.normalize(clip_twin(model).get_image_features(pixel_values=crops[0, :1]).pooler_output, dim=-1)
    region = output.region_embeds[0, 0]
    # GR over the one box that has a crop: 1 - cos(region, crop embedding).
    torch.testing.assert_close(output.loss_gr, 1 - (region.double() @ target[0].double()).float(), atol=1e-5, rtol=1e-5)
    output.loss.backward()
    # The crop's path reaches the class embedding only through the teacher: its gradient says which teacher ran.
    embedding_grad = model.vision_model.embeddings.class_embedding.grad
    other = tiny_harmoclip_model(seed=3, gr_teacher=teacher, loss_gc_weight=0.0, loss_lrc_weight=0.0).train()
    other(
        pixel_values=pixels,
        input_ids=TEXT,
        boxes=BOXES,
        teacher_region_embeds=target[None].expand(1, 2, -1).clone(),
        box_mask=crop_mask,
        return_loss=True,
    ).loss.backward()
    # With the teacher's targets given as constants, the gradient is the stop-gradient one.
    same = torch.allclose(embedding_grad, other.vision_model.embeddings.class_embedding.grad, atol=1e-6)
    assert same == (teacher == "self_stop_grad")


def shrink_projections(model) -> None:
    """Projections scaled down: every embedding comes out much shorter than 1 before it is normalised."""
    with torch.no_grad():
        model.visual_projection.weight.mul_(1e-3)
        model.text_projection.weight.mul_(1e-3)


def test_short_embeddings_are_still_unit_vectors() -> None:
    model = tiny_harmoclip_model(seed=4)
    shrink_projections(model)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        output = model(pixel_values=pixels, input_ids=TEXT.expand(2, -1), boxes=BOXES.expand(2, -1, -1))
        dense = model.get_dense_features(pixels)
        raw = value_path_dense(model, pixels)
    assert float(clip_twin(model).get_image_features(pixel_values=pixels).pooler_output.norm(dim=-1).max()) < 0.1
    torch.testing.assert_close(output.image_embeds.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(output.text_embeds.norm(dim=-1), torch.ones(2))
    assert float(raw.norm(dim=1).max()) < 0.1
    torch.testing.assert_close(dense, raw / raw.norm(dim=1, keepdim=True))


def test_the_dense_features_refuse_another_frame_unless_asked() -> None:
    model = tiny_harmoclip_model()
    with torch.no_grad(), pytest.raises(ValueError, match="doesn't match model"):
        model.get_dense_features(torch.randn(1, 3, 48, 48))
    assert model.get_dense_features(torch.randn(1, 3, 48, 48), interpolate_pos_encoding=True).shape == (1, 16, 6, 6)


def test_the_captions_own_position_ids_are_used() -> None:
    model = tiny_harmoclip_model(seed=5)
    pixels = torch.randn(1, 3, 32, 32)
    position_ids = torch.tensor([[3, 4, 5, 6, 7]])
    with torch.no_grad():
        output = model(pixel_values=pixels, input_ids=TEXT, position_ids=position_ids)
        expected = clip_twin(model)(pixel_values=pixels, input_ids=TEXT, position_ids=position_ids).text_embeds
        default = model(pixel_values=pixels, input_ids=TEXT).text_embeds
    torch.testing.assert_close(output.text_embeds, expected)
    assert not torch.allclose(default, expected, atol=1e-4)


def test_region_and_dense_features_of_one_pass_follow_the_definitions() -> None:
    model = tiny_harmoclip_model(seed=6)
    pixels = torch.randn(1, 3, 32, 32)
    mask = torch.tensor([[True, False]])
    with torch.no_grad():
        regions, dense = model.get_region_and_dense_features(pixels, BOXES, mask)
    torch.testing.assert_close(
        regions[0, 0].double(), reference_regions(model, pixels, BOXES[0, :1])[0], atol=1e-5, rtol=1e-5
    )
    assert torch.equal(regions[0, 1], torch.zeros(16))
    raw = value_path_dense(model, pixels)
    torch.testing.assert_close(dense, raw / raw.norm(dim=1, keepdim=True))


def test_crop_embeddings_are_float32_whatever_the_crops_dtype() -> None:
    model = tiny_harmoclip_model(seed=7).to(torch.bfloat16)
    crops = torch.randn(1, 2, 3, 32, 32, dtype=torch.bfloat16)
    with torch.no_grad():
        embeds = model.get_crop_features(crops, torch.tensor([[1, 0]]))  # an integer mask, as a user may pass
    assert embeds.dtype == torch.float32
    torch.testing.assert_close(embeds[0, 0].norm(), torch.tensor(1.0))
    assert torch.equal(embeds[0, 1], torch.zeros(16))


def test_phrase_and_category_ids_reach_lrc_through_the_forward_pass() -> None:
    from model_batches import training_batch

    model = tiny_harmoclip_model(seed=8, loss_gc_weight=0.0, loss_lrc_weight=1.0, loss_gr_weight=0.0)
    batch = training_batch(model)
    batch.pop("teacher_region_embeds")
    distinct = model(**batch, return_loss=True).loss_lrc
    assert float(distinct) > 0.01
    # Two linked boxes with the same phrase text: each one's only negative is left out, so LRC is exactly 0.
    same_phrase = model(**{**batch, "phrase_ids": torch.tensor([[11, -1], [11, -1]])}, return_loss=True).loss_lrc
    torch.testing.assert_close(same_phrase, torch.tensor(0.0), atol=1e-6, rtol=0)
    # Distinct phrases of one category: left out too (`lrc_mask_categories`, on by default).
    categories = torch.tensor([[3, -1], [3, -1]])
    same_category = model(**batch, category_ids=categories, return_loss=True).loss_lrc
    torch.testing.assert_close(same_category, torch.tensor(0.0), atol=1e-6, rtol=0)


def test_rla_alone_at_its_own_temperature_trains_that_temperature() -> None:
    model = tiny_harmoclip_model(region_logit_scale_mode="separate", loss_lrc_weight=0.0, loss_rla_weight=0.5)
    assert "region_logit_scale" in dict(model.named_parameters())
    frozen = tiny_harmoclip_model(region_logit_scale_mode="separate", loss_lrc_weight=0.0, loss_rla_weight=0.0)
    assert "region_logit_scale" not in dict(frozen.named_parameters())


def test_one_pass_features_refuse_another_frame_unless_asked() -> None:
    model = tiny_harmoclip_model()
    pixels = torch.randn(1, 3, 48, 48)
    with torch.no_grad(), pytest.raises(ValueError, match="doesn't match model"):
        model.get_region_and_dense_features(pixels, BOXES)
    regions, dense = model.get_region_and_dense_features(pixels, BOXES, interpolate_pos_encoding=True)
    assert regions.shape == (1, 2, 16) and dense.shape == (1, 16, 6, 6)


def test_save_options_reach_transformers(tmp_path) -> None:
    model = tiny_harmoclip_model()
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    shards = sorted(path.name for path in tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").exists()
