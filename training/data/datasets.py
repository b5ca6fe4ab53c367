"""The training data sources, and `build_dataset` to make one (or several, concatenated) from a configuration.

    build_dataset({"type": "jsonl", "manifest": "data/shapes/train.jsonl"}, seed=0, max_boxes=20)
    build_dataset([{"type": "coco", "captions_file": ..., "instances_file": ..., "image_dir": ...},
                   {"type": "flickr30k", "root": ..., "split_file": ...}], strict=True)

Each source's options are its constructor's keyword arguments; the common ones (`seed`, `max_boxes`, `min_box_size`,
`strict`) may be given once for all and overridden per source.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.data import ConcatDataset

from .data_coco import CocoRegionDataset
from .data_common import RegionDataset, RegionSample, SampleError, SkippedSample
from .data_flickr30k import Flickr30kEntitiesDataset
from .data_jsonl import JsonlRegionDataset

SOURCES: dict[str, type[RegionDataset]] = {
    "jsonl": JsonlRegionDataset,
    "coco": CocoRegionDataset,
    "flickr30k": Flickr30kEntitiesDataset,
}

__all__ = [
    "SOURCES",
    "RegionDataset",
    "RegionSample",
    "SkippedSample",
    "SampleError",
    "JsonlRegionDataset",
    "CocoRegionDataset",
    "Flickr30kEntitiesDataset",
    "RegionConcatDataset",
    "build_dataset",
]


class RegionConcatDataset(ConcatDataset):
    """Several sources as one; `set_epoch` reaches each of them."""

    def set_epoch(self, epoch: int) -> None:
        for dataset in self.datasets:
            dataset.set_epoch(epoch)


def build_dataset(
    spec: dict[str, Any] | Sequence[dict[str, Any]], **common: Any
) -> RegionDataset | RegionConcatDataset:
    """A data source from `{"type": <one of SOURCES>, **options}`, or a `RegionConcatDataset` from a list of them."""
    if isinstance(spec, dict):
        return _build_one(spec, common, "spec")
    if not isinstance(spec, (list, tuple)) or not spec:
        raise TypeError(f"spec must be a dict or a non-empty list of dicts, got {spec!r}")
    return RegionConcatDataset([_build_one(item, common, f"spec[{i}]") for i, item in enumerate(spec)])


def _build_one(spec: dict[str, Any], common: dict[str, Any], where: str) -> RegionDataset:
    if not isinstance(spec, dict):
        raise TypeError(f"{where} must be a dict with a 'type', got {spec!r}")
    options = dict(spec)
    kind = options.pop("type", None)
    if kind not in SOURCES:
        raise ValueError(f"{where}['type'] must be one of {sorted(SOURCES)}, got {kind!r}")
    try:
        return SOURCES[kind](**{**common, **options})
    except TypeError as error:
        raise TypeError(f"{where} ({kind}): {error}") from None
