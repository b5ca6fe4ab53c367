"""A slow RoIAlign written loop by loop from torchvision's documented algorithm, as an independent reference."""

from __future__ import annotations

import math

import torch


def _bilinear(feature: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """feature: (C, H, W). Bilinear value at (y, x) with torchvision's border rules."""
    _, height, width = feature.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return torch.zeros(feature.shape[0], dtype=feature.dtype)
    y = max(y, 0.0)
    x = max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (
        hy * hx * feature[:, y_low, x_low]
        + hy * lx * feature[:, y_low, x_high]
        + ly * hx * feature[:, y_high, x_low]
        + ly * lx * feature[:, y_high, x_high]
    )


def slow_roi_align(
    input: torch.Tensor,
    rois: torch.Tensor,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """input (B, C, H, W) float64, rois (K, 5). Returns (K, C, out_h, out_w)."""
    out_h, out_w = output_size
    result = torch.zeros(rois.shape[0], input.shape[1], out_h, out_w, dtype=input.dtype)
    offset = 0.5 if aligned else 0.0
    for k, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        start_w, start_h = x1 * spatial_scale - offset, y1 * spatial_scale - offset
        roi_w = x2 * spatial_scale - offset - start_w
        roi_h = y2 * spatial_scale - offset - start_h
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / out_h, roi_w / out_w
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / out_h)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / out_w)
        count = max(grid_h * grid_w, 1)
        for ph in range(out_h):
            for pw in range(out_w):
                total = torch.zeros(input.shape[1], dtype=input.dtype)
                for iy in range(max(grid_h, 0)):
                    y = start_h + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(max(grid_w, 0)):
                        x = start_w + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                        total = total + _bilinear(input[int(b)], y, x)
                result[k, :, ph, pw] = total / count
    return result
