"""HarmoCLIPModel against transformers' CLIPModel and hand computations, on tiny random models (its loss:
test_modeling_loss.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPModel

from conftest import tiny_clip_config, tiny_harmoclip_config, tiny_harmoclip_model
from model_batches import BOS, EOS, random_captions, random_images, training_batch
from modeling_harmoclip import HarmoCLIPConfig, HarmoCLIPModel
from region_reference import value_path_dense
from roi_reference import slow_roi_align


@pytest.fixture
def pair() -> tuple[CLIPModel, HarmoCLIPModel]:
    torch.manual_seed(0)
    clip = CLIPModel(tiny_clip_config()).eval()
    model = HarmoCLIPModel(tiny_harmoclip_config()).eval()
    result = model.load_state_dict(clip.state_dict(), strict=False)
    assert result.missing_keys == ["region_logit_scale"] and not result.unexpected_keys
    return clip, model


def test_parameter_names_are_clips(pair) -> None:
    clip, model = pair
    assert set(clip.state_dict()) == set(model.state_dict()) - {"region_logit_scale"}


def test_global_outputs_equal_clip(pair) -> None:
    clip, model = pair
    ids, attention = random_captions(4)
    pixels = random_images(3)
    with torch.no_grad():
        for ours, theirs in (
            (
                model.get_text_features(input_ids=ids, attention_mask=attention),
                clip.get_text_features(input_ids=ids, attention_mask=attention),
            ),
            (model.get_image_features(pixel_values=pixels), clip.get_image_features(pixel_values=pixels)),
        ):
            assert (ours.pooler_output - theirs.pooler_output).abs().max() <= 1e-6
            assert (ours.last_hidden_state - theirs.last_hidden_state).abs().max() <= 1e-6
        ours = model(input_ids=ids, pixel_values=pixels, attention_mask=attention)
        theirs = clip(input_ids=ids[:3], pixel_values=pixels, attention_mask=attention[:3], return_loss=True)
        plain = clip(input_ids=ids, pixel_values=pixels, attention_mask=attention)
    for name in ("logits_per_image", "logits_per_text", "image_embeds", "text_embeds"):
        assert (getattr(ours, name) - getattr(plain, name)).abs().max() <= 1e-6, name
    assert ours.region_embeds is None and ours.lexeme_embeds is None and ours.loss_lrc is None and ours.loss_gr is None
    square = model(input_ids=ids[:3], pixel_values=pixels, attention_mask=attention[:3], return_loss=True)
    assert (square.loss_gc - theirs.loss).abs() <= 1e-6 and (square.loss - theirs.loss).abs() <= 1e-6


def _assert_same_outputs(ours, theirs, where: str) -> None:
    """Equal nested outputs (tensors, tuples of tensors, ModelOutputs as tuples) to 1e-6."""
    if isinstance(theirs, torch.Tensor):
        assert isinstance(ours, torch.Tensor) and ours.shape == theirs.shape, where
        assert (ours - theirs).abs().max() <= 1e-6, where
        return
    assert type(ours) is tuple and len(ours) == len(theirs), (
        f"{where}: {type(ours).__name__} of {len(ours)} vs {len(theirs)}"
    )
    for index, (mine, clips) in enumerate(zip(ours, theirs)):
        _assert_same_outputs(mine, clips, f"{where}[{index}]")


@pytest.mark.parametrize("with_boxes", [False, True], ids=["global", "boxes"])
def test_forward_contract_equals_clip(with_boxes: bool) -> None:
    """`return_dict=False` gives CLIP's tuple, and `output_hidden_states` / `output_attentions` reach both towers,
    with boxes too (the region fields follow CLIP's)."""
    torch.manual_seed(0)
    clip = CLIPModel(tiny_clip_config()).eval()
    clip.set_attn_implementation("eager")
    model = HarmoCLIPModel(tiny_harmoclip_config()).eval()
    model.load_state_dict(clip.state_dict(), strict=False)
    model.set_attn_implementation("eager")
    ids, attention = random_captions(3)
    pixels = random_images(3)
    boxes = (
        torch.tensor([[[0.0, 0.0, 0.5, 0.5]], [[0.2, 0.1, 0.9, 0.7]], [[0.5, 0.5, 1.0, 1.0]]]) if with_boxes else None
    )
    options = dict(output_hidden_states=True, output_attentions=True)
    with torch.no_grad():
        theirs = clip(input_ids=ids, pixel_values=pixels, attention_mask=attention, **options)
        ours = model(input_ids=ids, pixel_values=pixels, attention_mask=attention, boxes=boxes, **options)
        as_tuple = model(
            input_ids=ids, pixel_values=pixels, attention_mask=attention, boxes=boxes, return_dict=False, **options
        )
        clip_tuple = clip(input_ids=ids, pixel_values=pixels, attention_mask=attention, return_dict=False, **options)
        plain = model(input_ids=ids, pixel_values=pixels, attention_mask=attention, boxes=boxes)
    for tower in ("vision_model_output", "text_model_output"):
        mine, clips = getattr(ours, tower), getattr(theirs, tower)
        assert len(clips.hidden_states) == 3 and len(clips.attentions) == 2  # embeddings + 2 layers; 2 layers
        for field in ("last_hidden_state", "pooler_output", "hidden_states", "attentions"):
            _assert_same_outputs(
                tuple(getattr(mine, field)) if field in ("hidden_states", "attentions") else getattr(mine, field),
                tuple(getattr(clips, field)) if field in ("hidden_states", "attentions") else getattr(clips, field),
                f"{tower}.{field}",
            )
    assert plain.vision_model_output.hidden_states is None and plain.vision_model_output.attentions is None
    assert plain.vision_model_output.last_hidden_state is not None  # complete without the options too

    assert isinstance(as_tuple, tuple)
    _assert_same_outputs(as_tuple[: len(clip_tuple)], clip_tuple, "tuple")  # CLIP's fields first, in CLIP's order
    if with_boxes:
        extra = as_tuple[len(clip_tuple) :]
        assert len(extra) == 2  # region_embeds, region_mask: the fields that are not None, in field order
        _assert_same_outputs(extra[0], ours.region_embeds, "region_embeds")
        assert extra[1].tolist() == [[True]] * 3
        # The regions of the shared trunk pass equal those of the region method's own pass.
        _assert_same_outputs(ours.region_embeds, model.get_region_features(pixels, boxes), "regions")
    else:
        assert len(as_tuple) == len(clip_tuple)


def test_dense_features_follow_the_value_path(tiny_model: HarmoCLIPModel) -> None:
    pixels = random_images(2)
    dense = tiny_model.get_dense_features(pixels)
    reference = F.normalize(value_path_dense(tiny_model, pixels), dim=1)
    assert dense.shape == (2, 16, 4, 4)
    assert (dense - reference).abs().max() <= 1e-6
    assert torch.allclose(dense.norm(dim=1), torch.ones(2, 4, 4), atol=1e-5)


def test_full_dense_mode_uses_the_ordinary_last_layer() -> None:
    model = tiny_harmoclip_model(dense_mode="full")
    pixels = random_images(1)
    hidden = model.get_image_features(pixel_values=pixels).last_hidden_state
    patches = model.visual_projection(model.vision_model.post_layernorm(hidden[:, 1:]))
    expected = F.normalize(patches.reshape(1, 4, 4, -1).permute(0, 3, 1, 2), dim=1)
    assert (model.get_dense_features(pixels) - expected).abs().max() <= 1e-6


def test_gradients_reach_the_value_projection(tiny_model: HarmoCLIPModel) -> None:
    tiny_model.train()
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 1.0, 1.0]]])
    tiny_model.get_region_features(random_images(1), boxes).sum().backward()
    last = tiny_model.vision_model.encoder.layers[-1].self_attn
    assert last.v_proj.weight.grad is not None and last.v_proj.weight.grad.abs().sum() > 0
    assert last.q_proj.weight.grad is None  # the value path does not use queries or keys


def test_region_features_hand_computed_boxes() -> None:
    """Box-aligned boxes pool whole patches: a plain mean of the (normalised, by default) patch vectors."""
    pixels = random_images(2)
    boxes = torch.tensor(
        [
            [[0.25, 0.5, 0.5, 0.75], [0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0]],
            [[0.75, 0.0, 1.0, 0.25], [0.25, 0.25, 0.75, 0.75], [0.1, 0.1, 0.9, 0.9]],
        ]
    )
    box_mask = torch.tensor([[True, True, False], [True, True, True]])
    for pooling in ("normalize_then_pool", "pool_then_normalize"):
        model = tiny_harmoclip_model(region_pooling=pooling)
        unnormalised = value_path_dense(model, pixels)  # (2, D, 4, 4); a patch is 0.25 of the image side
        patches = F.normalize(unnormalised, dim=1) if pooling == "normalize_then_pool" else unnormalised
        regions = model.get_region_features(pixels, boxes, box_mask)
        assert regions.shape == (2, 3, 16) and regions.dtype == torch.float32
        assert torch.allclose(regions[0, 0], F.normalize(unnormalised[0, :, 2, 1], dim=0), atol=1e-6)  # one patch
        assert torch.allclose(regions[0, 1], F.normalize(patches[0, :, :2, :2].mean((-1, -2)), dim=0), atol=1e-6)
        assert torch.allclose(regions[1, 0], F.normalize(unnormalised[1, :, 0, 3], dim=0), atol=1e-6)
        assert torch.allclose(regions[1, 1], F.normalize(patches[1, :, 1:3, 1:3].mean((-1, -2)), dim=0), atol=1e-6)
        assert regions[0, 2].abs().sum() == 0  # masked box
        assert torch.allclose(regions[1, 2].norm(), torch.tensor(1.0), atol=1e-5)


def test_region_pooling_order_against_the_loop_reference() -> None:
    """Default: normalise every patch, RoIAlign (aligned, 1x1, adaptive), normalise (CLIPSelf / FineCLIP "v2")."""
    model = tiny_harmoclip_model()
    assert model.config.region_pooling == "normalize_then_pool"
    pixels = random_images(2, seed=3)
    boxes = torch.tensor(
        [[[0.1, 0.2, 0.7, 0.9], [0.33, 0.05, 0.52, 0.4]], [[0.0, 0.0, 1.0, 1.0], [0.6, 0.55, 0.97, 0.8]]]
    )
    dense = value_path_dense(model, pixels).double()  # (2, D, 4, 4)
    rois = torch.cat([torch.tensor([[0.0], [0.0], [1.0], [1.0]]), boxes.reshape(-1, 4).double() * 4], dim=1)
    for pooling, feature_map in (
        ("normalize_then_pool", dense / dense.norm(dim=1, keepdim=True)),
        ("pool_then_normalize", dense),
    ):
        model.config.region_pooling = pooling
        pooled = slow_roi_align(feature_map, rois, (1, 1), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        expected = (pooled[:, :, 0, 0] / pooled[:, :, 0, 0].norm(dim=1, keepdim=True)).reshape(2, 2, -1)
        regions = model.get_region_features(pixels, boxes)
        assert (regions.double() - expected).abs().max() < 1e-5, pooling
    # The two orders differ on these boxes (else the test above could not tell them apart).
    model.config.region_pooling = "normalize_then_pool"
    first = model.get_region_features(pixels, boxes)
    model.config.region_pooling = "pool_then_normalize"
    assert (first - model.get_region_features(pixels, boxes)).abs().max() > 1e-3


def test_one_image_encoder_pass_whatever_the_number_of_boxes(tiny_model: HarmoCLIPModel) -> None:
    calls = []
    handle = tiny_model.vision_model.embeddings.register_forward_hook(lambda *_: calls.append(1))
    try:
        for count in (1, 7, 40):
            corner = torch.rand(1, count, 2) * 0.5
            boxes = torch.cat([corner, corner + 0.3], dim=-1)
            calls.clear()
            tiny_model.get_region_features(random_images(1), boxes)
            assert len(calls) == 1
        ids, attention = random_captions(2)
        calls.clear()
        tiny_model(
            input_ids=ids,
            attention_mask=attention,
            pixel_values=random_images(2),
            boxes=torch.tensor([[[0, 0, 1, 1.0]]] * 2),
        )
        assert len(calls) == 1  # the global embedding and the regions share the trunk
    finally:
        handle.remove()


def test_forward_with_boxes_keeps_clip_global_embeddings(tiny_model: HarmoCLIPModel) -> None:
    ids, attention = random_captions(2)
    pixels = random_images(2)
    boxes = torch.tensor([[[0.1, 0.2, 0.6, 0.9]], [[0.0, 0.0, 1.0, 1.0]]])
    with torch.no_grad():
        plain = tiny_model(input_ids=ids, attention_mask=attention, pixel_values=pixels)
        with_boxes = tiny_model(input_ids=ids, attention_mask=attention, pixel_values=pixels, boxes=boxes)
    assert (plain.image_embeds - with_boxes.image_embeds).abs().max() <= 1e-6
    assert torch.allclose(with_boxes.region_embeds, tiny_model.get_region_features(pixels, boxes), atol=1e-6)


def test_other_resolutions_with_interpolated_positions(tiny_model: HarmoCLIPModel) -> None:
    pixels = random_images(1, size=48)
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5]]])
    with pytest.raises(ValueError):
        tiny_model.get_region_features(pixels, boxes)
    regions = tiny_model.get_region_features(pixels, boxes, interpolate_pos_encoding=True)
    assert tiny_model.get_dense_features(pixels, interpolate_pos_encoding=True).shape == (1, 16, 6, 6)
    assert regions.shape == (1, 1, 16) and torch.isfinite(regions).all()


def test_lexemes_mean_pool_the_caption_token_states(tiny_model: HarmoCLIPModel) -> None:
    ids, attention = random_captions(2)
    mask = torch.zeros(2, 3, ids.shape[1], dtype=torch.bool)
    mask[0, 0, 2:4] = True
    mask[0, 1, 5] = True
    mask[1, 0, 1:6] = True  # row (1, 1) and (*, 2): no phrase
    lexemes = tiny_model.get_lexeme_features(ids, attention, mask)
    states = tiny_model.text_model(input_ids=ids, attention_mask=attention).last_hidden_state
    expected = F.normalize(tiny_model.text_projection(states[0, 2:4].mean(0)), dim=0)
    assert torch.allclose(lexemes[0, 0], expected, atol=1e-6)
    expected = F.normalize(tiny_model.text_projection(states[1, 1:6].mean(0)), dim=0)
    assert torch.allclose(lexemes[1, 0], expected, atol=1e-6)
    assert lexemes[1, 1].abs().sum() == 0 and lexemes[0, 2].abs().sum() == 0


def test_separate_lexeme_mode_encodes_each_phrase_alone() -> None:
    model = tiny_harmoclip_model(lexeme_mode="alone")
    ids, attention = random_captions(1)
    mask = torch.zeros(1, 2, ids.shape[1], dtype=torch.bool)
    mask[0, 0, 3:5] = True
    lexemes = model.get_lexeme_features(ids, attention, mask)
    phrase = torch.cat([torch.tensor([BOS]), ids[0, 3:5], torch.tensor([EOS])])[None]
    expected = F.normalize(model.get_text_features(input_ids=phrase).pooler_output[0], dim=0)
    assert torch.allclose(lexemes[0, 0], expected, atol=1e-6)
    assert lexemes[0, 1].abs().sum() == 0


def test_crop_features_of_the_whole_image_are_its_global_embedding() -> None:
    model = tiny_harmoclip_model()
    pixels = random_images(2)
    crops = model.get_crop_features(pixels[:, None])  # one crop per image: the image itself
    expected = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    assert (crops[:, 0] - expected).abs().max() <= 1e-5


def test_crop_features_encode_each_crop_in_chunks_and_zero_masked_rows() -> None:
    """Against a loop that encodes every crop alone; masked crops (which may hold anything) give zero rows."""
    model = tiny_harmoclip_model()
    crops = random_images(6, seed=3).reshape(2, 3, 3, 32, 32)
    crops[1, 2] = float("nan")
    mask = torch.tensor([[True, False, True], [True, True, False]])
    embeds = model.get_crop_features(crops, mask, chunk_size=2)
    for b, n in mask.nonzero().tolist():
        alone = F.normalize(model.get_image_features(pixel_values=crops[b, n][None]).pooler_output[0], dim=0)
        assert torch.allclose(embeds[b, n], alone, atol=1e-5)
    assert embeds[~mask].abs().sum() == 0 and torch.isfinite(embeds).all()
    with pytest.raises(ValueError, match=r"`crop_pixel_values` must have shape \(B, N, 3, S, S\)"):
        model.get_crop_features(crops[0])
    with pytest.raises(ValueError, match=r"`crop_mask` must have shape \(2, 3\)"):
        model.get_crop_features(crops, mask[:, :2])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b.update(boxes=b["boxes"][..., :3]), r"`boxes` must have shape \(B, N, 4\)"),
        (lambda b: b["boxes"].__setitem__((1, 0, 2), float("nan")), r"`boxes`\[1, 0\] is not finite"),
        (lambda b: b["boxes"].__setitem__((0, 1, 0), 1.5), r"`boxes`\[0, 1\] is empty or inverted"),
        (lambda b: b.update(box_mask=b["box_mask"][:, :1]), r"`box_mask` must have shape \(2, 2\)"),
        (
            lambda b: b.update(phrase_token_mask=b["phrase_token_mask"][:, :, :5]),
            r"`phrase_token_mask` must have shape",
        ),
        (lambda b: b["phrase_token_mask"].__setitem__((1, 0), False), r"`phrase_token_mask`\[1, 0\] has no token set"),
        (lambda b: b.update(phrase_ids=b["phrase_ids"][:1]), r"`phrase_ids` must have shape"),
        (
            lambda b: b.update(teacher_region_embeds=b["teacher_region_embeds"][..., :3]),
            r"`teacher_region_embeds` must have shape",
        ),
    ],
)
def test_bad_input_names_the_argument_and_index(change, message) -> None:
    model = tiny_harmoclip_model()
    batch = training_batch(model)
    change(batch)
    with pytest.raises(ValueError, match=message):
        model(**batch, return_loss=True)


def test_masked_boxes_may_hold_anything(tiny_model: HarmoCLIPModel) -> None:
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [float("nan"), 0.0, -1.0, 0.0]]])
    regions = tiny_model.get_region_features(random_images(1), boxes, torch.tensor([[True, False]]))
    assert torch.isfinite(regions).all() and regions[0, 1].abs().sum() == 0


def test_config_validation_and_from_clip_config() -> None:
    clip_config = tiny_clip_config()
    config = HarmoCLIPConfig.from_clip_config(clip_config, gr_teacher="self_with_grad", loss_lrc_weight=0.0)
    assert config.model_type == "harmoclip" and config.gr_teacher == "self_with_grad" and config.loss_lrc_weight == 0.0
    assert config.vision_config.patch_size == clip_config.vision_config.patch_size
    assert config.text_config.vocab_size == clip_config.text_config.vocab_size
    restored = HarmoCLIPConfig.from_dict(config.to_dict())
    assert restored.gr_teacher == "self_with_grad" and restored.loss_lrc_weight == 0.0
    assert HarmoCLIPConfig(gr_teacher="self").gr_teacher == "self_stop_grad"  # the older name of the stop-gradient mode
    for bad in (
        dict(dense_mode="mean"),
        dict(gr_teacher="teacher"),
        dict(lexeme_mode="word"),
        dict(loss_gc_weight=-0.1),
        dict(loss_rla_weight=-1.0),
        dict(loss_gr_weight="1"),
        dict(gr_crop_scale=0),
        dict(region_pooling="mean"),
        dict(region_logit_scale_mode="global"),
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            HarmoCLIPConfig(**bad)
    with pytest.raises(TypeError, match="clip_config"):
        HarmoCLIPConfig.from_clip_config({"projection_dim": 8})


def test_bfloat16_autocast_keeps_regions_in_float32(tiny_model: HarmoCLIPModel) -> None:
    """Under mixed precision the RoIAlign and the normalisation still run in float32."""
    pixels = random_images(2)
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.2, 0.1, 0.9, 0.7]]] * 2)
    reference = tiny_model.get_region_features(pixels, boxes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        regions = tiny_model.get_region_features(pixels, boxes)
        crops = tiny_model.get_crop_features(pixels[:, None])
    assert regions.dtype == torch.float32 and crops.dtype == torch.float32
    assert F.cosine_similarity(regions, reference, dim=-1).min() > 0.98
