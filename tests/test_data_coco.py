"""The COCO source on annotation files in COCO's format, with real images and the real spaCy pipeline."""

import json

import pytest

from data_files import write_coco
from training.data.coco_synonyms import COCO_SYNONYMS
from training.data.data_coco import CategoryMatcher, CocoRegionDataset
from training.data.data_common import SkippedSample


@pytest.fixture
def coco(tmp_path):
    return write_coco(tmp_path)


def by_id(dataset):
    return {
        dataset[i].image_id if not isinstance(dataset[i], SkippedSample) else "skipped": dataset[i]
        for i in range(len(dataset))
    }


def test_boxes_categories_and_links(coco):
    dataset = CocoRegionDataset(*coco, min_box_size=4)
    assert len(dataset) == 4  # images with captions
    samples = by_id(dataset)
    street = samples["42"]
    assert street.caption == "A man and a woman walk two dogs past a red car."
    assert street.path.endswith("000000000042.jpg") and street.image.size == (120, 100)
    # xywh -> xyxy, crowd dropped, the 2x2 dog dropped and counted
    assert street.boxes == [[60, 0, 80, 40], [0, 0, 50, 80], [10, 70, 30, 90], [90, 60, 115, 90], [30, 50, 70, 80]]
    assert street.box_indices == [0, 1, 2, 3, 5]
    assert street.num_small_boxes_dropped == 1
    assert street.labels == ["person", "person", "dog", "dog", "car"]
    assert street.categories == street.labels  # "a woman" and "A man" share a category: LRC does not push them apart
    # the larger person is "A man", the other "a woman"; the plural "two dogs" takes both dogs
    assert street.phrases == ["a woman", "A man", "two dogs", "two dogs", "a red car"]

    food = samples["7"]
    assert food.labels == ["person", "dog", "hot dog", "teddy bear"]
    assert food.phrases == ["A boy", None, "a hot dog", "a teddy bear"]

    empty = samples["9"]
    assert empty.boxes == [] and empty.caption in ("An empty street.", "A quiet road at night.")  # spaces folded

    missing = samples["skipped"]
    assert missing.path.endswith("000000000013.jpg") and "cannot read image" in missing.reason


def test_max_boxes_prefers_linked(coco):
    dataset = CocoRegionDataset(*coco, max_boxes=2)
    food = by_id(dataset)["7"]
    # three linked boxes (person, hot dog, teddy bear) and an unlinked dog: the two largest linked ones stay
    assert food.labels == ["person", "teddy bear"] and food.box_indices == [0, 3]
    assert food.phrases == ["A boy", "a teddy bear"] and food.num_boxes_over_limit == 2


def test_phrase_cache_written_once_and_equal_to_lazy(coco, tmp_path):
    cache = tmp_path / "cache" / "phrases.npz"
    cached = CocoRegionDataset(*coco, phrase_cache=cache)
    assert cache.is_file()
    stamp = cache.stat().st_mtime_ns
    lazy = CocoRegionDataset(*coco)
    for epoch in range(3):
        cached.set_epoch(epoch)
        lazy.set_epoch(epoch)
        for i in range(len(lazy)):
            a, b = cached[i], lazy[i]
            if isinstance(a, SkippedSample):
                assert a == b
            else:
                assert (a.caption, a.boxes, a.phrase_spans) == (b.caption, b.boxes, b.phrase_spans)
    CocoRegionDataset(*coco, phrase_cache=cache)
    assert cache.stat().st_mtime_ns == stamp  # reused, not rewritten
    assert [p.name for p in cache.parent.iterdir()] == ["phrases.npz"]  # no temporary file left


def test_phrase_cache_rebuilt_when_captions_change(tmp_path):
    first = tmp_path / "a"
    first.mkdir()
    cache = tmp_path / "phrases.npz"
    files = write_coco(first)
    CocoRegionDataset(*files, phrase_cache=cache)
    second = tmp_path / "b"
    second.mkdir()
    changed = write_coco(second, captions_42=("Two dogs and a person near a car.",))
    street = by_id(CocoRegionDataset(*changed, phrase_cache=cache))["42"]
    assert street.phrases == [None, "a person", "Two dogs", "Two dogs", "a car"]


def test_category_matcher():
    matcher = CategoryMatcher(COCO_SYNONYMS)
    assert len(COCO_SYNONYMS) == 80
    assert matcher("three hot dogs", "dog") == ["hot dog"]
    assert matcher("A teddy bear", "bear") == ["teddy bear"]
    assert matcher("a polar bear", "bear") == ["bear"]
    assert matcher("Two men", "man") == ["person"]
    assert matcher("the dining table", "table") == ["dining table"]
    assert matcher("a stop sign", "sign") == ["stop sign"]
    assert matcher("the sky", "sky") == []


def test_not_coco_files_are_rejected(tmp_path, coco):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [{"id": 1}], "annotations": []}))
    with pytest.raises(ValueError, match="bad.json"):
        CocoRegionDataset(bad, coco[1], coco[2])
