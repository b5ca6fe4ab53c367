"""The reference protocols: ViLD prompts as FineCLIP's script writes them, COCO panoptic boxes as the references read
them (json boxes for things, PNG masks for stuff), the protocols' pre-processing and mean per-class accuracy (their
whole runs: test_protocol_runs.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPVisionModel

from conftest import tiny_harmoclip_model, tiny_processor
from data_files import write_panoptic_standin
from evaluation.metrics import classification_metrics
from evaluation.panoptic import mask_box, read_panoptic_boxes
from evaluation.prompts import VILD_TEMPLATES, article, processed_name, vild_prompts
from evaluation.protocols import (
    PROTOCOLS,
    ProtocolProcessor,
    get_protocol,
)

# ---------------------------------------------------------------------------------------------------- prompts

# FineCLIP's tools/generate_text_embeddings.py for the category "airplane", written out by hand.
AIRPLANE = [
    "There is an airplane in the scene.",
    "There is the airplane in the scene.",
    "This is a photo of an airplane in the scene.",
    "This is a photo of the airplane in the scene.",
    "This is a photo of one airplane in the scene.",
    "itap of an airplane.",
    "itap of my airplane.",
    "itap of the airplane.",
    "This is a photo of an airplane.",
    "This is a photo of my airplane.",
    "This is a photo of the airplane.",
    "This is a photo of one airplane.",
    "This is a photo of many airplane.",
    "This is a good photo of an airplane.",
    "This is a good photo of the airplane.",
    "This is a bad photo of an airplane.",
    "This is a bad photo of the airplane.",
    "This is a photo of a nice airplane.",
    "This is a photo of the nice airplane.",
    "This is a photo of a cool airplane.",
    "This is a photo of the cool airplane.",
    "This is a photo of a weird airplane.",
    "This is a photo of the weird airplane.",
    "This is a photo of a small airplane.",
    "This is a photo of the small airplane.",
    "This is a photo of a large airplane.",
    "This is a photo of the large airplane.",
    "This is a photo of a clean airplane.",
    "This is a photo of the clean airplane.",
    "This is a photo of a dirty airplane.",
    "This is a photo of the dirty airplane.",
    "This is a bright photo of an airplane.",
    "This is a bright photo of the airplane.",
    "This is a dark photo of an airplane.",
    "This is a dark photo of the airplane.",
    "This is a photo of a hard to see airplane.",
    "This is a photo of the hard to see airplane.",
    "This is a low resolution photo of an airplane.",
    "This is a low resolution photo of the airplane.",
    "This is a cropped photo of an airplane.",
    "This is a cropped photo of the airplane.",
    "This is a close-up photo of an airplane.",
    "This is a close-up photo of the airplane.",
    "This is a jpeg corrupted photo of an airplane.",
    "This is a jpeg corrupted photo of the airplane.",
    "This is a blurry photo of an airplane.",
    "This is a blurry photo of the airplane.",
    "This is a pixelated photo of an airplane.",
    "This is a pixelated photo of the airplane.",
    "This is a black and white photo of the airplane.",
    "This is a black and white photo of an airplane.",
    "This is a plastic airplane.",
    "This is the plastic airplane.",
    "This is a toy airplane.",
    "This is the toy airplane.",
    "This is a plushie airplane.",
    "This is the plushie airplane.",
    "This is a cartoon airplane.",
    "This is the cartoon airplane.",
    "This is an embroidered airplane.",
    "This is the embroidered airplane.",
    "This is a painting of the airplane.",
    "This is a painting of a airplane.",
]


def test_vild_prompts_equal_the_reference_script_output():
    assert len(VILD_TEMPLATES) == 63
    assert vild_prompts("airplane") == AIRPLANE
    person = vild_prompts("person")
    assert person[:3] == [
        "There is a person in the scene.",
        "There is the person in the scene.",
        "This is a photo of a person in the scene.",
    ]
    assert person[5] == "itap of a person." and person[59] == "This is an embroidered person."
    # COCO panoptic stuff names are used as written; '_' and '/' as the script turns them.
    wall = vild_prompts("wall-other-merged")
    assert (
        wall[0] == "There is a wall-other-merged in the scene." and wall[8] == "This is a photo of a wall-other-merged."
    )
    assert vild_prompts("hair_drier/Fan.")[0] == "There is a hair drier or fan in the scene."
    # The article looks at the raw name: upper-case vowels take "a", as in the script.
    assert article("umbrella") == "an" and article("Umbrella") == "a" and processed_name("Umbrella") == "umbrella"
    with pytest.raises(ValueError, match="`name`"):
        vild_prompts("")


# ---------------------------------------------------------------------------------------------------- metrics


def test_mean_per_class_on_a_hand_built_confusion():
    # Class 0: 2 of 3 right; class 1: 2 of 2; class 2: 0 of 1; class 3: no box (left out of the mean).
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    top1 = torch.tensor([0, 1, 0, 1, 1, 0])
    second = torch.tensor([1, 0, 2, 0, 0, 2])
    predictions = torch.stack([top1, second, torch.full_like(top1, 3)], dim=1)
    figures = classification_metrics(predictions, labels, 4, ks=(1, 2))
    assert figures["top1"] == pytest.approx(100 * 4 / 6)
    assert figures["mean_class_top1"] == pytest.approx(100 * (2 / 3 + 1 + 0) / 3)
    assert figures["top2"] == pytest.approx(100.0)
    assert figures["mean_class_top2"] == pytest.approx(100.0)
    assert figures["per_class_top1"] == [pytest.approx(200 / 3), 100.0, 0.0, None]


# ---------------------------------------------------------------------------------------------------- stand-in data


@pytest.fixture
def panoptic(tmp_path) -> Path:
    return write_panoptic_standin(tmp_path)


def test_mask_box_uses_inclusive_extremes():
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:9] = True
    assert mask_box(mask) == [3.0, 2.0, 8.0, 4.0]
    assert mask_box(np.zeros((3, 3), dtype=bool)) is None


def test_reads_panoptic_boxes_as_the_references(panoptic):
    read = read_panoptic_boxes(panoptic, panoptic.parent.parent / "val2017")
    data = read.data
    assert data.class_names == ["person", "airplane", "sky-other-merged", "wall-other-merged"]
    assert read.class_is_thing == [True, True, False, False]
    by_name = {image.path.name: image for image in data.images}
    assert sorted(by_name) == ["000000037777.jpg", "000000397133.jpg"]  # 252219's only box is too small
    first = by_name["000000397133.jpg"]
    # sky and wall from the PNG (max - min), person and the crowd airplane from the json; the 5 x 5 person left out.
    assert first.boxes == [[0, 0, 79, 19], [0, 20, 39, 59], [45, 25, 65, 55], [66, 22, 80, 41]]
    assert first.labels == [2, 3, 0, 1]
    second = by_name["000000037777.jpg"]
    assert second.boxes == [[0, 0, 52, 95], [30.5, 10, 60, 50]] and second.labels == [3, 1]
    assert data.skipped == {"small": 2, "large": 0, "beyond_max_segments": 0, "empty": 0}
    limited = read_panoptic_boxes(panoptic, panoptic.parent.parent / "val2017", max_segments=2).data
    assert limited.skipped["beyond_max_segments"] == 3 and sum(len(image.boxes) for image in limited.images) == 4


def test_a_missing_png_is_named(panoptic):
    (panoptic.parent / "panoptic_val2017" / "000000037777.png").unlink()
    with pytest.raises(ValueError, match="000000037777.png"):
        read_panoptic_boxes(panoptic)


# ---------------------------------------------------------------------------------------------------- pre-processing


@pytest.fixture(scope="module")
def processor(tiny_tokenizer):
    return tiny_processor(tiny_tokenizer)


def test_square_resize_maps_boxes_per_axis(processor):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 100, 3), dtype=np.uint8))
    pre = ProtocolProcessor(processor, 40, "square", "bilinear")
    batch = pre(images=[image], boxes=[[[10, 5, 60, 45]]])
    expected = np.asarray(image.resize((40, 40), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    mean, std = np.array(processor.image_processor.image_mean), np.array(processor.image_processor.image_std)
    assert torch.allclose(
        batch["pixel_values"][0], torch.from_numpy((expected - mean) / std).permute(2, 0, 1).float(), atol=1e-5
    )
    assert torch.allclose(batch["boxes"], torch.tensor([[[0.1, 0.1, 0.6, 0.9]]]))
    assert batch["box_mask"].tolist() == [[True]]


def test_longest_side_resize_pads_and_keeps_the_aspect_ratio(processor):
    image = Image.new("RGB", (100, 50), (255, 255, 255))
    pre = ProtocolProcessor(processor, 40, "longest-pad", "bicubic")
    batch = pre(images=[image, image], boxes=[[[10, 5, 60, 45], [0, 0, 100, 50]], []])
    pixels = batch["pixel_values"][0]
    mean, std = torch.tensor(processor.image_processor.image_mean), torch.tensor(processor.image_processor.image_std)
    assert torch.allclose(
        pixels[:, :20, :], ((1 - mean) / std)[:, None, None].expand(3, 20, 40), atol=1e-5
    )  # the image
    assert torch.allclose(pixels[:, 20:, :], (-mean / std)[:, None, None].expand(3, 20, 40), atol=1e-5)  # black padding
    # one scale (0.4) for both axes, normalised by the padded square's 40 pixels
    assert torch.allclose(batch["boxes"][0], torch.tensor([[0.1, 0.05, 0.6, 0.45], [0.0, 0.0, 1.0, 0.5]]))
    assert batch["box_mask"].tolist() == [[True, True], [False, False]]


def test_protocol_presets_and_bad_sizes():
    assert (PROTOCOLS["fineclip"].image_size, PROTOCOLS["fineclip"].resize) == (224, "square")
    assert (PROTOCOLS["clipself"].image_size, PROTOCOLS["clipself"].resize) == (1024, "longest-pad")
    assert get_protocol("clipself", 448).image_size == 448
    with pytest.raises(ValueError, match="`image_size` must be a positive int, got 0"):
        get_protocol("fineclip", 0)
    with pytest.raises(ValueError, match="`protocol` must be one of"):
        get_protocol("vild")


def test_dense_features_at_another_size_follow_clip_with_interpolated_positions():
    # With the ordinary last layer the dense map is CLIP's last hidden state, normed and projected, per patch:
    # transformers' own CLIPVisionModel with interpolate_pos_encoding is the reference (the model is 32 px).
    model = tiny_harmoclip_model(seed=5, dense_mode="full")
    vision = CLIPVisionModel(model.config.vision_config).eval()
    vision.load_state_dict(model.vision_model.state_dict())
    pixels = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        dense = model.get_dense_features(pixels, interpolate_pos_encoding=True)
        hidden = vision(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state[:, 1:]
        expected = F.normalize(model.visual_projection(model.vision_model.post_layernorm(hidden)), dim=-1)
    assert dense.shape == (2, 16, 8, 6)
    assert torch.allclose(dense.flatten(2).transpose(1, 2), expected, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- whole runs
