"""RoIAlign in plain torch, with torchvision's semantics (torchvision cannot be installed beside every torch build).

Bilinear sampling on a Cartesian grid of sample points is separable, so each RoI's pooled output is
``A_y @ X @ A_x^T``, where ``A_y`` (output rows x H) and ``A_x`` (output columns x W) hold the summed bilinear weights
of the RoI's sample points. This gives torchvision's exact arithmetic (same sample points, same border rules,
adaptive grid per RoI) with two small matrix products per image instead of a gather per sample point, and it is
differentiable with respect to the input map.
"""

from __future__ import annotations

import torch

from .box_ops import enlarge_boxes  # re-exported: its home is box_ops


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


# RoIs gathered at once by `roi_align`: bounds the memory of the gathered feature maps (chunk x C x H x W).
ROI_CHUNK_SIZE = 64


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


__all__ = ["roi_align", "roi_align_per_image", "enlarge_boxes"]
