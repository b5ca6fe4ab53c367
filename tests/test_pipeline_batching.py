"""The region pipeline batched (`batch_size`) over images of mixed sizes and box counts, and label embeddings
computed once and reused across calls (`resolve_label_embeddings`) by every pipeline."""

from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw
from transformers import pipeline

from conftest import text_tower_calls, tiny_harmoclip_model, tiny_processor
from modeling_harmoclip.pipeline_harmoclip import (
    REGION_CLASSIFICATION_TASK,
    DenseSegmentationPipeline,
    ZeroShotRegionDetectionPipeline,
    clear_label_cache,
    dense_similarity,
    label_embeddings,
    resolve_label_embeddings,
)
from region_reference import reference_label_embeds, reference_probabilities, reference_regions

LABELS = ["dog", "red car", "bicycle", "tree", "sky"]
TEMPLATES = ("a photo of a {}.", "a sketch of the {}.")


def _images_and_boxes() -> list[dict]:
    """Seven images of different sizes and aspect ratios with 1 to 6 boxes each, in their pixels."""
    generator = torch.Generator().manual_seed(0)
    items = []
    for index, (width, height, count) in enumerate(
        [(64, 48, 3), (40, 80, 1), (100, 30, 6), (32, 32, 2), (57, 91, 5), (120, 64, 1), (45, 45, 4)]
    ):
        image = Image.new("RGB", (width, height), (30 * index % 255, 120, 40))
        ImageDraw.Draw(image).rectangle([width // 5, height // 4, width // 2, height // 2], fill=(200, 20 * index, 40))
        corner = torch.rand(count, 2, generator=generator) * torch.tensor([width * 0.6, height * 0.6])
        side = torch.rand(count, 2, generator=generator) * torch.tensor([width * 0.35, height * 0.35]) + 2
        boxes = torch.cat([corner, corner + side], dim=1).round(decimals=2).tolist()
        items.append({"image": image, "boxes": boxes})
    return items


def test_batched_pipeline_equals_one_image_per_pass_and_the_definition(tiny_tokenizer) -> None:
    model = tiny_harmoclip_model(seed=4)
    classifier = pipeline(REGION_CLASSIFICATION_TASK, model=model, processor=tiny_processor(tiny_tokenizer), device=-1)
    items = _images_and_boxes()
    single = classifier(items, candidate_labels=LABELS, templates=TEMPLATES, top_k=None, batch_size=1)
    reference_labels = reference_label_embeds(model, tiny_tokenizer, LABELS, TEMPLATES)
    for batch_size in (3, 8):
        batched = classifier(items, candidate_labels=LABELS, templates=TEMPLATES, top_k=None, batch_size=batch_size)
        assert len(batched) == len(items)
        for item, one, many in zip(items, single, batched):
            assert len(many) == len(one) == len(item["boxes"])  # no padded box comes back
            for a, b in zip(one, many):
                assert a["box"] == b["box"] and a["labels"] == b["labels"]
                assert a["scores"] == pytest.approx(b["scores"], abs=1e-5)
    # And both are region classification from the definitions (region preset: 32 x 32, boxes over the image size).
    processor = tiny_processor(tiny_tokenizer, region_mode=True)
    for item, results in zip(items, batched):
        width, height = item["image"].size
        boxes = torch.tensor(item["boxes"], dtype=torch.float64) / torch.tensor([width, height, width, height])
        regions = reference_regions(model, processor(images=item["image"])["pixel_values"], boxes)
        expected = reference_probabilities(model, regions, reference_labels)
        for row, result in enumerate(results):
            scores = dict(zip(result["labels"], result["scores"]))
            assert [scores[label] for label in LABELS] == pytest.approx(expected[row].tolist(), abs=1e-5)


def test_labels_are_encoded_once_across_calls_and_again_when_the_weights_change(tiny_tokenizer) -> None:
    model = tiny_harmoclip_model(seed=5)
    classifier = pipeline(REGION_CLASSIFICATION_TASK, model=model, processor=tiny_processor(tiny_tokenizer), device=-1)
    calls = text_tower_calls(model)
    items = _images_and_boxes()[:3]
    first = classifier(items, candidate_labels=LABELS, templates=TEMPLATES, top_k=None)
    encoded = calls[0]
    assert encoded >= 1
    second = classifier(items, candidate_labels=LABELS, templates=TEMPLATES, top_k=None, batch_size=2)
    maps = classifier.dense_similarity(items[0]["image"], LABELS, TEMPLATES)
    assert calls[0] == encoded  # the two calls and the maps reused the first call's label embeddings
    assert [s for r in first[0] for s in r["scores"]] == pytest.approx(
        [s for r in second[0] for s in r["scores"]], abs=1e-5
    )

    classifier(items[:1], candidate_labels=LABELS[:2], templates=TEMPLATES)  # other labels: encoded
    assert calls[0] > encoded
    encoded = calls[0]
    classifier(items[:1], candidate_labels=LABELS, templates=TEMPLATES[:1])  # other templates: encoded
    assert calls[0] > encoded

    # A weight update (an optimizer step, in place) invalidates the cached embeddings.
    before = resolve_label_embeddings(model, tiny_tokenizer, LABELS, TEMPLATES)
    with torch.no_grad():
        model.text_projection.weight.mul_(-1.0)
    encoded = calls[0]
    after = resolve_label_embeddings(model, tiny_tokenizer, LABELS, TEMPLATES)
    assert calls[0] > encoded
    torch.testing.assert_close(after, label_embeddings(model, tiny_tokenizer, LABELS, TEMPLATES), atol=0, rtol=0)
    torch.testing.assert_close(after, -before, atol=1e-5, rtol=0)
    assert maps.shape == (len(LABELS), 4, 4)

    # Changing a returned tensor leaves the cache alone; clear_label_cache forgets the model's entries.
    after.zero_()
    encoded = calls[0]
    assert resolve_label_embeddings(model, tiny_tokenizer, LABELS, TEMPLATES).abs().sum() > 0
    assert calls[0] == encoded
    clear_label_cache(model)
    resolve_label_embeddings(model, tiny_tokenizer, LABELS, TEMPLATES)
    assert calls[0] > encoded


def test_label_embeds_given_by_the_caller_are_used_as_given(tiny_tokenizer) -> None:
    model = tiny_harmoclip_model(seed=6)
    processor = tiny_processor(tiny_tokenizer)
    classifier = pipeline(REGION_CLASSIFICATION_TASK, model=model, processor=processor, device=-1)
    items = _images_and_boxes()[:2]
    embeds = label_embeddings(model, tiny_tokenizer, LABELS, TEMPLATES)
    calls = text_tower_calls(model)
    given = classifier(items, candidate_labels=LABELS, label_embeds=embeds, top_k=None, batch_size=2)
    assert calls[0] == 0
    encoded = classifier(items, candidate_labels=LABELS, templates=TEMPLATES, top_k=None)
    for a, b in zip(given, encoded):
        assert [s for r in a for s in r["scores"]] == pytest.approx([s for r in b for s in r["scores"]], abs=1e-6)
    # The labels' order is the embeddings' order: reversed embeddings swap the scores.
    swapped = classifier(items[:1], candidate_labels=LABELS, label_embeds=embeds.flip(0), top_k=None)[0][0]
    straight = given[0][0]
    scores = dict(zip(straight["labels"], straight["scores"]))
    assert dict(zip(swapped["labels"], swapped["scores"])) == pytest.approx(
        {label: scores[other] for label, other in zip(LABELS, reversed(LABELS))}, abs=1e-6
    )
    with pytest.raises(ValueError, match=r"`label_embeds` must have shape \(5, 16\) for 5 labels, got \(4, 16\)"):
        classifier(items, candidate_labels=LABELS, label_embeds=embeds[:4])
    with pytest.raises(ValueError, match=r"`label_embeds` must have shape \(2, 16\)"):
        dense_similarity(model, processor, items[0]["image"], ["dog", "tree"], label_embeds=embeds)


def test_detection_and_segmentation_pipelines_reuse_labels_and_take_label_embeds(tiny_tokenizer) -> None:
    model = tiny_harmoclip_model(seed=7)
    processor = tiny_processor(tiny_tokenizer)
    detector = ZeroShotRegionDetectionPipeline(model=model, processor=processor)
    segmenter = DenseSegmentationPipeline(model=model, processor=processor)
    images = [item["image"] for item in _images_and_boxes()[:2]]
    calls = text_tower_calls(model)
    first = detector(images, candidate_labels=LABELS, templates=TEMPLATES, threshold=0.0)
    encoded = calls[0]
    assert encoded >= 1
    again = detector(images, candidate_labels=LABELS, templates=TEMPLATES, threshold=0.0, batch_size=2)
    masks = segmenter(images[0], candidate_labels=LABELS, templates=TEMPLATES)
    assert calls[0] == encoded  # the second call and the segmentation reused the labels and the background's
    assert [len(image) for image in again] == [len(image) for image in first]
    assert [d["score"] for image in again for d in image] == pytest.approx(
        [d["score"] for image in first for d in image], abs=1e-6
    )
    assert masks and all(item["mask"].size == images[0].size for item in masks)
    # The caller's embeddings of the candidates are used as given; only the background label is encoded (once).
    clear_label_cache(model)
    embeds = label_embeddings(model, tiny_tokenizer, LABELS, TEMPLATES)
    encoded = calls[0]
    given = detector(images, candidate_labels=LABELS, templates=TEMPLATES, threshold=0.0, label_embeds=embeds)
    assert calls[0] == encoded + 1
    assert [[(d["label"], d["box"]) for d in image] for image in given] == [
        [(d["label"], d["box"]) for d in image] for image in first
    ]
    with pytest.raises(ValueError, match=r"`label_embeds` must have shape \(5, 16\) for 5 labels, got \(4, 16\)"):
        segmenter(images[0], candidate_labels=LABELS, label_embeds=embeds[:4])
