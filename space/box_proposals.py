"""Boxes without a model: a regular grid. The model's own proposals (connected regions of its label maps, windows)
come with its `zero-shot-object-detection` pipeline."""

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
