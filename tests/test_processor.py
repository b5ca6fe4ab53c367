"""HarmoCLIPProcessor: box geometry, phrase spans, truncation, validation, outputs the model accepts."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from PIL import Image, ImageDraw
from transformers import CLIPTokenizer

from conftest import tiny_harmoclip_model
from modeling_harmoclip.image_processing_harmoclip import clip_image_processor
from modeling_harmoclip.processing_harmoclip import CLIP_CONTEXT_LENGTH, HarmoCLIPProcessor, phrase_id


@pytest.fixture(scope="module")
def processor(tiny_tokenizer) -> HarmoCLIPProcessor:
    return HarmoCLIPProcessor(clip_image_processor(32), tiny_tokenizer)


@pytest.fixture(scope="module")
def real_tokenizer(real_tokenizer_dir) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(real_tokenizer_dir, model_max_length=77)


def _image_with_rectangle(width: int, height: int, box: list[int]) -> Image.Image:
    """Black image with a white filled rectangle covering pixels x1..x2-1, y1..y2-1 (xyxy pixel edges)."""
    image = Image.new("RGB", (width, height))
    x1, y1, x2, y2 = box
    ImageDraw.Draw(image).rectangle([x1, y1, x2 - 1, y2 - 1], fill=(255, 255, 255))
    return image


def _locate_rectangle(pixel_values: torch.Tensor, processor: HarmoCLIPProcessor) -> list[float] | None:
    """xyxy pixel edges of the bright region of (3, H, W) normalised pixel values (None if none is bright)."""
    mean, std = processor.image_processor.image_mean[0], processor.image_processor.image_std[0]
    middle = ((0.0 - mean) / std + (1.0 - mean) / std) / 2
    bright = pixel_values[0] > middle
    if not bright.any():
        return None
    rows = bright.any(dim=1).nonzero().flatten()
    cols = bright.any(dim=0).nonzero().flatten()
    return [cols[0].item(), rows[0].item(), cols[-1].item() + 1, rows[-1].item() + 1]


IMAGE_SIZES = [(200, 100), (90, 300), (64, 64), (333, 50), (41, 30), (640, 481)]
RECTANGLES = [(0.35, 0.3, 0.65, 0.75), (0.1, 0.2, 0.3, 0.5), (0.55, 0.05, 0.97, 0.4)]


@pytest.mark.parametrize("region_mode", [False, True], ids=["crop", "region"])
@pytest.mark.parametrize("width,height", IMAGE_SIZES)
def test_box_matches_drawn_rectangle(tiny_tokenizer, width, height, region_mode):
    """The returned box lies within one pixel of where the rectangle ends up in `pixel_values`."""
    processor = HarmoCLIPProcessor(clip_image_processor(64), tiny_tokenizer, region_mode=region_mode)
    for fractions in RECTANGLES:
        box = [round(fraction * side) for fraction, side in zip(fractions, (width, height, width, height))]
        image = _image_with_rectangle(width, height, box)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            inputs = processor(images=image, boxes=[box])
        pixel_values = inputs["pixel_values"][0]
        assert pixel_values.shape == (3, 64, 64)
        found = _locate_rectangle(pixel_values, processor)
        if found is None:  # the rectangle is cut off entirely by the crop: masked, with a warning
            assert not region_mode
            assert not inputs["box_mask"][0, 0]
            assert any("masked out" in str(warning.message) for warning in caught)
            continue
        assert inputs["box_mask"][0, 0]
        returned = (inputs["boxes"][0, 0] * 64).tolist()
        assert returned == pytest.approx(found, abs=1.0), (box, returned, found)


def test_region_mode_keeps_whole_image_and_crop_mode_cuts(tiny_tokenizer):
    """A wide image: the crop geometry cuts the side boxes off (clipped / masked), the region geometry keeps all."""
    width, height = 300, 100
    boxes = [[0, 10, 40, 90], [100, 20, 200, 80], [20, 0, 140, 50]]
    crop = HarmoCLIPProcessor(clip_image_processor(64), tiny_tokenizer)
    region = HarmoCLIPProcessor(clip_image_processor(64), tiny_tokenizer, region_mode=True)
    image = Image.new("RGB", (width, height))
    with pytest.warns(UserWarning, match=r"`boxes`\[0\]\[0\].*masked out"):
        cropped = crop(images=image, boxes=boxes)
    assert cropped["box_mask"].tolist() == [[False, True, True]]
    assert cropped["boxes"][0, 0].tolist() == [0.0, 0.0, 0.0, 0.0]
    # Resize 300x100 -> 192x64, crop x from 64 to 128: the middle box is whole, the third cut at the left edge.
    assert cropped["boxes"][0, 1].tolist() == pytest.approx([0.0, 0.2, 1.0, 0.8], abs=1e-6)
    assert cropped["boxes"][0, 2].tolist() == pytest.approx([0.0, 0.0, (140 * 0.64 - 64) / 64, 0.5], abs=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        whole = region(images=image, boxes=boxes)
    assert whole["box_mask"].all()
    expected = torch.tensor(boxes, dtype=torch.float32) / torch.tensor([width, height, width, height])
    torch.testing.assert_close(whole["boxes"][0], expected)
    # The region preset is a property of the image processor it holds: square resize, no crop.
    assert region.image_processor.do_center_crop is False
    assert (region.image_processor.size["height"], region.image_processor.size["width"]) == (64, 64)
    assert crop.image_processor.do_center_crop is True
    # The crop processor's square variant gives the region geometry, and leaves the crop processor as it was.
    variant = crop.as_region_mode()
    assert variant.region_mode and variant.tokenizer is crop.tokenizer and region.as_region_mode() is region
    torch.testing.assert_close(variant(images=image, boxes=boxes)["boxes"], whole["boxes"])
    assert crop.image_processor.do_center_crop is True and not crop.region_mode


def test_crop_larger_than_resize_pads_like_the_image_processor(tiny_tokenizer):
    """shortest_edge 40 with a 47 crop: the image processor zero-pads (an odd amount); boxes follow its offsets."""
    processor = HarmoCLIPProcessor(clip_image_processor(40, crop_size={"height": 47, "width": 47}), tiny_tokenizer)
    for width, height in [(61, 41), (45, 90), (40, 40), (40, 55)]:
        box = [width // 4, height // 4, 3 * width // 4, 3 * height // 4]
        inputs = processor(images=_image_with_rectangle(width, height, box), boxes=[box])
        found = _locate_rectangle(inputs["pixel_values"][0], processor)
        returned = (inputs["boxes"][0, 0] * 47).tolist()
        # Images whose short side is already 40 are not resampled: the rectangle's edges are exact.
        tolerance = 1e-4 if min(width, height) == 40 else 1.0
        assert returned == pytest.approx(found, abs=tolerance), ((width, height), returned, found)


def test_xywh_equals_xyxy_and_arrays_are_accepted(processor):
    image = Image.new("RGB", (120, 80))
    xyxy = processor(images=[image], boxes=[[[10, 20, 50, 60], [70, 5, 110, 75]]])
    xywh = processor(images=[image], boxes=[[[10, 20, 40, 40], [70, 5, 40, 70]]], box_format="xywh")
    as_tensor = processor(images=[image], boxes=[torch.tensor([[10, 20, 50, 60], [70, 5, 110, 75]])])
    torch.testing.assert_close(xyxy["boxes"], xywh["boxes"])
    torch.testing.assert_close(xyxy["boxes"], as_tensor["boxes"])


def test_numpy_and_tensor_images_give_the_same_geometry(processor):
    """Channels-last arrays and channels-first tensors are measured like PIL images."""
    import numpy as np

    pil = Image.new("RGB", (120, 80))
    channels_last = np.zeros((80, 120, 3), dtype=np.uint8)
    channels_first = torch.zeros(3, 80, 120, dtype=torch.uint8)
    boxes = [[[30, 10, 90, 70]]]
    reference = processor(images=[pil], boxes=boxes)["boxes"]
    for image in (channels_last, channels_first):
        torch.testing.assert_close(processor(images=[image], boxes=boxes)["boxes"], reference)


def test_batch_pads_boxes_to_the_most_boxes(processor):
    images = [Image.new("RGB", (64, 64)), Image.new("RGB", (50, 70)), Image.new("RGB", (90, 40))]
    boxes = [[[0, 0, 32, 32]], [], [[20, 5, 70, 35], [30, 10, 60, 30], [40, 0, 50, 40]]]
    inputs = processor(images=images, boxes=boxes)
    assert inputs["pixel_values"].shape == (3, 3, 32, 32)
    assert inputs["boxes"].shape == (3, 3, 4) and inputs["boxes"].dtype == torch.float32
    assert inputs["box_mask"].tolist() == [[True, False, False], [False, False, False], [True, True, True]]
    assert inputs["boxes"][~inputs["box_mask"]].abs().sum() == 0
    assert processor(images=[images[1]], boxes=[[]])["boxes"].shape == (1, 0, 4)


def test_zero_size_box_is_masked_with_warning(processor):
    with pytest.warns(UserWarning, match=r"`boxes`\[0\]\[1\].*masked out"):
        inputs = processor(images=[Image.new("RGB", (64, 64))], boxes=[[[10, 10, 30, 30], [20, 20, 20, 40]]])
    assert inputs["box_mask"].tolist() == [[True, False]]


# ---------------------------------------------------------------------------------------------------- phrase spans

CAPTIONS_AND_PHRASES = [
    ("A Large BROWN Dog sits on the grass.", ["Large BROWN Dog", "grass", "A"]),
    ("two   cats,  one  mouse;   and a red-haired woman!", ["two   cats", "one  mouse", "red-haired woman!"]),
    ("Un café crème près du Pont-Neuf à Paris", ["café crème", "Pont-Neuf", "Paris"]),
    ("a man riding a horse", ["horse", "a man"]),
]


def _spans(caption: str, phrases: list[str]) -> list[tuple[int, int]]:
    spans = []
    for phrase in phrases:
        start = caption.index(phrase) if phrase != "A" else 0
        spans.append((start, start + len(phrase)))
    return spans


@pytest.mark.parametrize("vocabulary", ["tiny", "openai"])
def test_decoded_phrase_tokens_equal_the_phrase(vocabulary, tiny_tokenizer, real_tokenizer):
    tokenizer = tiny_tokenizer if vocabulary == "tiny" else real_tokenizer
    processor = HarmoCLIPProcessor(clip_image_processor(32), tokenizer)
    captions = [caption for caption, _ in CAPTIONS_AND_PHRASES]
    spans = [_spans(caption, phrases) for caption, phrases in CAPTIONS_AND_PHRASES]
    images = [Image.new("RGB", (40, 40)) for _ in captions]
    boxes = [[[0, 0, 40, 40]] * len(image_spans) for image_spans in spans]
    inputs = processor(images=images, text=captions, boxes=boxes, phrase_spans=spans)
    mask = inputs["phrase_token_mask"]
    assert mask.shape == (4, 3, inputs["input_ids"].shape[1]) and mask.dtype == torch.bool
    assert inputs["phrase_ids"].dtype == torch.int64
    for image_index, (_caption, phrases) in enumerate(CAPTIONS_AND_PHRASES):
        for box_index, phrase in enumerate(phrases):
            tokens = inputs["input_ids"][image_index][mask[image_index, box_index]]
            decoded = tokenizer.decode(tokens)
            assert "".join(decoded.split()) == "".join(phrase.lower().split()), (phrase, decoded)
            assert inputs["phrase_ids"][image_index, box_index] == phrase_id(phrase)
        for padded in range(len(phrases), 3):
            assert not mask[image_index, padded].any() and inputs["phrase_ids"][image_index, padded] == -1


def test_real_vocabulary_tokenizes_words_whole(real_tokenizer):
    """With OpenAI's vocabulary a common word is one token, and the processor keeps CLIP's 77-token context."""
    processor = HarmoCLIPProcessor(clip_image_processor(32), real_tokenizer)
    caption = "a photo of a dog on a skateboard"
    start = caption.index("skateboard")
    spans = [(start, start + len("skateboard"))]
    inputs = processor(images=Image.new("RGB", (40, 40)), text=caption, boxes=[[0, 0, 20, 20]], phrase_spans=spans)
    assert inputs["phrase_token_mask"][0, 0].sum() == 1
    assert real_tokenizer.decode(inputs["input_ids"][0][inputs["phrase_token_mask"][0, 0]]).strip() == "skateboard"
    assert processor.tokenizer.model_max_length == CLIP_CONTEXT_LENGTH


def test_boxes_without_phrase_and_phrase_ids(processor):
    caption = "A dog and a DOG  and a cat"
    inputs = processor(
        images=[Image.new("RGB", (40, 40))],
        text=[caption],
        boxes=[[[0, 0, 20, 20], [10, 10, 30, 30], [5, 5, 25, 25], [0, 0, 40, 40]]],
        phrase_spans=[[(0, 5), (10, 15), None, (22, 26)]],
    )
    ids = inputs["phrase_ids"][0].tolist()
    assert ids[0] == ids[1] != ids[3] and ids[2] == -1
    assert not inputs["phrase_token_mask"][0, 2].any()
    assert all(value >= 0 for index, value in enumerate(ids) if index != 2)


def test_phrase_id_is_stable_and_normalised():
    # A fixed value: ids must agree across processes and Python runs (no use of `hash`).
    assert phrase_id("a dog") == 9080073126005594823
    assert phrase_id("  A   Dog\n") == phrase_id("a dog")
    assert phrase_id("a dog") != phrase_id("a cat")
    assert 0 <= phrase_id("café crème") < 2**63


def test_truncated_span_is_masked_with_warning(processor):
    caption = "a dog " + "and a cat " * 40 + "near a red car"
    start = caption.index("red car")
    spans = [[(0, 5), (start, start + 7), (caption.index("cat"), caption.index("cat") + 3)]]
    with pytest.warns(UserWarning, match=r"`phrase_spans`\[0\]\[1\].*cut off by truncation"):
        inputs = processor(
            images=[Image.new("RGB", (40, 40))], text=[caption], boxes=[[[0, 0, 10, 10]] * 3], phrase_spans=spans
        )
    assert inputs["input_ids"].shape[1] == CLIP_CONTEXT_LENGTH
    assert inputs["phrase_token_mask"][0, 1].sum() == 0 and inputs["phrase_ids"][0, 1] == -1
    assert inputs["phrase_token_mask"][0, 0].any() and inputs["phrase_ids"][0, 0] == phrase_id("a dog")
    assert inputs["phrase_token_mask"][0, 2].any()
    # The box keeps its place: still valid for region losses, just without a phrase.
    assert inputs["box_mask"][0].all()


def test_truncation_and_padding_can_be_set_per_call(processor):
    inputs = processor(text=["a dog", "a cat on a mat"], padding="max_length", max_length=12)
    assert inputs["input_ids"].shape == (2, 12)
    assert "pixel_values" not in inputs and "boxes" not in inputs


# ---------------------------------------------------------------------------------------------------- validation


# Two captions, the second image with one box: the calls below vary the spans.
LINKED = dict(text=["a dog", "a cat"], boxes=[[], [[0, 0, 5, 5]]])


@pytest.mark.parametrize(
    "call, error, pattern",
    [
        (dict(boxes=[[[0, 0, 10, 10]]]), ValueError, r"`boxes` has 1 entries but there are 2 images"),
        (dict(boxes=[[[0, 0, 10]], []]), ValueError, r"`boxes`\[0\]\[0\] must have 4 values .*\[0, 0, 10\]"),
        (
            dict(boxes=[[], [[0, 0, 9, 9], [0, math.nan, 5, 5]]]),
            ValueError,
            r"`boxes`\[1\]\[1\] is not finite: \[0, nan, 5, 5\]",
        ),
        (
            dict(boxes=[[], [[20, 0, 10, 10]]]),
            ValueError,
            r"`boxes`\[1\]\[0\] has negative .*\(xyxy\): \[20, 0, 10, 10\]",
        ),
        (
            dict(boxes=[[], [[0, 0, 10, -1]]], box_format="xywh"),
            ValueError,
            r"`boxes`\[1\]\[0\] has negative .*\(xywh\)",
        ),
        (dict(boxes=[[], [["a", 0, 1, 1]]]), TypeError, r"`boxes`\[1\]\[0\] must be a list of 4 numbers"),
        (dict(boxes=[[0, 0, 1, 1], []]), TypeError, r"`boxes`\[0\]\[0\] must be a list of 4 numbers, got 0"),
        (dict(boxes=[[], []], box_format="cxcywh"), ValueError, r"`box_format` must be one of"),
        (dict(**LINKED, phrase_spans=[[]]), ValueError, r"`phrase_spans` has 1 entries but there are 2 images"),
        (
            dict(text=["a dog"], boxes=[[], []], phrase_spans=[[], []]),
            ValueError,
            r"`text` has 1 captions but there are 2 images",
        ),
        (dict(**LINKED, phrase_spans=[[], []]), ValueError, r"`phrase_spans`\[1\] has 0 spans but image 1 has 1 boxes"),
        (dict(**LINKED, phrase_spans=[[], [(2, 9)]]), ValueError, r"`phrase_spans`\[1\]\[0\] = \(2, 9\) must .* <= 5"),
        (dict(**LINKED, phrase_spans=[[], [(3, 3)]]), ValueError, r"`phrase_spans`\[1\]\[0\] = \(3, 3\)"),
        (dict(**LINKED, phrase_spans=[[], [(-1, 3)]]), ValueError, r"`phrase_spans`\[1\]\[0\] = \(-1, 3\)"),
        (dict(**LINKED, phrase_spans=[[], [(1, 2)]]), ValueError, r"`phrase_spans`\[1\]\[0\] = \(1, 2\) covers only"),
        (
            dict(**LINKED, phrase_spans=[[], [(0, 2.5)]]),
            TypeError,
            r"`phrase_spans`\[1\]\[0\] must be .* ints, got \(0, 2.5\)",
        ),
        (
            dict(boxes=[[], [[0, 0, 5, 5]]], phrase_spans=[[], [(0, 1)]]),
            ValueError,
            r"`phrase_spans` were given without `text`",
        ),
        (
            dict(text=["a dog", "a cat"], phrase_spans=[[], []]),
            ValueError,
            r"`phrase_spans` were given without `boxes`",
        ),
        (dict(text=["a dog", 3]), TypeError, r"`text`\[1\] must be a string, got int: 3"),
    ],
)
def test_bad_input_names_argument_index_and_value(processor, call, error, pattern):
    images = [Image.new("RGB", (40, 40)), Image.new("RGB", (30, 50))]
    with pytest.raises(error, match=pattern):
        processor(images=images, **call)


def test_boxes_need_images_and_images_must_be_images(processor):
    with pytest.raises(ValueError, match=r"`boxes` were given without `images`"):
        processor(text=["a dog"], boxes=[[[0, 0, 1, 1]]])
    with pytest.raises(TypeError, match=r"`images`\[1\] must be a PIL image.*got str"):
        processor(images=[Image.new("RGB", (4, 4)), "cat.jpg"])
    with pytest.raises(ValueError, match="needs `images`, `text` or both"):
        processor()


# ---------------------------------------------------------------------------------------------------- with the model


def test_outputs_feed_the_model_with_all_losses(processor):
    """The processor's batch is exactly what `HarmoCLIPModel.forward` takes, incl. phrase ids for LRC."""
    model = tiny_harmoclip_model(seed=1, loss_lrc_weight=1.0, loss_rla_weight=0.5).train()  # LRC and RLA on
    captions = ["A dog chases a RED ball.", "Two  cats sleep on a sofa"]
    inputs = processor(
        images=[Image.new("RGB", (60, 40), (120, 30, 30)), Image.new("RGB", (30, 45), (20, 90, 160))],
        text=captions,
        boxes=[[[5, 5, 30, 35], [32, 10, 50, 30]], [[0, 10, 30, 40]]],
        phrase_spans=[[(0, 5), (14, 24)], [(0, 10)]],
    )
    outputs = model(**inputs, return_loss=True)
    assert outputs.region_embeds.shape == (2, 2, 16) and outputs.lexeme_embeds.shape == (2, 2, 16)
    assert outputs.linked_mask.tolist() == [[True, True], [True, False]]
    assert torch.isfinite(outputs.loss) and outputs.loss_lrc is not None and outputs.loss_rla is not None
    outputs.loss.backward()
