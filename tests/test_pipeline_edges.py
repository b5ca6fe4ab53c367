"""The region-classification pipeline's defaults and shortcuts: the top 5 labels unless asked otherwise, and label
embeddings given by the caller used as they are (the text tower not run again). Expected probabilities come from the
definitions (`region_reference`)."""

from __future__ import annotations

import torch

from conftest import tiny_harmoclip_model, tiny_processor
from modeling_harmoclip.pipeline_harmoclip import RegionClassificationPipeline, label_embeddings
from test_pipeline import BOXES, _check, _expected, _image

SEVEN_LABELS = ["dog", "red car", "bicycle", "tree", "house", "blue boat", "cat"]


def test_the_top_five_labels_by_default(tiny_tokenizer) -> None:
    model = tiny_harmoclip_model(seed=10)
    classifier = RegionClassificationPipeline(model=model, processor=tiny_processor(tiny_tokenizer), device=-1)
    results = classifier(_image(), boxes=BOXES[:2], candidate_labels=SEVEN_LABELS)
    assert [len(result["labels"]) for result in results] == [5, 5]
    _check(results, _expected(model, tiny_tokenizer, _image(), BOXES[:2], SEVEN_LABELS), BOXES[:2], SEVEN_LABELS, 5)


def test_given_label_embeddings_are_used_without_the_text_tower(tiny_tokenizer) -> None:
    model = tiny_harmoclip_model(seed=11)
    classifier = RegionClassificationPipeline(model=model, processor=tiny_processor(tiny_tokenizer), device=-1)
    with torch.no_grad():
        embeds = label_embeddings(model, tiny_tokenizer, SEVEN_LABELS)
    text_passes = [0]
    model.text_model.register_forward_pre_hook(lambda *_: text_passes.__setitem__(0, text_passes[0] + 1))
    results = classifier(_image(), boxes=BOXES[:2], candidate_labels=SEVEN_LABELS, label_embeds=embeds, top_k=None)
    assert text_passes[0] == 0
    _check(results, _expected(model, tiny_tokenizer, _image(), BOXES[:2], SEVEN_LABELS), BOXES[:2], SEVEN_LABELS, 7)
