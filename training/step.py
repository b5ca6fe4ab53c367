"""One training step, the only one: what training/train.py's loop runs and what benchmarks/train_step.py times.

- `lock_parameters` and `build_optimizer`: what trains (the config's locks, and no parameter that no enabled loss term
  reads), and AdamW over `parameter_groups` (weight decay on weight matrices only);
- `forward_objective`: one micro-batch: the GR teacher's targets (training/teacher.py), the model's forward under the
  Accelerator's autocast, and the loss assembled by `losses.recipe_loss`, the same function the model's
  `forward(return_loss=True)` calls, with the rows of every process gathered (`DistributedRows`);
- `training_step`: the backward passes of `gradient_accumulation_steps` micro-batches, gradient clipping, the optimiser
  (and schedule) step, and CLIP's clamp of the logit scales.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from accelerate import Accelerator

from modeling_harmoclip.losses import HarmoCLIPLoss, recipe_loss
from training.config import TrainConfig
from training.distributed_rows import DistributedRows
from training.teacher import TeacherCache, global_teacher_targets, teacher_targets


def vision_trunk_parameters(model: torch.nn.Module) -> set[int]:
    """The ids of the vision trunk's parameters: patch and position embedding, pre-layernorm, every layer but the
    last (what `vision_trunk_lr_scale` slows down)."""
    vision = model.vision_model
    modules = [vision.embeddings, vision.pre_layrnorm, *vision.encoder.layers[:-1]]
    return {id(parameter) for module in modules for parameter in module.parameters()}


def parameter_groups(
    model: torch.nn.Module, weight_decay: float, vision_trunk_lr_scale: float = 1.0
) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on weight matrices only (none on norms, biases, embeddings' scalars, logit scales);
    the vision trunk's (`vision_trunk_parameters`) apart with `lr_scale` = `vision_trunk_lr_scale` when that is not 1.
    Each group's `lr_scale` multiplies the optimiser's learning rate (`build_optimizer`)."""
    trunk = vision_trunk_parameters(model) if vision_trunk_lr_scale != 1.0 else set()
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        exempt = parameter.ndim < 2 or "norm" in name or "logit_scale" in name or name.endswith(".bias")
        groups.setdefault((not exempt, id(parameter) in trunk), []).append(parameter)
    return [
        {
            "params": groups.get((decay, in_trunk), []),
            "weight_decay": weight_decay if decay else 0.0,
            "lr_scale": vision_trunk_lr_scale if in_trunk else 1.0,
        }
        for decay, in_trunk in ((True, False), (False, False), (True, True), (False, True))
        if (decay, in_trunk) in groups or not in_trunk
    ]


def lock_parameters(model: torch.nn.Module, config: TrainConfig) -> None:
    """Freezes what the config locks, and the parameters no enabled loss term uses (data parallelism needs every
    trainable parameter to receive a gradient)."""
    if config.lock_text or (config.loss_gc_weight == 0 and not config.uses_phrases):
        for parameter in list(model.text_model.parameters()) + list(model.text_projection.parameters()):
            parameter.requires_grad_(False)
    phrases_share_scale = config.uses_phrases and config.region_logit_scale_mode == "shared"
    if config.loss_gc_weight == 0 and not phrases_share_scale:
        model.logit_scale.requires_grad_(False)
    # `region_logit_scale` needs nothing here: the model makes it a parameter only where LRC or RLA train it
    # (`trains_region_logit_scale`), and a buffer otherwise.
    if config.region_heads:  # a head that no enabled term reads trains nothing
        if not config.uses_regions:
            model.region_projection.requires_grad_(False)
        if not (config.uses_phrases and config.region_text_grad):
            model.lexeme_projection.requires_grad_(False)  # its lexemes are constants to LRC and RLA
    if config.lock_vision_layers > 0:
        vision = model.vision_model
        frozen = [vision.embeddings, vision.pre_layrnorm, *vision.encoder.layers[: config.lock_vision_layers]]
        for module in frozen:
            for parameter in module.parameters():
                parameter.requires_grad_(False)


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over `parameter_groups` with the config's learning rate (times each group's `lr_scale`), betas and
    epsilon. The schedule multiplies each group's initial `lr`, so the scales hold through warm-up and decay."""
    groups = parameter_groups(model, config.weight_decay, config.vision_trunk_lr_scale)
    for group in groups:
        group["lr"] = config.learning_rate * group["lr_scale"]
    return torch.optim.AdamW(
        groups, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps
    )


def minimum_over_processes(accelerator: Accelerator, value: float) -> float:
    """The smallest `value` among all processes (Accelerate's `reduce` sums or takes the maximum, nothing else)."""
    return -float(accelerator.reduce(torch.tensor(-float(value), device=accelerator.device), "max"))


def forward_objective(
    model: torch.nn.Module,
    unwrapped: torch.nn.Module,
    batch: dict[str, Any],
    config: TrainConfig,
    accelerator: Accelerator,
    teacher: torch.nn.Module | None = None,
    teacher_cache: TeacherCache | None = None,
) -> HarmoCLIPLoss:
    """One micro-batch: encode (through the possibly wrapped `model`), gather across processes, loss terms."""
    teacher_embeds = teacher_targets(config, batch, teacher, unwrapped, teacher_cache, accelerator)
    teacher_global = global_teacher_targets(config, batch, teacher, accelerator)
    with accelerator.autocast():
        outputs = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            boxes=batch["boxes"] if config.uses_regions else None,
            box_mask=batch["box_mask"] if config.uses_regions else None,
            phrase_token_mask=batch["phrase_token_mask"] if config.uses_phrases else None,
            phrase_ids=batch["phrase_ids"] if config.uses_phrases else None,
            category_ids=batch.get("category_ids") if config.uses_phrases and config.lrc_mask_categories else None,
        )
    return recipe_loss(
        config,
        outputs,
        unwrapped.logit_scale,
        unwrapped.lrc_rla_logit_scale,
        phrase_ids=batch.get("phrase_ids"),
        category_ids=batch.get("category_ids"),
        teacher_region_embeds=teacher_embeds,
        gatherer=DistributedRows(),
        teacher_global=teacher_global,
    )


def accumulate_gradients(
    model: torch.nn.Module,
    unwrapped: torch.nn.Module,
    batches: Iterator[dict[str, Any]],
    config: TrainConfig,
    accelerator: Accelerator,
    teacher: torch.nn.Module | None,
    teacher_cache: TeacherCache | None,
) -> list[dict[str, float]] | None:
    """The backward passes of one optimiser step (`gradient_accumulation_steps` micro-batches); returns each
    micro-batch's loss terms, or None when some process met a non-finite loss (the gradients are then unusable)."""
    micro_terms = []
    for micro in range(config.gradient_accumulation_steps):
        terms = forward_objective(model, unwrapped, next(batches), config, accelerator, teacher, teacher_cache)
        # Every process must take the same branch: decide on the loss of all processes.
        if minimum_over_processes(accelerator, float(torch.isfinite(terms.total.detach()))) == 0:
            return None
        if micro + 1 < config.gradient_accumulation_steps:
            with accelerator.no_sync(model):
                accelerator.backward(terms.total / config.gradient_accumulation_steps)
        else:
            accelerator.backward(terms.total / config.gradient_accumulation_steps)
        micro_terms.append(terms.as_floats())
    return micro_terms


def clamp_logit_scales(model: torch.nn.Module, max_logit_scale: float) -> None:
    """CLIP's clamp after each step: both temperatures stay within [1, `max_logit_scale`]."""
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(max_logit_scale))
        model.region_logit_scale.clamp_(0, math.log(max_logit_scale))


def training_step(
    model: torch.nn.Module,
    unwrapped: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[dict[str, Any]],
    config: TrainConfig,
    accelerator: Accelerator,
    teacher: torch.nn.Module | None = None,
    teacher_cache: TeacherCache | None = None,
    scheduler: Any = None,
) -> list[dict[str, float]] | None:
    """One optimiser step: `accumulate_gradients`, clipping to `max_grad_norm`, the optimiser (and `scheduler`) step,
    the logit-scale clamps. Returns each micro-batch's loss terms, or None (gradients dropped, no step taken) when
    some process met a non-finite loss."""
    micro_terms = accumulate_gradients(model, unwrapped, batches, config, accelerator, teacher, teacher_cache)
    if micro_terms is None:
        optimizer.zero_grad(set_to_none=True)
        return None
    if config.max_grad_norm:
        accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    clamp_logit_scales(unwrapped, config.max_logit_scale)
    return micro_terms


__all__ = [
    "lock_parameters",
    "parameter_groups",
    "vision_trunk_parameters",
    "build_optimizer",
    "minimum_over_processes",
    "forward_objective",
    "accumulate_gradients",
    "clamp_logit_scales",
    "training_step",
]
