"""HarmoCLIP: a CLIP whose image encoder also gives region (box) embeddings aligned with caption phrases.

The global towers are transformers' `CLIPModel`, inherited unchanged: parameter names, `get_text_features`,
`get_image_features` and the text+image `forward` behave exactly like CLIP's, so CLIP checkpoints load by identity
and a HarmoCLIP checkpoint's towers load into a plain `CLIPModel`. On top of it, everything the model computes, in the
order of this file:

- RoIAlign (torchvision's semantics, written in torch): `roi_align`, and `roi_align_per_image`, the batched form the
  model pools its boxes with;
- dense features: the vision trunk up to the last layer, then the last layer with attention replaced by its value
  path (CLIPSelf / FineCLIP), `post_layernorm` and `visual_projection` on every patch;
- region embeddings: RoIAlign (1x1, aligned, adaptive sampling) at each box of the dense map, its patch vectors
  L2-normalised first by default (CLIPSelf / FineCLIP), then L2-normalised;
- phrase embeddings of two kinds: lexemes (the caption encoded once, the mean of a phrase's final token states,
  projected; `lexeme_mode="token"`), and each phrase encoded alone through the whole text tower, end-of-text pooled
  (`lexeme_mode="alone"`, and RLA's sentence level);
- zero-shot scoring: a label's probability for an embedding, the softmax of CLIP's scaled cosines;
- detection's heads: label maps over the patches, boxes proposed from them, every box scored by its region embedding;
- `HarmoCLIPModel`, whose `forward(return_loss=True)` adds the losses GC, LRC, RLA and GR (see `losses.py`), weighted
  by the config.

The image processor turns boxes and maps back into an image's pixels and selects detections; the pipelines run the
tasks. This file imports neither.
"""

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import CLIPModel
from transformers.models.clip.modeling_clip import CLIPEncoderLayer, CLIPOutput
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple

from .configuration_harmoclip import LEXEME_MODES, HarmoCLIPConfig, check_threshold
from .losses import recipe_loss

try:  # transformers >= 5: initialisers that leave weights loaded from a checkpoint alone
    from transformers import initialization as hf_init
except ImportError:  # transformers 4.57: `_init_weights` only ever meets modules the checkpoint did not fill
    hf_init = None

# Crops are encoded in chunks of this many to bound activation memory whatever the number of boxes.
CROP_CHUNK_SIZE = 64
# RoIs gathered at once by `roi_align`: bounds the memory of the gathered feature maps (chunk x C x H x W).
ROI_CHUNK_SIZE = 64
# Each label's probability map is cut at these levels; every connected region above a level is a proposal.
MAP_THRESHOLDS = (0.1, 0.2, 0.3, 0.5, 0.7)
# Sliding windows as fractions of the image side, each moved by half its side. Only the whole image by default: on
# the synthetic held-out split (the first 100 images, the main job's model) windows of 1/2 and 1/4 lowered AP50 from
# 13.6 to 11.0, and the lower map levels 0.1 and 0.2 raised it from 13.6 to 17.9; `window_scales` adds windows back.
WINDOW_SCALES = (1.0,)
MAX_PROPOSALS = 400

# ---------------------------------------------------------------------------------------------- transformers versions
# The remote code runs on transformers 4.57 and every 5.x (configuration_harmoclip checks the range). What differs:
# 4.x encoder layers take a causal mask and return a tuple, and `get_image_features` / `get_text_features` return the
# projected embedding itself rather than the tower's output with the embedding as `pooler_output`.
TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])
_LAYER_TAKES_CAUSAL_MASK = "causal_attention_mask" in CLIPEncoderLayer.forward.__code__.co_varnames


def run_encoder_layer(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """One CLIP encoder layer without attention mask: (B, L, C) -> (B, L, C), on every supported transformers."""
    output = layer(hidden, None, None) if _LAYER_TAKES_CAUSAL_MASK else layer(hidden, None)
    return output[0] if isinstance(output, tuple) else output


def projected(features: Any) -> torch.Tensor:
    """The projected embedding from what `get_image_features` / `get_text_features` return: the tensor itself
    (transformers 4.x) or the output's `pooler_output` (5.x)."""
    return features if isinstance(features, torch.Tensor) else features.pooler_output


def tower_outputs(model: nn.Module, tower: str, **inputs: Any) -> tuple[Any, torch.Tensor]:
    """A tower's output as `CLIPModel.forward` reports it (`vision_model_output` / `text_model_output`) and its
    projected pooled embedding (B, D): `tower` is "image" or "text"."""
    if TRANSFORMERS_MAJOR >= 5:
        getter = model.get_image_features if tower == "image" else model.get_text_features
        outputs = getter(**inputs, return_dict=True)
        return outputs, outputs.pooler_output
    if tower == "image":
        outputs = model.vision_model(**inputs)
        return outputs, model.visual_projection(outputs.pooler_output)
    outputs = model.text_model(**inputs)
    return outputs, model.text_projection(outputs.pooler_output)


def _normalize(embeds: torch.Tensor) -> torch.Tensor:
    return F.normalize(embeds, dim=-1, eps=1e-12)


# ---------------------------------------------------------------------------------------------- outputs


@dataclass
class HarmoCLIPOutput(CLIPOutput):
    r"""
    CLIP's output (`loss`, `logits_per_image` (B_img, B_txt), `logits_per_text`, `text_embeds` (B_txt, D),
    `image_embeds` (B_img, D), `text_model_output`, `vision_model_output`) plus:

    region_embeds (`torch.FloatTensor` of shape `(B, N, D)`, *optional*):
        L2-normalised region embeddings of the boxes, float32; rows of masked boxes are zeros.
    lexeme_embeds (`torch.FloatTensor` of shape `(B, N, D)`, *optional*):
        L2-normalised phrase embeddings aligned with the boxes; rows of boxes without a phrase are zeros.
    phrase_embeds (`torch.FloatTensor` of shape `(B, N, D)`, *optional*):
        L2-normalised sentence-level embeddings of each box's phrase encoded alone (computed when RLA is on); rows of
        boxes without a phrase are zeros.
    region_mask (`torch.BoolTensor` of shape `(B, N)`, *optional*): which boxes were valid.
    linked_mask (`torch.BoolTensor` of shape `(B, N)`, *optional*): which valid boxes have a phrase.
    loss_gc, loss_lrc, loss_rla, loss_gr, loss_gd (`torch.FloatTensor` scalars, *optional*):
        The unweighted loss terms, `None` where a term does not apply; `loss` is their weighted sum.
    """

    region_embeds: torch.Tensor | None = None
    lexeme_embeds: torch.Tensor | None = None
    phrase_embeds: torch.Tensor | None = None
    region_mask: torch.Tensor | None = None
    linked_mask: torch.Tensor | None = None
    loss_gc: torch.Tensor | None = None
    loss_lrc: torch.Tensor | None = None
    loss_rla: torch.Tensor | None = None
    loss_gr: torch.Tensor | None = None
    loss_gd: torch.Tensor | None = None


@dataclass
class HarmoCLIPDetectionOutput(ModelOutput):
    r"""
    What `HarmoCLIPModel.detect` returns, read by the image processor's `post_process_object_detection`,
    `post_process_semantic_segmentation` and `post_process_grounding`.

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
    region_embeds (`torch.FloatTensor` of shape `(B, N, D)`):
        The L2-normalised region embedding of every box, pooled from the same encoder pass (zeros for masked rows):
        what phrase grounding scores its phrases against, so that it needs no second pass.
    """

    scores: torch.Tensor | None = None
    pred_boxes: torch.Tensor | None = None
    box_mask: torch.Tensor | None = None
    dense_probabilities: torch.Tensor | None = None
    background_probabilities: torch.Tensor | None = None
    region_embeds: torch.Tensor | None = None


# ---------------------------------------------------------------------------------------------- input checks


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


# ---------------------------------------------------------------------------------------------- RoIAlign


def _as_roi_tensor(boxes: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Returns RoIs as a (K, 5) tensor ``[batch_index, x1, y1, x2, y2]``."""
    if isinstance(boxes, (list, tuple)):
        parts = []
        for index, per_image in enumerate(boxes):
            if not isinstance(per_image, torch.Tensor) or per_image.dim() != 2 or per_image.shape[-1] != 4:
                shape = tuple(per_image.shape) if isinstance(per_image, torch.Tensor) else type(per_image).__name__
                raise ValueError(f"roi_align: `boxes[{index}]` must be a (K, 4) tensor, got {shape}")
            batch_index = torch.full_like(per_image[:, :1], float(index))
            parts.append(torch.cat([batch_index, per_image], dim=1))
        if not parts:
            raise ValueError("roi_align: `boxes` is an empty list")
        return torch.cat(parts, dim=0)
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 5:
        shape = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise ValueError(f"roi_align: `boxes` must be a (K, 5) tensor or a list of (K_i, 4) tensors, got {shape}")
    return boxes


def _axis_weights(
    start: torch.Tensor, bin_size: torch.Tensor, grid: torch.Tensor, pooled: int, size: int, num_samples: int
) -> torch.Tensor:
    """Summed bilinear weights along one axis.

    Each bin's sample points are enumerated from the first one that can reach the map (coordinate >= -1), so
    `num_samples` only has to cover the points that fall on the map, not the whole bin.

    Args:
        start, bin_size, grid: (K,) RoI start coordinate, bin size and number of sample points per bin.
        pooled: number of output bins along this axis; size: length of the input map along it.
        num_samples: sample points enumerated per bin (see `_samples_per_bin`).
    Returns:
        (K, pooled, size) weights; row ``p`` sums the interpolation weights of bin ``p``'s sample points.
    """
    num_rois = start.shape[0]
    device = start.device
    bins = torch.arange(pooled, device=device, dtype=start.dtype)
    samples = torch.arange(num_samples, device=device, dtype=start.dtype)
    grid_f = grid.clamp(min=1).to(start.dtype)
    step = (bin_size / grid_f)[:, None, None]
    bin_start = start[:, None, None] + bins[None, :, None] * bin_size[:, None, None]  # (K, pooled, 1)
    # First sample index whose point may lie at or after -1 (floor: one early at most, which `inside` drops). Only a
    # forward grid (step > 0) is skipped ahead: a reversed box (x2 < x1 under aligned=True, fixed sampling ratio) keeps
    # its negative bin size and, as in torchvision, is sampled from its start over the reflected extent.
    ahead = ((-1.0 - bin_start) / step.clamp(min=torch.finfo(start.dtype).tiny) - 0.5).floor().clamp(min=0.0)
    first = torch.where(step > 0, ahead, torch.zeros_like(ahead))
    samples = first + samples[None, None, :]  # (K, pooled, num_samples)
    # (K, pooled, num_samples) sample coordinates, as torchvision places them.
    coords = bin_start + (samples + 0.5) * step
    valid = samples < grid[:, None, None]
    # Points more than one pixel outside the map contribute zero; the rest are clamped onto it.
    inside = (coords >= -1.0) & (coords <= size)
    coords = coords.clamp(min=0.0)
    low = coords.floor().long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(coords), coords - low.to(coords.dtype))
    keep = (valid & inside).to(coords.dtype)
    weights = torch.zeros(num_rois, pooled, size, device=device, dtype=start.dtype)
    weights.scatter_add_(2, low.reshape(num_rois, pooled, -1), ((1.0 - frac) * keep).reshape(num_rois, pooled, -1))
    weights.scatter_add_(2, high.reshape(num_rois, pooled, -1), (frac * keep).reshape(num_rois, pooled, -1))
    return weights


def _samples_per_bin(
    grid_h: torch.Tensor, grid_w: torch.Tensor, sampling_ratio: int, height: int, width: int
) -> tuple[int, int]:
    """Sample points to enumerate per bin along each axis, for (K,) grids on an (H, W) map.

    With a fixed `sampling_ratio`, that ratio. With the adaptive grid (``ceil(bin_size)`` points, spaced more than
    half a pixel apart once a bin is wider than a pixel), at most ``2 * size + 3`` of a bin's points fall on the
    window [-1, size] that can contribute: ``2 * size + 4`` is a bound known without looking at the boxes, which is
    what `torch.compile` and `torch.export` use (no host synchronisation, no graph break). Eagerly, one host
    synchronisation reads the largest grids, which are smaller for boxes of ordinary size.
    """
    if sampling_ratio > 0:
        return sampling_ratio, sampling_ratio
    bound_h, bound_w = 2 * height + 4, 2 * width + 4
    if torch.compiler.is_compiling():
        return bound_h, bound_w
    largest_h, largest_w = torch.stack([grid_h.max(), grid_w.max()]).tolist()
    return min(max(largest_h, 1), bound_h), min(max(largest_w, 1), bound_w)


def _bin_weights(
    boxes: torch.Tensor,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    height: int,
    width: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-axis weights of RoIs (K, 4) xyxy: (K, out_h, H) (already divided by the sample count) and (K, out_w, W)."""
    out_h, out_w = output_size
    offset = 0.5 if aligned else 0.0
    x1 = boxes[:, 0] * spatial_scale - offset
    y1 = boxes[:, 1] * spatial_scale - offset
    roi_w = boxes[:, 2] * spatial_scale - offset - x1
    roi_h = boxes[:, 3] * spatial_scale - offset - y1
    if not aligned:  # legacy behaviour: RoIs are at least one pixel wide
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    if sampling_ratio > 0:
        grid_h = torch.full_like(roi_h, sampling_ratio, dtype=torch.long)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(roi_h / out_h).long()
        grid_w = torch.ceil(roi_w / out_w).long()
    count = (grid_h * grid_w).clamp(min=1).to(boxes.dtype)
    samples_h, samples_w = _samples_per_bin(grid_h, grid_w, sampling_ratio, height, width)
    weights_y = _axis_weights(y1, roi_h / out_h, grid_h, out_h, height, samples_h) / count[:, None, None]
    weights_x = _axis_weights(x1, roi_w / out_w, grid_w, out_w, width, samples_w)
    return weights_y, weights_x


def _output_size(output_size: int | tuple[int, int]) -> tuple[int, int]:
    return (output_size, output_size) if isinstance(output_size, int) else (int(output_size[0]), int(output_size[1]))


def _compute_dtype(input: torch.Tensor) -> torch.dtype:
    return torch.float64 if input.dtype == torch.float64 else torch.float32


def roi_align(
    input: torch.Tensor,
    boxes: torch.Tensor | list[torch.Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> torch.Tensor:
    """RoIAlign with the semantics of `torchvision.ops.roi_align`.

    Args:
        input: (B, C, H, W) feature map.
        boxes: (K, 5) tensor of ``[batch_index, x1, y1, x2, y2]`` or a list of B tensors of shape (K_i, 4), in the
            coordinates of the original image; `spatial_scale` maps them onto the feature map.
        output_size: (out_h, out_w) or an int for a square output.
        spatial_scale: factor from box coordinates to feature-map coordinates.
        sampling_ratio: sample points per output bin along each axis; <= 0 picks ``ceil(roi_size / output_size)``
            adaptively per RoI.
        aligned: shift box coordinates by -0.5 pixel so that pixel centres line up (torchvision's ``aligned=True``).
    Returns:
        (K, C, out_h, out_w) pooled features, in `input`'s dtype.
    """
    if input.dim() != 4:
        raise ValueError(f"roi_align: `input` must be a (B, C, H, W) tensor, got shape {tuple(input.shape)}")
    out_h, out_w = _output_size(output_size)
    rois = _as_roi_tensor(boxes).to(device=input.device).detach()
    batch, channels, height, width = input.shape
    if rois.shape[0] == 0:
        return input.new_zeros(0, channels, out_h, out_w)
    compute_dtype = _compute_dtype(input)
    rois = rois.to(compute_dtype)
    batch_index = rois[:, 0].long()
    outside = (batch_index < 0) | (batch_index >= batch)
    if outside.any():
        raise ValueError(f"roi_align: batch index {int(batch_index[outside][0])} in `boxes` is outside [0, {batch})")
    weights_y, weights_x = _bin_weights(
        rois[:, 1:], (out_h, out_w), spatial_scale, sampling_ratio, aligned, height, width
    )
    # The interpolation runs in float32 (float64 for float64 input) even under autocast.
    with torch.autocast(device_type=input.device.type, enabled=False):
        features = input.to(compute_dtype)
        chunks = []
        for start in range(0, rois.shape[0], ROI_CHUNK_SIZE):
            part = slice(start, start + ROI_CHUNK_SIZE)
            rows = torch.einsum("kph,kchw->kcpw", weights_y[part], features.index_select(0, batch_index[part]))
            chunks.append(torch.einsum("kcpw,kqw->kcpq", rows, weights_x[part]))
    return torch.cat(chunks).to(input.dtype)


def roi_align_per_image(
    input: torch.Tensor,
    boxes: torch.Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> torch.Tensor:
    """`roi_align` for the same number of boxes on every image, as batched matrix products (no gather, no loop).

    Args:
        input: (B, C, H, W); boxes: (B, N, 4) xyxy in the coordinates `spatial_scale` maps onto `input`.
    Returns:
        (B, N, C, out_h, out_w), equal to `roi_align` of the boxes with their image index.
    """
    if input.dim() != 4 or boxes.dim() != 3 or boxes.shape[0] != input.shape[0] or boxes.shape[-1] != 4:
        raise ValueError(
            f"roi_align_per_image: need `input` (B, C, H, W) and `boxes` (B, N, 4), got {tuple(input.shape)} and {tuple(boxes.shape)}"
        )
    out_h, out_w = _output_size(output_size)
    batch, num_boxes = boxes.shape[:2]
    height, width = input.shape[-2:]
    compute_dtype = _compute_dtype(input)
    flat = boxes.detach().to(device=input.device, dtype=compute_dtype).reshape(-1, 4)
    weights_y, weights_x = _bin_weights(flat, (out_h, out_w), spatial_scale, sampling_ratio, aligned, height, width)
    with torch.autocast(device_type=input.device.type, enabled=False):
        rows = torch.einsum(
            "bnph,bchw->bncpw", weights_y.reshape(batch, num_boxes, out_h, height), input.to(compute_dtype)
        )
        output = torch.einsum("bncpw,bnqw->bncpq", rows, weights_x.reshape(batch, num_boxes, out_w, width))
    return output.to(input.dtype)


# ---------------------------------------------------------------------------------------------- dense features


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
        hidden = run_encoder_layer(layer, hidden)
    return hidden


def patch_grid(model: nn.Module, pixel_values: torch.Tensor) -> tuple[int, int]:
    """The (h, w) patch grid of `pixel_values` (B, 3, H, W)."""
    patch = model.config.vision_config.patch_size
    return pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch


def dense_from_trunk(model: nn.Module, hidden: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Trunk states (B, 1 + h*w, C) -> (B, D, h, w) projected, unnormalised patch features (`config.dense_mode`:
    "value", the value path; otherwise the ordinary last layer), projected by the region head with `region_heads`.
    `config.region_grad_reach` stops the gradients of whatever trains the regions before the last layer
    ("last_layer") or before the projection ("projection")."""
    reach = model.config.region_grad_reach
    layer = model.vision_model.encoder.layers[-1]
    hidden = hidden if reach == "all" else hidden.detach()
    with torch.set_grad_enabled(reach != "projection" and torch.is_grad_enabled()):
        if model.config.dense_mode == "value":
            if getattr(layer, "gradient_checkpointing", False) and model.training and torch.is_grad_enabled():
                # Gradient checkpointing is on: the value path is recomputed in the backward pass like the layers.
                hidden = layer._gradient_checkpointing_func(partial(value_path_layer, layer), hidden)
            else:
                hidden = value_path_layer(layer, hidden)
        else:
            hidden = run_encoder_layer(layer, hidden)
        hidden = model.vision_model.post_layernorm(hidden[:, 1:])
    projection = model.region_projection if model.config.region_heads else model.visual_projection
    patches = projection(hidden)
    batch, _, dim = patches.shape
    return patches.transpose(1, 2).reshape(batch, dim, grid[0], grid[1])


def dense_map(model: nn.Module, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
    """The one path from pixels to the dense map: (B, 3, H, W) -> (B, D, h, w) projected, unnormalised."""
    return dense_from_trunk(
        model, vision_trunk(model, pixel_values, interpolate_pos_encoding), patch_grid(model, pixel_values)
    )


def image_features_and_regions(
    model: nn.Module,
    pixel_values: torch.Tensor,
    boxes: torch.Tensor | None,
    box_mask: torch.Tensor | None,
    interpolate_pos_encoding: bool = False,
    **kwargs: Any,
) -> tuple[Any, torch.Tensor, torch.Tensor | None]:
    """The image tower's pass as `CLIPModel.forward` makes it (its output, hidden states and attentions as asked, and
    the (B, D) projected embedding) and, with (B, N, 4) boxes, the (B, N, D) region embeddings of the (B, N) valid
    boxes from the same trunk pass: the hidden states entering the last layer are captured on the way, and only the
    last layer runs again, as its value path. Without boxes the region embeddings are None."""
    captured: list[torch.Tensor] = []

    def keep_first_input(module: nn.Module, args: tuple[Any, ...]) -> None:
        if not captured:  # a gradient-checkpointing recomputation calls the layer again
            captured.append(args[0])

    hook = (
        model.vision_model.encoder.layers[-1].register_forward_pre_hook(keep_first_input) if boxes is not None else None
    )
    try:
        outputs, image_embeds = tower_outputs(
            model, "image", pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs
        )
    finally:
        if hook is not None:
            hook.remove()
    if boxes is None:
        return outputs, image_embeds, None
    dense = dense_from_trunk(model, captured[0], patch_grid(model, pixel_values))
    return outputs, image_embeds, pool_regions(dense, boxes, box_mask, model.config.region_pooling)


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


# ---------------------------------------------------------------------------------------------- phrase features


def lexemes_from_states(model: nn.Module, token_states: torch.Tensor, phrase_token_mask: torch.Tensor) -> torch.Tensor:
    """Mean of final token states (B, T, C) over each phrase's tokens (B, N, T) -> (B, N, D) normalised."""
    weights = phrase_token_mask.to(token_states.dtype)
    counts = weights.sum(-1, keepdim=True)
    pooled = weights @ token_states / counts.clamp(min=1)
    projection = model.lexeme_projection if model.config.region_heads else model.text_projection
    lexemes = F.normalize(projection(pooled).float(), dim=-1, eps=1e-12)
    return lexemes * (counts > 0).to(lexemes.dtype)


def phrases_alone(model: nn.Module, input_ids: torch.Tensor, phrase_token_mask: torch.Tensor) -> torch.Tensor:
    """Each phrase encoded alone, as its own text: BOS + the phrase's caption tokens + EOS through the whole text tower,
    end-of-text pooled, projected: (B, T) captions and (B, N, T) phrase tokens -> (B, N, D) normalised (rows without
    tokens are zeros). What `lexeme_mode="alone"` and RLA use, and grounding's `phrase_mode="alone"`."""
    batch, num_phrases, _ = phrase_token_mask.shape
    linked = phrase_token_mask.any(-1).reshape(-1)
    lexemes = torch.zeros(batch * num_phrases, model.config.projection_dim, device=input_ids.device)
    if not linked.any():
        return lexemes.reshape(batch, num_phrases, -1)
    eos = model.config.text_config.eos_token_id
    eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    masks = phrase_token_mask.reshape(-1, phrase_token_mask.shape[-1])[linked]
    captions = input_ids.repeat_interleave(num_phrases, dim=0)[linked]
    sequences = [
        torch.cat([caption[:1], caption[mask], caption.new_tensor([eos])]) for caption, mask in zip(captions, masks)
    ]
    longest = max(len(sequence) for sequence in sequences)
    ids = input_ids.new_zeros(len(sequences), longest)
    attention = torch.zeros_like(ids)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = sequence
        attention[row, : len(sequence)] = 1
    if model.config.region_heads:  # the phrase's end-of-text state through the lexeme head
        embeds = model.lexeme_projection(model.text_model(input_ids=ids, attention_mask=attention).pooler_output)
    else:
        embeds = projected(model.get_text_features(input_ids=ids, attention_mask=attention))
    lexemes = lexemes.index_copy(0, linked.nonzero(as_tuple=True)[0], F.normalize(embeds.float(), dim=-1, eps=1e-12))
    return lexemes.reshape(batch, num_phrases, -1)


def region_term_texts(
    model: nn.Module, input_ids: torch.Tensor, caption_states: torch.Tensor, linked_tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The texts the region terms contrast regions with: (B, N, D) lexeme embeddings (LRC's: token states of the
    caption, or the phrases encoded alone under `lexeme_mode="alone"`) and, when RLA is weighted, (B, N, D) phrase
    embeddings (each phrase encoded alone).

    Without `region_text_grad` both are constants to the loss: GC alone then trains the text tower."""
    text_grad = model.config.region_text_grad and torch.is_grad_enabled()
    phrase_embeds = None
    if model.config.lexeme_mode == "alone" or model.config.loss_rla_weight > 0:
        with torch.set_grad_enabled(text_grad):
            phrase_embeds = phrases_alone(model, input_ids, linked_tokens)
    if model.config.lexeme_mode == "alone":
        lexeme_embeds = phrase_embeds
    else:
        lexeme_embeds = lexemes_from_states(model, caption_states, linked_tokens)
        lexeme_embeds = lexeme_embeds if text_grad else lexeme_embeds.detach()
    return lexeme_embeds, phrase_embeds if model.config.loss_rla_weight > 0 else None


# ---------------------------------------------------------------------------------------------- zero-shot scoring


def _scale(logit_scale: torch.Tensor | float) -> float:
    """The temperature multiplier as a Python float (`model.logit_scale.exp()` or a number)."""
    return float(logit_scale.detach()) if isinstance(logit_scale, torch.Tensor) else float(logit_scale)


def similarity_probabilities(
    similarity: torch.Tensor, logit_scale: torch.Tensor | float, dim: int = -1
) -> torch.Tensor:
    """Cosine similarities with labels -> the softmax over labels (along `dim`) of ``logit_scale * cos``."""
    return (_scale(logit_scale) * similarity).softmax(dim=dim)


def label_and_background_probabilities(
    embeds: torch.Tensor,
    label_embeds: torch.Tensor,
    logit_scale: torch.Tensor | float,
    background_embed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scoring with a background: the softmax over the L labels and, if given, the background embedding of
    ``logit_scale * cos(embedding, label)``; the background's column is returned apart.

    Args:
        embeds: (..., D) L2-normalised region, patch, crop or image embeddings; label_embeds: (L, D) from
            `label_embeddings`; background_embed: (D,) or None; logit_scale: the multiplier, e.g.
            `model.logit_scale.exp()` (CLIP's learned value is about 100).
    Returns:
        (..., L) float32 label probabilities and (...) background probabilities (None without a background).
    """
    if embeds.shape[-1] != label_embeds.shape[-1] or label_embeds.dim() != 2:
        raise ValueError(
            f"`label_embeds` must have shape (L, {embeds.shape[-1]}) to match `embeds` {tuple(embeds.shape)}, got "
            f"{tuple(label_embeds.shape)}"
        )
    classes = label_embeds if background_embed is None else torch.cat([label_embeds, background_embed.reshape(1, -1)])
    probabilities = (_scale(logit_scale) * embeds.float() @ classes.float().to(embeds.device).t()).softmax(dim=-1)
    if background_embed is None:
        return probabilities, None
    return probabilities[..., :-1], probabilities[..., -1]


def label_probabilities(
    embeds: torch.Tensor,
    label_embeds: torch.Tensor,
    logit_scale: torch.Tensor | float,
    background_embed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Region (or image) scoring: softmax over labels (and the background, dropped after) of
    ``logit_scale * cos(embedding, label)``: (..., D) embeddings -> (..., L) float32 probabilities."""
    return label_and_background_probabilities(embeds, label_embeds, logit_scale, background_embed)[0]


# ---------------------------------------------------------------------------------------------- detection heads


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
        dense: (B, D, h, w) projected, unnormalised patch features (`dense_map`).
        label_embeds: (L, D) L2-normalised label embeddings (the pipelines' prompt-ensembled `label_embeddings`).
        logit_scale: the temperature multiplier (`model.logit_scale.exp()`).
        background_embed: (D,) the background's embedding, or None for no background (see the module docstring).
        boxes: (B, N, 4) normalised xyxy boxes of the user's in the frame of the map; None: boxes are proposed from the
            label maps (`propose_boxes`). box_mask: (B, N) valid boxes (default all).
        region_pooling: as the model's config (`pool_regions`).
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
    (`label_probabilities`, background dropped; masked rows zero), on the CPU, with the embeddings as its
    `region_embeds`. `maps`: the dense fields."""
    keep = box_mask[..., None].to(box_embeds.device)
    scores = label_and_background_probabilities(box_embeds, label_embeds, logit_scale, background_embed)[0]
    return HarmoCLIPDetectionOutput(
        scores=(scores * keep.to(scores.dtype)).cpu(),
        pred_boxes=boxes.float().cpu(),
        box_mask=box_mask.cpu(),
        region_embeds=(box_embeds.float() * keep.float()).cpu(),
        **maps,
    )


# ---------------------------------------------------------------------------------------------- the model


def trains_region_logit_scale(config: HarmoCLIPConfig) -> bool:
    """Whether a loss term reads `region_logit_scale`: LRC or RLA weighted, at their own temperature (a
    `region_logit_scale_mode` other than "shared", where they use the global `logit_scale`)."""
    return config.region_logit_scale_mode != "shared" and (config.loss_lrc_weight > 0 or config.loss_rla_weight > 0)


def own_teacher_targets(
    model: nn.Module, crop_pixel_values: torch.Tensor, crop_mask: torch.Tensor | None, box_mask: torch.Tensor | None
) -> torch.Tensor:
    """(B, N, D) GR targets from the model itself: its crop embeddings (`get_crop_features`), with gradients only under
    `gr_teacher="self_with_grad"`."""
    teacher = model.config.gr_teacher
    if teacher not in ("self_with_grad", "self_stop_grad"):
        raise ValueError(
            f"`crop_pixel_values` make the model its own GR teacher, which needs `gr_teacher` 'self_with_grad' or "
            f"'self_stop_grad', got {teacher!r}; give a {teacher} teacher's targets as `teacher_region_embeds` "
            "(harmoclip-cache-teacher computes the starting weights' once)"
        )
    mask = crop_mask
    if box_mask is not None:
        mask = box_mask.bool() if mask is None else mask.bool() & box_mask.bool()
    with torch.set_grad_enabled(teacher == "self_with_grad" and torch.is_grad_enabled()):
        return model.get_crop_features(crop_pixel_values.to(model.dtype), mask)


def text_features_and_phrases(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    phrase_token_mask: torch.Tensor | None,
    linked_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[Any, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The caption's text-tower pass as `CLIPModel.forward` makes it (its output and the (B, D) projected embedding)
    and, with `phrase_token_mask` (B, N, T), the (B, N, D) lexeme and phrase embeddings of the linked boxes' phrases
    from it (`region_term_texts`; else None, None)."""
    text_outputs, text_embeds = tower_outputs(
        model, "text", input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs
    )
    if phrase_token_mask is None:
        return text_outputs, text_embeds, None, None
    linked_tokens = phrase_token_mask & linked_mask[..., None]
    lexeme_embeds, phrase_embeds = region_term_texts(model, input_ids, text_outputs.last_hidden_state, linked_tokens)
    return text_outputs, text_embeds, lexeme_embeds, phrase_embeds


def with_recipe_loss(
    model: nn.Module,
    outputs: HarmoCLIPOutput,
    phrase_ids: torch.Tensor | None,
    category_ids: torch.Tensor | None,
    teacher_region_embeds: torch.Tensor | None,
) -> HarmoCLIPOutput:
    """`outputs` with `loss` (the config's weighted sum, `losses.recipe_loss`) and the unweighted terms filled in."""
    terms = recipe_loss(
        model.config,
        outputs,
        model.logit_scale,
        model.lrc_rla_logit_scale,
        phrase_ids=phrase_ids,
        category_ids=category_ids,
        teacher_region_embeds=teacher_region_embeds,
    )
    return replace(
        outputs,
        loss=terms.total,
        loss_gc=terms.gc,
        loss_lrc=terms.lrc,
        loss_rla=terms.rla,
        loss_gr=terms.gr,
        loss_gd=terms.gd,
    )


class HarmoCLIPModel(CLIPModel):
    """CLIP with region and lexeme embeddings. Parameter names are `CLIPModel`'s plus `region_logit_scale` (and, with
    `region_heads`, `region_projection` and `lexeme_projection`).

    In `forward`, with `phrase_ids` a valid box whose id is >= 0 must have phrase tokens, and LRC leaves out negatives
    with the same phrase text; without them, a box is linked when its phrase row has a token. `crop_pixel_values`
    make the model its own GR teacher, as `gr_teacher` says ("self_with_grad": with gradients, FineCLIP;
    "self_stop_grad": without). A frozen or cached teacher's targets come as `teacher_region_embeds`
    (`harmoclip-cache-teacher` computes the frozen starting weights' once). The crops are what lets loops that only
    call `model(**batch)` (transformers' Trainer) train GR.
    """

    config_class = HarmoCLIPConfig
    config: HarmoCLIPConfig

    def __init__(self, config: HarmoCLIPConfig):
        super().__init__(config)
        # Log temperature of the lexeme-region contrast in "from_global" / "separate" mode. It is in every state dict
        # under the same name, so that a checkpoint's keys do not depend on the mode; it is a trainable parameter only
        # where a loss term reads it (`trains_region_logit_scale`), a persistent buffer otherwise: data parallelism
        # with `find_unused_parameters=False` (Trainer's choice under gradient checkpointing) needs every trainable
        # parameter to receive a gradient.
        start = self.region_logit_scale_start()
        if trains_region_logit_scale(config):
            self.region_logit_scale = nn.Parameter(start)
        else:
            self.register_buffer("region_logit_scale", start, persistent=True)
        if config.region_heads:
            # Heads of the regions and lexemes alone, started as CLIP's projections (`_init_weights` copies them): what
            # the region terms pull on, while the global embeddings keep `visual_projection` and `text_projection`.
            self.region_projection = nn.Linear(self.vision_embed_dim, self.projection_dim, bias=False)
            self.lexeme_projection = nn.Linear(self.text_embed_dim, self.projection_dim, bias=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        # A region or lexeme head (`region_heads`) starts as CLIP's projection. It is initialised after the projections
        # (it comes after them among the model's children), or after a checkpoint without heads filled them.
        for head_name, start_name in (
            ("region_projection", "visual_projection"),
            ("lexeme_projection", "text_projection"),
        ):
            if module is getattr(self, head_name, None):
                if hf_init is None:
                    with torch.no_grad():
                        module.weight.copy_(getattr(self, start_name).weight)
                else:
                    hf_init.copy_(module.weight, getattr(self, start_name).weight)
        # CLIPModel.__init__ already runs post_init once, before `region_logit_scale` exists.
        if isinstance(module, HarmoCLIPModel) and hasattr(module, "region_logit_scale"):
            if hf_init is None:  # transformers 4.x: only modules the checkpoint left unfilled get here
                with torch.no_grad():
                    module.region_logit_scale.copy_(module.region_logit_scale_start())
                return
            # CLIP leaves `logit_scale` to its `__init__`; set here too, so that a model built on the meta device and
            # initialised afterwards (`to_empty` + `init_weights`) starts from the config's value like any other.
            hf_init.constant_(module.logit_scale, float(module.config.logit_scale_init_value))
            # `init.*` skips tensors loaded from a checkpoint, so this only fills what a CLIP checkpoint lacks; it runs
            # after the checkpoint's `logit_scale` is loaded, so "from_global" starts from the CLIP's trained value.
            hf_init.copy_(module.region_logit_scale, module.region_logit_scale_start())

    def region_logit_scale_start(self) -> torch.Tensor:
        """The starting value of `region_logit_scale` (scalar): `config.region_logit_scale_init_value` in "separate"
        mode, the global `logit_scale` otherwise (a CLIP's trained one, or `logit_scale_init_value` from scratch)."""
        if self.config.region_logit_scale_mode == "separate":
            return torch.full_like(self.logit_scale, float(self.config.region_logit_scale_init_value)).detach()
        return self.logit_scale.detach().clone()

    def reset_region_logit_scale(self) -> None:
        """Sets `region_logit_scale` to its starting value; for weights loaded by hand (`load_state_dict`) from a
        CLIP, which `from_pretrained` would have initialised already."""
        with torch.no_grad():
            self.region_logit_scale.copy_(self.region_logit_scale_start())

    def reset_region_heads(self) -> None:
        """With `region_heads`: sets `region_projection` and `lexeme_projection` to CLIP's `visual_projection` and
        `text_projection`, their starting values; for weights loaded by hand from a CLIP (`from_pretrained` would have
        started them so already)."""
        if self.config.region_heads:
            with torch.no_grad():
                self.region_projection.weight.copy_(self.visual_projection.weight)
                self.lexeme_projection.weight.copy_(self.text_projection.weight)

    @property
    def lrc_rla_logit_scale(self) -> nn.Parameter:
        """The learnable log temperature of the LRC and RLA losses: `logit_scale` when `region_logit_scale_mode` is
        "shared" (as FineCLIP's region contrast), `region_logit_scale` otherwise."""
        return self.logit_scale if self.config.region_logit_scale_mode == "shared" else self.region_logit_scale

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        """`PreTrainedModel.save_pretrained`, plus what makes the folder a whole Hub repository of remote code: the
        zero-shot head in `auto_map`, the pipelines in `custom_pipelines`, and every code file (`HUB_CODE_FILES`)
        beside the weights, so that the processor and the pipelines load from the folder alone."""
        # `register_for_auto_class` keeps one auto class per Python class: add the zero-shot head by hand.
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        auto_map["AutoModelForZeroShotImageClassification"] = (
            f"{self.__class__.__module__.split('.')[-1]}.{self.__class__.__name__}"
        )
        self.config.auto_map = auto_map
        self.config.custom_pipelines = dict(getattr(self.config, "custom_pipelines", None) or {}) | {
            task: dict(entry) for task, entry in CUSTOM_PIPELINES.items()
        }
        result = super().save_pretrained(save_directory, *args, **kwargs)
        copy_code_files(save_directory)
        return result

    # ------------------------------------------------------------------ vision: trunk, dense map, regions

    def get_dense_features(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D, H/patch, W/patch) patch embeddings in the joint space, L2-normalised per location."""
        return F.normalize(dense_map(self, pixel_values, interpolate_pos_encoding), dim=1, eps=1e-12)

    def get_region_features(
        self,
        pixel_values: torch.Tensor,
        boxes: torch.Tensor,
        box_mask: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        """Region embeddings from one pass of the image encoder, whatever the number of boxes.

        Args:
            pixel_values: (B, 3, H, W).
            boxes: (B, N, 4) xyxy, normalised to [0, 1] in the frame of `pixel_values` (as the processor returns).
            box_mask: (B, N) bool, True for real boxes; default all True.
        Returns:
            (B, N, D) float32, L2-normalised; rows of masked boxes are zeros.
        """
        box_mask = check_boxes(boxes, box_mask)
        dense = dense_map(self, pixel_values, interpolate_pos_encoding)
        return pool_regions(dense, boxes, box_mask, self.config.region_pooling)

    def get_region_and_dense_features(
        self,
        pixel_values: torch.Tensor,
        boxes: torch.Tensor,
        box_mask: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`get_region_features` and `get_dense_features` from one pass of the image encoder (what the exported
        region graph computes).

        Returns:
            region_embeds (B, N, D) float32, L2-normalised, zeros for masked boxes; dense (B, D, H/patch, W/patch)
            L2-normalised per location.
        """
        box_mask = check_boxes(boxes, box_mask)
        dense = dense_map(self, pixel_values, interpolate_pos_encoding)
        return pool_regions(dense, boxes, box_mask, self.config.region_pooling), F.normalize(dense, dim=1, eps=1e-12)

    def compiled_region_features(self, **compile_options: Any) -> Callable[..., torch.Tensor]:
        """`get_region_features` under `torch.compile(**compile_options)` (one graph, no graph break), with the box
        value checks of `check_boxes` run eagerly before the compiled part.

        A new number of boxes or images recompiles once (or pass `dynamic=True`). Returns a callable
        ``(pixel_values (B, 3, H, W), boxes (B, N, 4), box_mask (B, N) | None) -> (B, N, D)``.
        """
        compiled = torch.compile(self.get_region_features, **compile_options)

        def region_features(
            pixel_values: torch.Tensor, boxes: torch.Tensor, box_mask: torch.Tensor | None = None
        ) -> torch.Tensor:
            return compiled(pixel_values, boxes, check_boxes(boxes, box_mask))

        return region_features

    def get_crop_features(
        self,
        crop_pixel_values: torch.Tensor,
        crop_mask: torch.Tensor | None = None,
        chunk_size: int = CROP_CHUNK_SIZE,
    ) -> torch.Tensor:
        """Global embedding of each box's crop: the teacher signal of GR, and the crop-and-encode way a plain CLIP
        embeds regions.

        The crops are the processor's (`processor(images, boxes=..., return_crops=True, crop_scale=...)`): each box,
        enlarged about its centre, cut from the original image and resized to the model's input size. They are encoded
        by `get_image_features`, `chunk_size` at a time; gradients flow unless the caller turns them off.

        Args:
            crop_pixel_values: (B, N, 3, S, S) normalised crops.
            crop_mask: (B, N) bool, True where a crop was cut; default all True.
            chunk_size: crops per call of the image encoder (bounds activation memory whatever N).
        Returns:
            (B, N, D) float32, L2-normalised; rows of masked crops are zeros.
        """
        crop_mask = check_crop_inputs(crop_pixel_values, crop_mask, chunk_size)
        batch, num_boxes = crop_pixel_values.shape[:2]
        crops = crop_pixel_values.flatten(0, 1)
        valid_index = crop_mask.to(device=crops.device, dtype=torch.bool).reshape(-1).nonzero(as_tuple=True)[0]
        embeds = crops.new_zeros(batch * num_boxes, self.config.projection_dim, dtype=torch.float32)
        for chunk in valid_index.split(chunk_size):
            crop_embeds = projected(self.get_image_features(pixel_values=crops[chunk]))
            embeds = embeds.index_copy(0, chunk, _normalize(crop_embeds.float()))
        return embeds.reshape(batch, num_boxes, -1)

    # ------------------------------------------------------------------ text: lexemes

    def get_lexeme_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        phrase_token_mask: torch.Tensor,
        lexeme_mode: str | None = None,
    ) -> torch.Tensor:
        """Phrase ("lexeme") embeddings in the joint space.

        Args:
            input_ids, attention_mask: (B, T) captions, one per image.
            phrase_token_mask: (B, N, T) bool, the caption tokens of each box's phrase (a row of zeros: no phrase).
            lexeme_mode: "token" or "alone" (`LEXEME_MODES`); default the config's `lexeme_mode`.
        Returns:
            (B, N, D) float32, L2-normalised; rows without tokens are zeros. In `"token"` mode the caption is encoded
            once and the phrase's final (layer-normed) token states are mean-pooled, then projected; in `"alone"` mode
            each phrase is encoded alone, as its own text (`get_phrase_features`).
        """
        lexeme_mode = self.config.lexeme_mode if lexeme_mode is None else lexeme_mode
        if lexeme_mode not in LEXEME_MODES:
            raise ValueError(f"`lexeme_mode` must be one of {LEXEME_MODES}, got {lexeme_mode!r}")
        check_phrase_token_mask(phrase_token_mask, input_ids)
        phrase_token_mask = phrase_token_mask.to(device=input_ids.device, dtype=torch.bool)
        if lexeme_mode == "alone":
            return phrases_alone(self, input_ids, phrase_token_mask)
        states = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return lexemes_from_states(self, states, phrase_token_mask)

    def get_phrase_features(self, input_ids: torch.Tensor, phrase_token_mask: torch.Tensor) -> torch.Tensor:
        """Sentence-level phrase embeddings: each phrase encoded alone, as its own text (BOS + its caption tokens +
        EOS) through the whole text tower, end-of-text pooled, projected (`phrases_alone`); whatever `lexeme_mode` is.

        Args:
            input_ids: (B, T) captions, one per image; phrase_token_mask: (B, N, T) bool, each box's phrase tokens.
        Returns:
            (B, N, D) float32, L2-normalised; rows without tokens are zeros.
        """
        check_phrase_token_mask(phrase_token_mask, input_ids)
        return phrases_alone(self, input_ids, phrase_token_mask.to(device=input_ids.device, dtype=torch.bool))

    # ------------------------------------------------------------------ scoring and detection

    def label_probabilities(
        self, embeds: torch.Tensor, label_embeds: torch.Tensor, background_embed: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Zero-shot scoring at this model's temperature: (..., D) L2-normalised region, patch, crop or image
        embeddings and (L, D) label embeddings -> (..., L) float32, the softmax over the labels (and the background,
        dropped after) of ``logit_scale.exp() * cos`` (`label_probabilities`)."""
        return label_probabilities(embeds, label_embeds, self.logit_scale.exp(), background_embed)

    @torch.no_grad()
    def detect(
        self,
        pixel_values: torch.Tensor,
        label_embeds: torch.Tensor,
        background_embed: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        box_mask: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        map_thresholds: Sequence[float] = MAP_THRESHOLDS,
        window_scales: Sequence[float] = WINDOW_SCALES,
        max_proposals: int = MAX_PROPOSALS,
    ) -> HarmoCLIPDetectionOutput:
        """Open-vocabulary detection and label maps from one pass of the image encoder: per-patch label probabilities,
        boxes proposed from them (or the user's), each box scored by its region embedding, at `logit_scale.exp()`.

        Args:
            pixel_values: (B, 3, H, W); label_embeds: (L, D) L2-normalised (the pipelines' `label_embeddings`).
            background_embed: (D,) a label that competes with the candidates in every softmax and is then dropped, so
                that a box or a patch that is none of the labels keeps a low probability for all of them, even with a
                single candidate; None: no background.
            boxes: (B, N, 4) normalised xyxy in the frame of `pixel_values`; None: proposals from the label maps at
                `map_thresholds` and `window_scales`, at most `max_proposals` per image. box_mask: (B, N) valid boxes.
        Returns:
            `HarmoCLIPDetectionOutput` (on the CPU) with each box's region embedding: read by the image processor's
            `post_process_object_detection`, `post_process_semantic_segmentation` and, with phrases as the labels,
            phrase grounding.
        """
        return detections_from_dense_map(
            dense_map(self, pixel_values, interpolate_pos_encoding),
            label_embeds,
            self.logit_scale.exp().item(),
            background_embed,
            boxes,
            box_mask,
            self.config.region_pooling,
            map_thresholds,
            window_scales,
            max_proposals,
        )

    # ------------------------------------------------------------------ forward

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        interpolate_pos_encoding: bool = False,
        boxes: torch.Tensor | None = None,
        box_mask: torch.Tensor | None = None,
        phrase_token_mask: torch.Tensor | None = None,
        phrase_ids: torch.Tensor | None = None,
        teacher_region_embeds: torch.Tensor | None = None,
        category_ids: torch.Tensor | None = None,
        crop_pixel_values: torch.Tensor | None = None,
        crop_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> HarmoCLIPOutput | tuple:
        r"""
        With only `input_ids` and `pixel_values` this is `CLIPModel.forward`, `return_dict=False` (a tuple),
        `output_hidden_states` and `output_attentions` included; with boxes, CLIP's fields are unchanged and complete
        too. Additionally:

        boxes (`(B, N, 4)`): normalised xyxy boxes in the frame of `pixel_values`; enables `region_embeds`.
        box_mask (`(B, N)` bool): valid boxes; default all.
        phrase_token_mask (`(B, N, T)` bool): each box's phrase tokens in its image's caption; enables `lexeme_embeds`.
        phrase_ids (`(B, N)` int64): phrase-text ids, -1 for a box without phrase (see the class docstring).
        category_ids (`(B, N)` int64): what each box shows (a category id, -1: unknown); LRC also leaves out
            negatives of the same category.
        teacher_region_embeds (`(B, N, D)`): crop embeddings of the boxes from a teacher (`get_crop_features` of the
            processor's `crop_pixel_values`); enables GR, back-propagated into under `gr_teacher="self_with_grad"`.
        crop_pixel_values (`(B, N, 3, S, S)`), crop_mask (`(B, N)` bool): the boxes' crops (`return_crops=True`), for
            a batch without `teacher_region_embeds`: the model is its own GR teacher (see the class docstring).
        return_loss (`bool`): `loss` = w_gc GC + w_lrc LRC + w_rla RLA + w_gr GR over the terms that apply to this batch
            alone (`losses.recipe_loss` of this config; a `ValueError` when none applies).

        `phrase_embeds` (each phrase encoded alone) are computed with `phrase_token_mask` when `loss_rla_weight` > 0.
        """
        if pixel_values is None or input_ids is None:
            raise ValueError("HarmoCLIPModel.forward needs both `pixel_values` and `input_ids`")
        if crop_pixel_values is not None and teacher_region_embeds is None:
            teacher_region_embeds = own_teacher_targets(self, crop_pixel_values, crop_mask, box_mask)
        region_mask, linked_mask, phrase_token_mask = check_region_inputs(
            self.config.projection_dim,
            input_ids,
            boxes,
            box_mask,
            phrase_token_mask,
            phrase_ids,
            category_ids,
            teacher_region_embeds,
        )

        # Image tower: with boxes, the dense map reuses the trunk of the global pass (only the last layer runs twice).
        vision_outputs, image_embeds, region_embeds = image_features_and_regions(
            self, pixel_values, boxes, region_mask, interpolate_pos_encoding, **kwargs
        )
        # Text tower: the caption's pass also gives the token states of its phrases.
        text_outputs, text_embeds, lexeme_embeds, phrase_embeds = text_features_and_phrases(
            self, input_ids, attention_mask, position_ids, phrase_token_mask, linked_mask, **kwargs
        )
        image_embeds = _normalize(image_embeds)
        text_embeds = _normalize(text_embeds)
        logits_per_text = text_embeds @ image_embeds.t().to(text_embeds.device) * self.logit_scale.exp()
        outputs = HarmoCLIPOutput(
            logits_per_image=logits_per_text.t(),
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
            region_embeds=region_embeds,
            lexeme_embeds=lexeme_embeds,
            phrase_embeds=phrase_embeds,
            region_mask=region_mask,
            linked_mask=linked_mask,
        )
        if not return_loss:
            return outputs
        return with_recipe_loss(self, outputs, phrase_ids, category_ids, teacher_region_embeds)


# ---------------------------------------------------------------------------------------------- the Hub folder

# The pipelines every saved model carries (the config's `custom_pipelines`), all in `pipeline_harmoclip.py`.
CUSTOM_PIPELINES: dict[str, dict[str, Any]] = {
    task: {"impl": f"pipeline_harmoclip.{class_name}", "pt": ["AutoModel"], "type": "multimodal"}
    for task, class_name in (
        ("region-classification", "RegionClassificationPipeline"),
        ("zero-shot-object-detection", "ZeroShotRegionDetectionPipeline"),
        ("image-segmentation", "DenseSegmentationPipeline"),
        ("phrase-grounding", "PhraseGroundingPipeline"),
    )
}
# The remote code a saved folder carries: the config, the model and its loss, the image processor, the processor and
# the pipelines, one file each. Each file that transformers loads as an entry point (config, model, image processor,
# processor, pipelines) imports every sibling it needs itself, because the loaders of transformers 4.57 and 5.0 copy a
# local folder's entry file with its own relative imports only, not theirs.
HUB_CODE_FILES = (
    "configuration_harmoclip.py",
    "modeling_harmoclip.py",
    "losses.py",
    "image_processing_harmoclip.py",
    "processing_harmoclip.py",
    "pipeline_harmoclip.py",
)
HERE = Path(__file__).resolve().parent


def copy_code_files(save_directory: str | Path) -> list[Path]:
    """Copies `HUB_CODE_FILES` from beside this file into `save_directory` (a file already there, or missing here, as
    in a partial remote-code cache, is left as it is). Returns the files written."""
    written = []
    for name in HUB_CODE_FILES:
        source, target = HERE / name, Path(save_directory) / name
        if source.is_file() and source.resolve() != target.resolve():
            shutil.copy(source, target)
            written.append(target)
    return written


HarmoCLIPConfig.register_for_auto_class("AutoConfig")
HarmoCLIPModel.register_for_auto_class("AutoModel")

__all__ = [
    "HarmoCLIPModel",
    "HarmoCLIPOutput",
    "HarmoCLIPDetectionOutput",
    "roi_align",
    "roi_align_per_image",
    "label_probabilities",
    "label_and_background_probabilities",
    "similarity_probabilities",
    "check_boxes",
    "check_phrase_token_mask",
    "trains_region_logit_scale",
    "value_path_layer",
    "CUSTOM_PIPELINES",
    "HUB_CODE_FILES",
]
