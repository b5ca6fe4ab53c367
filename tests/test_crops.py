"""Crops of the original image: the processor's `return_crops`."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_processor
from crop_reference import hand_crop, to_pixel_levels
from modeling_harmoclip.processing_harmoclip import HarmoCLIPProcessor, clip_image_processor
from modeling_harmoclip.roi_align import enlarge_boxes, roi_align


def _random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# ---------------------------------------------------------------------------------------------------- processor


def test_a_one_pixel_pattern_survives_in_the_crop_of_the_original_image(tiny_tokenizer) -> None:
    """A 1-px checkerboard in a box of a 1600x1200 image: the crop of the original keeps every pixel of it; the same
    window cut from the 224-px `pixel_values` (what the teacher used to see) has lost it."""
    processor = HarmoCLIPProcessor(clip_image_processor(224), tiny_tokenizer, region_mode=True)
    levels = np.full((1200, 1600, 3), 128, dtype=np.uint8)
    # The box enlarged 1.5x about its centre is exactly the window [688, 912) x [488, 712): 224 x 224 pixels.
    half = 224 / 1.5 / 2
    box = [800 - half, 600 - half, 800 + half, 600 + half]
    rows, columns = np.mgrid[488:712, 688:912]
    pattern = np.where((rows + columns) % 2 == 0, 255, 0).astype(np.uint8)
    levels[488:712, 688:912] = pattern[..., None]
    inputs = processor(images=[Image.fromarray(levels)], boxes=[[box]], return_crops=True, crop_scale=1.5)

    assert inputs["crop_pixel_values"].shape == (1, 1, 3, 224, 224) and inputs["crop_mask"].tolist() == [[True]]
    crop = to_pixel_levels(inputs["crop_pixel_values"][0, 0])
    expected = torch.from_numpy(pattern).double()[None].expand(3, -1, -1)
    assert (crop - expected).abs().max() < 0.01  # every pixel of the pattern, at full resolution

    # The same window cut from the resized image and upsampled back: the pattern is averaged away to grey.
    window = enlarge_boxes(inputs["boxes"][0].double(), 1.5).float() * 224
    rois = torch.cat([torch.zeros(1, 1), window], dim=1)
    from_resized = roi_align(inputs["pixel_values"], rois, output_size=(224, 224), sampling_ratio=-1, aligned=True)[0]
    blurred = to_pixel_levels(from_resized)
    assert expected.std() > 127 and blurred.std() < 10
    assert (blurred - expected).abs().mean() > 100


@pytest.mark.filterwarnings("ignore:.*masked out")
@pytest.mark.parametrize("region_mode", [True, False])
def test_crops_equal_hand_cut_pil_crops(tiny_tokenizer, region_mode: bool) -> None:
    """Enlarged about the centre, clipped to the image, cut with PIL, resized to the input size, normalised: whatever
    the geometry of `pixel_values` (square resize or CLIP's resize and centre crop)."""
    processor = tiny_processor(tiny_tokenizer, region_mode=region_mode)
    images = [_random_image(97, 61, seed=1), _random_image(50, 80, seed=2)]
    boxes = [
        [[10.0, 12.0, 40.5, 30.0], [80.0, 40.0, 97.0, 61.0], [0.0, 0.0, 97.0, 61.0]],  # inside, at the corner, whole
        [[5.0, 30.0, 45.0, 50.0]],
    ]
    for scale in (1.0, 1.5, 2.0):
        inputs = processor(images=images, boxes=boxes, return_crops=True, crop_scale=scale)
        assert inputs["crop_pixel_values"].shape == (2, 3, 3, 32, 32)
        assert torch.equal(inputs["crop_mask"], inputs["box_mask"])
        for image_index, (image, image_boxes) in enumerate(zip(images, boxes)):
            for box_index, box in enumerate(image_boxes):
                if not inputs["crop_mask"][image_index, box_index]:
                    continue
                reference = hand_crop(image, box, scale, 32)
                assert torch.allclose(inputs["crop_pixel_values"][image_index, box_index], reference, atol=1e-4)
        assert inputs["crop_pixel_values"][1, 1:].abs().sum() == 0  # padding


def test_crops_of_arrays_and_tensors_equal_those_of_pil_images(tiny_tokenizer) -> None:
    processor = tiny_processor(tiny_tokenizer, region_mode=True)
    image = _random_image(70, 45, seed=3)
    boxes = [[[3.0, 4.0, 30.0, 40.0], [50.5, 10.2, 69.0, 20.7]]]
    expected = processor(images=[image], boxes=boxes, return_crops=True)["crop_pixel_values"]
    levels = np.asarray(image)
    for same in (levels, torch.from_numpy(levels.copy()).permute(2, 0, 1)):
        crops = processor(images=[same], boxes=boxes, return_crops=True)["crop_pixel_values"]
        assert torch.allclose(crops, expected, atol=1e-6)


def test_a_box_cut_away_by_the_centre_crop_has_no_crop_and_a_sub_pixel_box_keeps_one(tiny_tokenizer) -> None:
    processor = tiny_processor(tiny_tokenizer, region_mode=False)  # 64x32 -> 64x32 resized, centre 32x32 kept
    image = _random_image(64, 32, seed=4)
    with pytest.warns(UserWarning, match="masked out"):
        inputs = processor(images=[image], boxes=[[[0.0, 0.0, 10.0, 10.0], [30.2, 10.2, 30.6, 10.5]]], return_crops=True)
    assert inputs["box_mask"].tolist() == [[False, True]] and inputs["crop_mask"].tolist() == [[False, True]]
    assert inputs["crop_pixel_values"][0, 0].abs().sum() == 0
    # The sub-pixel box rounds to one whole pixel of the original: a uniform crop of that pixel's colour.
    pixel = np.asarray(image)[10, 30].astype(np.float64)
    levels = to_pixel_levels(inputs["crop_pixel_values"][0, 1])
    assert torch.allclose(levels, torch.from_numpy(pixel)[:, None, None].expand(3, 32, 32), atol=0.01)


@pytest.mark.parametrize("bad", [0, -1.5, float("nan"), float("inf"), "1.5", True, None])
def test_bad_crop_scale_is_named(tiny_tokenizer, bad) -> None:
    processor = tiny_processor(tiny_tokenizer, region_mode=True)
    with pytest.raises(ValueError, match=r"`crop_scale` must be a finite number > 0, got"):
        processor(images=[_random_image(20, 20)], boxes=[[[1, 1, 5, 5]]], return_crops=True, crop_scale=bad)


def test_crop_options_need_boxes_and_a_bool(tiny_tokenizer) -> None:
    processor = tiny_processor(tiny_tokenizer, region_mode=True)
    with pytest.raises(ValueError, match=r"`return_crops=True` needs `boxes`"):
        processor(images=[_random_image(20, 20)], return_crops=True)
    with pytest.raises(TypeError, match=r"`return_crops` must be a bool, got str: 'yes'"):
        processor(images=[_random_image(20, 20)], boxes=[[[1, 1, 5, 5]]], return_crops="yes")
    plain = processor(images=[_random_image(20, 20)], boxes=[[[1, 1, 5, 5]]])
    assert "crop_pixel_values" not in plain and "crop_mask" not in plain

