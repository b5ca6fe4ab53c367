"""A box-aware processor for the evaluation tests, built from transformers' CLIP processor.

It resizes every image to a square without cropping (the geometry of `region_mode=True`), so a box's normalised
coordinates are its pixel coordinates divided by the original width and height.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import BatchFeature, CLIPProcessor, CLIPTokenizer
from transformers.models.clip import CLIPImageProcessorPil


class StandInRegionProcessor:
    """`processor(images=, text=, boxes=, region_mode=, return_tensors="pt")` with CLIP's interface."""

    def __init__(self, tokenizer_dir: str | Path, image_size: int = 32):
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, model_max_length=77)
        image_processor = CLIPImageProcessorPil(size={"height": image_size, "width": image_size}, do_center_crop=False)
        self.clip_processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)

    def __call__(self, images=None, text=None, boxes=None, region_mode: bool = False, return_tensors="pt", **kwargs: Any) -> BatchFeature:
        batch = self.clip_processor(images=images, text=text, return_tensors=return_tensors, **kwargs)
        if boxes is not None:
            longest = max(1, max(len(image_boxes) for image_boxes in boxes))
            normalised = torch.zeros(len(images), longest, 4)
            box_mask = torch.zeros(len(images), longest, dtype=torch.bool)
            for index, (image, image_boxes) in enumerate(zip(images, boxes)):
                width, height = image.size
                for number, box in enumerate(image_boxes):
                    normalised[index, number] = (torch.tensor(box, dtype=torch.float32) / torch.tensor([width, height, width, height])).clamp(0, 1)
                    box_mask[index, number] = True
            batch["boxes"] = normalised
            batch["box_mask"] = box_mask
        return batch

    def save_pretrained(self, folder: str | Path) -> None:
        """Saves the underlying CLIP processor (what `AutoProcessor` loads back: no boxes)."""
        self.clip_processor.save_pretrained(folder)
