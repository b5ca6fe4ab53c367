"""The mechanics the harmony candidates are built from, each against a hand computation: region and lexeme heads of
their own, how far the region terms' gradients reach, a gentler vision trunk, and the global distillation (GD)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from transformers import CLIPModel

from conftest import tiny_clip_config, tiny_harmoclip_config, tiny_harmoclip_model
from model_batches import training_batch
from modeling_harmoclip import HarmoCLIPModel
from modeling_harmoclip.configuration_harmoclip import HarmoCLIPConfig
from modeling_harmoclip.losses import global_distillation_loss
from training.config import TrainConfig
from training.step import build_optimizer, forward_objective, lock_parameters, parameter_groups
from training.teacher import build_teachers, global_teacher_targets

REGION_TERMS = dict(loss_gc_weight=0.0, loss_lrc_weight=1.0, loss_gr_weight=1.0)


def _grads(model: torch.nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor | None]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {name: parameter.grad for name, parameter in model.named_parameters()}


def _touched(grads: dict[str, torch.Tensor | None], prefix: str) -> bool:
    return any(grad is not None and grad.abs().sum() > 0 for name, grad in grads.items() if name.startswith(prefix))


# ---------------------------------------------------------------------------------------------- region heads


def test_region_heads_start_as_clips_projections_also_from_a_checkpoint_without_them(tmp_path) -> None:
    fresh = tiny_harmoclip_model(seed=1, region_heads=True)
    assert torch.equal(fresh.region_projection.weight, fresh.visual_projection.weight)
    assert torch.equal(fresh.lexeme_projection.weight, fresh.text_projection.weight)
    tiny_harmoclip_model(seed=2).save_pretrained(tmp_path / "plain")  # no heads in this checkpoint
    loaded = HarmoCLIPModel.from_pretrained(tmp_path / "plain", region_heads=True)
    assert torch.equal(loaded.region_projection.weight, loaded.visual_projection.weight)
    assert torch.equal(loaded.lexeme_projection.weight, loaded.text_projection.weight)
    # A checkpoint's own heads are kept; a plain CLIPModel loads the global towers and leaves the heads out.
    with torch.no_grad():
        loaded.region_projection.weight.mul_(2)
    loaded.save_pretrained(tmp_path / "heads")
    again = HarmoCLIPModel.from_pretrained(tmp_path / "heads")
    assert torch.equal(again.region_projection.weight, loaded.region_projection.weight)
    clip = CLIPModel.from_pretrained(tmp_path / "heads")
    assert torch.equal(clip.visual_projection.weight, loaded.visual_projection.weight)


def test_with_heads_the_regions_and_lexemes_are_their_projections() -> None:
    """Until training moves them apart the heads give the same embeddings as the global projections; after, the
    regions and lexemes follow the heads and the global embeddings do not."""
    plain = tiny_harmoclip_model(seed=3)
    heads = tiny_harmoclip_model(seed=3, region_heads=True)
    batch = training_batch(plain)
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "pixel_values", "boxes", "box_mask")}
    inputs["phrase_token_mask"] = batch["phrase_token_mask"]
    with torch.no_grad():
        before, same = plain(**inputs), heads(**inputs)
        torch.testing.assert_close(same.region_embeds, before.region_embeds)
        torch.testing.assert_close(same.lexeme_embeds, before.lexeme_embeds)
        generator = torch.Generator().manual_seed(0)
        for head in (heads.region_projection, heads.lexeme_projection):
            head.weight.add_(torch.randn(head.weight.shape, generator=generator))
        moved = heads(**inputs)
    torch.testing.assert_close(moved.image_embeds, before.image_embeds)
    torch.testing.assert_close(moved.text_embeds, before.text_embeds)
    assert not torch.allclose(moved.region_embeds, before.region_embeds)
    assert not torch.allclose(moved.lexeme_embeds[before.linked_mask], before.lexeme_embeds[before.linked_mask])


@pytest.mark.parametrize(
    ("reach", "trunk", "last_layer", "global_projection"),
    [("all", True, True, True), ("last_layer", False, True, True), ("projection", False, False, True)],
)
def test_how_far_the_region_terms_reach(reach, trunk, last_layer, global_projection) -> None:
    """LRC and GR (GC off) train the trunk, the last layer and the projection, or less, as `region_grad_reach` says;
    with `region_heads` they never touch the global projections."""
    model = tiny_harmoclip_model(seed=4, region_grad_reach=reach, **REGION_TERMS)
    grads = _grads(model, model(**training_batch(model), return_loss=True).loss)
    assert _touched(grads, "vision_model.encoder.layers.0.") == trunk
    assert _touched(grads, "vision_model.encoder.layers.1.self_attn.v_proj") == last_layer
    assert _touched(grads, "visual_projection") == global_projection
    heads = tiny_harmoclip_model(seed=4, region_grad_reach=reach, region_heads=True, **REGION_TERMS)
    grads = _grads(heads, heads(**training_batch(heads), return_loss=True).loss)
    assert _touched(grads, "region_projection") and not _touched(grads, "visual_projection")
    assert not _touched(grads, "text_projection") and not _touched(grads, "lexeme_projection")  # no text gradients


def test_unused_heads_are_locked() -> None:
    model = tiny_harmoclip_model(region_heads=True)
    lock_parameters(model, TrainConfig(region_heads=True))  # `harmoclip`: regions used, lexemes without text gradient
    assert model.region_projection.weight.requires_grad and not model.lexeme_projection.weight.requires_grad
    model = tiny_harmoclip_model(region_heads=True)
    lock_parameters(model, TrainConfig(loss_lrc_weight=0.0, loss_gr_weight=0.0, region_heads=True))  # GC alone
    assert not model.region_projection.weight.requires_grad


# ---------------------------------------------------------------------------------------------- a gentler trunk


def test_the_vision_trunk_gets_its_own_learning_rate() -> None:
    model = tiny_harmoclip_model()
    config = TrainConfig(vision_trunk_lr_scale=0.1, learning_rate=1e-3)
    optimizer = build_optimizer(model, config)
    trunk = {
        id(p)
        for module in (model.vision_model.embeddings, model.vision_model.pre_layrnorm)
        for p in module.parameters()
    }
    trunk |= {id(p) for p in model.vision_model.encoder.layers[0].parameters()}
    for group in optimizer.param_groups:
        in_trunk = {id(p) in trunk for p in group["params"]}
        assert len(in_trunk) == 1, "a group mixes trunk and other parameters"
        assert group["lr"] == pytest.approx(1e-4 if in_trunk.pop() else 1e-3)
    seen = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters() if p.requires_grad)  # each once
    # A scale of 1 keeps the two groups of before; a schedule multiplies each group's own rate.
    assert len(parameter_groups(model, 0.1)) == 2
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    scheduler.step()
    assert sorted({round(group["lr"], 12) for group in optimizer.param_groups}) == [5e-5, 5e-4]


# ---------------------------------------------------------------------------------------------- global distillation


def test_global_distillation_is_lwfs_kl_by_hand() -> None:
    generator = torch.Generator().manual_seed(0)
    student_i, student_t, teacher_i, teacher_t = (
        F.normalize(torch.randn(4, 8, generator=generator), dim=-1) for _ in range(4)
    )
    loss = global_distillation_loss(student_i, student_t, 10.0, teacher_i, teacher_t, 20.0)
    total = 0.0
    for student, teacher in ((student_i @ student_t.t(), teacher_i @ teacher_t.t()),):
        for s_rows, t_rows in ((10 * student, 20 * teacher), (10 * student.t(), 20 * teacher.t())):
            for s_row, t_row in zip(s_rows, t_rows):
                p = [math.exp(v) for v in t_row.tolist()]
                q = [math.exp(v) for v in s_row.tolist()]
                p = [v / sum(p) for v in p]
                q = [v / sum(q) for v in q]
                total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)) / 4 / 2
    assert float(loss) == pytest.approx(total, rel=1e-5)
    same = global_distillation_loss(teacher_i, teacher_t, 20.0, teacher_i, teacher_t, 20.0)
    assert float(same) == pytest.approx(0.0, abs=1e-6)


def test_gd_in_the_recipe_and_the_training_step() -> None:
    """`harmoclip-gd` adds GD at weight 1 over the paper's terms; the training step's teacher is the frozen start, so
    at the start GD is 0 and after the weights move it is not, with gradients for the student alone."""
    config = HarmoCLIPConfig.from_recipe("harmoclip-gd")
    assert config.loss_gd_weight == 1.0 and config.loss_lrc_weight == 0.5 and config.gr_teacher == "frozen"
    train = TrainConfig(loss_gd_weight=1.0, gr_teacher="self_stop_grad")
    model = HarmoCLIPModel(tiny_harmoclip_config(**{**train.recipe_settings}))
    teacher, _ = build_teachers([train], model, None, "cpu")
    assert teacher is not None and not any(p.requires_grad for p in teacher.parameters())
    batch = training_batch(model)
    batch["crop_pixel_values"] = torch.zeros(2, 2, 3, 32, 32)
    batch["crop_mask"] = batch["box_mask"]
    accelerator = Accelerator(cpu=True)
    targets = global_teacher_targets(train, batch, teacher, accelerator)
    assert targets[0].shape == (2, 16) and targets[2] == model.logit_scale
    terms = forward_objective(model, model, batch, train, accelerator, teacher)
    assert terms.gd is not None and float(terms.gd) == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        model.visual_projection.weight.add_(0.3 * torch.randn_like(model.visual_projection.weight))
    terms = forward_objective(model, model, batch, train, accelerator, teacher)
    assert float(terms.gd) > 1e-4
    assert float(terms.total) == pytest.approx(float(terms.gc + 0.5 * terms.lrc + terms.gr + terms.gd), rel=1e-5)
    grads = _grads(model, terms.total)
    assert _touched(grads, "visual_projection") and all(p.grad is None for p in teacher.parameters())


def test_gd_without_a_teacher_is_one_line() -> None:
    with pytest.raises(ValueError, match=r"`loss_gd_weight` > 0 needs the frozen starting weights as teacher"):
        global_teacher_targets(TrainConfig(loss_gd_weight=1.0), {}, None, Accelerator(cpu=True))


def test_a_clip_config_refuses_bad_candidate_settings() -> None:
    for settings, message in (
        (dict(region_grad_reach="trunk"), r"`region_grad_reach` must be one of \('all', 'last_layer', 'projection'\)"),
        (dict(region_heads=1), r"`region_heads` must be true or false, got 1"),
        (dict(vision_trunk_lr_scale=0), r"`vision_trunk_lr_scale` must be a positive number, got 0"),
        (dict(loss_gd_weight=-1), r"`loss_gd_weight` must be a non-negative number, got -1"),
    ):
        with pytest.raises(ValueError, match=message):
            HarmoCLIPConfig.from_clip_config(tiny_clip_config(), **settings)
