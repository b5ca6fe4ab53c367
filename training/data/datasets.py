"""The training data sources in one place: the map-style region data sets and what they share."""

from __future__ import annotations

from .data_coco import CocoRegionDataset
from .data_common import RegionDataset, RegionSample, SampleError, SkippedSample
from .data_flickr30k import Flickr30kEntitiesDataset
from .data_jsonl import JsonlRegionDataset

__all__ = [
    "RegionDataset",
    "RegionSample",
    "SkippedSample",
    "SampleError",
    "JsonlRegionDataset",
    "CocoRegionDataset",
    "Flickr30kEntitiesDataset",
]
