"""Pictures for the demo: labelled boxes on an image, and a similarity map overlaid as a heatmap.

Self-contained (PIL, NumPy, matplotlib's colour maps), so the Space needs nothing but pip packages.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

# One colour per box, cycling through matplotlib's "tab10" (as 0-255 RGB).
PALETTE = [tuple(round(255 * channel) for channel in colormaps["tab10"](index)[:3]) for index in range(10)]


def label_boxes(image: Image.Image, boxes: Sequence[Sequence[float]], captions: Sequence[str]) -> Image.Image:
    """A copy of `image` (RGB) with each xyxy box (image pixels) outlined and its caption on a coloured tag.

    The tag sits above the box, or inside it when the box touches the top edge. The outline scales with the image.
    """
    if len(boxes) != len(captions):
        raise ValueError(f"`captions` needs one entry per box ({len(boxes)}), got {len(captions)}")
    canvas = image.convert("RGB")
    pen = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(10, min(canvas.size) // 28))
    width = max(1, min(canvas.size) // 150)
    for index, (box, caption) in enumerate(zip(boxes, captions)):
        colour = PALETTE[index % len(PALETTE)]
        x1, y1, x2, y2 = (float(value) for value in box)
        pen.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        left, top, right, bottom = pen.textbbox((0, 0), caption, font=font)
        tag_height = bottom - top + 4
        tag_top = y1 - tag_height if y1 >= tag_height else y1
        pen.rectangle((x1, tag_top, x1 + right - left + 4, tag_top + tag_height), fill=colour)
        pen.text((x1 + 2 - left, tag_top + 2 - top), caption, fill="white", font=font)
    return canvas


def overlay_heatmap(image: Image.Image, similarity: np.ndarray, opacity: float = 0.55) -> Image.Image:
    """`image` (RGB) blended with a (h, w) map stretched to its size, min-max scaled, in the "inferno" colours
    (bright: similar)."""
    if similarity.ndim != 2:
        raise ValueError(f"`similarity` must be a (h, w) array, got shape {similarity.shape}")
    base = image.convert("RGB")
    stretched = np.asarray(Image.fromarray(similarity.astype(np.float32)).resize(base.size, Image.BILINEAR))
    span = float(stretched.max() - stretched.min())
    scaled = (stretched - stretched.min()) / span if span > 0 else np.zeros_like(stretched)
    colours = colormaps["inferno"](scaled)[..., :3]
    mixed = (1 - opacity) * np.asarray(base, dtype=np.float32) / 255 + opacity * colours
    return Image.fromarray(np.clip(mixed * 255 + 0.5, 0, 255).astype(np.uint8))
