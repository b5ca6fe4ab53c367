"""What the demo computes, apart from the web page: input parsing, the model calls, and the pictures and tables.

All model logic comes from the model repository's own code, its pipelines loaded with `trust_remote_code=True`: the
`region-classification` call classifies the boxes, its `encode_labels` gives the prompt-ensembled label embeddings and
its `dense_probabilities` the heatmaps; the `zero-shot-object-detection` call finds the objects when only labels are
typed (proposals from the model's own label maps); `model.get_image_features` gives the global ranking. The
pipelines' processor resizes images to a square without cropping, so every box, the global ranking and the heatmap
see the whole image.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from box_proposals import grid_boxes
from demo_drawing import label_boxes, overlay_heatmap
from PIL import Image, ImageOps

TYPED_BOXES = "Typed boxes"
GRID_BOXES = "Grid"
FOUND_OBJECTS = "Find objects (labels only)"
BOX_SOURCES = (TYPED_BOXES, GRID_BOXES, FOUND_OBJECTS)
FIND_THRESHOLD = 0.3  # the least score of an object found with no boxes given
MAX_BOXES = 64
MAX_LABELS = 100
TABLE_HEADERS = ["box (x1, y1, x2, y2)", "top labels", "scores"]


class DemoInputError(ValueError):
    """Input the demo cannot use; its message is shown in the page as it is."""


def parse_labels(text: str | None) -> list[str]:
    """Candidate labels, one per line or separated by commas; blanks dropped, repeats kept once (first wins)."""
    labels = [label.strip() for label in re.split(r"[,\n]", text or "")]
    labels = list(dict.fromkeys(label for label in labels if label))
    if not labels:
        raise DemoInputError("Enter at least one candidate label (one per line, or separated by commas).")
    if len(labels) > MAX_LABELS:
        raise DemoInputError(f"Too many labels: {len(labels)} (at most {MAX_LABELS}).")
    return labels


def parse_boxes(text: str | None, width: int, height: int) -> list[list[float]]:
    """Boxes typed one per line as `x1, y1, x2, y2` in the image's pixels (brackets and blank lines allowed).

    Each box must lie inside the `width` x `height` image with x1 < x2 and y1 < y2.
    """
    boxes = []
    for number, line in enumerate((text or "").splitlines(), start=1):
        content = line.strip().strip("[]()").strip()
        if not content:
            continue
        parts = [part for part in re.split(r"[,\s]+", content) if part]
        try:
            values = [float(part) for part in parts]
        except ValueError:
            raise DemoInputError(
                f"Box line {number} ({line.strip()!r}): expected four numbers `x1, y1, x2, y2`."
            ) from None
        if len(values) != 4 or not all(math.isfinite(value) for value in values):
            raise DemoInputError(
                f"Box line {number} ({line.strip()!r}): expected four numbers `x1, y1, x2, y2`, got {len(values)}."
            )
        x1, y1, x2, y2 = values
        if not (x2 > x1 and y2 > y1):
            raise DemoInputError(f"Box line {number} ({line.strip()!r}): needs x1 < x2 and y1 < y2.")
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            raise DemoInputError(
                f"Box line {number} ({line.strip()!r}) reaches outside the image, which is {width} x {height} pixels "
                f"(x from 0 to {width}, y from 0 to {height})."
            )
        boxes.append(values)
    if len(boxes) > MAX_BOXES:
        raise DemoInputError(f"Too many boxes: {len(boxes)} (at most {MAX_BOXES}).")
    return boxes


def format_box(box: list[float]) -> str:
    return ", ".join(f"{value:g}" for value in (round(value, 1) for value in box))


@dataclass
class DemoResult:
    """Everything the page shows for one image."""

    labelled_image: Image.Image  # the image with each box and its best label and score
    table: list[list[str]]  # one row per box: TABLE_HEADERS
    ranking: dict[str, float]  # zero-shot probability of each label for the whole image
    heatmap: Image.Image  # probability of `heatmap_label` among the labels at each patch, overlaid
    heatmap_label: str
    boxes: list[list[float]]  # xyxy, image pixels (typed or proposed)


class RegionDemo:
    """Region classification, global zero-shot ranking and dense heatmaps with one `region-classification` pipeline."""

    def __init__(self, classifier: Any, detector: Any = None):
        self.classifier = classifier
        self.detector = detector  # the model's `zero-shot-object-detection` pipeline, for FOUND_OBJECTS
        self.find_threshold = FIND_THRESHOLD
        self.model = classifier.model.eval()
        self.processor = classifier.processor  # the region preset: square resize, no crop

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device  # the Space has the model's code only through the pipeline

    def read_image(self, image: Image.Image) -> Image.Image:
        """`image` in the frame the pipeline reads it (upright: EXIF orientation applied, RGB). A model published before
        its pipeline had `read_image` gets the same frame from PIL directly."""
        reader = getattr(self.classifier, "read_image", None)
        return reader(image) if reader is not None else ImageOps.exif_transpose(image).convert("RGB")

    @torch.no_grad()
    def rank_labels(self, image: Image.Image, labels: list[str]) -> dict[str, float]:
        """Zero-shot probabilities of `labels` for the whole image (softmax at the model's temperature), best first."""
        pixel_values = self.processor(images=image, return_tensors="pt")["pixel_values"].to(self.device)
        image_embed = self.model.get_image_features(pixel_values=pixel_values)
        image_embed = torch.nn.functional.normalize(getattr(image_embed, "pooler_output", image_embed).float(), dim=-1)
        label_embeds = self.classifier.encode_labels(labels)
        probabilities = self.classifier.label_probabilities(image_embed, label_embeds)[0].cpu()
        order = probabilities.argsort(descending=True).tolist()
        return {labels[index]: float(probabilities[index]) for index in order}

    def similarity_map(self, image: Image.Image, query: str) -> np.ndarray:
        """(h, w) cosine similarity of each patch embedding with the prompt-ensembled embedding of `query`."""
        return self.classifier.dense_similarity(image, [query])[0].numpy()

    def probability_map(self, image: Image.Image, query: str, labels: list[str]) -> np.ndarray:
        """(h, w) probability of `query` among `labels` (plus `query` when it is not one) at each patch: the heatmap.
        Unlike the raw similarity, what all labels share (e.g. a plain background) cancels."""
        candidates = labels if query in labels else [*labels, query]
        return self.classifier.dense_probabilities(image, candidates)[candidates.index(query)].numpy()

    def find_objects(self, image: Image.Image, labels: list[str]) -> list[list[float]]:
        """Boxes (image pixels) of the objects the detection pipeline finds among `labels` (scoring at least
        `find_threshold`), best first, at most 8."""
        if self.detector is None:
            raise DemoInputError("This demo was started without the detection pipeline: type boxes or use the grid.")
        found = self.detector(image, candidate_labels=labels, threshold=self.find_threshold, top_k=8)
        if not found:
            raise DemoInputError(
                f"No object scores {self.find_threshold} or more among these labels: try other labels, or type boxes."
            )
        return [[item["box"][key] for key in ("xmin", "ymin", "xmax", "ymax")] for item in found]

    def propose_boxes(
        self, image: Image.Image, source: str, boxes_text: str | None, grid_cells: int, labels: list[str] = ()
    ) -> list[list[float]]:
        width, height = image.size
        if source == TYPED_BOXES:
            boxes = parse_boxes(boxes_text, width, height)
            if not boxes:
                raise DemoInputError(
                    "Type at least one box as `x1, y1, x2, y2` (one per line), or pick automatic boxes."
                )
            return boxes
        if source == GRID_BOXES:
            return grid_boxes(width, height, int(grid_cells))
        if source == FOUND_OBJECTS:
            return self.find_objects(image, list(labels))
        raise DemoInputError(f"Unknown box source {source!r}: choose one of {', '.join(BOX_SOURCES)}.")

    def run(
        self,
        image: Image.Image | np.ndarray | None,
        labels_text: str | None,
        boxes_text: str | None = None,
        box_source: str = TYPED_BOXES,
        grid_cells: int = 3,
        heatmap_label: str | None = None,
        top_k: int = 3,
    ) -> DemoResult:
        """Classifies the boxes (typed, or proposed automatically) among the labels and draws the results.

        Raises `DemoInputError` with a readable message for unusable input. `heatmap_label` defaults to the label
        ranked first for the whole image.
        """
        if image is None:
            raise DemoInputError("Upload an image first.")
        image = Image.fromarray(np.asarray(image)) if not isinstance(image, Image.Image) else image
        # The pipeline's own reading (upright: EXIF orientation applied, RGB): boxes are typed, checked and drawn in
        # the frame the model sees.
        image = self.read_image(image)
        labels = parse_labels(labels_text)
        if box_source == TYPED_BOXES:
            parse_boxes(boxes_text, *image.size)  # report malformed lines before any model call
        boxes = self.propose_boxes(image, box_source, boxes_text, grid_cells, labels)
        regions = self.classifier(image, boxes=boxes, candidate_labels=labels, top_k=min(int(top_k), len(labels)))
        boxes = [[region["box"][key] for key in ("xmin", "ymin", "xmax", "ymax")] for region in regions]  # image pixels
        captions = [f"{region['label']} {region['score']:.2f}" for region in regions]
        table = [
            [format_box(box), ", ".join(region["labels"]), ", ".join(f"{score:.3f}" for score in region["scores"])]
            for box, region in zip(boxes, regions)
        ]
        ranking = self.rank_labels(image, labels)
        query = (heatmap_label or "").strip() or next(iter(ranking))
        heatmap = overlay_heatmap(image, self.probability_map(image, query, labels))
        return DemoResult(label_boxes(image, boxes, captions), table, ranking, heatmap, query, boxes)
