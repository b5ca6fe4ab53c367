"""Box operations, the one implementation of each: checking (B, N, 4) model boxes, IoU, non-maximum suppression,
COCO's xywh to xyxy and back, and enlarging boxes about their centres.

A leaf module: it imports torch and the standard library only, so that the model, the image processor, the pipelines,
the evaluation and the benchmarks can all call it without importing one another.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

# IoU above which a box suppresses a worse one of its label (class-wise NMS of the detection post-processing).
NMS_IOU = 0.5


def check_threshold(value: Any, name: str = "threshold") -> float:
    """`value` as a float in [0, 1]; a `ValueError` naming `name` and the value otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"`{name}` must be a number in [0, 1], got {value!r}")
    return float(value)


def check_boxes(boxes: torch.Tensor, box_mask: torch.Tensor | None, name: str = "boxes") -> torch.Tensor:
    """Validates (B, N, 4) xyxy boxes and returns the (B, N) bool mask of valid boxes.

    Raises `ValueError` naming the argument and the first offending (image, box) index. The shape checks always run;
    the value checks (finite, not inverted) read the boxes on the host, so inside `torch.compile` / `torch.export`
    they are left out (no graph break): run this function eagerly before the compiled call, as
    `HarmoCLIPModel.compiled_region_features` does.
    """
    if not isinstance(boxes, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of shape (B, N, 4), got {type(boxes).__name__}")
    if boxes.dim() != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"`{name}` must have shape (B, N, 4) (xyxy per box), got {tuple(boxes.shape)}")
    if box_mask is None:
        box_mask = torch.ones(boxes.shape[:2], dtype=torch.bool, device=boxes.device)
    else:
        if not isinstance(box_mask, torch.Tensor) or tuple(box_mask.shape) != tuple(boxes.shape[:2]):
            shape = tuple(box_mask.shape) if isinstance(box_mask, torch.Tensor) else type(box_mask).__name__
            raise ValueError(f"`box_mask` must have shape {tuple(boxes.shape[:2])} to match `{name}`, got {shape}")
        box_mask = box_mask.to(device=boxes.device, dtype=torch.bool)
    if torch.compiler.is_compiling():
        return box_mask
    bad_value = ~torch.isfinite(boxes).all(dim=-1) & box_mask
    inverted = ((boxes[..., 2] <= boxes[..., 0]) | (boxes[..., 3] <= boxes[..., 1])) & box_mask
    if (bad_value | inverted).any():  # one host synchronisation for both checks
        if bad_value.any():
            b, n = bad_value.nonzero()[0].tolist()
            raise ValueError(f"`{name}`[{b}, {n}] is not finite: {boxes[b, n].tolist()}")
        b, n = inverted.nonzero()[0].tolist()
        raise ValueError(f"`{name}`[{b}, {n}] is empty or inverted (need x2 > x1 and y2 > y1): {boxes[b, n].tolist()}")
    return box_mask


def xywh_to_xyxy(boxes: torch.Tensor | Sequence[float]) -> torch.Tensor | list[float]:
    """COCO's `[x, y, w, h]` -> `[x1, y1, x2, y2]`: a (..., 4) tensor, or one box as a list of floats."""
    if isinstance(boxes, torch.Tensor):
        return torch.cat([boxes[..., :2], boxes[..., :2] + boxes[..., 2:]], dim=-1)
    x, y, w, h = (float(value) for value in boxes)
    return [x, y, x + w, y + h]


def xyxy_to_xywh(boxes: torch.Tensor | Sequence[float]) -> torch.Tensor | list[float]:
    """`[x1, y1, x2, y2]` -> COCO's `[x, y, w, h]`: a (..., 4) tensor, or one box as a list of floats."""
    if isinstance(boxes, torch.Tensor):
        return torch.cat([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], dim=-1)
    x1, y1, x2, y2 = (float(value) for value in boxes)
    return [x1, y1, x2 - x1, y2 - y1]


def enlarge_boxes(boxes: torch.Tensor, scale: float) -> torch.Tensor:
    """Scales xyxy boxes (..., 4) about their centres by `scale` (no clipping: RoIAlign reads zeros outside)."""
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    half = (boxes[..., 2:] - boxes[..., :2]) * (scale / 2)
    return torch.cat([centre - half, centre + half], dim=-1)


def box_iou(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """(N, 4) and (M, 4) xyxy boxes -> (N, M) intersection over union (0 where both are empty)."""
    area_first = (first[:, 2] - first[:, 0]).clamp(min=0) * (first[:, 3] - first[:, 1]).clamp(min=0)
    area_second = (second[:, 2] - second[:, 0]).clamp(min=0) * (second[:, 3] - second[:, 1]).clamp(min=0)
    top_left = torch.maximum(first[:, None, :2], second[None, :, :2])
    bottom_right = torch.minimum(first[:, None, 2:], second[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    union = area_first[:, None] + area_second[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(inter.dtype).tiny), torch.zeros_like(inter))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float = NMS_IOU) -> torch.Tensor:
    """Greedy non-maximum suppression: (N, 4) xyxy boxes, (N,) scores -> int64 indices of the kept boxes, best first.

    A box is dropped when its IoU with a better kept box is above `iou_threshold`; equal scores keep the earlier box.
    """
    iou_threshold = check_threshold(iou_threshold, "iou_threshold")
    order = torch.sort(scores, descending=True, stable=True).indices
    overlaps = box_iou(boxes[order].float(), boxes[order].float()) > iou_threshold
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for position in range(len(order)):
        if not suppressed[position]:
            keep.append(position)
            suppressed |= overlaps[position].cpu()
    return order[torch.tensor(keep, dtype=torch.int64)] if keep else order[:0]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float = NMS_IOU
) -> torch.Tensor:
    """Class-wise NMS: boxes suppress only boxes of their own label. (N, 4), (N,), (N,) -> kept indices, best first."""
    kept = [
        torch.nonzero(labels == label).flatten()[nms(boxes[labels == label], scores[labels == label], iou_threshold)]
        for label in labels.unique().tolist()
    ]
    if not kept:
        return torch.zeros(0, dtype=torch.int64)
    kept = torch.cat(kept).sort().values  # equal scores: the earlier box first
    return kept[torch.sort(scores[kept], descending=True, stable=True).indices]


__all__ = [
    "NMS_IOU",
    "check_threshold",
    "check_boxes",
    "xywh_to_xyxy",
    "xyxy_to_xywh",
    "enlarge_boxes",
    "box_iou",
    "nms",
    "batched_nms",
]
