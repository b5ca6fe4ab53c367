"""Flickr30k Entities' files: marked-up sentences (`Sentences/<image id>.txt`) and box annotations
(`Annotations/<image id>.xml`), parsed into exact character spans and pixel boxes. Read by training's data set
(training/data/data_flickr30k.py, which describes the layout) and by the grounding evaluation (evaluation/grounding.py).
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EntityMention:
    """A marked phrase: `caption[start:end]` mentions entity `entity_id` (coarse `types`, e.g. ("people",))."""

    start: int
    end: int
    entity_id: str
    types: tuple[str, ...]


@dataclass
class EntityBox:
    """One `<object>` of an annotation file: [x1, y1, x2, y2] in pixels (continuous, x2/y2 exclusive) and the
    entities it belongs to."""

    box: tuple[float, float, float, float]
    entity_ids: tuple[str, ...]


def parse_entity_sentence(line: str) -> tuple[str, list[EntityMention]]:
    """A marked-up sentence -> (clean caption with single spaces between words, mentions with exact spans)."""
    words: list[str] = []
    mentions: list[EntityMention] = []
    open_mention: tuple[int, str, tuple[str, ...]] | None = None  # (first word index, entity id, types)
    position = 0  # characters of the clean caption so far, including the separating spaces

    def add_word(word: str) -> int:
        nonlocal position
        if words:
            position += 1
        start = position
        words.append(word)
        position += len(word)
        return start

    starts: list[int] = []
    for token in line.split():
        if open_mention is None and token.startswith("[/EN#"):
            parts = token[1:].split("/")  # ["", "EN#123", "people", ...]
            entity_id = parts[1][3:]
            if not entity_id or len(parts) < 3:
                raise ValueError(f"malformed phrase marker {token!r}")
            open_mention = (len(words), entity_id, tuple(parts[2:]))
            continue
        closes = open_mention is not None and token.endswith("]")
        word = token[:-1] if closes else token
        if word:
            starts.append(add_word(word))
        if closes:
            first, entity_id, types = open_mention
            if first == len(words):
                raise ValueError(f"empty phrase for entity {entity_id}")
            mentions.append(EntityMention(starts[first], position, entity_id, types))
            open_mention = None
    if open_mention is not None:
        raise ValueError(f"phrase for entity {open_mention[1]} is not closed with ']'")
    return " ".join(words), mentions


def parse_entity_annotation(path: str | Path) -> list[EntityBox]:
    """The boxes of an `Annotations/<id>.xml` file, in file order (entities without a box are left out)."""
    root = ElementTree.parse(path).getroot()
    boxes = []
    for number, element in enumerate(root.iter("object")):
        names = tuple(name.text.strip() for name in element.findall("name") if name.text and name.text.strip())
        bndbox = element.find("bndbox")
        if bndbox is None:
            continue
        try:
            xmin, ymin, xmax, ymax = (float(bndbox.find(tag).text) for tag in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"object {number} has an incomplete or non-numeric <bndbox>") from None
        # 1-based inclusive pixel indices -> continuous coordinates: pixel i covers [i - 1, i].
        boxes.append(EntityBox((xmin - 1.0, ymin - 1.0, xmax, ymax), names))
    return boxes
