"""The image side of HarmoCLIP's region embeddings: the vision trunk, the dense map (CLIPSelf / FineCLIP's value
path on the last layer) and RoIAlign pooling of boxes, written once and called by `HarmoCLIPModel`'s methods.

Functions of a CLIP-shaped model (`vision_model`, `visual_projection`, `config`), so that the model class keeps only the
methods a user calls; they import no other HarmoCLIP module but `roi_align`.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .roi_align import roi_align_per_image


def value_path_layer(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """A CLIP encoder layer with attention replaced by its value path (CLIPSelf / FineCLIP's dense features):
    (B, L, C) -> (B, L, C), ``x + out_proj(v_proj(ln1(x)))`` then the MLP with its residual."""
    attention = layer.self_attn
    hidden = hidden + attention.out_proj(attention.v_proj(layer.layer_norm1(hidden)))
    return hidden + layer.mlp(layer.layer_norm2(hidden))


def vision_trunk(model: nn.Module, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1 + h*w, C) hidden states entering the last vision layer."""
    vision = model.vision_model
    hidden = vision.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
    hidden = vision.pre_layrnorm(hidden)
    for layer in vision.encoder.layers[:-1]:
        hidden = layer(hidden, None)
    return hidden


def patch_grid(model: nn.Module, pixel_values: torch.Tensor) -> tuple[int, int]:
    """The (h, w) patch grid of `pixel_values` (B, 3, H, W)."""
    patch = model.config.vision_config.patch_size
    return pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch


def dense_from_trunk(model: nn.Module, hidden: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Trunk states (B, 1 + h*w, C) -> (B, D, h, w) projected, unnormalised patch features (`config.dense_mode`:
    "value", the value path; otherwise the ordinary last layer)."""
    layer = model.vision_model.encoder.layers[-1]
    if model.config.dense_mode == "value":
        if getattr(layer, "gradient_checkpointing", False) and model.training and torch.is_grad_enabled():
            # Gradient checkpointing is on: the value path is recomputed in the backward pass like the layers.
            hidden = layer._gradient_checkpointing_func(partial(value_path_layer, layer), hidden)
        else:
            hidden = value_path_layer(layer, hidden)
    else:
        hidden = layer(hidden, None)
    patches = model.visual_projection(model.vision_model.post_layernorm(hidden[:, 1:]))
    batch, _, dim = patches.shape
    return patches.transpose(1, 2).reshape(batch, dim, grid[0], grid[1])


def dense_map(model: nn.Module, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
    """The one path from pixels to the dense map: (B, 3, H, W) -> (B, D, h, w) projected, unnormalised."""
    return dense_from_trunk(
        model, vision_trunk(model, pixel_values, interpolate_pos_encoding), patch_grid(model, pixel_values)
    )


def image_features_and_trunk(
    model: nn.Module, pixel_values: torch.Tensor, interpolate_pos_encoding: bool, **kwargs: Any
) -> tuple[Any, torch.Tensor]:
    """`model.get_image_features` exactly as CLIP gives it (hidden states and attentions as asked) and, captured on
    the way, the hidden states (B, 1 + h*w, C) entering the last vision layer: the one trunk pass that the global
    embedding and the dense map share."""
    captured: list[torch.Tensor] = []

    def keep_first_input(module: nn.Module, args: tuple[Any, ...]) -> None:
        if not captured:  # a gradient-checkpointing recomputation calls the layer again
            captured.append(args[0])

    hook = model.vision_model.encoder.layers[-1].register_forward_pre_hook(keep_first_input)
    try:
        outputs = model.get_image_features(
            pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **kwargs
        )
    finally:
        hook.remove()
    return outputs, captured[0]


def image_features_and_regions(
    model: nn.Module,
    pixel_values: torch.Tensor,
    boxes: torch.Tensor | None,
    box_mask: torch.Tensor | None,
    interpolate_pos_encoding: bool = False,
    **kwargs: Any,
) -> tuple[Any, torch.Tensor | None]:
    """`get_image_features`' output and, with boxes, the (B, N, D) region embeddings of the (B, N) valid boxes from the
    same trunk pass (only the last layer runs twice); (output, None) without boxes."""
    if boxes is None:
        outputs = model.get_image_features(
            pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **kwargs
        )
        return outputs, None
    outputs, trunk = image_features_and_trunk(model, pixel_values, interpolate_pos_encoding, **kwargs)
    dense = dense_from_trunk(model, trunk, patch_grid(model, pixel_values))
    return outputs, pool_regions(dense, boxes, box_mask, model.config.region_pooling)


def pool_regions(
    dense: torch.Tensor, boxes: torch.Tensor, box_mask: torch.Tensor, region_pooling: str = "normalize_then_pool"
) -> torch.Tensor:
    """RoIAlign (1x1) of the dense map (B, D, h, w) at normalised xyxy boxes (B, N, 4) -> (B, N, D), normalised.

    With `region_pooling="normalize_then_pool"` every patch vector is L2-normalised before pooling, so that a few
    high-norm patch tokens do not dominate a box. Every box of every image in two batched matrix products; masked
    boxes (which may hold anything) are pooled at a placeholder box and their rows zeroed."""
    height, width = dense.shape[-2:]
    scale = boxes.new_tensor([width, height, width, height], dtype=torch.float32)
    placeholder = boxes.new_tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float32)
    boxes = torch.where(box_mask[..., None], boxes.float(), placeholder) * scale
    dense = dense.float()
    if region_pooling == "normalize_then_pool":
        dense = F.normalize(dense, dim=1, eps=1e-12)
    pooled = roi_align_per_image(dense, boxes, output_size=1, sampling_ratio=-1, aligned=True)
    regions = F.normalize(pooled.flatten(2), dim=-1, eps=1e-12)  # (B, N, D)
    return regions * box_mask[..., None].to(regions.dtype)


__all__ = [
    "value_path_layer",
    "vision_trunk",
    "patch_grid",
    "dense_from_trunk",
    "dense_map",
    "image_features_and_trunk",
    "image_features_and_regions",
    "pool_regions",
]
