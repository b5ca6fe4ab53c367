"""Batches for the training loops users already have: transformers' `Trainer` and a plain PyTorch loop, both of which
call `model(**batch)` and nothing else.

    collator = ModelBatchCollator(processor, model.config)                     # GR from the model's own crops
    collator = ModelBatchCollator(processor, model.config, teacher_cache=TeacherCache(folder))  # GR from a cache
    for batch in DataLoader(dataset, batch_size=32, collate_fn=collator):
        loss = model(**batch, return_loss=True).loss

`ModelBatchCollator` is the project's `RegionCollator` with the GR teacher's part added and the metadata left out:
its batches hold exactly the keyword arguments of `HarmoCLIPModel.forward`. The teacher is what the model's config
says (`gr_teacher`): the model itself (`self_stop_grad`, `self_with_grad`: the batch carries the boxes' crops and the
model encodes them in its forward), or embeddings computed ahead of training (`frozen` and `cached`: the batch carries
`teacher_region_embeds` read from a `harmoclip-cache-teacher` folder, whose teacher is the starting weights, the frozen
teacher's targets exactly). The project's own loop (`training/train.py`) computes the same loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from modeling_harmoclip.configuration_harmoclip import HarmoCLIPConfig, gr_enabled
from training.data.collate import METADATA_KEYS, TEACHER_KEYS, RegionCollator
from training.data.data_common import RegionSample, SkippedSample
from training.teacher import (  # the teacher names stay importable from here
    OWN_TEACHERS,
    PRECOMPUTED_TEACHERS,
    TeacherCache,
    cached_targets,
    check_precomputed_teacher,
    crop_options,
    model_is_own_teacher,
)


class ModelBatchCollator:
    """`collate_fn` whose batches go straight into `model(**batch)` (transformers' `Trainer` included).

    Args:
        processor: the model's `HarmoCLIPProcessor`.
        config: the model's `HarmoCLIPConfig` (its recipe decides what GR needs).
        teacher_cache: a `TeacherCache` (`harmoclip-cache-teacher`'s folder); required for a "frozen" or "cached"
            teacher, which a loop that only calls the model cannot run beside it.
        return_loss: put `return_loss=True` in every batch (what `Trainer` needs to read `outputs.loss`).
        processor_kwargs: to every processor call (e.g. `max_length`).
    """

    def __init__(
        self,
        processor: Any,
        config: HarmoCLIPConfig,
        teacher_cache: TeacherCache | None = None,
        return_loss: bool = False,
        **processor_kwargs: Any,
    ):
        self.gr = gr_enabled(config)
        self.own_teacher = model_is_own_teacher(config)
        check_precomputed_teacher(config, teacher_cache)
        self.teacher_cache = teacher_cache if self.gr else None
        if self.own_teacher:
            processor_kwargs = {**crop_options(config), **processor_kwargs}
        self.collator = RegionCollator(processor, **processor_kwargs)
        self.return_loss = return_loss

    def __call__(self, samples: Sequence[RegionSample | SkippedSample]) -> dict[str, Any]:
        batch = self.collator(samples)
        if "pixel_values" not in batch:
            raise ValueError(f"every sample of the batch was skipped: {batch['skipped']}")
        inputs = {key: value for key, value in batch.items() if key not in METADATA_KEYS + TEACHER_KEYS}
        if self.own_teacher:
            inputs.update({key: batch[key] for key in TEACHER_KEYS})
        elif self.teacher_cache is not None:
            inputs["teacher_region_embeds"] = cached_targets(self.teacher_cache, batch)
        if self.return_loss:
            inputs["return_loss"] = True
        return inputs


def trainable_parameters_without_gradient(model: torch.nn.Module) -> list[str]:
    """Names of the trainable parameters the last backward pass left without a gradient: what makes
    `DistributedDataParallel(find_unused_parameters=False)` fail at its next step (empty for a well-formed model)."""
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad and parameter.grad is None]


__all__ = ["ModelBatchCollator", "trainable_parameters_without_gradient", "OWN_TEACHERS", "PRECOMPUTED_TEACHERS"]
