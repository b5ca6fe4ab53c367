"""Where the processor puts a box is where the image processor puts its pixels: a white rectangle on black, processed
with the options a user may give at call time (another size, an int size, another crop, no crop, a crop larger than
the resized image), is found in `pixel_values` and compared with the processor's normalised box. The crops follow
call-time options too, and an image without boxes gets empty crops."""

from __future__ import annotations

import re

import pytest
import torch
from PIL import Image, ImageDraw

from conftest import tiny_processor

BOX = (40, 20, 70, 50)  # x1, y1, x2, y2 in the 100 x 60 image


def rectangle_image() -> Image.Image:
    image = Image.new("RGB", (100, 60), "black")
    ImageDraw.Draw(image).rectangle((BOX[0], BOX[1], BOX[2] - 1, BOX[3] - 1), fill="white")  # pixels 40..69, 20..49
    return image


def bright_extent(pixels: torch.Tensor) -> torch.Tensor:
    """(3, H, W) normalised pixels -> (4,) xyxy extent, in pixels, of the bright ones (half-way between the extremes)."""
    channel = pixels[0]
    bright = channel > (channel.max() + channel.min()) / 2
    rows, cols = bright.any(dim=1).nonzero()[:, 0], bright.any(dim=0).nonzero()[:, 0]
    return torch.tensor([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=torch.float32)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"size": {"shortest_edge": 48}, "crop_size": {"height": 40, "width": 40}},
        {"size": 48},  # an int: the shortest edge, as CLIP reads it (default_to_square False)
        {"do_center_crop": False},
        {"size": {"shortest_edge": 24}, "crop_size": {"height": 32, "width": 32}},  # the crop pads
    ],
)
def test_boxes_land_where_their_pixels_land(tiny_tokenizer, options: dict) -> None:
    processor = tiny_processor(tiny_tokenizer)
    out = processor(images=rectangle_image(), boxes=[list(BOX)], **options)
    pixels = out["pixel_values"][0]
    height, width = pixels.shape[-2:]
    placed = out["boxes"][0, 0] * torch.tensor([width, height, width, height])
    # Resampling blurs the rectangle's edges by about a pixel.
    torch.testing.assert_close(placed, bright_extent(pixels), atol=1.5, rtol=0)


def test_padded_images_are_refused_by_name(tiny_tokenizer) -> None:
    image_processor = tiny_processor(tiny_tokenizer).image_processor
    message = "HarmoCLIPProcessor cannot place boxes in padded images: set `do_pad=False`"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        image_processor.box_geometry(rectangle_image(), {"do_pad": True})


def test_crops_follow_call_time_options_but_keep_their_own_size(tiny_tokenizer) -> None:
    processor = tiny_processor(tiny_tokenizer)
    red = Image.new("RGB", (100, 60), (255, 0, 0))
    out = processor(
        images=red,
        boxes=[[10, 10, 50, 40]],
        return_crops=True,
        image_mean=[0.0, 0.0, 0.0],
        image_std=[1.0, 1.0, 1.0],
        size={"shortest_edge": 48},  # the image's size, not the crops'
    )
    crops = out["crop_pixel_values"]
    assert crops.shape == (1, 1, 3, 32, 32) and crops.dtype == torch.float32
    torch.testing.assert_close(crops[0, 0, :, 16, 16], torch.tensor([1.0, 0.0, 0.0]))
    assert out["crop_mask"].dtype == torch.bool and out["crop_mask"].tolist() == [[True]]


def test_an_image_without_boxes_gets_empty_crops(tiny_tokenizer) -> None:
    processor = tiny_processor(tiny_tokenizer)
    out = processor(images=[rectangle_image()], boxes=[[]], return_crops=True)
    assert out["crop_pixel_values"].shape == (1, 0, 3, 32, 32)
    assert out["crop_mask"].shape == (1, 0) and out["crop_mask"].dtype == torch.bool
    assert out["boxes"].shape == (1, 0, 4) and out["boxes"].dtype == torch.float32


def test_crops_take_a_call_time_crop_size_and_the_geometry_switches(tiny_tokenizer) -> None:
    processor = tiny_processor(tiny_tokenizer)
    out = processor(
        images=rectangle_image(),
        boxes=[list(BOX)],
        return_crops=True,
        crop_size={"height": 24, "width": 24},
        do_resize=True,
        do_center_crop=False,  # the image's own geometry; the crops are resized to the crop size either way
    )
    assert out["crop_pixel_values"].shape == (1, 1, 3, 24, 24)
    assert out["pixel_values"].shape == (1, 3, 32, 53)  # shortest edge 32, no centre crop
