"""The demo's grounding mode, apart from the web page: which region does each phrase of a caption name?

All model logic is the model repository's own `phrase-grounding` pipeline (loaded with `trust_remote_code=True`):
phrases typed by the user (found in the caption) or the caption's noun chunks when the Space has spaCy, boxes typed by
the user or the model's own proposals. The picture shows each phrase's box in its own colour.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from demo_drawing import label_boxes
from PIL import Image
from region_demo import DemoInputError, format_box, parse_boxes

TYPED_BOXES = "Typed boxes"
PROPOSED_BOXES = "The model's own proposals"
GROUNDING_BOX_SOURCES = (PROPOSED_BOXES, TYPED_BOXES)
GROUNDING_HEADERS = ["phrase", "characters", "box (x1, y1, x2, y2)", "score"]
MAX_PHRASES = 20


def parse_phrases(text: str | None) -> list[str] | None:
    """Phrases typed one per line or separated by commas (None when blank: the caption's noun chunks)."""
    phrases = [phrase.strip() for phrase in re.split(r"[,\n]", text or "") if phrase.strip()]
    if len(phrases) > MAX_PHRASES:
        raise DemoInputError(f"Too many phrases: {len(phrases)} (at most {MAX_PHRASES}).")
    return phrases or None


@dataclass
class GroundingResult:
    """What the page shows: the image with each phrase's box, and one table row per phrase."""

    grounded_image: Image.Image
    table: list[list[str]]  # GROUNDING_HEADERS
    grounded: list[dict[str, Any]]  # the pipeline's answers


class GroundingDemo:
    """Phrase grounding with the model's `phrase-grounding` pipeline."""

    def __init__(self, grounder: Any):
        self.grounder = grounder

    def run(
        self,
        image: Image.Image | None,
        caption: str,
        phrases_text: str = "",
        boxes_text: str = "",
        box_source: str = "",
    ) -> GroundingResult:
        if image is None:
            raise DemoInputError("Upload an image first.")
        if not (caption or "").strip():
            raise DemoInputError("Type a caption: the phrases to ground are taken from it.")
        if box_source not in GROUNDING_BOX_SOURCES:
            raise DemoInputError(f"Unknown box source {box_source!r}; choose one of {list(GROUNDING_BOX_SOURCES)}.")
        image = self.grounder.read_image(image)
        boxes = None
        if box_source == TYPED_BOXES:
            boxes = parse_boxes(boxes_text, image.width, image.height)
            if not boxes:
                raise DemoInputError("Type at least one box, one per line as x1, y1, x2, y2, or let the model propose.")
        try:
            grounded = self.grounder(image, caption=caption, phrases=parse_phrases(phrases_text), boxes=boxes)
        except ValueError as error:  # the pipeline's one-line message names what to change
            raise DemoInputError(str(error)) from None
        pixel_boxes = [[item["box"][key] for key in ("xmin", "ymin", "xmax", "ymax")] for item in grounded]
        picture = label_boxes(image, pixel_boxes, [f"{item['phrase']} {item['score']:.2f}" for item in grounded])
        table = [
            [item["phrase"], f"{item['span'][0]}-{item['span'][1]}", format_box(box), f"{item['score']:.3f}"]
            for item, box in zip(grounded, pixel_boxes)
        ]
        return GroundingResult(picture, table, grounded)
