"""The processor's geometry (the geometry in `modeling_harmoclip/image_processing_harmoclip.py`) on hand-computed cases: boxes back to the
original pixels, the centre crop's padding shift per backend, crop windows at the image's edges, image sizes of every
layout, and each branch of CLIP's resize sizes."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.image_utils import SizeDict

from modeling_harmoclip.image_processing_harmoclip import (
    BoxGeometry,
    crop_shift,
    crop_windows,
    cut_window,
    original_image_size,
    resized_image_size,
)

# A 100 x 50 image at half scale in a 40 x 30 frame, moved 4 pixels left and 2 down.
GEOMETRY = BoxGeometry(
    original_height=50, original_width=100, scale_x=0.5, scale_y=0.5, shift_x=-4.0, shift_y=2.0, width=40, height=30
)


def test_boxes_go_back_to_the_original_pixels_by_hand() -> None:
    normalised = torch.tensor([[0.25, 0.2, 0.75, 0.8]])
    # Frame pixels (10, 6, 30, 24), less the shift (14, 4, 34, 22), over the scale: (28, 8, 68, 44).
    torch.testing.assert_close(GEOMETRY.to_original(normalised), torch.tensor([[28.0, 8.0, 68.0, 44.0]]))
    torch.testing.assert_close(GEOMETRY.to_normalized(torch.tensor([[28.0, 8.0, 68.0, 44.0]])), normalised)
    # Beyond the image on both sides: clipped to [0, width] x [0, height]; a point just inside stays where it is.
    outside = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.055, 0.07, 0.1, 0.1]])
    torch.testing.assert_close(
        GEOMETRY.to_original(outside), torch.tensor([[8.0, 0.0, 88.0, 50.0], [12.4, 0.2, 16.0, 2.0]])
    )


@pytest.mark.parametrize(
    ("size", "crop", "backend", "shift"),
    [
        (10, 10, "torchvision", 0.0),
        (10, 6, "pil", -2.0),
        (5, 8, "torchvision", 1.0),  # 3 pixels of padding: torchvision puts floor(3 / 2) before the image
        (5, 8, "pil", 2.0),  # the PIL/NumPy backend ceil(3 / 2)
        (5, 9, "torchvision", 2.0),
        (5, 9, "pil", 2.0),
        (5, 10, "torchvision", 2.0),
        (5, 10, "pil", 3.0),
    ],
)
def test_the_centre_crops_shift_by_hand(size: int, crop: int, backend: str, shift: float) -> None:
    assert crop_shift(size, crop, backend) == shift


def test_crop_windows_at_the_edges_keep_one_pixel_inside_the_image() -> None:
    boxes = torch.tensor(
        [
            [100.0, 10.0, 100.0, 20.0],  # on the right edge, no width
            [10.0, 50.0, 20.0, 50.0],  # on the bottom edge, no height
            [30.2, 10.0, 30.2, 20.0],  # inside, no width
            [10.0, 30.4, 20.0, 30.4],  # inside, no height
        ]
    )
    assert crop_windows(boxes, 1.0, height=50, width=100) == [
        (99, 10, 100, 20),
        (10, 49, 20, 50),
        (30, 10, 31, 20),
        (10, 30, 20, 31),
    ]


@pytest.mark.parametrize("channels", [1, 4])
def test_windows_and_sizes_of_channels_first_arrays_of_one_or_four_channels(channels: int) -> None:
    pixels = np.arange(channels * 6 * 8, dtype=np.float32).reshape(channels, 6, 8)
    assert original_image_size(pixels) == (6, 8)
    window = cut_window(pixels, (2, 1, 5, 4))
    assert tuple(window.shape) == (3, 3, channels)
    torch.testing.assert_close(window, torch.from_numpy(pixels[:, 1:4, 2:5]).permute(1, 2, 0))


def test_image_sizes_of_every_layout() -> None:
    assert original_image_size(Image.new("RGB", (8, 6))) == (6, 8)
    assert original_image_size(np.zeros((6, 8))) == (6, 8)  # grey, two dimensions
    assert original_image_size(np.zeros((6, 8, 3))) == (6, 8)
    assert original_image_size(torch.zeros(3, 6, 8)) == (6, 8)
    # An explicit layout wins over the inferred one: (3, 4, 3) read channels-first is 4 x 3.
    assert original_image_size(np.zeros((3, 4, 3)), input_data_format="channels_first") == (4, 3)
    assert original_image_size(np.zeros((3, 4, 3)), input_data_format="channels_last") == (3, 4)


def test_each_resize_branch_by_hand() -> None:
    assert resized_image_size(100, 50, SizeDict(shortest_edge=32)) == (64, 32)
    assert resized_image_size(50, 100, SizeDict(shortest_edge=32)) == (32, 64)
    # The shortest edge at 32 would make the other 64, above the longest edge of 48: 48 x 24 instead.
    assert resized_image_size(100, 50, SizeDict(shortest_edge=32, longest_edge=48)) == (48, 24)
    assert resized_image_size(100, 50, SizeDict(max_height=40, max_width=30)) == (40, 20)
    assert resized_image_size(100, 50, SizeDict(height=24, width=36)) == (24, 36)
    for size in (SizeDict(height=24), SizeDict(max_width=30), SizeDict(longest_edge=48)):
        message = f"HarmoCLIPImageProcessor cannot resize to a `size` of {dict(size)}"
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            resized_image_size(100, 50, size)
