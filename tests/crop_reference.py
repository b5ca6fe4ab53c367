"""An independent reference for the processor's crops: each crop cut by hand with PIL, resized and normalised with
NumPy, following CLIPSelf's / FineCLIP's `ProposalDistillDataset` (enlarge about the centre, clip to the image,
`Image.crop`, square resize, normalise)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float64)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float64)


def hand_window(box: Sequence[float], scale: float, width: int, height: int) -> tuple[float, float, float, float]:
    """The enlarged, clipped crop window of an xyxy box in pixels (before PIL rounds it)."""
    x1, y1, x2, y2 = box
    cx, cy, half_w, half_h = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) * scale / 2, (y2 - y1) * scale / 2
    return max(cx - half_w, 0), max(cy - half_h, 0), min(cx + half_w, width), min(cy + half_h, height)


def hand_crop(image: Image.Image, box: Sequence[float], scale: float, size: int) -> torch.Tensor:
    """(3, size, size) float32: the box's crop of `image`, resized (PIL bicubic) and normalised with CLIP's statistics."""
    window = hand_window(box, scale, *image.size)
    piece = image.convert("RGB").crop(window).resize((size, size), Image.BICUBIC)
    pixels = (np.asarray(piece, dtype=np.float64) / 255.0 - CLIP_MEAN) / CLIP_STD
    return torch.from_numpy(pixels.transpose(2, 0, 1)).float()


def to_pixel_levels(normalised: torch.Tensor) -> torch.Tensor:
    """(3, H, W) CLIP-normalised values back to 0-255 levels (float64)."""
    mean = torch.from_numpy(CLIP_MEAN)[:, None, None]
    std = torch.from_numpy(CLIP_STD)[:, None, None]
    return (normalised.double() * std + mean) * 255.0
