"""Flickr30k Entities: captions with marked phrases linked exactly to their boxes.

Layout (as distributed): `Sentences/<image id>.txt`, five captions a line each, phrases marked as
`[/EN#<entity id>/<type>[/<type>...] words of the phrase]`, e.g.
`[/EN#255542/people A bearded man] , and [/EN#255543/people a girl] in [/EN#255550/clothing a red dress] .`;
`Annotations/<image id>.xml`, PASCAL-VOC-like: `<size>` and one `<object>` per box with one or more `<name>`
(entity ids sharing the box, e.g. "a couple" and each of its two people) and `<bndbox>` with 1-based inclusive pixel
coordinates `<xmin>`...`<ymax>`, or, for entities without a box, `<nobndbox>`/`<scene>` flags; images in
`flickr30k-images/<image id>.jpg`. Entity id 0 marks non-visual mentions.

A box is linked to the first phrase of the sampled caption that mentions one of its entities; boxes of entities the
caption does not mention stay unlinked (GR still uses them). Files are read per image in `__getitem__`.

A linked box's category (the negatives LRC leaves out) is its mention's entity type (`category="type"`, the default:
"a man" and "a person" are both `people`; the catch-all type `other` is no category), or its coreference chain
(`category="chain"`: the entity id within the image, finer than the phrase text only where a box belongs to
several entities).
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np

# The files' parsers live with the grounding evaluation (which may not import training); named here as before.
from evaluation.flickr30k_entities import (  # noqa: F401
    EntityBox,
    EntityMention,
    parse_entity_annotation,
    parse_entity_sentence,
)

from .data_common import Region, RegionDataset, RegionSample, SampleError, choose_caption

FLICKR_CATEGORIES = ("type", "chain")
# Entity types that name no particular kind of thing, so never make two regions "the same category".
CATCH_ALL_TYPES = frozenset({"other", "notvisual"})


class Flickr30kEntitiesDataset(RegionDataset):
    """Flickr30k Entities images, one sampled caption each, boxes linked to the caption's marked phrases.

    `root` holds `Sentences/`, `Annotations/` and `flickr30k-images/` (each may be given apart); `split_file` lists
    the image ids to use (the distribution's train.txt / val.txt / test.txt), else every sentence file is used.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        sentences_dir: str | Path | None = None,
        annotations_dir: str | Path | None = None,
        image_dir: str | Path | None = None,
        split_file: str | Path | None = None,
        image_extension: str = ".jpg",
        category: str = "type",
        **options,
    ):
        super().__init__(**options)
        if category not in FLICKR_CATEGORIES:
            raise ValueError(
                f"Flickr30kEntitiesDataset: `category` must be one of {FLICKR_CATEGORIES}, got {category!r}"
            )
        self.category = category
        if root is None and None in (sentences_dir, annotations_dir, image_dir):
            raise ValueError("give root, or all of sentences_dir, annotations_dir and image_dir")
        root = Path(root) if root is not None else None
        self.sentences_dir = Path(sentences_dir) if sentences_dir is not None else root / "Sentences"
        self.annotations_dir = Path(annotations_dir) if annotations_dir is not None else root / "Annotations"
        self.image_dir = Path(image_dir) if image_dir is not None else root / "flickr30k-images"
        self.image_extension = image_extension
        if split_file is not None:
            ids = [line.strip() for line in Path(split_file).read_text().splitlines() if line.strip()]
        else:
            if not self.sentences_dir.is_dir():
                raise FileNotFoundError(f"sentences folder not found: {self.sentences_dir}")
            ids = sorted(path.stem for path in self.sentences_dir.glob("*.txt"))
        self.image_ids = np.asarray(ids, dtype=str)

    def __len__(self) -> int:
        return len(self.image_ids)

    def describe(self, index: int) -> str:
        return str(self.sentences_dir / f"{self.image_ids[index]}.txt")

    def load(self, index: int, rng: np.random.Generator) -> RegionSample:
        image_id = str(self.image_ids[index])
        sentence_path = self.sentences_dir / f"{image_id}.txt"
        lines = [line for line in sentence_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise SampleError("no captions", path=str(sentence_path))
        number = choose_caption(lines, rng)
        try:
            caption, mentions = parse_entity_sentence(lines[number])
        except ValueError as error:
            raise SampleError(f"caption {number + 1}: {error}", path=str(sentence_path)) from None
        annotation_path = self.annotations_dir / f"{image_id}.xml"
        try:
            entity_boxes = parse_entity_annotation(annotation_path)
        except (ElementTree.ParseError, ValueError) as error:
            raise SampleError(f"malformed annotation: {error}", path=str(annotation_path)) from None

        regions = []
        for box_index, entity_box in enumerate(entity_boxes):
            mention = next((m for m in mentions if m.entity_id in entity_box.entity_ids), None)
            span = (mention.start, mention.end) if mention is not None else None
            label = mention.types[0] if mention is not None else None
            regions.append(Region(entity_box.box, span, box_index, label, self._category(image_id, mention)))
        return self.make_sample(self.image_dir / f"{image_id}{self.image_extension}", image_id, caption, regions)

    def _category(self, image_id: str, mention: EntityMention | None) -> str | None:
        """The category key of a box linked to `mention` (None: unlinked, or only a catch-all type)."""
        if mention is None:
            return None
        if self.category == "chain":
            return f"chain:{image_id}/{mention.entity_id}"
        types = [kind for kind in mention.types if kind not in CATCH_ALL_TYPES]
        return f"type:{types[0]}" if types else None
