"""Teachers for the GR loss: the crop embedding of each box, from a frozen copy of the starting weights, from the
live model, or from a cache computed ahead of training (training/cache_teacher.py), which makes GR free at training
time.

Cache layout (a folder): `shard-00000.safetensors`, ... each holding, per image, a tensor `<image_id>` of shape
(R, D) (one row per region of the image's record, NaN rows for regions never seen) and `index.json` =
{"dim": D, "settings": {...}, "images": {image_id: shard file name}}.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

INDEX_FILE = "index.json"


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
