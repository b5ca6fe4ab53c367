"""Open-vocabulary detection and segmentation maths for HarmoCLIP: box proposals from the model's own dense label
maps, every box scored by its region embedding from the same encoder pass, class-wise non-maximum suppression in
torch, and the label map at an image's size.

    outputs = model.detect(pixel_values, label_embeds, background_embed)
    processor.post_process_object_detection(outputs, threshold=0.3, target_sizes=[(360, 640)])
    processor.post_process_semantic_segmentation(outputs, target_sizes=[(360, 640)])

Background rule (detection and segmentation alike): a background embedding (the prompt-ensembled "background" label by
default, in the pipelines) competes with the candidate labels in every softmax and is then dropped, so a box or a
patch that is none of the labels keeps a low probability for all of them, even with a single candidate label. A
pixel of the label map is background (-1) when the background wins there or when its best label's probability is
below the `threshold` of `semantic_label_maps`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers.utils import ModelOutput

from .box_ops import NMS_IOU, batched_nms, box_iou, check_boxes, check_threshold, nms
from .dense_features import pool_regions
from .zero_shot import check_top_k, label_and_background_probabilities

# Each label's probability map is cut at these levels; every connected region above a level is a proposal.
MAP_THRESHOLDS = (0.1, 0.2, 0.3, 0.5, 0.7)
# Sliding windows as fractions of the image side, each moved by half its side. Only the whole image by default: on
# the synthetic held-out split (the first 100 images, the main job's model) windows of 1/2 and 1/4 lowered AP50 from
# 13.6 to 11.0, and the lower map levels 0.1 and 0.2 raised it from 13.6 to 17.9; `window_scales` adds windows back.
WINDOW_SCALES = (1.0,)
MAX_PROPOSALS = 400
BACKGROUND = -1  # the label-map value of background pixels
# The least probability a pixel's best label needs in the segmentation pipeline: on the synthetic held-out split (the
# first 100 images, the main job's model) mIoU was 14.3 at 0, 15.2 at 0.3, 9.8 at 0.5, because the "background" text,
# never in a training caption there, rarely wins a pixel alone.
SEGMENTATION_THRESHOLD = 0.3


@dataclass
class HarmoCLIPDetectionOutput(ModelOutput):
    r"""
    What `HarmoCLIPModel.detect` returns, read by the processor's `post_process_object_detection` and
    `post_process_semantic_segmentation`.

    scores (`torch.FloatTensor` of shape `(B, N, L)`):
        Each box's probability of each candidate label (softmax over the labels and, if given, the background, whose
        column is dropped); rows of masked boxes are zeros.
    pred_boxes (`torch.FloatTensor` of shape `(B, N, 4)`):
        Normalised xyxy boxes in the frame of `pixel_values` (the proposals, or the user's boxes).
    box_mask (`torch.BoolTensor` of shape `(B, N)`): which rows of `pred_boxes` are boxes (images differ in number).
    dense_probabilities (`torch.FloatTensor` of shape `(B, L, h, w)`):
        Each patch's probability of each label (same softmax as `scores`), h x w the patch grid.
    background_probabilities (`torch.FloatTensor` of shape `(B, h, w)`, *optional*):
        Each patch's probability of the background, when a background embedding was given.
    """

    scores: torch.Tensor | None = None
    pred_boxes: torch.Tensor | None = None
    box_mask: torch.Tensor | None = None
    dense_probabilities: torch.Tensor | None = None
    background_probabilities: torch.Tensor | None = None


def check_target_sizes(target_sizes: Any, batch: int) -> list[tuple[int, int]]:
    """Per image its (height, width) as positive ints, one per image of the batch."""
    if target_sizes is None or len(target_sizes) != batch:
        count = "None" if target_sizes is None else f"{len(target_sizes)} entries"
        raise ValueError(f"`target_sizes` must hold one (height, width) per image ({batch}), got {count}")
    sizes = []
    for index, size in enumerate(target_sizes):
        values = [int(value) for value in size] if len(size) == 2 else []
        if len(values) != 2 or min(values) < 1 or any(float(a) != b for a, b in zip(size, values)):
            raise ValueError(f"`target_sizes`[{index}] must be a (height, width) of positive ints, got {size!r}")
        sizes.append((values[0], values[1]))
    return sizes


# ---------------------------------------------------------------------------------------------- proposals


def connected_components(mask: torch.Tensor) -> torch.Tensor:
    """4-connected regions of (K, h, w) bool masks -> (K, h, w) int64, each region numbered by its first cell's index
    in row-major order (h * w for cells outside every region). Labels spread to the smallest neighbour until stable."""
    count, height, width = mask.shape
    outside = height * width
    labels = torch.where(mask, torch.arange(outside).reshape(1, height, width), outside).expand(count, -1, -1)
    while True:
        padded = F.pad(labels, (1, 1, 1, 1), value=outside)
        neighbours = torch.stack(
            [padded[:, :-2, 1:-1], padded[:, 2:, 1:-1], padded[:, 1:-1, :-2], padded[:, 1:-1, 2:], labels]
        ).amin(dim=0)
        spread = torch.where(mask, neighbours, outside)
        if torch.equal(spread, labels):
            return labels
        labels = spread


def region_boxes(mask: torch.Tensor) -> torch.Tensor:
    """Bounding boxes of the connected regions of (K, h, w) bool masks -> (R, 4) normalised xyxy (cell edges)."""
    count, height, width = mask.shape
    labels = connected_components(mask)
    cell = (labels < height * width).nonzero()  # (cells, 3): map, row, col
    if len(cell) == 0:
        return torch.zeros(0, 4)
    region = cell[:, 0] * height * width + labels[cell[:, 0], cell[:, 1], cell[:, 2]]
    ids, index = region.unique(return_inverse=True)
    rows, cols = cell[:, 1].float(), cell[:, 2].float()

    def reduce(values: torch.Tensor, how: str) -> torch.Tensor:
        start = torch.full((len(ids),), float("inf") if how == "amin" else -1.0)
        return start.scatter_reduce(0, index, values, reduce=how)

    boxes = torch.stack(
        [reduce(cols, "amin"), reduce(rows, "amin"), reduce(cols, "amax") + 1, reduce(rows, "amax") + 1]
    )
    return boxes.t() / torch.tensor([width, height, width, height], dtype=torch.float32)


def window_boxes(scales: Sequence[float] = WINDOW_SCALES) -> torch.Tensor:
    """Square windows (in the normalised frame) of each side in `scales`, moved by half a side -> (W, 4) xyxy."""
    windows = []
    for side in scales:
        if not 0 < side <= 1:
            raise ValueError(f"`window_scales` must hold fractions in (0, 1], got {side!r}")
        steps = max(1, round((1 - side) / (side / 2)) + 1)
        starts = torch.linspace(0, 1 - side, steps)
        y, x = torch.meshgrid(starts, starts, indexing="ij")
        windows.append(torch.stack([x, y, x + side, y + side], dim=-1).reshape(-1, 4))
    return torch.cat(windows)


def propose_boxes(
    probabilities: torch.Tensor,
    map_thresholds: Sequence[float] = MAP_THRESHOLDS,
    window_scales: Sequence[float] = WINDOW_SCALES,
    max_proposals: int = MAX_PROPOSALS,
) -> torch.Tensor:
    """Proposals for one image from its (L, h, w) label probability maps: the bounding box of every connected region
    of each label's map above each level of `map_thresholds`, then windows at `window_scales`; repeats removed.

    Returns:
        (N, 4) normalised xyxy, N <= `max_proposals` (the map regions first, largest level last).
    """
    masks = torch.cat([probabilities.cpu() >= check_threshold(level, "map_thresholds") for level in map_thresholds])
    boxes = torch.cat([region_boxes(masks), window_boxes(window_scales)])
    # Repeats removed, first occurrence kept in place (rounded so float noise does not make twins).
    _, inverse = (boxes * 1e4).round().unique(dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), len(boxes), dtype=torch.int64).scatter_reduce(
        0, inverse, torch.arange(len(boxes)), reduce="amin"
    )
    return boxes[first.sort().values][:max_proposals]


# ---------------------------------------------------------------------------------------------- model


def _padded_proposals(dense_probabilities: torch.Tensor, **options: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image `propose_boxes` of its (L, h, w) maps, padded: (B, N, 4) boxes and their (B, N) mask."""
    proposals = [propose_boxes(maps, **options) for maps in dense_probabilities]
    most = max(len(image_boxes) for image_boxes in proposals)
    boxes = torch.zeros(len(proposals), most, 4)
    box_mask = torch.zeros(len(proposals), most, dtype=torch.bool)
    for index, image_boxes in enumerate(proposals):
        boxes[index, : len(image_boxes)], box_mask[index, : len(image_boxes)] = image_boxes, True
    return boxes, box_mask


def detections_from_dense_map(
    dense: torch.Tensor,
    label_embeds: torch.Tensor,
    logit_scale: float,
    background_embed: torch.Tensor | None = None,
    boxes: torch.Tensor | None = None,
    box_mask: torch.Tensor | None = None,
    region_pooling: str = "normalize_then_pool",
    map_thresholds: Sequence[float] = MAP_THRESHOLDS,
    window_scales: Sequence[float] = WINDOW_SCALES,
    max_proposals: int = MAX_PROPOSALS,
) -> HarmoCLIPDetectionOutput:
    """Label maps, proposals and region scores from a dense map: what `HarmoCLIPModel.detect` returns.

    Args:
        dense: (B, D, h, w) projected, unnormalised patch features (`dense_features.dense_map`).
        label_embeds: (L, D) L2-normalised label embeddings (`zero_shot.label_embeddings`).
        logit_scale: the temperature multiplier (`model.logit_scale.exp()`).
        background_embed: (D,) the background's embedding, or None for no background (see the module docstring).
        boxes: (B, N, 4) normalised xyxy boxes of the user's in the frame of the map; None: boxes are proposed from the
            label maps (`propose_boxes`). box_mask: (B, N) valid boxes (default all).
        region_pooling: as the model's config (`dense_features.pool_regions`).
    """
    if label_embeds.dim() != 2 or label_embeds.shape[0] == 0:
        raise ValueError(f"`label_embeds` must have shape (L, D) with L >= 1, got {tuple(label_embeds.shape)}")
    patches = F.normalize(dense.float(), dim=1, eps=1e-12).permute(0, 2, 3, 1)  # (B, h, w, D)
    label_embeds = label_embeds.to(patches.device)
    background_embed = background_embed.to(patches.device) if background_embed is not None else None
    dense_probabilities, background = label_and_background_probabilities(
        patches, label_embeds, logit_scale, background_embed
    )
    dense_probabilities = dense_probabilities.permute(0, 3, 1, 2)  # (B, L, h, w)
    if boxes is None:
        boxes, box_mask = _padded_proposals(
            dense_probabilities, map_thresholds=map_thresholds, window_scales=window_scales, max_proposals=max_proposals
        )
    box_mask = check_boxes(boxes, box_mask)
    boxes, box_mask = boxes.to(dense.device), box_mask.to(dense.device)
    regions = pool_regions(dense, boxes, box_mask, region_pooling)  # (B, N, D), as `get_region_features`
    return detections_from_box_embeddings(
        regions,
        boxes,
        box_mask,
        label_embeds,
        logit_scale,
        background_embed,
        dense_probabilities=dense_probabilities.cpu(),
        background_probabilities=background.cpu() if background is not None else None,
    )


def detections_from_box_embeddings(
    box_embeds: torch.Tensor,
    boxes: torch.Tensor,
    box_mask: torch.Tensor,
    label_embeds: torch.Tensor,
    logit_scale: torch.Tensor | float,
    background_embed: torch.Tensor | None = None,
    **maps: torch.Tensor | None,
) -> HarmoCLIPDetectionOutput:
    """Boxes scored by their embeddings, whatever gave them (region embeddings of the dense map, or crops encoded by
    the global encoder): (B, N, D) embeddings, (B, N, 4) normalised xyxy boxes, (B, N) mask -> the detection output
    (`zero_shot.label_probabilities`, background dropped; masked rows zero), on the CPU. `maps`: the dense fields."""
    scores = label_and_background_probabilities(box_embeds, label_embeds, logit_scale, background_embed)[0]
    return HarmoCLIPDetectionOutput(
        scores=(scores * box_mask[..., None].to(scores.device)).cpu(),
        pred_boxes=boxes.float().cpu(),
        box_mask=box_mask.cpu(),
        **maps,
    )


def detect_objects(
    model: torch.nn.Module, pixel_values: torch.Tensor, *args: Any, **kwargs: Any
) -> HarmoCLIPDetectionOutput:
    """`model.detect(pixel_values, label_embeds, ...)`, HarmoCLIP's detection from one pass of its image encoder
    (kept for callers of the function form)."""
    return model.detect(pixel_values, *args, **kwargs)


# ---------------------------------------------------------------------------------------------- post-processing


def select_detections(
    scores: torch.Tensor,
    boxes: torch.Tensor,
    box_mask: torch.Tensor | None = None,
    threshold: float = 0.1,
    nms_threshold: float | None = NMS_IOU,
    top_k: int | None = None,
) -> dict[str, torch.Tensor]:
    """One image's detections: every (box, label) pair scoring at least `threshold`, class-wise NMS, best first.

    Args:
        scores: (N, L) label probabilities per box; boxes: (N, 4) xyxy (any frame); box_mask: (N,) valid boxes.
        nms_threshold: IoU above which a box suppresses a worse one of its label (None: no NMS, e.g. user boxes).
        top_k: detections kept (all if None).
    Returns:
        `{"scores": (K,), "labels": (K,) int64 label indices, "boxes": (K, 4)}`, best first.
    """
    threshold = check_threshold(threshold)
    top_k = check_top_k(top_k)
    valid = torch.ones(len(scores), dtype=torch.bool) if box_mask is None else box_mask.cpu().bool()
    scores, boxes = scores.detach().float().cpu(), boxes.detach().float().cpu()
    pair = ((scores >= threshold) & valid[:, None]).nonzero()  # (K, 2): box, label
    pair_scores, pair_labels, pair_boxes = scores[pair[:, 0], pair[:, 1]], pair[:, 1], boxes[pair[:, 0]]
    if nms_threshold is None:
        keep = torch.sort(pair_scores, descending=True, stable=True).indices
    else:
        keep = batched_nms(pair_boxes, pair_scores, pair_labels, nms_threshold)
    keep = keep[:top_k] if top_k is not None else keep
    return {"scores": pair_scores[keep], "labels": pair_labels[keep], "boxes": pair_boxes[keep]}


def resample_maps(maps: torch.Tensor, frame_x: torch.Tensor, frame_y: torch.Tensor) -> torch.Tensor:
    """(C, h, w) maps over the model's input frame, read bilinearly at normalised frame coordinates (W,) and (H,) of
    each target pixel's centre -> (C, H, W); points outside the frame read 0."""
    grid_y, grid_x = torch.meshgrid(frame_y * 2 - 1, frame_x * 2 - 1, indexing="ij")
    grid = torch.stack([grid_x, grid_y], dim=-1)[None].to(maps.dtype)
    # The border half-patch repeats the edge patch; points beyond the frame are zeroed explicitly.
    resampled = F.grid_sample(maps[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    inside = ((frame_y >= 0) & (frame_y <= 1))[:, None] & ((frame_x >= 0) & (frame_x <= 1))[None, :]
    return resampled * inside.to(resampled.dtype)


def semantic_label_map(
    probabilities: torch.Tensor,
    background: torch.Tensor | None,
    frame_x: torch.Tensor,
    frame_y: torch.Tensor,
    threshold: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's label map at its size: (L, h, w) label and (h, w) background probabilities, upsampled to the target
    pixels (`resample_maps`), then each pixel's best label, or `BACKGROUND` (-1) where the background's probability is
    higher or the best label's is below `threshold`.

    Returns:
        (H, W) int64 label map and (L, H, W) float32 upsampled probabilities.
    """
    threshold = check_threshold(threshold)
    maps = probabilities.float() if background is None else torch.cat([probabilities.float(), background[None].float()])
    upsampled = resample_maps(maps, frame_x, frame_y)
    labels_up = upsampled[: len(probabilities)]
    best, label_map = labels_up.max(dim=0)
    is_background = best < threshold
    if background is not None:
        is_background |= upsampled[-1] > best
    # Points outside the model's frame (cut by a centre crop) were never seen.
    is_background |= upsampled.sum(dim=0) <= 0
    return torch.where(is_background, torch.full_like(label_map, BACKGROUND), label_map), labels_up


__all__ = [
    "HarmoCLIPDetectionOutput",
    "BACKGROUND",
    "SEGMENTATION_THRESHOLD",
    "box_iou",
    "nms",
    "batched_nms",
    "connected_components",
    "region_boxes",
    "window_boxes",
    "propose_boxes",
    "detect_objects",
    "detections_from_dense_map",
    "detections_from_box_embeddings",
    "select_detections",
    "resample_maps",
    "semantic_label_map",
    "check_threshold",
    "check_target_sizes",
]
