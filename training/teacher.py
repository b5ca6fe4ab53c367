"""Teachers for the GR loss, all of them here: the crop embedding of each box, from a frozen copy of the starting
weights, from the live model, or from a cache computed ahead of training (training/cache_teacher.py), which makes GR
free at training time. Which teacher a run builds follows one rule, `TrainConfig.gr_enabled` (a GR weight > 0 and a
teacher), and `teacher_targets` gives every micro-batch its GR targets. The batches of loops that only call
`model(**batch)` (training/loop_batches.py) take their teacher from here too: the model's own crops
(`model_is_own_teacher`, `crop_options`) or a cache (`check_precomputed_teacher`, `cached_targets`).

Cache layout (a folder): `shard-00000.safetensors`, ... each holding, per image, a tensor `<image_id>` of shape
(R, D) (one row per region of the image's record, NaN rows for regions never seen) and `index.json` =
{"dim": D, "settings": {...}, "images": {image_id: shard file name}}.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from modeling_harmoclip.configuration_harmoclip import gr_enabled
from training.config import TrainConfig

INDEX_FILE = "index.json"
# The teachers that are the live model itself (it encodes the boxes' crops), and those whose targets can be computed
# ahead of training (a `harmoclip-cache-teacher` folder: the starting weights' crop embeddings).
OWN_TEACHERS = ("self_stop_grad", "self_with_grad")
PRECOMPUTED_TEACHERS = ("frozen", "cached")


class TeacherCache:
    """Reads cached crop embeddings by image id and region index, loading shards lazily."""

    def __init__(self, folder: str | Path, expected_settings: dict[str, Any] | None = None):
        self.folder = Path(folder)
        index_path = self.folder / INDEX_FILE
        if not index_path.is_file():
            raise FileNotFoundError(
                f"teacher cache: no {INDEX_FILE} in {self.folder} (build it with training/cache_teacher.py)"
            )
        index = json.loads(index_path.read_text())
        self.dim: int = int(index["dim"])
        self.settings: dict[str, Any] = index.get("settings", {})
        self.images: dict[str, str] = index["images"]
        for key, value in (expected_settings or {}).items():
            # A setting the cache does not record was not in force when it was built (e.g. crops of the original image).
            if self.settings.get(key) != value:
                raise ValueError(
                    f"teacher cache {self.folder} was built with {key}={self.settings[key]!r}, but training uses {value!r}"
                )
        self._open = lru_cache(maxsize=8)(lambda name: safe_open(str(self.folder / name), framework="pt"))

    def lookup(self, image_ids: list[str], region_indices: torch.Tensor) -> torch.Tensor:
        """(B,) image ids and (B, N) region indices into each image's record (-1: padding) -> (B, N, D) float32."""
        batch, num_boxes = region_indices.shape
        result = torch.zeros(batch, num_boxes, self.dim)
        for row, image_id in enumerate(image_ids):
            if image_id not in self.images:
                raise KeyError(
                    f"teacher cache {self.folder} has no entry for image {image_id!r}; rebuild it for this data"
                )
            wanted = region_indices[row]
            valid = wanted >= 0
            if not valid.any():
                continue
            stored = self._open(self.images[image_id]).get_tensor(image_id).float()
            if int(wanted[valid].max()) >= stored.shape[0] or torch.isnan(stored[wanted[valid]]).any():
                raise KeyError(
                    f"teacher cache {self.folder}: image {image_id!r} lacks some of regions {wanted[valid].tolist()}"
                )
            result[row, valid] = stored[wanted[valid]]
        return result


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` in eval mode without gradients: the CLIPSelf-style teacher of the starting weights."""
    teacher = copy.deepcopy(model).eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


def teacher_needs_crops(config: TrainConfig) -> bool:
    """Whether the GR teacher encodes crops during training (a frozen or live teacher; not a cached one)."""
    return config.gr_enabled and config.gr_teacher != "cached"


def crop_options(config: Any) -> dict[str, Any]:
    """The processor options that cut the teacher's crops of the original images: `return_crops` at `gr_crop_scale`
    of `config` (a `TrainConfig` or a `HarmoCLIPConfig`)."""
    return {"return_crops": True, "crop_scale": config.gr_crop_scale}


def model_is_own_teacher(config: Any) -> bool:
    """Whether GR is on (the one rule, `gr_enabled`) with the live model as its teacher (`OWN_TEACHERS`), for `config`
    a `TrainConfig` or a `HarmoCLIPConfig`: a loop that only calls `model(**batch)` then gives the model the crops."""
    return gr_enabled(config) and config.gr_teacher in OWN_TEACHERS


def check_precomputed_teacher(config: Any, teacher_cache: TeacherCache | None) -> None:
    """A loop that only calls `model(**batch)` cannot run a frozen teacher beside the model: with GR on (`gr_enabled`)
    and a "frozen" or "cached" teacher, the targets must come from `teacher_cache`; a `ValueError` without one."""
    if gr_enabled(config) and config.gr_teacher in PRECOMPUTED_TEACHERS and teacher_cache is None:
        raise ValueError(
            f"`teacher_cache` is required with gr_teacher={config.gr_teacher!r}: compute the starting weights' crop "
            "embeddings once with harmoclip-cache-teacher, or set gr_teacher to 'self_stop_grad' or "
            "'self_with_grad' (the model as its own teacher)"
        )


def cached_targets(cache: TeacherCache, batch: dict[str, Any]) -> torch.Tensor:
    """(B, N, D) float32 targets on the CPU of the batch's boxes (`image_ids`, `box_indices`) from `cache`."""
    return cache.lookup(batch["image_ids"], batch["box_indices"].cpu())


def teacher_cache_settings(config: TrainConfig, processor: Any) -> dict[str, Any]:
    """What cached crop embeddings depend on; a cache built otherwise is refused."""
    return {
        "gr_crop_scale": config.gr_crop_scale,
        "crops_from": "original image",
        "region_mode": processor.region_mode,
        "max_boxes": config.max_boxes,
        "min_box_size": config.min_box_size,
        "init_from": config.init_from,
    }


def build_teacher_cache(config: TrainConfig, processor: Any) -> TeacherCache:
    """The run's `TeacherCache` (`config.teacher_cache`), checked against the settings it was built with."""
    return TeacherCache(config.teacher_cache, expected_settings=teacher_cache_settings(config, processor))


def build_teachers(
    configs: Sequence[TrainConfig], model: torch.nn.Module, processor: Any, device: torch.device | str
) -> tuple[torch.nn.Module | None, TeacherCache | None]:
    """The teachers that `configs` (a run's one, or a benchmark's several sharing a model) need: by the one rule
    `gr_enabled`, a frozen copy of `model` on `device` when some config's GR teacher is "frozen" (or GD is weighted:
    the starting weights are its teacher), the cache of the first config whose GR teacher is "cached"; the live model
    ("self", "self_with_grad") needs nothing built."""
    enabled = [config for config in configs if config.gr_enabled]
    # The starting weights are also GD's teacher (their global embeddings), whatever GR's teacher is.
    frozen = any(config.gr_teacher == "frozen" for config in enabled) or any(c.loss_gd_weight > 0 for c in configs)
    cached = [config for config in enabled if config.gr_teacher == "cached"]
    teacher = frozen_copy(model).to(device) if frozen else None
    return teacher, build_teacher_cache(cached[0], processor) if cached else None


def teacher_targets(
    config: TrainConfig,
    batch: dict[str, Any],
    teacher: torch.nn.Module | None,
    model: torch.nn.Module,
    cache: TeacherCache | None,
    accelerator: Any,
) -> torch.Tensor | None:
    """(B, N, D) GR targets for the batch's boxes, or None when GR is off. With `gr_teacher="self_with_grad"` they
    keep their graph: GR trains the model through its crop branch too (FineCLIP)."""
    if not config.gr_enabled:
        return None
    if config.gr_teacher == "cached":
        return cached_targets(cache, batch).to(accelerator.device)
    source = teacher if config.gr_teacher == "frozen" else model
    # The processor's crops of the original images, cut by the DataLoader's workers (see `region_collator`).
    with torch.set_grad_enabled(config.gr_teacher == "self_with_grad"), accelerator.autocast():
        return source.get_crop_features(batch["crop_pixel_values"], batch["crop_mask"] & batch["box_mask"])


def global_teacher_targets(
    config: TrainConfig, batch: dict[str, Any], teacher: torch.nn.Module | None, accelerator: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """GD's targets, or None when GD is off: the frozen starting weights' (B, D) L2-normalised image and caption
    embeddings of the batch and their log temperature (`losses.global_distillation_loss`)."""
    if config.loss_gd_weight <= 0:
        return None
    if teacher is None:
        raise ValueError("`loss_gd_weight` > 0 needs the frozen starting weights as teacher (`build_teachers`)")
    with torch.no_grad(), accelerator.autocast():
        outputs = teacher(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"]
        )
    return outputs.image_embeds.float(), outputs.text_embeds.float(), teacher.logit_scale.detach()
