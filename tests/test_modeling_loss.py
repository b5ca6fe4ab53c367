"""HarmoCLIPModel's loss: the weighted terms, their temperatures and what each term trains, against hand computations
on tiny random models (the model's other contracts: test_modeling.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPModel

from conftest import tiny_clip_config, tiny_harmoclip_model
from loss_reference import infonce_by_hand
from model_batches import BOS, EOS, training_batch
from modeling_harmoclip import HarmoCLIPModel


def test_losses_are_weighted_and_reported_per_term() -> None:
    model = tiny_harmoclip_model(loss_gc_weight=1.0, loss_lrc_weight=0.5, loss_rla_weight=0.0, loss_gr_weight=2.0)
    batch = training_batch(model)
    out = model(**batch, return_loss=True)
    assert out.linked_mask.tolist() == [[True, False], [True, False]]
    assert out.region_mask.tolist() == [[True, True], [True, False]]
    assert out.lexeme_embeds[0, 1].abs().sum() == 0  # unlinked box: no lexeme
    # Each term from its definition, none read back from the model's own term outputs: GC is transformers' CLIP loss
    # of the same weights, LRC the symmetric InfoNCE written out, GR 1 - cos over the valid boxes.
    clip = CLIPModel(tiny_clip_config()).eval()
    clip.load_state_dict({name: value for name, value in model.state_dict().items() if name != "region_logit_scale"})
    with torch.no_grad():
        gc = clip(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            return_loss=True,
        ).loss
        lrc = _lrc_by_hand(out, batch, model.logit_scale.exp())
    cosine = F.cosine_similarity(
        out.region_embeds[batch["box_mask"]], batch["teacher_region_embeds"][batch["box_mask"]], dim=-1
    )
    gr = (1 - cosine).mean()
    assert torch.allclose(out.loss_gc, gc, atol=1e-6) and torch.allclose(out.loss_lrc, lrc, atol=1e-5)
    assert torch.allclose(out.loss_gr, gr, atol=1e-6)
    assert torch.allclose(out.loss, gc + 0.5 * lrc + 2.0 * gr, atol=1e-5)
    out.loss.backward()
    assert model.logit_scale.grad is not None
    assert model.region_logit_scale.grad is None  # the default shares the global temperature


def _lrc_by_hand(out, batch, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of the linked (region, lexeme) pairs at temperature multiplier `scale`, written out."""
    linked = out.linked_mask
    return infonce_by_hand(out.region_embeds[linked], out.lexeme_embeds[linked], scale)


@pytest.mark.parametrize("mode", ["shared", "from_global", "separate"])
def test_region_temperature_modes(mode: str) -> None:
    model = tiny_harmoclip_model(
        seed=2, region_logit_scale_mode=mode, loss_gc_weight=0.0, loss_lrc_weight=1.0, loss_gr_weight=0.0
    )
    with torch.no_grad():  # tell the two parameters apart
        model.logit_scale.fill_(4.0)
        model.region_logit_scale.fill_(1.5)
    batch = training_batch(model)
    out = model(**batch, return_loss=True)
    used = model.logit_scale if mode == "shared" else model.region_logit_scale
    assert model.lrc_rla_logit_scale is used
    assert torch.allclose(out.loss_lrc, _lrc_by_hand(out, batch, used.exp()), atol=1e-5)
    out.loss.backward()
    unused = model.region_logit_scale if mode == "shared" else model.logit_scale
    assert used.grad is not None and used.grad.abs() > 0 and unused.grad is None


def test_region_temperature_starts_from_a_clips_logit_scale(tmp_path) -> None:
    """Loaded from a CLIP folder (as fine-tuning `init_from` a CLIP does), the region scale starts at the CLIP's
    trained global scale, except in "separate" mode; a HarmoCLIP checkpoint's own value is kept."""
    torch.manual_seed(0)
    clip = CLIPModel(tiny_clip_config()).eval()
    with torch.no_grad():
        clip.logit_scale.fill_(4.6052)
    clip.save_pretrained(tmp_path / "clip")
    for mode, expected in (("shared", 4.6052), ("from_global", 4.6052), ("separate", 2.6592)):
        model = HarmoCLIPModel.from_pretrained(tmp_path / "clip", region_logit_scale_mode=mode)
        assert model.config.region_logit_scale_mode == mode
        assert float(model.logit_scale.detach()) == pytest.approx(4.6052)
        assert float(model.region_logit_scale.detach()) == pytest.approx(expected), mode
    model = HarmoCLIPModel.from_pretrained(tmp_path / "clip", region_logit_scale_mode="from_global")
    with torch.no_grad():
        model.region_logit_scale.fill_(3.25)
    model.save_pretrained(tmp_path / "harmoclip")
    assert float(HarmoCLIPModel.from_pretrained(tmp_path / "harmoclip").region_logit_scale.detach()) == pytest.approx(
        3.25
    )
    # From scratch: the global scale's initial value (CLIP's log(1/0.07) unless configured).
    scratch = tiny_harmoclip_model(region_logit_scale_mode="from_global", logit_scale_init_value=3.0)
    assert float(scratch.region_logit_scale.detach()) == pytest.approx(3.0)


def test_forward_loss_is_each_term_at_its_own_temperature() -> None:
    """`forward(return_loss=True)`: the weighted sum of GC at `logit_scale`, LRC and RLA at `region_logit_scale` and
    GR, each term computed here from its own function; the two scales differ, so a swapped temperature shows."""
    from modeling_harmoclip.losses import (
        global_contrastive_loss,
        lexeme_region_contrastive_loss,
        region_language_alignment_loss,
    )

    weights = dict(loss_gc_weight=0.7, loss_lrc_weight=0.5, loss_rla_weight=0.3, loss_gr_weight=2.0)
    model = tiny_harmoclip_model(region_logit_scale_mode="separate", region_logit_scale_init_value=1.0, **weights)
    with torch.no_grad():
        model.logit_scale.fill_(3.5)
    batch = training_batch(model)
    out = model(**batch, return_loss=True)
    linked, valid = out.linked_mask, out.region_mask
    ids = batch["phrase_ids"][linked]
    region_scale = torch.tensor(1.0).exp()
    gc = global_contrastive_loss(out.image_embeds, out.text_embeds, torch.tensor(3.5).exp())
    lrc = lexeme_region_contrastive_loss(out.region_embeds[linked], out.lexeme_embeds[linked], region_scale, ids)
    rla = region_language_alignment_loss(out.region_embeds[linked], out.phrase_embeds[linked], region_scale, ids)
    teacher = batch["teacher_region_embeds"][valid]
    gr = (1 - F.cosine_similarity(out.region_embeds[valid], teacher, dim=-1)).mean()
    for name, expected in (("gc", gc), ("lrc", lrc), ("rla", rla), ("gr", gr)):
        torch.testing.assert_close(getattr(out, f"loss_{name}"), expected)
    torch.testing.assert_close(out.loss, 0.7 * gc + 0.5 * lrc + 0.3 * rla + 2.0 * gr)
    # At the other temperature the region terms differ: the check above can tell the two scales apart.
    assert not torch.allclose(
        lexeme_region_contrastive_loss(
            out.region_embeds[linked], out.lexeme_embeds[linked], torch.tensor(3.5).exp(), ids
        ),
        lrc,
    )
    # No applicable term is an error, as in training: GC is off and there are no boxes.
    gr_only = tiny_harmoclip_model(loss_gc_weight=0.0, loss_lrc_weight=0.0, loss_rla_weight=0.0)
    with pytest.raises(ValueError, match="no loss term applies to this batch"):
        gr_only(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], return_loss=True)


def test_region_language_alignment_encodes_each_phrase_alone() -> None:
    """RLA's texts are the phrases encoded alone (end-of-text pooled) while LRC keeps the caption's token states; the
    term is weighted into the loss and is the contrast of `region_language_alignment_loss` on the linked boxes."""
    from modeling_harmoclip.losses import region_language_alignment_loss

    model = tiny_harmoclip_model(loss_gc_weight=1.0, loss_lrc_weight=0.5, loss_gr_weight=0.0, loss_rla_weight=3.0)
    batch = training_batch(model)
    out = model(**batch, return_loss=True)
    ids = batch["input_ids"]
    for (b, n), (start, end) in (((0, 0), (1, 3)), ((1, 0), (4, 6))):
        phrase = torch.cat([torch.tensor([BOS]), ids[b, start:end], torch.tensor([EOS])])[None]
        expected = F.normalize(model.get_text_features(input_ids=phrase).pooler_output[0], dim=0)
        assert torch.allclose(out.phrase_embeds[b, n], expected, atol=1e-6)
    assert out.phrase_embeds[0, 1].abs().sum() == 0  # unlinked box
    assert not torch.allclose(out.phrase_embeds[0, 0], out.lexeme_embeds[0, 0])  # token-level lexemes are other texts
    assert torch.allclose(model.get_phrase_features(ids, batch["phrase_token_mask"]), out.phrase_embeds, atol=1e-6)
    linked = out.linked_mask
    expected_rla = region_language_alignment_loss(
        out.region_embeds[linked],
        out.phrase_embeds[linked],
        model.region_logit_scale.exp(),
        batch["phrase_ids"][linked],
    )
    assert torch.allclose(out.loss_rla, expected_rla)
    assert torch.allclose(out.loss, out.loss_gc + 0.5 * out.loss_lrc + 3.0 * out.loss_rla)
    off = tiny_harmoclip_model(loss_rla_weight=0.0)(**batch, return_loss=True)
    assert off.phrase_embeds is None and off.loss_rla is None


@pytest.mark.parametrize("lexeme_mode", ["token", "alone"])
def test_without_region_text_grad_the_region_terms_leave_the_text_tower_alone(lexeme_mode: str) -> None:
    """`region_text_grad=False`: LRC and RLA (GC off) give no gradient to any text parameter but still train the image
    side, with the same loss value; with `region_text_grad=True` both towers get gradients."""
    settings = dict(loss_gc_weight=0.0, loss_lrc_weight=1.0, loss_gr_weight=0.0, loss_rla_weight=1.0)
    torch.manual_seed(0)
    with_grad = tiny_harmoclip_model(lexeme_mode=lexeme_mode, region_text_grad=True, **settings)
    without = tiny_harmoclip_model(lexeme_mode=lexeme_mode, region_text_grad=False, **settings)
    without.load_state_dict(with_grad.state_dict())
    batch = training_batch(with_grad)
    losses = []
    for model in (with_grad, without):
        model.zero_grad()
        out = model(**batch, return_loss=True)
        out.loss.backward()
        losses.append(out.loss.detach())
        text = [p.grad for name, p in model.named_parameters() if name.startswith(("text_model.", "text_projection"))]
        vision = [p.grad for name, p in model.named_parameters() if name.startswith("vision_model.encoder.layers.0.")]
        assert all(grad is not None and grad.abs().sum() > 0 for grad in vision)
        if model is with_grad:
            assert any(grad is not None and grad.abs().sum() > 0 for grad in text)
        else:
            assert all(grad is None or grad.abs().sum() == 0 for grad in text)
    torch.testing.assert_close(losses[0], losses[1])


def test_zero_weight_terms_are_not_computed() -> None:
    model = tiny_harmoclip_model(loss_gc_weight=0.0, loss_lrc_weight=1.0, loss_rla_weight=0.0, loss_gr_weight=0.0)
    out = model(**training_batch(model), return_loss=True)
    assert out.loss_gc is None and out.loss_gr is None and out.loss_rla is None and out.loss_lrc is not None
    assert torch.allclose(out.loss, out.loss_lrc)


def test_no_loss_without_return_loss(tiny_model: HarmoCLIPModel) -> None:
    out = tiny_model(**training_batch(tiny_model))
    assert out.loss is None and out.loss_gc is None and out.region_embeds is not None
