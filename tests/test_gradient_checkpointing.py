"""Gradient checkpointing (`gradient_checkpointing: true`): the same loss and gradients as without it, on a tiny model,
through every path of the training forward (trunk, global last layer, dense value path, text tower), with the
layers really recomputed in the backward pass."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers.modeling_layers import GradientCheckpointingLayer

from conftest import tiny_harmoclip_model
from model_batches import training_batch
from training.builders import build_model_and_processor, enable_gradient_checkpointing
from training.config import TrainConfig

# GC, LRC and GR with text-tower gradients: every path of the training forward runs, and the text tower once per
# forward (RLA, which encodes each phrase again, is off).
EVERY_PATH = dict(
    loss_gc_weight=1.0, loss_lrc_weight=1.0, loss_rla_weight=0.0, loss_gr_weight=1.0, region_text_grad=True
)


def _count_mlp_calls(model: torch.nn.Module) -> dict[str, int]:
    """Counts the calls of every encoder layer's MLP (a recomputed layer calls its MLP again in the backward pass).
    A pre-hook: the recomputation stops once it has what the backward needs, before the MLP returns."""
    counts: dict[str, int] = {}
    for name, module in model.named_modules():
        if name.endswith(".mlp"):
            counts[name] = 0

            def hook(_module, _inputs, name=name):
                counts[name] += 1

            module.register_forward_pre_hook(hook)
    return counts


def _loss_and_gradients(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(**batch, return_loss=True)
    assert out.loss_gc is not None and out.loss_lrc is not None and out.loss_gr is not None
    out.loss.backward()
    return out.loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    ("dense_mode", "lexeme_mode", "lock_embeddings"),
    [
        ("value", "token", False),
        ("full", "separate", False),
        (
            "value",
            "token",
            True,
        ),  # the first layer's input needs no gradient (locked patch embedding, lock_vision_layers)
    ],
)
def test_checkpointed_gradients_equal_plain_ones(dense_mode: str, lexeme_mode: str, lock_embeddings: bool) -> None:
    plain = tiny_harmoclip_model(dense_mode=dense_mode, lexeme_mode=lexeme_mode, **EVERY_PATH)
    if lock_embeddings:
        for parameter in plain.vision_model.embeddings.parameters():
            parameter.requires_grad_(False)
    checkpointed = copy.deepcopy(plain)
    enable_gradient_checkpointing(checkpointed)
    batch = training_batch(plain)
    plain_calls, checkpointed_calls = _count_mlp_calls(plain), _count_mlp_calls(checkpointed)

    loss, gradients = _loss_and_gradients(plain, batch)
    checkpointed_loss, checkpointed_gradients = _loss_and_gradients(checkpointed, batch)

    assert torch.equal(loss, checkpointed_loss)
    trainable = {name for name, p in plain.named_parameters() if p.requires_grad}
    if plain.config.region_logit_scale_mode == "shared":  # the region contrast uses `logit_scale`: no gradient here
        trainable.discard("region_logit_scale")
    assert set(gradients) == set(checkpointed_gradients) == trainable
    for name, gradient in gradients.items():
        assert torch.allclose(gradient, checkpointed_gradients[name], rtol=1e-5, atol=1e-7), name
    # Every layer ran again in the backward pass; the last vision layer runs twice per forward (CLS path and dense
    # path), and with the value path both runs are recomputed.
    last = f"vision_model.encoder.layers.{len(plain.vision_model.encoder.layers) - 1}.mlp"
    assert plain_calls[last] == 2
    for name, calls in plain_calls.items():
        assert checkpointed_calls[name] == 2 * calls, name


def test_no_recomputation_without_gradients_or_in_eval_mode() -> None:
    model = tiny_harmoclip_model(**EVERY_PATH)
    enable_gradient_checkpointing(model)
    batch = training_batch(model)
    calls = _count_mlp_calls(model)
    with torch.no_grad():
        model.train()(**batch, return_loss=True)
    model.eval()(**batch, return_loss=True).loss.backward()  # eval mode: checkpointing is off, like dropout
    # Two forwards, no recomputation: once per layer each, twice for the last vision layer (CLS and dense paths).
    assert calls == {
        "text_model.encoder.layers.0.mlp": 2,
        "text_model.encoder.layers.1.mlp": 2,
        "vision_model.encoder.layers.0.mlp": 2,
        "vision_model.encoder.layers.1.mlp": 4,
    }


def test_config_switch_turns_it_on_for_every_tower_layer() -> None:
    common = dict(model_preset="micro", image_size=32, patch_size=8, evaluate_at_end=False, report_to="none")
    for enabled in (False, True):
        model, _ = build_model_and_processor(TrainConfig(gradient_checkpointing=enabled, **common))
        layers = [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]
        assert len(layers) == 2  # micro: one text layer, one vision layer
        assert all(layer.gradient_checkpointing is enabled for layer in layers)
