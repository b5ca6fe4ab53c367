"""Detection scored by crop-and-encode: each proposal's crop of the original image through the global image encoder,
the plain-CLIP way to embed regions (CLIPSelf's and FineCLIP's crops), scored against the label embeddings as
HarmoCLIP's region embeddings are. The evaluation's ``crop`` scorer and `benchmarks.detection_throughput` both run it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from modeling_harmoclip.image_processing_harmoclip import DEFAULT_CROP_SCALE, original_image_size, read_image
from modeling_harmoclip.modeling_harmoclip import (
    CROP_CHUNK_SIZE,
    HarmoCLIPDetectionOutput,
    detections_from_box_embeddings,
)


def crop_detections(
    model: torch.nn.Module,
    processor: Any,
    images: Sequence[Any],
    proposals: Any,
    label_embeds: torch.Tensor,
    background_embed: torch.Tensor | None,
    crop_scale: float = DEFAULT_CROP_SCALE,
    chunk_size: int = CROP_CHUNK_SIZE,
) -> HarmoCLIPDetectionOutput:
    """`proposals` rescored by their crops: the detection output `post_process_object_detection` takes.

    Args:
        model: a `HarmoCLIPModel` (`get_crop_features`, `logit_scale`).
        processor: a `HarmoCLIPProcessor` in region mode (`as_region_mode()`: a square resize without crop, so that
            normalised boxes scale straight to each image's pixels).
        images: the B original images the proposals were made from (PIL images are read upright, as the processor
            reads them).
        proposals: `pred_boxes` (B, N, 4) normalised xyxy in the frame of `pixel_values` and `box_mask` (B, N), e.g.
            `HarmoCLIPModel.detect`'s output.
        label_embeds: (L, D) L2-normalised; background_embed: (D,) or None (then no background label).
        crop_scale: enlargement of each box about its centre before its crop is cut (1.5 as CLIPSelf and FineCLIP).
        chunk_size: crops per call of the image encoder.
    Returns:
        `HarmoCLIPDetectionOutput` on the CPU: `scores` (B, N', L), `pred_boxes` (B, N', 4) the proposals as the
        processor normalises them back (N' = most kept boxes of an image), `box_mask` (B, N') the crops cut.
    """
    if not getattr(processor, "region_mode", False):
        raise ValueError("`processor` must be in region mode (`processor.as_region_mode()`) to cut proposals' crops")
    image_processor = processor.image_processor
    images = [read_image(image) if hasattr(image, "getexif") else image for image in images]
    boxes, box_mask = proposals["pred_boxes"], proposals.get("box_mask")
    pixel_boxes = []
    for index, image in enumerate(images):
        height, width = original_image_size(image, None)
        kept = boxes[index].cpu() if box_mask is None else boxes[index].cpu()[box_mask[index].cpu().bool()]
        pixel_boxes.append((kept * torch.tensor([width, height, width, height])).double())
    geometries = [image_processor.box_geometry(image) for image in images]
    normalized, kept_mask, _ = image_processor.normalize_boxes(pixel_boxes, geometries)
    crops = image_processor.cut_crops(images, pixel_boxes, kept_mask, crop_scale)
    parameter = next(model.parameters())
    crop_pixel_values = crops["crop_pixel_values"].to(parameter.device, parameter.dtype)
    embeds = model.get_crop_features(crop_pixel_values, crops["crop_mask"], chunk_size=chunk_size)
    return detections_from_box_embeddings(
        embeds, normalized, crops["crop_mask"], label_embeds, model.logit_scale.exp(), background_embed
    )


__all__ = ["crop_detections"]
