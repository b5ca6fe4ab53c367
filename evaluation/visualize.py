"""Pictures of what a model sees, written as PNG at the size of the input image.

- `draw_boxes`: boxes with their predicted labels (and scores) drawn on an image;
- `draw_heatmap`: a similarity map (h, w) upsampled to the image and overlaid as a colour map;
- `save_query_heatmap`: the dense map of an image for a label: its similarity (`pipeline_harmoclip.dense_similarity`)
  or its probability among candidate labels (`dense_probabilities`);
- `save_box_predictions`: classify given boxes among class names with the `region-classification` pipeline and draw
  them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from modeling_harmoclip.pipeline_harmoclip import (
    DEFAULT_TEMPLATES,
    RegionClassificationPipeline,
    dense_probabilities,
    dense_similarity,
)

# Distinct colours cycled over boxes (matplotlib's tab10).
BOX_COLOURS = [tuple(int(255 * c) for c in colormaps["tab10"](i)[:3]) for i in range(10)]


def _save_png(image: Image.Image, out_path: str | Path | None) -> None:
    if out_path is None:
        return
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".png":
        raise ValueError(f"`out_path` must end in .png, got {out_path}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = out_path.with_name(f".{out_path.name}.tmp")
    image.save(temporary, format="PNG")
    temporary.replace(out_path)


def draw_boxes(
    image: Image.Image,
    boxes: Sequence[Sequence[float]],
    labels: Sequence[str],
    scores: Sequence[float] | None = None,
    out_path: str | Path | None = None,
    line_width: int = 2,
) -> Image.Image:
    """Draws each box (xyxy, in `image`'s pixels) with its label (and score) on a copy of `image`.

    The label sits on a filled strip just above the box's top edge, or just inside it when the box touches the
    image's top. Returns the RGB picture; also writes it as PNG when `out_path` is given.
    """
    if len(labels) != len(boxes):
        raise ValueError(f"`labels` must have one entry per box ({len(boxes)}), got {len(labels)}")
    if scores is not None and len(scores) != len(boxes):
        raise ValueError(f"`scores` must have one entry per box ({len(boxes)}), got {len(scores)}")
    picture = image.convert("RGB").copy()
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    for index, box in enumerate(boxes):
        if len(box) != 4 or not box[2] > box[0] or not box[3] > box[1]:
            raise ValueError(f"`boxes`[{index}] must be [x1, y1, x2, y2] with x2 > x1 and y2 > y1, got {list(box)}")
        colour = BOX_COLOURS[index % len(BOX_COLOURS)]
        x1, y1, x2, y2 = (float(value) for value in box)
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=line_width)
        text = labels[index] if scores is None else f"{labels[index]} {scores[index]:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        text_height = bottom - top + 2
        text_y = y1 - text_height if y1 - text_height >= 0 else y1 + line_width
        draw.rectangle([x1, text_y, x1 + right - left + 3, text_y + text_height], fill=colour)
        draw.text((x1 + 2 - left, text_y + 1 - top), text, fill=(255, 255, 255), font=font)
    _save_png(picture, out_path)
    return picture


def upsample_map(similarity: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(h, w) map -> (H, W) by bilinear interpolation; `size` is (H, W)."""
    if not isinstance(similarity, torch.Tensor) or similarity.dim() != 2:
        raise ValueError(
            f"`similarity` must be a (h, w) tensor, got {getattr(similarity, 'shape', type(similarity).__name__)}"
        )
    return F.interpolate(similarity[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]


def draw_heatmap(
    image: Image.Image,
    similarity: torch.Tensor,
    out_path: str | Path | None = None,
    alpha: float = 0.6,
    colour_map: str = "inferno",
) -> Image.Image:
    """Overlays a (h, w) similarity map, min-max scaled and upsampled to the image, as a colour map.

    With the default ``inferno`` map, brighter means more similar. Returns the RGB picture (the image's size); also
    writes it as PNG when `out_path` is given.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1], got {alpha}")
    picture = image.convert("RGB")
    width, height = picture.size
    heat = upsample_map(similarity.detach().cpu(), (height, width))
    heat = (heat - heat.min()) / (heat.max() - heat.min()).clamp(min=1e-12)
    coloured = torch.from_numpy(colormaps[colour_map](heat.numpy())[..., :3]).float()  # (H, W, 3) in [0, 1]
    base = torch.from_numpy(np.asarray(picture).copy()).float() / 255.0
    blended = ((1.0 - alpha) * base + alpha * coloured).clamp(0, 1)
    result = Image.fromarray((blended * 255.0).round().to(torch.uint8).numpy(), mode="RGB")
    _save_png(result, out_path)
    return result


def save_query_heatmap(
    model: torch.nn.Module,
    processor: Any,
    image: Image.Image,
    query: str,
    out_path: str | Path,
    alpha: float = 0.6,
    candidate_labels: Sequence[str] | None = None,
) -> torch.Tensor:
    """Writes the heatmap of `image` for the label `query` as PNG and returns its (h, w) map.

    Without `candidate_labels`: the cosine similarity of each patch with the label (`dense_similarity`). With them:
    the label's probability among the candidates at each patch (`dense_probabilities`; `query` is added when absent),
    which lights the patches that are this label rather than another one.
    """
    image = image.convert("RGB")
    if candidate_labels is None:
        heat = dense_similarity(model, processor, image, [query])[0]
    else:
        labels = list(candidate_labels) + ([] if query in candidate_labels else [query])
        heat = dense_probabilities(model, processor, image, labels)[labels.index(query)]
    draw_heatmap(image, heat, out_path, alpha)
    return heat


def save_box_predictions(
    model: torch.nn.Module,
    processor: Any,
    image: Image.Image,
    boxes: Sequence[Sequence[float]],
    class_names: Sequence[str],
    out_path: str | Path,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> tuple[list[str], list[float]]:
    """Classifies `boxes` (xyxy, image pixels) among `class_names` with the `region-classification` pipeline and
    writes them with their best label and its probability as PNG. Returns the labels and the probabilities."""
    image = image.convert("RGB")
    classifier = RegionClassificationPipeline(model=model, processor=processor, device=next(model.parameters()).device)
    regions = classifier(
        image,
        boxes=[list(map(float, box)) for box in boxes],
        candidate_labels=list(class_names),
        templates=templates,
        top_k=1,
    )
    names, scores = [region["label"] for region in regions], [region["score"] for region in regions]
    draw_boxes(
        image,
        [[region["box"][key] for key in ("xmin", "ymin", "xmax", "ymax")] for region in regions],
        names,
        scores,
        out_path,
    )
    return names, scores


__all__ = ["draw_boxes", "upsample_map", "draw_heatmap", "save_query_heatmap", "save_box_predictions"]


def draw_grounding(
    image: Image.Image,
    caption: str,
    grounded: Sequence[dict[str, Any]],
    out_path: str | Path | None = None,
    scale: float = 1.0,
) -> Image.Image:
    """Phrase grounding drawn: each phrase's box (the `phrase-grounding` pipeline's results, boxes in `image`'s
    pixels before `scale`) in its own colour, labelled with the phrase, and the caption written below the image with
    each phrase in its box's colour. Returns the RGB picture; also writes it as PNG when `out_path` is given."""
    boxes = [[item["box"][key] * scale for key in ("xmin", "ymin", "xmax", "ymax")] for item in grounded]
    picture = draw_boxes(image, boxes, [item["phrase"] for item in grounded], [item["score"] for item in grounded])
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(picture)
    line_height = probe.textbbox((0, 0), "Ag", font=font)[3] + 4
    # The caption in pieces: plain text, and each phrase in its colour; wrapped to the picture's width.
    colours = {tuple(item["span"]): BOX_COLOURS[index % len(BOX_COLOURS)] for index, item in enumerate(grounded)}
    pieces, cursor = [], 0
    for start, end in sorted(colours):
        pieces += [(caption[cursor:start], (0, 0, 0)), (caption[start:end], colours[(start, end)])]
        cursor = end
    pieces.append((caption[cursor:], (0, 0, 0)))
    # Words with their following spaces, so punctuation right after a phrase stays attached to it.
    words = [(word, colour) for text, colour in pieces for word in re.findall(r"\S+\s*|\s+", text)]
    lines: list[list[tuple[str, tuple[int, int, int]]]] = [[]]
    width = 4
    for word, colour in words:
        word_width = probe.textlength(word, font=font)
        if width + probe.textlength(word.rstrip(), font=font) > picture.width - 4 and lines[-1]:
            lines.append([])
            width = 4
        lines[-1].append((word, colour))
        width += word_width
    framed = Image.new("RGB", (picture.width, picture.height + line_height * len(lines) + 6), (255, 255, 255))
    framed.paste(picture, (0, 0))
    draw = ImageDraw.Draw(framed)
    for row, line in enumerate(lines):
        x = 4.0
        for word, colour in line:
            draw.text((x, picture.height + 4 + row * line_height), word, fill=colour, font=font)
            x += draw.textlength(word, font=font)
    _save_png(framed, out_path)
    return framed
