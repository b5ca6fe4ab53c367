"""The pointing game: a box is a hit when the peak of its label's map lies inside it; checked on hand-made maps, and
on a tiny model against maps and hits computed here from the model's dense features and text tower."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import tiny_harmoclip_model, tiny_processor
from evaluation.eval_data import BoxClassificationData, BoxImage
from evaluation.pointing import pointing_game, pointing_hits
from modeling_harmoclip.pipeline_harmoclip import DEFAULT_TEMPLATES


def test_hits_on_hand_made_maps() -> None:
    # 2 labels on a 2x4 grid over a 80x40 image: patches are 20 px wide and tall, centres at x 10, 30, 50, 70.
    maps = torch.zeros(2, 2, 4)
    maps[0, 0, 2] = 1.0  # label 0 peaks at the patch centred on (50, 10)
    maps[1, 1, 0] = 1.0  # label 1 peaks at (10, 30)
    boxes = [[40, 0, 60, 20], [0, 0, 40, 20], [0, 20, 20, 40], [10, 30, 12, 33]]
    assert pointing_hits(maps, boxes, [0, 0, 1, 1], (80, 40)) == [True, False, True, True]  # edges count as inside
    flat = torch.zeros(1, 2, 4)  # ties: the first patch, centred on (10, 10)
    assert pointing_hits(flat, [[0, 0, 20, 20], [20, 0, 80, 40]], [0, 0], (80, 40)) == [True, False]
    with pytest.raises(ValueError, match="outside the 2 maps"):
        pointing_hits(maps, [[0, 0, 1, 1]], [2], (80, 40))
    with pytest.raises(ValueError, match="differ in length"):
        pointing_hits(maps, [[0, 0, 1, 1]], [0, 1], (80, 40))
    with pytest.raises(ValueError, match=r"\(L, h, w\)"):
        pointing_hits(maps[0], [[0, 0, 1, 1]], [0], (80, 40))


def test_game_scores_hand_computed_maps(tiny_tokenizer, tmp_path) -> None:
    model = tiny_harmoclip_model(seed=4)
    processor = tiny_processor(tiny_tokenizer)
    classes = ["red square", "blue circle", "green cross"]
    image = Image.new("RGB", (64, 48), (120, 120, 120))
    image.paste((220, 40, 40), (4, 4, 30, 30))
    image.save(tmp_path / "scene.png")
    boxes = [[4, 4, 30, 30], [32, 10, 60, 44], [0, 0, 64, 48]]
    labels = [0, 2, 1]  # class indices, as `read_box_manifest` gives them
    data = BoxClassificationData(
        [BoxImage(tmp_path / "scene.png", boxes, labels), BoxImage(tmp_path / "scene.png", boxes[:1], labels[:1])],
        classes,
    )
    result = pointing_game(model, processor, data)
    # Reference, written out: the patch embeddings of the square-resized image, each class's prompts encoded one by
    # one and averaged, both maps, and each box's hit from its label's peak patch centre in image pixels.
    with torch.no_grad():
        dense = model.get_dense_features(processor.as_region_mode()(images=image)["pixel_values"])[0]
        class_embeds = []
        for name in classes:
            prompts = [template.format(name) for template in DEFAULT_TEMPLATES]
            embeds = [
                F.normalize(
                    model.get_text_features(**processor.tokenizer([prompt], return_tensors="pt")).pooler_output, dim=-1
                )[0]
                for prompt in prompts
            ]
            class_embeds.append(F.normalize(torch.stack(embeds).mean(0), dim=0))
        cosine = torch.einsum("dhw,ld->lhw", dense, torch.stack(class_embeds))
        maps = {"cosine": cosine, "probability": (model.logit_scale.exp() * cosine).softmax(dim=0)}
    expected = {}
    height, width = dense.shape[1:]
    for kind, label_maps in maps.items():
        hits = []
        for box, label in zip(boxes, labels):
            peak = int(label_maps[label].flatten().argmax())
            x, y = (peak % width + 0.5) * 64 / width, (peak // width + 0.5) * 48 / height
            hits.append(box[0] <= x <= box[2] and box[1] <= y <= box[3])
        expected[kind] = 100.0 * (sum(hits) + hits[0]) / 4  # the second image holds the first box again
    assert result == {"cosine": expected["cosine"], "probability": expected["probability"], "num_boxes": 4}
    assert result["cosine"] >= 25.0  # the whole-image box always holds the peak
    with pytest.raises(ValueError, match="holds no labelled boxes"):
        pointing_game(model, processor, BoxClassificationData([], classes, source="empty.jsonl"))
