"""The Flickr30k Entities source on Sentences/ and Annotations/ files in the distribution's format."""

import pytest

from data_files import WEDDING, WEDDING_XML, write_flickr
from training.data.data_common import SampleError, SkippedSample
from training.data.data_flickr30k import (
    EntityBox,
    EntityMention,
    Flickr30kEntitiesDataset,
    parse_entity_annotation,
    parse_entity_sentence,
)


def test_sentence_markup_to_clean_caption_and_spans():
    caption, mentions = parse_entity_sentence(WEDDING[0])
    assert caption == "A bearded man , and a girl in a red dress are getting married ."
    assert [caption[m.start : m.end] for m in mentions] == ["A bearded man", "a girl", "a red dress"]
    assert mentions[0] == EntityMention(0, 13, "255542", ("people",))
    caption, mentions = parse_entity_sentence(
        "[/EN#1/bodyparts/people a man 's arm]  [/EN#0/notvisual  it]  [/EN#5/other x]"
    )
    assert caption == "a man 's arm it x"
    assert [(m.entity_id, m.types, caption[m.start : m.end]) for m in mentions] == [
        ("1", ("bodyparts", "people"), "a man 's arm"),
        ("0", ("notvisual",), "it"),
        ("5", ("other",), "x"),
    ]
    for broken in ("[/EN#3/people a man walks", "[/EN#/people a man]", "[/EN#3/people ] walks"):
        with pytest.raises(ValueError):
            parse_entity_sentence(broken)


def test_annotation_boxes_from_one_based_inclusive_pixels(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(WEDDING_XML)
    boxes = parse_entity_annotation(path)
    assert boxes[0] == EntityBox((0.0, 0.0, 40.0, 80.0), ("255542", "255544"))
    assert boxes[2] == EntityBox((55.0, 40.0, 85.0, 80.0), ("255550",))
    assert len(boxes) == 4  # the scene entity has no box


def test_phrases_linked_exactly_to_their_boxes(tmp_path):
    root = write_flickr(tmp_path)
    dataset = Flickr30kEntitiesDataset(root, min_box_size=0)
    assert len(dataset) == 1
    seen = set()
    for epoch in range(30):
        dataset.set_epoch(epoch)
        sample = dataset[0]
        seen.add(sample.caption)
        assert sample.image_id == "65567" and sample.image.size == (100, 80)
        assert sample.boxes == [[0, 0, 40, 80], [50, 10, 90, 80], [55, 40, 85, 80], [90, 0, 100, 20]]
        assert sample.box_indices == [0, 1, 2, 3]
        if sample.caption.startswith("A bearded"):
            assert sample.phrases == ["A bearded man", "a girl", "a red dress", None]
            assert sample.labels == ["people", "people", "clothing", None]
        else:  # "The couple" is both people's boxes; the building (scene) has none
            assert sample.caption == "The couple walks out of a building ."
            assert sample.phrase_spans == [(0, 10), (0, 10), None, None]
    assert len(seen) == 2


def test_categories_are_entity_types_or_chains(tmp_path):
    root = write_flickr(tmp_path)
    by_type = Flickr30kEntitiesDataset(root, min_box_size=0)
    by_chain = Flickr30kEntitiesDataset(root, min_box_size=0, category="chain")
    for epoch in range(30):
        by_type.set_epoch(epoch)
        by_chain.set_epoch(epoch)
        typed, chained = by_type[0], by_chain[0]
        if typed.caption.startswith("A bearded"):  # "A bearded man" and "a girl" are both people
            assert typed.categories == ["type:people", "type:people", "type:clothing", None]
            assert chained.categories == ["chain:65567/255542", "chain:65567/255543", "chain:65567/255550", None]
        else:  # both boxes of "The couple" belong to its chain
            assert typed.categories == ["type:people", "type:people", None, None]
            assert chained.categories == ["chain:65567/255544", "chain:65567/255544", None, None]
    # The catch-all type names no kind of thing: no category, so LRC falls back to the phrase text.
    assert by_type._category("1", EntityMention(0, 5, "7", ("other",))) is None
    assert by_type._category("1", EntityMention(0, 5, "7", ("other", "animals"))) == "type:animals"
    with pytest.raises(ValueError, match="`category` must be one of"):
        Flickr30kEntitiesDataset(root, category="kind")


def test_split_file_folders_and_skips(tmp_path):
    root = write_flickr(tmp_path)
    write_flickr(root, image_id="111", image=False)  # image missing
    write_flickr(root, sentences=["[/EN#1/people a man walks"], image_id="222")  # unclosed phrase
    write_flickr(root, xml="<annotation><object>", image_id="333")  # broken XML
    split = tmp_path / "train.txt"
    split.write_text("65567\n111\n222\n333\n444\n")
    dataset = Flickr30kEntitiesDataset(
        sentences_dir=root / "Sentences",
        annotations_dir=root / "Annotations",
        image_dir=root / "flickr30k-images",
        split_file=split,
    )
    samples = [dataset[i] for i in range(len(dataset))]
    assert not isinstance(samples[0], SkippedSample)
    assert all(isinstance(s, SkippedSample) for s in samples[1:])
    assert samples[1].path.endswith("111.jpg") and "cannot read image" in samples[1].reason
    assert samples[2].path.endswith("Sentences/222.txt") and "not closed" in samples[2].reason
    assert samples[3].path.endswith("Annotations/333.xml") and "malformed annotation" in samples[3].reason
    assert samples[4].path.endswith("Sentences/444.txt") and "FileNotFoundError" in samples[4].reason
    with pytest.raises(SampleError, match="222.txt"):
        Flickr30kEntitiesDataset(root, split_file=split, strict=True)[2]
    with pytest.raises(ValueError, match="root"):
        Flickr30kEntitiesDataset(sentences_dir=root / "Sentences")
