"""RegionCollator: samples -> model inputs through the real processor, skipped records reported, cache keys kept."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from conftest import tiny_harmoclip_model, tiny_processor
from modeling_harmoclip.processing_harmoclip import phrase_id
from training.data.collate import METADATA_KEYS, RegionCollator, collect_samples, model_inputs, padded_box_indices
from training.data.data_common import RegionSample, SkippedSample
from training.data.data_jsonl import JsonlRegionDataset
from training.data.synthetic import SyntheticSettings, generate_synthetic_dataset

IMAGE_SIZE = 32  # the tiny test model's input size


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    settings = SyntheticSettings(num_train=10, num_val=2, seed=2, image_size=IMAGE_SIZE)
    out = generate_synthetic_dataset(tmp_path_factory.mktemp("collate") / "shapes", settings)
    return JsonlRegionDataset(out / "train.jsonl", min_box_size=0)


def test_collect_samples_drops_and_reports_skipped(shapes):
    first, second = shapes[0], shapes[1]
    second.num_small_boxes_dropped, second.num_boxes_over_limit = 2, 3
    collected = collect_samples([first, SkippedSample("bad.png", "cannot read image"), second])
    assert collected.skipped == [("bad.png", "cannot read image")]
    assert collected.captions == [first.caption, second.caption]
    assert collected.boxes == [first.boxes, second.boxes] and collected.phrase_spans == [
        first.phrase_spans,
        second.phrase_spans,
    ]
    assert collected.image_ids == ["train/000000", "train/000001"]
    assert collected.num_small_boxes_dropped == 2 and collected.num_boxes_over_limit == 3
    with pytest.raises(TypeError, match=r"samples\[1\]"):
        collect_samples([first, "not a sample"])


def test_padded_box_indices():
    table = padded_box_indices([[0, 2], [], [5]], 3)
    assert table.tolist() == [[0, 2, -1], [-1, -1, -1], [5, -1, -1]] and table.dtype == torch.long


@pytest.fixture(scope="module")
def processor(tiny_tokenizer):
    return tiny_processor(tiny_tokenizer, region_mode=True, image_size=IMAGE_SIZE)


def test_batch_from_the_processor(shapes, processor, tiny_tokenizer, tiny_model):
    samples = [shapes[i] for i in range(4)]
    samples[2].phrase_spans[0] = None  # one unlinked box
    batch = RegionCollator(processor)(samples[:2] + [SkippedSample("gone.png", "missing")] + samples[2:])
    num_boxes = max(len(s.boxes) for s in samples)
    assert batch["pixel_values"].shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert batch["boxes"].shape == (4, num_boxes, 4) and batch["box_mask"].shape == (4, num_boxes)
    assert batch["skipped"] == [("gone.png", "missing")]
    assert batch["image_ids"] == [s.image_id for s in samples]
    for row, sample in enumerate(samples):
        count = len(sample.boxes)
        assert batch["box_indices"][row].tolist() == sample.box_indices + [-1] * (num_boxes - count)
        assert batch["box_mask"][row].tolist() == [True] * count + [False] * (num_boxes - count)
        # region preset: the square image is only resized, so the boxes are the pixel boxes over the image size
        torch.testing.assert_close(batch["boxes"][row, :count], torch.tensor(sample.boxes) / IMAGE_SIZE)
        for column, span in enumerate(sample.phrase_spans):
            tokens = batch["input_ids"][row][batch["phrase_token_mask"][row, column]]
            if span is None:
                assert batch["phrase_ids"][row, column] == -1 and len(tokens) == 0
            else:
                assert tiny_tokenizer.decode(tokens).strip() == sample.caption[span[0] : span[1]]
                assert batch["phrase_ids"][row, column] >= 0
        # the synthetic shapes' category is their label; padding has none
        expected = [phrase_id(name) for name in sample.categories] + [-1] * (num_boxes - count)
        assert sample.categories == sample.labels and batch["category_ids"][row].tolist() == expected
    inputs = model_inputs(batch)
    assert not set(METADATA_KEYS) & set(inputs)
    with torch.no_grad():
        output = tiny_model(**inputs, return_loss=True)
    assert output.region_embeds.shape[:2] == (4, num_boxes) and torch.isfinite(output.loss)


def test_all_skipped_batch_has_only_metadata(processor):
    batch = RegionCollator(processor)([SkippedSample("a.png", "x"), SkippedSample("b.png", "y")])
    assert batch["skipped"] == [("a.png", "x"), ("b.png", "y")] and batch["image_ids"] == []
    assert "pixel_values" not in batch and model_inputs(batch) == {}


def test_dataloader_with_workers(shapes, processor):
    loader = DataLoader(shapes, batch_size=4, num_workers=2, collate_fn=RegionCollator(processor))
    batches = list(loader)
    assert [len(b["image_ids"]) for b in batches] == [4, 4, 2]
    assert [i for b in batches for i in b["image_ids"]] == [f"train/{i:06d}" for i in range(10)]


def _sample(caption: str, phrases: list[str], categories: list[str | None], seed: int) -> RegionSample:
    """An image with one box per phrase of `caption` (boxes side by side)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    spans = [(caption.index(phrase), caption.index(phrase) + len(phrase)) for phrase in phrases]
    boxes = [[4.0 + 8 * k, 4.0, 12.0 + 8 * k, 28.0] for k in range(len(phrases))]
    return RegionSample(
        Image.fromarray(pixels),
        caption,
        boxes,
        spans,
        phrases,
        f"img{seed}",
        f"img{seed}.png",
        box_indices=list(range(len(phrases))),
        labels=list(categories),
        categories=list(categories),
    )


def test_same_category_negatives_reach_the_loss(processor):
    """ "a man" and "a person" are both COCO persons: LRC leaves each out of the other's softmax; the two "a red
    kite" without category fall back to the phrase text."""
    samples = [
        _sample("a man on a bench", ["a man"], ["person"], 0),
        _sample("a person with a dog", ["a person", "a dog"], ["person", "dog"], 1),
        _sample("a red kite in the sky", ["a red kite"], [None], 2),
        _sample("a red kite and a kite", ["a red kite", "a kite"], [None, None], 3),
    ]
    batch = RegionCollator(processor)(samples)
    tiny_model = tiny_harmoclip_model(loss_lrc_weight=1.0)  # LRC on (the shipped recipe has it off)
    person, dog = phrase_id("person"), phrase_id("dog")
    assert batch["category_ids"].tolist() == [[person, -1], [person, dog], [-1, -1], [-1, -1]]
    with torch.no_grad():
        output = tiny_model(**model_inputs(batch), return_loss=True)
        without = tiny_model(**{**model_inputs(batch), "category_ids": None}, return_loss=True)
    # Reference: the 6 linked pairs in order (man, person, dog, red kite, red kite, kite), masks written by hand.
    linked = output.linked_mask
    regions, lexemes = output.region_embeds[linked], output.lexeme_embeds[linked]
    left_out = torch.zeros(6, 6, dtype=torch.bool)
    left_out[0, 1] = left_out[1, 0] = True  # same category
    left_out[3, 4] = left_out[4, 3] = True  # same phrase text, no category
    scale = tiny_model.logit_scale.exp()

    def lrc(mask: torch.Tensor) -> torch.Tensor:
        logits = (scale * regions @ lexemes.t()).masked_fill(mask, float("-inf"))
        targets = torch.arange(6)
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2

    text_only = torch.zeros(6, 6, dtype=torch.bool)
    text_only[3, 4] = text_only[4, 3] = True
    assert torch.allclose(output.loss_lrc, lrc(left_out), atol=1e-5)
    assert torch.allclose(without.loss_lrc, lrc(text_only), atol=1e-5)
    assert not torch.allclose(output.loss_lrc, without.loss_lrc, atol=1e-4)
