"""The pointing game: does a label's heatmap peak on the object? For every annotated box, the patch where the map of
the box's own label is highest is a hit when its centre falls inside the box (Zhang et al.'s pointing game, on
HarmoCLIP's dense maps). It measures what a heatmap picture shows, over a whole held-out split.

Two maps are scored: the raw cosine similarity of each patch with the label (`dense_similarity`) and the label's
probability among all the candidate labels (`dense_probabilities`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from evaluation.eval_data import BoxClassificationData, load_image
from modeling_harmoclip.modeling_harmoclip import similarity_probabilities
from modeling_harmoclip.pipeline_harmoclip import DEFAULT_TEMPLATES, dense_similarity, label_embeddings

MAP_KINDS = ("cosine", "probability")


def pointing_hits(
    maps: torch.Tensor, boxes: Sequence[Sequence[float]], label_indices: Sequence[int], image_size: tuple[int, int]
) -> list[bool]:
    """Per box: whether the peak of its label's map lies inside it.

    Args:
        maps: (L, h, w) one map per label over the patch grid, covering the whole image (no crop).
        boxes: N boxes ``[x1, y1, x2, y2]`` in the image's pixels; label_indices: N indices into the L maps.
        image_size: the image's (width, height) in pixels.
    Returns:
        N booleans: the centre of the highest patch (first one on ties) is inside the box, edges included.
    """
    if maps.dim() != 3:
        raise ValueError(f"`maps` must have shape (L, h, w), got {tuple(maps.shape)}")
    if len(boxes) != len(label_indices):
        raise ValueError(f"`boxes` and `label_indices` differ in length: {len(boxes)} and {len(label_indices)}")
    num_labels, height, width = maps.shape
    image_width, image_height = image_size
    hits = []
    for box, index in zip(boxes, label_indices):
        if not 0 <= index < num_labels:
            raise ValueError(f"`label_indices` holds {index}, outside the {num_labels} maps")
        row, column = divmod(int(maps[index].flatten().argmax()), width)
        x, y = (column + 0.5) * image_width / width, (row + 0.5) * image_height / height
        x1, y1, x2, y2 = (float(value) for value in box)
        hits.append(x1 <= x <= x2 and y1 <= y <= y2)
    return hits


@torch.no_grad()
def pointing_game(
    model: torch.nn.Module,
    processor: Any,
    data: BoxClassificationData,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> dict[str, Any]:
    """Pointing-game accuracy (percent) of both maps over the labelled boxes of `data` (e.g. `read_box_manifest`),
    each box's label scored among `data.class_names`.

    Returns:
        {"cosine": %, "probability": %, "num_boxes": N}.
    """
    if data.num_boxes == 0:
        raise ValueError(f"{data.source or 'the data'} holds no labelled boxes: the pointing game needs at least one")
    label_embeds = label_embeddings(model, processor.tokenizer, data.class_names, templates)  # encoded once
    hits: dict[str, int] = dict.fromkeys(MAP_KINDS, 0)
    for entry in data.images:
        image = load_image(entry.path)
        similarity = dense_similarity(model, processor, image, data.class_names, label_embeds=label_embeds)
        for kind, maps in (
            ("cosine", similarity),
            ("probability", similarity_probabilities(similarity, model.logit_scale.exp(), dim=0)),
        ):
            hits[kind] += sum(pointing_hits(maps, entry.boxes, entry.labels, image.size))
    return {**{kind: 100.0 * hits[kind] / data.num_boxes for kind in MAP_KINDS}, "num_boxes": data.num_boxes}


__all__ = ["MAP_KINDS", "pointing_hits", "pointing_game"]
