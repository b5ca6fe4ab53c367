"""Batches of `RegionSample`s -> model inputs, through `HarmoCLIPProcessor`.

`RegionCollator(processor)` is a DataLoader `collate_fn`. It drops `SkippedSample`s and reports them, and keeps what
the teacher-embedding cache needs to key its entries. The batch holds the processor's outputs

    pixel_values (B, 3, H, W), input_ids / attention_mask (B, T), boxes (B, N, 4) normalised xyxy in the frame of
    pixel_values, box_mask (B, N), phrase_token_mask (B, N, T), phrase_ids (B, N)

and, with `RegionCollator(processor, return_crops=True, crop_scale=...)` (what a frozen or live GR teacher needs),
the teacher's inputs `TEACHER_KEYS`: crop_pixel_values (B, N, 3, S, S), each box's crop of the original image, and
crop_mask (B, N). Cutting them here puts the work in the DataLoader's workers. The batch also holds
`category_ids` (B, N) int64: a stable id of each box's category (`RegionSample.categories`; -1 where the source has
none, and for padding), which LRC uses to leave out same-category negatives;

plus the metadata `METADATA_KEYS`:

    image_ids               list of B str
    box_indices             (B, N) int64: each box's index in its image's annotation, -1 for padding
    skipped                 list of (path, reason) of the records dropped from this batch
    num_small_boxes_dropped int, boxes dropped for being below the data set's minimum size
    num_boxes_over_limit    int, boxes dropped beyond the data set's `max_boxes`

`model_inputs(batch)` leaves the metadata and the teacher's inputs out. A batch whose samples were all skipped has only the metadata (B = 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import BatchFeature

from modeling_harmoclip.processing_harmoclip import phrase_id

from .data_common import RegionSample, SkippedSample

METADATA_KEYS = ("image_ids", "box_indices", "skipped", "num_small_boxes_dropped", "num_boxes_over_limit")
TEACHER_KEYS = ("crop_pixel_values", "crop_mask")


@dataclass
class CollectedSamples:
    """The kept samples of a batch as the processor's per-image lists, plus what was dropped."""

    images: list = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    boxes: list[list[list[float]]] = field(default_factory=list)
    phrase_spans: list[list[tuple[int, int] | None]] = field(default_factory=list)
    image_ids: list[str] = field(default_factory=list)
    box_indices: list[list[int]] = field(default_factory=list)
    categories: list[list[str | None]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    num_small_boxes_dropped: int = 0
    num_boxes_over_limit: int = 0


def collect_samples(samples: Sequence[RegionSample | SkippedSample]) -> CollectedSamples:
    collected = CollectedSamples()
    for position, sample in enumerate(samples):
        if isinstance(sample, SkippedSample):
            collected.skipped.append((sample.path, sample.reason))
            continue
        if not isinstance(sample, RegionSample):
            raise TypeError(f"samples[{position}] must be a RegionSample or SkippedSample, got {type(sample).__name__}")
        collected.images.append(sample.image)
        collected.captions.append(sample.caption)
        collected.boxes.append([list(box) for box in sample.boxes])
        collected.phrase_spans.append(list(sample.phrase_spans))
        collected.image_ids.append(sample.image_id)
        collected.box_indices.append(list(sample.box_indices) or list(range(len(sample.boxes))))
        collected.categories.append(list(sample.categories) or [None] * len(sample.boxes))
        collected.num_small_boxes_dropped += sample.num_small_boxes_dropped
        collected.num_boxes_over_limit += sample.num_boxes_over_limit
    return collected


def padded_box_indices(box_indices: list[list[int]], num_boxes: int) -> torch.Tensor:
    """(B, num_boxes) int64, each image's indices followed by -1 (boxes padded at the end, as the processor does)."""
    table = torch.full((len(box_indices), num_boxes), -1, dtype=torch.long)
    for row, indices in enumerate(box_indices):
        table[row, : len(indices)] = torch.tensor(indices[:num_boxes], dtype=torch.long)
    return table


def padded_category_ids(categories: list[list[str | None]], num_boxes: int) -> torch.Tensor:
    """(B, num_boxes) int64: `phrase_id` of each box's category text (a stable hash, equal in every process), -1 for
    a box without category and for padding (boxes padded at the end, as the processor does)."""
    table = torch.full((len(categories), num_boxes), -1, dtype=torch.long)
    for row, names in enumerate(categories):
        for column, name in enumerate(names[:num_boxes]):
            if name is not None:
                table[row, column] = phrase_id(name)
    return table


class RegionCollator:
    """`collate_fn` for the region data sets: `DataLoader(dataset, collate_fn=RegionCollator(processor), ...)`.

    `processor_kwargs` go to every processor call (e.g. `max_length`, or `return_crops=True, crop_scale=1.5` for the GR
    teacher's crops).
    """

    def __init__(self, processor, **processor_kwargs: Any):
        self.processor = processor
        self.processor_kwargs = {"padding": True, **processor_kwargs}

    def __call__(self, samples: Sequence[RegionSample | SkippedSample]) -> BatchFeature:
        collected = collect_samples(samples)
        metadata = {
            "image_ids": collected.image_ids,
            "skipped": collected.skipped,
            "num_small_boxes_dropped": collected.num_small_boxes_dropped,
            "num_boxes_over_limit": collected.num_boxes_over_limit,
        }
        if not collected.images:
            return BatchFeature({**metadata, "box_indices": torch.zeros((0, 0), dtype=torch.long)})
        batch = self.processor(
            images=collected.images,
            text=collected.captions,
            boxes=collected.boxes,
            phrase_spans=collected.phrase_spans,
            return_tensors="pt",
            **self.processor_kwargs,
        )
        batch["box_indices"] = padded_box_indices(collected.box_indices, batch["boxes"].shape[1])
        batch["category_ids"] = padded_category_ids(collected.categories, batch["boxes"].shape[1])
        batch.update(metadata)
        return batch


def model_inputs(batch: BatchFeature | dict) -> dict:
    """The batch without the metadata and the teacher's crops: what `model(**...)` takes."""
    return {key: value for key, value in batch.items() if key not in METADATA_KEYS + TEACHER_KEYS}
