"""The JSONL manifest source and what all sources share: caption sampling, box selection, skipping."""

import json
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from training.data.data_common import PackedStrings, Region, SampleError, SkippedSample, select_regions
from training.data.data_jsonl import JsonlRegionDataset, find_phrase, index_lines


def write_image(path, size=(80, 60), colour=(200, 30, 30), format=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=format)
    return path


def write_manifest(path, records):
    lines = [record if isinstance(record, str) else json.dumps(record) for record in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


CAPTIONS = ["A dog chases a Red Ball.", "a red ball and a dog", "the DOG sleeps", "a ball", "two dogs play"]


@pytest.fixture
def manifest(tmp_path):
    write_image(tmp_path / "images" / "a.png")
    write_image(tmp_path / "images" / "b.jpg", size=(50, 40), format="JPEG")
    records = [
        {
            "image": "images/a.png",
            "caption": "A dog chases a Red Ball.",
            "regions": [
                {"box": [10, 10, 40, 50], "phrase": "A dog", "span": [0, 5]},
                {"box": [50, 20, 70, 40], "phrase": "red ball"},  # located case-insensitively
                {"box": [0, 0, 80, 60], "phrase": "a cat"},  # not in the caption: unlinked
                {"box": [5, 5, 15, 15], "phrase": None, "label": "thing"},
            ],
        },
        {
            "image": str(tmp_path / "images" / "b.jpg"),
            "id": "bee",
            "caption": CAPTIONS,
            "regions": [{"box": [1, 1, 30, 30], "phrase": "dog"}],
        },
    ]
    return write_manifest(tmp_path / "train.jsonl", records)


def test_reads_records_lazily_by_byte_offset(manifest):
    dataset = JsonlRegionDataset(manifest)
    assert len(dataset) == 2
    assert list(index_lines(manifest)) == [0, len(manifest.read_bytes().split(b"\n")[0]) + 1]
    sample = dataset[0]
    assert sample.caption == "A dog chases a Red Ball."
    assert sample.image.mode == "RGB" and sample.image.size == (80, 60)
    assert sample.boxes == [[10, 10, 40, 50], [50, 20, 70, 40], [0, 0, 80, 60], [5, 5, 15, 15]]
    assert sample.phrase_spans == [(0, 5), (15, 23), None, None]
    assert sample.phrases == ["A dog", "Red Ball", None, None]
    assert sample.labels == [None, None, None, "thing"]
    assert sample.categories == [None, None, None, "thing"]  # a region's label is its category
    assert sample.box_indices == [0, 1, 2, 3]
    assert sample.image_id == "images/a.png" and sample.path == str(manifest.parent / "images" / "a.png")
    jpeg = dataset[1]
    assert jpeg.image_id == "bee" and jpeg.image.size == (50, 40)
    assert jpeg.caption in CAPTIONS
    # "dog" is found as a whole word in whichever caption was drawn ("two dogs play" has no whole word "dog")
    if jpeg.phrase_spans[0] is not None:
        start, end = jpeg.phrase_spans[0]
        assert jpeg.caption[start:end].lower() == "dog"


def test_caption_sampling_is_reproducible_and_changes_with_epoch(manifest):
    def captions(dataset, epochs):
        drawn = []
        for epoch in epochs:
            dataset.set_epoch(epoch)
            drawn.append(dataset[1].caption)
        return drawn

    epochs = range(40)
    first = captions(JsonlRegionDataset(manifest, seed=1), epochs)
    assert first == captions(JsonlRegionDataset(manifest, seed=1), epochs)
    assert first != captions(JsonlRegionDataset(manifest, seed=2), epochs)
    counts = Counter(first)
    assert set(counts) == set(CAPTIONS)  # every caption is used over 40 epochs, none always
    assert max(counts.values()) < 20


def test_same_samples_through_dataloader_workers(manifest):
    dataset = JsonlRegionDataset(manifest, seed=3)
    dataset.set_epoch(7)
    direct = [dataset[i].caption for i in range(len(dataset))]
    loader = DataLoader(dataset, batch_size=None, num_workers=2)
    assert [sample.caption for sample in loader] == direct


def test_phrase_lookup_prefers_whole_words_and_unused_mentions():
    caption = "a dog and a hotdog and a dog"
    assert find_phrase(caption, "dog", set()) == (2, 5)
    assert find_phrase(caption, "DOG", {2}) == (25, 28)
    assert find_phrase(caption, "dog", {2, 25}) == (2, 5)  # all taken: the first again
    assert find_phrase("hotdogs", "dog", set()) == (3, 6)  # inside a word only when nowhere else
    assert find_phrase(caption, "cat", set()) is None


def test_max_boxes_keeps_linked_then_largest_and_min_size_drops(tmp_path):
    write_image(tmp_path / "x.png", size=(100, 100))
    regions = [{"box": [0, 0, 10 + 5 * i, 10 + 5 * i]} for i in range(6)]  # growing unlinked boxes
    regions.append({"box": [0, 0, 12, 12], "phrase": "cat"})
    regions.append({"box": [0, 0, 3, 50]})  # 3 pixels wide
    regions.append({"box": [90, 90, 130, 130]})  # clipped to 10 x 10
    manifest = write_manifest(tmp_path / "m.jsonl", [{"image": "x.png", "caption": "a cat", "regions": regions}])
    sample = JsonlRegionDataset(manifest, max_boxes=4, min_box_size=4)[0]
    assert sample.num_small_boxes_dropped == 1
    assert sample.num_boxes_over_limit == 8 - 4
    assert sample.box_indices == [3, 4, 5, 6]  # the linked box, then the three largest, in annotation order
    assert sample.phrase_spans == [None, None, None, (2, 5)]
    everything = JsonlRegionDataset(manifest, max_boxes=None, min_box_size=0)[0]
    assert len(everything.boxes) == 9 and everything.boxes[8] == [90, 90, 100, 100]


def test_select_regions_directly():
    regions = [Region((0, 0, 5, 5), None, 0), Region((0, 0, 20, 20), (0, 1), 1), Region((0, 0, 30, 2), None, 2)]
    kept, small, over = select_regions(regions, 25, 25, max_boxes=1, min_box_size=4)
    assert [r.index for r in kept] == [1] and kept[0].box == (0, 0, 20, 20) and (small, over) == (1, 1)
    kept, small, over = select_regions(regions, 10, 10, max_boxes=0, min_box_size=0)
    assert kept == [] and (small, over) == (0, 3)


@pytest.mark.parametrize(
    "record, reason",
    [
        ('{"image": "ok.png", "caption": "a dog", ', "not valid JSON"),
        ({"caption": "a dog"}, "'image'"),
        ({"image": "ok.png", "caption": []}, "'caption'"),
        ({"image": "ok.png", "caption": "a dog", "regions": [{"box": [5, 5, 1, 9]}]}, r"regions\[0\].*x2 < x1"),
        ({"image": "ok.png", "caption": "a dog", "regions": [{"box": [1, 2, 3]}]}, r"regions\[0\]"),
        ({"image": "ok.png", "caption": "a dog", "regions": [{"box": [0, 0, 5, float("nan")]}]}, "non-finite"),
        ({"image": "ok.png", "caption": "a dog", "regions": [{"box": [0, 0, 5, 5], "span": [2, 9]}]}, "outside"),
        (
            {
                "image": "ok.png",
                "caption": "a dog",
                "regions": [{"box": [0, 0, 5, 5], "span": [0, 1], "phrase": "dog"}],
            },
            "not 'dog'",
        ),
        (
            {"image": "ok.png", "caption": ["a", "b"], "regions": [{"box": [0, 0, 5, 5], "span": [0, 1]}]},
            "single caption",
        ),
    ],
)
def test_malformed_records_are_skipped_or_raise_when_strict(tmp_path, record, reason):
    write_image(tmp_path / "ok.png")
    good = {"image": "ok.png", "caption": "fine"}
    manifest = write_manifest(tmp_path / "m.jsonl", [good, record])
    skipped = JsonlRegionDataset(manifest)[1]
    assert isinstance(skipped, SkippedSample)
    assert skipped.path == f"{manifest}:record 1"
    assert re.search(reason, skipped.reason)
    assert JsonlRegionDataset(manifest)[0].caption == "fine"
    with pytest.raises(SampleError, match=reason):
        JsonlRegionDataset(manifest, strict=True)[1]


def test_missing_and_corrupt_images_are_skipped_with_their_path(tmp_path):
    write_image(tmp_path / "ok.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    truncated = write_image(tmp_path / "truncated.jpg", size=(200, 200), format="JPEG")
    truncated.write_bytes(truncated.read_bytes()[:300])
    names = ["ok.png", "missing.png", "corrupt.png", "truncated.jpg"]
    manifest = write_manifest(tmp_path / "m.jsonl", [{"image": name, "caption": "x"} for name in names])
    samples = [JsonlRegionDataset(manifest)[i] for i in range(4)]
    assert not isinstance(samples[0], SkippedSample)
    for name, sample in zip(names[1:], samples[1:]):
        assert isinstance(sample, SkippedSample)
        assert sample.path == str(tmp_path / name)
        assert "cannot read image" in sample.reason and "m.jsonl:record" in sample.reason
    with pytest.raises(SampleError, match="missing.png"):
        JsonlRegionDataset(manifest, strict=True)[1]


def test_index_range_and_bad_options(manifest, tmp_path):
    dataset = JsonlRegionDataset(manifest)
    assert dataset[-1].image_id == "bee"
    with pytest.raises(IndexError):
        dataset[2]
    with pytest.raises(ValueError, match="max_boxes"):
        JsonlRegionDataset(manifest, max_boxes=-1)
    with pytest.raises(FileNotFoundError):
        JsonlRegionDataset(tmp_path / "nope.jsonl")


def test_packed_strings():
    strings = ["", "a dog", "Café ☕", "x" * 1000]
    packed = PackedStrings(strings)
    assert len(packed) == 4 and [packed[i] for i in range(4)] == strings
    assert isinstance(packed.buffer, np.ndarray)
