"""Pictures: boxes with labels, and dense similarity heatmaps, written as PNG."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import tiny_harmoclip_model, tiny_processor
from evaluation.visualize import BOX_COLOURS, draw_boxes, draw_heatmap, save_box_predictions, save_query_heatmap
from modeling_harmoclip.pipeline_harmoclip import DEFAULT_TEMPLATES
from region_reference import reference_label_embeds, reference_probabilities, reference_regions, value_path_dense


@pytest.fixture(scope="module")
def processor(tiny_tokenizer):
    return tiny_processor(tiny_tokenizer, region_mode=False)


def test_boxes_are_drawn_where_the_boxes_are(tmp_path):
    image = Image.new("RGB", (160, 120), (255, 255, 255))
    boxes = [[20, 40, 80, 100], [100, 10, 150, 60]]
    out = tmp_path / "boxes.png"
    draw_boxes(image, boxes, ["dog", "car"], [0.91, 0.42], out)
    picture = Image.open(out)
    assert picture.format == "PNG" and picture.size == (160, 120)
    pixels = np.asarray(picture.convert("RGB"))
    for index, (x1, y1, x2, y2) in enumerate(boxes):
        colour = BOX_COLOURS[index]
        # Points on the left, right and bottom edges carry the box's colour.
        for x, y in ((x1, (y1 + y2) // 2), (x2 - 1, (y1 + y2) // 2), ((x1 + x2) // 2, y2 - 1)):
            assert tuple(pixels[y, x]) == colour, (index, x, y)
        # The inside, below the label, is untouched.
        assert tuple(pixels[y2 - 10, (x1 + x2) // 2]) == (255, 255, 255)
    # Far from every box and label, nothing is drawn.
    assert (pixels[105:, 100:] == 255).all() and (pixels[:30, :15] == 255).all()
    # The label strip is drawn above the first box (which has room above it), inside the second (at the top).
    assert tuple(pixels[38, 22]) == BOX_COLOURS[0]
    assert (pixels[:35, 20:80] != 255).any()
    assert image.getpixel((20, 70)) == (255, 255, 255), "the input image is not modified"


def test_draw_boxes_rejects_bad_boxes(tmp_path):
    image = Image.new("RGB", (20, 20))
    with pytest.raises(ValueError, match=r"boxes`\[1\]"):
        draw_boxes(image, [[0, 0, 5, 5], [5, 5, 2, 8]], ["a", "b"])
    with pytest.raises(ValueError, match="labels"):
        draw_boxes(image, [[0, 0, 5, 5]], ["a", "b"])
    with pytest.raises(ValueError, match="png"):
        draw_boxes(image, [[0, 0, 5, 5]], ["a"], out_path=tmp_path / "x.jpg")


def test_heatmap_is_brightest_where_the_query_region_is(tmp_path):
    # A hand-built dense map (D=8, 4x4 patches): the patches of rows 2-3, columns 0-1 point along the query's
    # direction, the others away from it.
    torch.manual_seed(0)
    query = F.normalize(torch.randn(8), dim=0)
    dense = F.normalize(torch.randn(8, 4, 4), dim=0) * 0.2 - query[:, None, None]
    dense[:, 2:4, 0:2] = query[:, None, None]
    similarity = torch.einsum("dhw,d->hw", F.normalize(dense, dim=0), query)
    image = Image.new("RGB", (200, 100), (0, 0, 0))
    out = tmp_path / "heatmap.png"
    draw_heatmap(image, similarity, out, alpha=1.0)
    picture = Image.open(out)
    assert picture.size == (200, 100)
    brightness = np.asarray(picture.convert("L")).astype(float)
    y, x = np.unravel_index(brightness.argmax(), brightness.shape)
    assert 50 <= y < 100 and 0 <= x < 100, (y, x)  # rows 2-3, columns 0-1 of a 4x4 grid over 200x100
    assert brightness[50:, :100].mean() > 3 * brightness[:50, 100:].mean()


def test_heatmap_of_a_tiny_model_covers_the_image(tmp_path, processor, tiny_tokenizer):
    """The map is the cosine of every patch of the whole (uncropped) image with the label's prompt ensemble."""
    model = tiny_harmoclip_model(seed=1)
    image = Image.new("RGB", (90, 60), (30, 120, 200))
    out = tmp_path / "query.png"
    similarity = save_query_heatmap(model, processor, image, "blue sky", out)
    assert similarity.shape == (4, 4)  # 32 px input, 8 px patches
    with torch.no_grad():
        dense = F.normalize(
            value_path_dense(model, processor.as_region_mode()(images=[image])["pixel_values"])[0], dim=0
        )
    text = reference_label_embeds(model, tiny_tokenizer, ["blue sky"], DEFAULT_TEMPLATES)[0]
    assert torch.allclose(similarity.double(), torch.einsum("dhw,d->hw", dense.double(), text), atol=1e-5)
    assert Image.open(out).size == (90, 60)

    # Among candidate labels (the query added when missing): its probability at each patch, softmax over the labels.
    probability = save_query_heatmap(model, processor, image, "blue sky", out, candidate_labels=["red ball", "grass"])
    labels = ["red ball", "grass", "blue sky"]
    texts = reference_label_embeds(model, tiny_tokenizer, labels, DEFAULT_TEMPLATES)
    logits = model.logit_scale.exp().item() * torch.einsum("dhw,ld->lhw", dense.double(), texts)
    assert torch.allclose(probability.double(), logits.softmax(0)[2], atol=1e-5)
    assert Image.open(out).size == (90, 60)


def test_box_predictions_picture(tmp_path, processor, tiny_tokenizer):
    model = tiny_harmoclip_model(seed=2)
    image = Image.new("RGB", (80, 64), (200, 200, 200))
    image.paste((200, 30, 30), (44, 24, 76, 60))
    out = tmp_path / "predictions.png"
    boxes, classes = [[4, 20, 40, 60], [44, 24, 76, 60]], ["cat", "dog", "tree"]
    names, scores = save_box_predictions(model, processor, image, boxes, classes, out)
    # The region-classification pipeline's answer, against the definition: region-preset pixels (32 x 32 square).
    pixels = processor.as_region_mode()(images=[image])["pixel_values"]
    regions = reference_regions(
        model, pixels, torch.tensor(boxes, dtype=torch.float64) / torch.tensor([80, 64, 80, 64])
    )
    expected = reference_probabilities(
        model, regions, reference_label_embeds(model, tiny_tokenizer, classes, DEFAULT_TEMPLATES)
    )
    assert names == [classes[index] for index in expected.argmax(-1).tolist()]
    assert scores == pytest.approx(expected.max(-1).values.tolist(), abs=1e-5)
    picture = np.asarray(Image.open(out).convert("RGB"))
    assert picture.shape == (64, 80, 3)
    assert tuple(picture[40, 4]) == BOX_COLOURS[0] and tuple(picture[42, 75]) == BOX_COLOURS[1]
