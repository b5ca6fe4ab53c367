"""Crop-and-encode detection scoring (`evaluation.crop_detection.crop_detections`) against crops cut by hand with PIL
(`crop_reference.hand_crop`) and a softmax over labels and background written out here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import tiny_harmoclip_model, tiny_processor
from crop_reference import hand_crop
from evaluation.crop_detection import crop_detections


def _image(width: int, height: int, seed: int) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8).numpy())


@pytest.mark.parametrize("with_background", [True, False])
def test_crop_detections_score_each_kept_proposals_hand_cut_crop(tiny_tokenizer, with_background: bool) -> None:
    model = tiny_harmoclip_model(seed=5)
    processor = tiny_processor(tiny_tokenizer, region_mode=True)
    images = [_image(90, 60, 0), _image(40, 70, 1)]
    boxes = torch.tensor(
        [
            [[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0.6, 0.5, 0.9, 0.95]],
            [[0.25, 0.3, 0.75, 0.5], [0.3, 0.3, 0.3, 0.3], [0.0, 0.0, 0.0, 0.0]],  # padding past the first
        ]
    )
    box_mask = torch.tensor([[True, True, True], [True, False, False]])
    generator = torch.Generator().manual_seed(7)
    embeds = F.normalize(torch.randn(4, model.config.projection_dim, generator=generator), dim=-1)
    labels, background = embeds[:3], embeds[3] if with_background else None

    with torch.no_grad():
        out = crop_detections(
            model, processor, images, {"pred_boxes": boxes, "box_mask": box_mask}, labels, background, chunk_size=2
        )

    assert out.box_mask.tolist() == [[True, True, True], [True, False, False]]
    assert torch.allclose(out.pred_boxes[box_mask], boxes[box_mask], atol=1e-6)
    assert torch.equal(out.scores[~box_mask], torch.zeros(2, 3))
    candidates = embeds if with_background else labels
    for image_index, box_index in box_mask.nonzero().tolist():
        image = images[image_index]
        width, height = image.size
        pixel_box = (boxes[image_index, box_index].double() * torch.tensor([width, height, width, height])).tolist()
        crop = hand_crop(image, pixel_box, 1.5, 32)
        with torch.no_grad():
            embed = F.normalize(model.get_image_features(pixel_values=crop[None]).pooler_output, dim=-1)[0]
        expected = (model.logit_scale.exp() * candidates @ embed).softmax(-1)[:3]
        assert torch.allclose(out.scores[image_index, box_index], expected, atol=1e-4)


def test_crop_detections_need_a_region_mode_processor(tiny_tokenizer) -> None:
    model = tiny_harmoclip_model()
    labels = F.normalize(torch.randn(2, model.config.projection_dim), dim=-1)
    proposals = {"pred_boxes": torch.tensor([[[0.1, 0.1, 0.5, 0.5]]]), "box_mask": torch.tensor([[True]])}
    with pytest.raises(ValueError, match="region mode"):
        crop_detections(model, tiny_processor(tiny_tokenizer), [_image(40, 40, 0)], proposals, labels, None)
