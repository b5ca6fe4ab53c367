"""HarmoCLIPImageProcessor: CLIP's image processor to the pixel, with the geometry read from the same resize, and the
processor's post-processing forwarded to it."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from modeling_harmoclip.image_processing_harmoclip import HarmoCLIPImageProcessor, clip_image_processor


def _plain_clip(**settings):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(**settings)


@pytest.mark.parametrize(
    "settings",
    [
        {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}},
        {"size": {"height": 40, "width": 24}, "do_center_crop": False},
        {"size": {"shortest_edge": 20, "longest_edge": 30}, "do_center_crop": False},
    ],
    ids=["shortest-edge+crop", "square", "shortest+longest"],
)
@pytest.mark.parametrize("image_size", [(37, 52), (64, 48), (101, 13)])
def test_pixels_equal_clips_and_the_geometry_is_the_resize(settings, image_size) -> None:
    width, height = image_size
    image = Image.effect_noise((width, height), 60).convert("RGB")
    ours = HarmoCLIPImageProcessor(**settings)(image, return_tensors="pt")["pixel_values"]
    theirs = _plain_clip(**settings)(image, return_tensors="pt")["pixel_values"]
    assert torch.equal(ours, theirs)
    geometry = HarmoCLIPImageProcessor(**settings).box_geometry(image)
    assert (geometry.height, geometry.width) == tuple(ours.shape[-2:])
    # The whole image lands on the frame (after the crop's shift) where the resize put it.
    corners = geometry.to_normalized(torch.tensor([[0.0, 0.0, width, height]], dtype=torch.float64))[0]
    if not settings.get("do_center_crop", True):
        assert corners.tolist() == pytest.approx([0.0, 0.0, 1.0, 1.0])


def test_to_and_from_clip_keep_every_setting() -> None:
    ours = clip_image_processor(48, image_mean=[0.1, 0.2, 0.3], resample=2)
    plain = ours.to_clip()
    assert type(plain).__name__.startswith("CLIPImageProcessor")
    assert not isinstance(plain, HarmoCLIPImageProcessor)
    back = HarmoCLIPImageProcessor.from_clip(plain)
    for key in ("size", "crop_size", "image_mean", "image_std", "resample", "do_center_crop"):
        assert back.to_dict()[key] == ours.to_dict()[key] == plain.to_dict()[key], key
    assert back.to_dict()["image_processor_type"] == "HarmoCLIPImageProcessor"
    assert HarmoCLIPImageProcessor.from_clip(ours) is ours


def test_processor_forwards_post_processing(tiny_tokenizer) -> None:
    from modeling_harmoclip.modeling_harmoclip import HarmoCLIPDetectionOutput
    from modeling_harmoclip.processing_harmoclip import HarmoCLIPProcessor

    processor = HarmoCLIPProcessor(clip_image_processor(32), tiny_tokenizer)
    outputs = HarmoCLIPDetectionOutput(
        scores=torch.tensor([[[0.9, 0.05], [0.2, 0.7]]]),
        pred_boxes=torch.tensor([[[0.1, 0.1, 0.5, 0.5], [0.4, 0.2, 0.9, 0.8]]]),
        box_mask=torch.tensor([[True, True]]),
        dense_probabilities=torch.rand(1, 2, 4, 4),
    )
    via_processor = processor.post_process_object_detection(outputs, threshold=0.5, target_sizes=[(48, 64)])
    direct = processor.image_processor.post_process_object_detection(outputs, threshold=0.5, target_sizes=[(48, 64)])
    assert [found["labels"].tolist() for found in via_processor] == [[0, 1]]
    for key in ("scores", "labels", "boxes"):
        assert torch.equal(via_processor[0][key], direct[0][key])
    maps = processor.post_process_semantic_segmentation(outputs, target_sizes=[(48, 64)])
    assert torch.equal(maps[0], processor.image_processor.post_process_semantic_segmentation(outputs, [(48, 64)])[0])
    assert maps[0].shape == (48, 64)
