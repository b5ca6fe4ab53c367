"""Automatic box proposals: a regular grid, or the connected salient regions of the dense feature map.

Saliency of a patch = 1 - cosine(patch feature, mean patch feature of the image): patches that differ from the
image's average (the background, in most pictures) are salient. Patches above the map's mean are grouped into
4-connected regions; each region's bounding box, in image pixels, is a proposal.
"""

from __future__ import annotations

import numpy as np


def grid_boxes(width: int, height: int, cells: int) -> list[list[float]]:
    """`cells` x `cells` boxes tiling a `width` x `height` image, row by row (xyxy, image pixels)."""
    if not isinstance(cells, int) or cells < 1:
        raise ValueError(f"`cells` must be a positive int, got {cells!r}")
    xs = np.linspace(0, width, cells + 1)
    ys = np.linspace(0, height, cells + 1)
    return [
        [float(xs[col]), float(ys[row]), float(xs[col + 1]), float(ys[row + 1])]
        for row in range(cells)
        for col in range(cells)
    ]


def saliency_map(dense: np.ndarray) -> np.ndarray:
    """(D, h, w) L2-normalised patch features -> (h, w) saliency, 1 - cosine with the mean patch feature."""
    if dense.ndim != 3:
        raise ValueError(f"`dense` must be a (D, h, w) array, got shape {dense.shape}")
    mean = dense.mean(axis=(1, 2))
    mean = mean / max(float(np.linalg.norm(mean)), 1e-12)
    return 1.0 - np.einsum("dhw,d->hw", dense, mean)


def connected_regions(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """4-connected groups of True cells of an (h, w) bool mask, each a list of (row, col), largest first."""
    seen = np.zeros_like(mask, dtype=bool)
    regions = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        stack, region = [start], []
        while stack:
            row, col = stack.pop()
            region.append((int(row), int(col)))
            for near in ((row - 1, col), (row + 1, col), (row, col - 1), (row, col + 1)):
                if 0 <= near[0] < mask.shape[0] and 0 <= near[1] < mask.shape[1] and mask[near] and not seen[near]:
                    seen[near] = True
                    stack.append(near)
        regions.append(region)
    return sorted(regions, key=len, reverse=True)


def salient_region_boxes(saliency: np.ndarray, width: int, height: int, max_regions: int = 8) -> list[list[float]]:
    """Bounding boxes (xyxy, pixels of a `width` x `height` image) of the `max_regions` largest connected regions
    of patches whose saliency is above the map's mean. The (h, w) patch grid covers the whole image."""
    rows, cols = saliency.shape
    mask = saliency > saliency.mean()
    cell_w, cell_h = width / cols, height / rows
    boxes = []
    for region in connected_regions(mask)[:max_regions]:
        region_rows = [row for row, _ in region]
        region_cols = [col for _, col in region]
        boxes.append(
            [
                min(region_cols) * cell_w,
                min(region_rows) * cell_h,
                (max(region_cols) + 1) * cell_w,
                (max(region_rows) + 1) * cell_h,
            ]
        )
    return boxes
