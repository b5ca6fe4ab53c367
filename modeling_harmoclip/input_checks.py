"""Checks of the model's region inputs (boxes, phrase token masks, ids, teacher targets, crops): a `ValueError` or
`TypeError` naming the argument and the bad value, before any computation.
"""

from __future__ import annotations

from typing import Any

import torch

from .box_ops import check_boxes


def check_phrase_token_mask(
    phrase_token_mask: torch.Tensor, input_ids: torch.Tensor, boxes_shape: tuple[int, ...] | torch.Size | None = None
) -> None:
    """Validates a (B, N, T) phrase token mask against (B, T) `input_ids` and, if given, the boxes' (B, N)."""
    if not isinstance(phrase_token_mask, torch.Tensor):
        raise TypeError(
            f"`phrase_token_mask` must be a torch.Tensor of shape (B, N, T), got {type(phrase_token_mask).__name__}"
        )
    batch, length = input_ids.shape
    expected_n = (
        boxes_shape[1]
        if boxes_shape is not None
        else phrase_token_mask.shape[1]
        if phrase_token_mask.dim() == 3
        else None
    )
    if phrase_token_mask.dim() != 3 or tuple(phrase_token_mask.shape) != (batch, expected_n, length):
        raise ValueError(
            f"`phrase_token_mask` must have shape (B, N, T) = ({batch}, {expected_n}, {length}), got {tuple(phrase_token_mask.shape)}"
        )


def check_region_inputs(
    projection_dim: int,
    input_ids: torch.Tensor,
    boxes: torch.Tensor | None,
    box_mask: torch.Tensor | None,
    phrase_token_mask: torch.Tensor | None,
    phrase_ids: torch.Tensor | None,
    category_ids: torch.Tensor | None,
    teacher_region_embeds: torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Checks the region inputs of `forward` against each other; returns the (B, N) valid boxes, the (B, N) boxes
    linked to a phrase and the (B, N, T) bool phrase token mask on the text's device (None where not given)."""
    region_mask = check_boxes(boxes, box_mask) if boxes is not None else None
    linked_mask = None
    if phrase_token_mask is not None:
        if boxes is None:
            raise ValueError("`phrase_token_mask` was given without `boxes`")
        check_phrase_token_mask(phrase_token_mask, input_ids, boxes.shape[:2])
        phrase_token_mask = phrase_token_mask.to(device=input_ids.device, dtype=torch.bool)
        linked_mask = region_mask & phrase_token_mask.any(-1)
        if phrase_ids is not None:
            if not isinstance(phrase_ids, torch.Tensor) or tuple(phrase_ids.shape) != tuple(boxes.shape[:2]):
                shape = tuple(phrase_ids.shape) if isinstance(phrase_ids, torch.Tensor) else type(phrase_ids).__name__
                raise ValueError(f"`phrase_ids` must have shape {tuple(boxes.shape[:2])}, got {shape}")
            needs_tokens = region_mask & (phrase_ids >= 0)
            empty = needs_tokens & ~phrase_token_mask.any(-1)
            if empty.any():
                b, n = empty.nonzero()[0].tolist()
                raise ValueError(
                    f"`phrase_token_mask`[{b}, {n}] has no token set, but box ({b}, {n}) is valid and has phrase id "
                    f"{int(phrase_ids[b, n])}"
                )
            linked_mask = needs_tokens
    if category_ids is not None:
        if (
            boxes is None
            or not isinstance(category_ids, torch.Tensor)
            or tuple(category_ids.shape) != tuple(boxes.shape[:2])
        ):
            expected = tuple(boxes.shape[:2]) if boxes is not None else "(B, N) with `boxes`"
            shape = tuple(category_ids.shape) if isinstance(category_ids, torch.Tensor) else type(category_ids).__name__
            raise ValueError(f"`category_ids` must have shape {expected}, got {shape}")
    if teacher_region_embeds is not None:
        if boxes is None:
            raise ValueError("`teacher_region_embeds` was given without `boxes`")
        expected = (*boxes.shape[:2], projection_dim)
        if tuple(teacher_region_embeds.shape) != expected:
            raise ValueError(
                f"`teacher_region_embeds` must have shape {expected}, got {tuple(teacher_region_embeds.shape)}"
            )
    return region_mask, linked_mask, phrase_token_mask


def check_crop_inputs(crop_pixel_values: Any, crop_mask: Any, chunk_size: Any) -> torch.Tensor:
    """Validates `get_crop_features`' inputs: (B, N, 3, S, S) crops, an optional (B, N) mask, a positive chunk size;
    returns the (B, N) mask (all True when None)."""
    if not isinstance(crop_pixel_values, torch.Tensor) or crop_pixel_values.dim() != 5:
        shape = (
            tuple(crop_pixel_values.shape)
            if isinstance(crop_pixel_values, torch.Tensor)
            else type(crop_pixel_values).__name__
        )
        raise ValueError(f"`crop_pixel_values` must have shape (B, N, 3, S, S), got {shape}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive int, got {chunk_size!r}")
    batch, num_boxes = crop_pixel_values.shape[:2]
    if crop_mask is None:
        return torch.ones(batch, num_boxes, dtype=torch.bool, device=crop_pixel_values.device)
    if not isinstance(crop_mask, torch.Tensor) or tuple(crop_mask.shape) != (batch, num_boxes):
        shape = tuple(crop_mask.shape) if isinstance(crop_mask, torch.Tensor) else type(crop_mask).__name__
        raise ValueError(f"`crop_mask` must have shape {(batch, num_boxes)} to match `crop_pixel_values`, got {shape}")
    return crop_mask


__all__ = ["check_phrase_token_mask", "check_region_inputs", "check_crop_inputs"]
