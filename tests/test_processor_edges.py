"""`HarmoCLIPProcessor`'s edges: each refusal's one-line message in full, the tokenizer's context length, boxes as
arrays, a zero-height box (kept, then masked with a warning that points at the caller), an empty span, and the
region-mode copy keeping the image settings. Expected values are written out by hand."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_processor
from modeling_harmoclip.image_processing_harmoclip import clip_image_processor
from modeling_harmoclip.processing_harmoclip import HarmoCLIPProcessor

IMAGE = Image.new("RGB", (64, 48), "white")


def refuses(error: type[Exception], message: str):
    return pytest.raises(error, match=f"^{re.escape(message)}$")


def test_each_refusal_is_one_full_line(tiny_tokenizer) -> None:
    processor = tiny_processor(tiny_tokenizer, region_mode=True)
    with refuses(ValueError, "HarmoCLIPProcessor needs `images`, `text` or both"):
        processor()
    with refuses(ValueError, "`return_crops=True` needs `boxes`: a crop is cut for every box"):
        processor(images=IMAGE, return_crops=True)
    with refuses(ValueError, "`boxes` were given without `images`: boxes are placed in their image's frame"):
        processor(text="a cat", boxes=[[[0, 0, 1, 1]]])
    with refuses(ValueError, "`phrase_spans` were given without `text`: spans point into each image's caption"):
        processor(images=IMAGE, boxes=[[0, 0, 1, 1]], phrase_spans=[(0, 1)])
    with refuses(ValueError, "`phrase_spans` were given without `boxes`: each span belongs to a box"):
        processor(images=IMAGE, text="a cat", phrase_spans=[(0, 1)])
    with refuses(TypeError, "`images` must be an image or a list of images, got str"):
        processor(images="cat.jpg")
    with refuses(TypeError, "`text` must be a string or a list of strings, got int"):
        processor(text=3)
    with refuses(TypeError, "`boxes` must be a list with one list of boxes per image, got str"):
        processor(images=[IMAGE], boxes="0 0 1 1")
    with refuses(TypeError, "`boxes`[0] must be a list of boxes, got str: '0 0 1 1'"):
        processor(images=[IMAGE], boxes=["0 0 1 1"])
    with refuses(TypeError, "`phrase_spans` must be a list with one list of spans per image, got str"):
        processor(images=[IMAGE], text=["a cat"], boxes=[[[0, 0, 1, 1]]], phrase_spans="0 1")
    with refuses(TypeError, "`phrase_spans`[0] must be a list of spans, got str"):
        processor(images=[IMAGE], text=["a cat"], boxes=[[[0, 0, 1, 1]]], phrase_spans=["0 1"])
    with refuses(ValueError, "HarmoCLIPProcessor needs a `tokenizer` (CLIP's fast tokenizer)"):
        HarmoCLIPProcessor(clip_image_processor(32), None)
    with refuses(TypeError, "`region_mode` must be a bool, got str: 'yes'"):
        HarmoCLIPProcessor(clip_image_processor(32), tiny_tokenizer, region_mode="yes")


def test_an_empty_or_malformed_span_is_refused(tiny_tokenizer) -> None:
    processor = tiny_processor(tiny_tokenizer, region_mode=True)
    for span, error in [((2, 2), ValueError), ((1,), TypeError), (5, TypeError)]:
        with pytest.raises(error, match=re.escape("`phrase_spans`[0][0]")):
            processor(images=[IMAGE], text=["a cat"], boxes=[[[0, 0, 1, 1]]], phrase_spans=[[span]])


def test_the_tokenizer_gets_clips_context_length_only_when_it_has_none(tiny_tokenizer_dir) -> None:
    from transformers import CLIPTokenizer

    unset = CLIPTokenizer.from_pretrained(tiny_tokenizer_dir, model_max_length=int(1e30))
    assert HarmoCLIPProcessor(clip_image_processor(32), unset).tokenizer.model_max_length == 77
    own = CLIPTokenizer.from_pretrained(tiny_tokenizer_dir, model_max_length=32)
    assert HarmoCLIPProcessor(clip_image_processor(32), own).tokenizer.model_max_length == 32


def test_boxes_as_an_array_are_boxes(tiny_tokenizer) -> None:
    processor = tiny_processor(tiny_tokenizer, region_mode=True)
    rows = [[0.0, 0.0, 32.0, 24.0], [16.0, 12.0, 64.0, 48.0]]
    as_list = processor(images=[IMAGE], boxes=[rows])["boxes"]
    for array in (np.array(rows), torch.tensor(rows)):
        torch.testing.assert_close(processor(images=[IMAGE], boxes=[array])["boxes"], as_list)
    torch.testing.assert_close(as_list[0], torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 1.0, 1.0]]))


def test_a_zero_height_box_is_masked_with_a_warning_at_the_callers_line(tiny_tokenizer) -> None:
    processor = tiny_processor(tiny_tokenizer, region_mode=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = processor(images=[IMAGE], boxes=[[[0, 10, 32, 10], [0, 0, 32, 24]]])
    assert out["box_mask"].tolist() == [[False, True]]
    messages = [w for w in caught if "it is masked out" in str(w.message)]
    assert len(messages) == 1 and messages[0].filename == __file__
    assert "image (zero size or cut off by the crop); it is masked out" in str(messages[0].message)


def test_the_region_mode_copy_keeps_the_image_settings(tiny_tokenizer) -> None:
    image_processor = clip_image_processor(32)
    image_processor.image_mean = [0.0, 0.0, 0.0]
    image_processor.image_std = [1.0, 1.0, 1.0]
    processor = HarmoCLIPProcessor(image_processor, tiny_tokenizer)
    square = processor.as_region_mode()
    assert square.region_mode and not processor.region_mode
    pixels = square(images=Image.new("RGB", (64, 48), (255, 0, 0)))["pixel_values"]
    # Square resize, no crop, and the given mean and std: red is exactly (1, 0, 0) everywhere.
    assert pixels.shape == (1, 3, 32, 32)
    torch.testing.assert_close(pixels[0, :, 5, 5], torch.tensor([1.0, 0.0, 0.0]))
    assert processor.image_processor.do_center_crop  # the original keeps its crop
