"""Image geometry, the one implementation: where a point of an original image lands in the frame of its
`pixel_values` (`BoxGeometry`), the size CLIP's resize gives (`resized_image_size`, which `HarmoCLIPImageProcessor`'s
resize itself uses), the centre crop's shift, and the windows of box crops cut from the original image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from transformers.image_transforms import get_resize_output_image_size, get_size_with_aspect_ratio
from transformers.image_utils import (
    ChannelDimension,
    SizeDict,
    get_image_size,
    get_image_size_for_max_height_width,
    infer_channel_dimension_format,
)

from .box_ops import enlarge_boxes


@dataclass(frozen=True)
class BoxGeometry:
    """How original pixel coordinates map into the frame of `pixel_values` for one image.

    A point (x, y) of the original image lands at ((x * scale_x + shift_x) / width, (y * scale_y + shift_y) / height)
    in normalised `pixel_values` coordinates (width, height: the output frame in pixels).
    """

    original_height: int
    original_width: int
    scale_x: float
    scale_y: float
    shift_x: float
    shift_y: float
    width: int
    height: int

    def to_normalized(self, boxes: torch.Tensor) -> torch.Tensor:
        """(N, 4) xyxy in original pixels -> (N, 4) xyxy normalised to the output frame (not clipped)."""
        scale = boxes.new_tensor([self.scale_x, self.scale_y, self.scale_x, self.scale_y])
        shift = boxes.new_tensor([self.shift_x, self.shift_y, self.shift_x, self.shift_y])
        size = boxes.new_tensor([self.width, self.height, self.width, self.height])
        return (boxes * scale + shift) / size

    def to_original(self, boxes: torch.Tensor) -> torch.Tensor:
        """(N, 4) normalised xyxy in the output frame -> (N, 4) xyxy in original pixels, clipped to the image."""
        scale = boxes.new_tensor([self.scale_x, self.scale_y, self.scale_x, self.scale_y])
        shift = boxes.new_tensor([self.shift_x, self.shift_y, self.shift_x, self.shift_y])
        size = boxes.new_tensor([self.width, self.height, self.width, self.height])
        original = (boxes * size - shift) / scale
        limits = boxes.new_tensor(
            [self.original_width, self.original_height, self.original_width, self.original_height]
        )
        return torch.minimum(original.clamp(min=0), limits)


def crop_shift(size: int, crop: int, backend: str) -> float:
    """Offset added to a coordinate by centre-cropping `size` pixels to `crop` (zero-padding when crop > size).

    Mirrors the image processors: both crop at floor((size - crop) / 2); when padding, torchvision puts
    floor((crop - size) / 2) pixels before the image and the PIL/NumPy backend ceil((crop - size) / 2).
    """
    if crop <= size:
        return -float((size - crop) // 2)
    padding = crop - size
    return float(padding // 2 if backend == "torchvision" else (padding + 1) // 2)


def original_image_size(image: Any, input_data_format: Any = None) -> tuple[int, int]:
    """(height, width) of a PIL image, or of an array / tensor in channels-first or channels-last layout."""
    if getattr(image, "ndim", None) is None:  # a PIL image
        height, width = get_image_size(image)
    elif image.ndim == 2:
        height, width = image.shape
    else:
        layout = input_data_format or infer_channel_dimension_format(image, num_channels=(1, 3, 4))
        height, width = get_image_size(image, channel_dim=layout)
    return int(height), int(width)


def check_crop_options(return_crops: Any, crop_scale: Any) -> None:
    """Raises `TypeError` / `ValueError` naming `return_crops` or `crop_scale` unless they are a bool and a finite
    number > 0."""
    if not isinstance(return_crops, bool):
        raise TypeError(f"`return_crops` must be a bool, got {type(return_crops).__name__}: {return_crops!r}")
    if (
        not isinstance(crop_scale, (int, float))
        or isinstance(crop_scale, bool)
        or not math.isfinite(crop_scale)
        or crop_scale <= 0
    ):
        raise ValueError(f"`crop_scale` must be a finite number > 0, got {crop_scale!r}")


def crop_windows(boxes: torch.Tensor, crop_scale: float, height: int, width: int) -> list[tuple[int, int, int, int]]:
    """Pixel windows `(x0, y0, x1, y1)` of the crops of (N, 4) xyxy boxes in an image of `height` x `width` pixels.

    Each box is enlarged by `crop_scale` about its centre and clipped to the image (CLIPSelf's and FineCLIP's
    `ProposalDistillDataset.__getitem__`), then rounded to whole pixels as PIL's `Image.crop` rounds them; a window
    keeps at least one pixel, so that a sub-pixel box still has a crop.
    """
    enlarged = enlarge_boxes(boxes.double(), float(crop_scale))
    limits = enlarged.new_tensor([width, height, width, height])
    clipped = torch.minimum(enlarged.clamp(min=0), limits)
    windows = []
    for x0, y0, x1, y1 in (tuple(round(value) for value in row) for row in clipped.tolist()):
        x0, y0 = min(x0, width - 1), min(y0, height - 1)
        windows.append((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)))
    return windows


def cut_window(image: Any, window: tuple[int, int, int, int], input_data_format: Any = None) -> Any:
    """The pixels of `image` inside `window` (x0, y0, x1, y1): a PIL image for a PIL image, else a channels-last tensor
    (a crop a few pixels wide has no layout of its own to infer, so the original's is applied here)."""
    x0, y0, x1, y1 = window
    if getattr(image, "ndim", None) is None:  # a PIL image
        return image.crop(window)
    pixels = torch.as_tensor(image)
    if pixels.ndim == 2:
        return pixels[y0:y1, x0:x1, None]
    layout = input_data_format or infer_channel_dimension_format(image, num_channels=(1, 3, 4))
    if ChannelDimension(layout) == ChannelDimension.FIRST:
        return pixels[:, y0:y1, x0:x1].permute(1, 2, 0)
    return pixels[y0:y1, x0:x1, :]


def resized_image_size(height: int, width: int, size: SizeDict) -> tuple[int, int]:
    """(height, width) after the image processors' resize, with the same helpers and the same branch order."""
    if size.shortest_edge and size.longest_edge:
        return tuple(get_size_with_aspect_ratio((height, width), size.shortest_edge, size.longest_edge))
    if size.shortest_edge:
        stand_in = torch.empty(1, height, width, device="meta")
        return tuple(
            get_resize_output_image_size(
                stand_in, size=size.shortest_edge, default_to_square=False, input_data_format=ChannelDimension.FIRST
            )
        )
    if size.max_height and size.max_width:
        return tuple(get_image_size_for_max_height_width((height, width), size.max_height, size.max_width))
    if size.height and size.width:
        return size.height, size.width
    raise ValueError(f"HarmoCLIPImageProcessor cannot resize to a `size` of {dict(size)}")


__all__ = [
    "BoxGeometry",
    "crop_shift",
    "original_image_size",
    "check_crop_options",
    "crop_windows",
    "cut_window",
    "resized_image_size",
]
