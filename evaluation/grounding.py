"""Phrase grounding: which box does each phrase of a caption name? Scored as the grounding literature reports it.

    python -m evaluation.evaluate --model PATH --task grounding --data flickr30k_entities/test.txt --image-root flickr30k-images
    python -m evaluation.evaluate --model PATH --task grounding --data outputs/synthetic/val.jsonl

Data:
- **Flickr30k Entities** (the field's benchmark): `--data` is a split file (`test.txt`, one image id a line) beside
  `Sentences/` and `Annotations/`, or one of those folders' parent; images in `--image-root` (default
  `flickr30k-images/` beside them). Every caption of every image, every marked phrase with at least one box.
- **A JSONL manifest** (`training/data/data_jsonl.py`'s format, COCO-style data with phrase-linked boxes, and the
  synthetic split): per record its caption and regions with `span` (or `spans`, one per caption, or a `phrase`
  looked up in the caption). A `held_out.json` beside the manifest (the synthetic set's held-out colour-shape
  combinations) splits the figures into seen and held-out phrases by their regions' `label`.

Figures, per phrase (a phrase linked to several boxes is right on any of them: the ANY-BOX protocol):
- `accuracy_annotated`: the image's annotated boxes are the candidates; right when the phrase picks one of its own;
- `accuracy_proposals_iou50`: the model's own proposals (the detection pipeline's) are the candidates; right when the
  chosen box overlaps one of the phrase's boxes with IoU >= 0.5;
- `chance_annotated`: the mean of 1 / (number of candidate boxes), what picking at random scores.

One image pass per image and candidate set; the phrase embeddings are the `phrase-grounding` pipeline's
(`pipeline_grounding.phrase_embeddings`, `ground_phrases`), so the evaluation scores what the pipeline returns.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from modeling_harmoclip.image_processing_harmoclip import box_iou
from modeling_harmoclip.pipeline_harmoclip import (
    PHRASE_TEMPLATES,
    background_embedding,
    check_phrase_mode,
    embed_phrases,
    ground_phrases,
)

from .embeddings import EvalMode
from .eval_data import load_image
from .flickr30k_entities import parse_entity_annotation, parse_entity_sentence

logger = logging.getLogger("evaluation.grounding")
IOU_THRESHOLD = 0.5
GROUPS = ("all", "seen", "held_out")


@dataclass
class GroundingCaption:
    """One caption of an image: its phrases' spans, each with the indices of its boxes among the image's boxes, and
    whether it names a held-out combination."""

    text: str
    spans: list[tuple[int, int]]
    targets: list[list[int]]
    held_out: list[bool]


@dataclass
class GroundingImage:
    path: Path
    boxes: list[list[float]]  # every annotated box of the image, pixels xyxy: the candidates
    captions: list[GroundingCaption] = field(default_factory=list)


@dataclass
class GroundingData:
    images: list[GroundingImage]
    source: str  # "flickr30k-entities" or "jsonl"
    has_held_out: bool

    @property
    def num_phrases(self) -> int:
        return sum(len(caption.spans) for image in self.images for caption in image.captions)


def read_flickr30k_entities(path: str | Path, image_root: str | Path | None = None) -> GroundingData:
    """Flickr30k Entities: `path` a split file beside `Sentences/` and `Annotations/`, or their parent folder."""
    path = Path(path)
    root = path if path.is_dir() else path.parent
    ids = (
        [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if path.is_file()
        else sorted(p.stem for p in (root / "Sentences").glob("*.txt"))
    )
    image_dir = Path(image_root) if image_root is not None else root / "flickr30k-images"
    images = []
    for image_id in ids:
        entity_boxes = parse_entity_annotation(root / "Annotations" / f"{image_id}.xml")
        image = GroundingImage(image_dir / f"{image_id}.jpg", [list(entity.box) for entity in entity_boxes])
        lines = (root / "Sentences" / f"{image_id}.txt").read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(filter(str.strip, lines)):
            try:
                text, mentions = parse_entity_sentence(line)
            except ValueError as error:
                raise ValueError(
                    f"`--data`: {root / 'Sentences' / image_id}.txt caption {number + 1}: {error}"
                ) from None
            spans, targets = [], []
            for mention in mentions:
                boxes = [i for i, entity in enumerate(entity_boxes) if mention.entity_id in entity.entity_ids]
                if boxes and mention.entity_id != "0":
                    spans.append((mention.start, mention.end))
                    targets.append(boxes)
            if spans:
                image.captions.append(GroundingCaption(text, spans, targets, [False] * len(spans)))
        if image.captions:
            images.append(image)
    return GroundingData(images, "flickr30k-entities", has_held_out=False)


def _find(caption: str, phrase: str) -> tuple[int, int] | None:
    found = re.search(re.escape(phrase), caption, flags=re.IGNORECASE) if phrase and phrase.strip() else None
    return found.span() if found else None


def read_grounding_manifest(
    path: str | Path, image_root: str | Path | None = None, split: str | None = None
) -> GroundingData:
    """A JSONL manifest with phrase-linked regions (see the module docstring); lines of another `split` skipped."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    held_path = path.parent / "held_out.json"
    held = set(json.loads(held_path.read_text())) if held_path.is_file() else None
    images = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"`--data`: {path} line {number} is not JSON: {error.msg}") from None
        if split is not None and record.get("split") != split:
            continue
        captions = record.get("caption")
        captions = [captions] if isinstance(captions, str) else list(captions or [])
        regions = record.get("regions") or []
        image = GroundingImage(root / record["image"], [list(map(float, region["box"])) for region in regions])
        for caption_index, text in enumerate(captions):
            by_span: dict[tuple[int, int], list[int]] = {}
            for box_index, region in enumerate(regions):
                span = region.get("spans", [None] * len(captions))[caption_index] if "spans" in region else None
                if span is None and "spans" not in region:
                    span = region.get("span") if len(captions) == 1 else None
                    span = span if span is not None else _find(text, region.get("phrase") or "")
                if span is not None:
                    by_span.setdefault((int(span[0]), int(span[1])), []).append(box_index)
            if not by_span:
                continue
            spans = sorted(by_span)
            held_out = [
                held is not None and any(regions[i].get("label") in held for i in by_span[span]) for span in spans
            ]
            image.captions.append(GroundingCaption(text, spans, [by_span[span] for span in spans], held_out))
        if image.captions:
            images.append(image)
    return GroundingData(images, "jsonl", has_held_out=bool(held))


def read_grounding_data(
    path: str | Path, image_root: str | Path | None = None, split: str | None = None
) -> GroundingData:
    """A JSONL manifest (`.jsonl`), else Flickr30k Entities (a split file or the folder of `Sentences/`)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        data = read_grounding_manifest(path, image_root, split)
    elif (path if path.is_dir() else path.parent).joinpath("Sentences").is_dir():
        data = read_flickr30k_entities(path, image_root)
    else:
        raise ValueError(
            f"`--data` {str(path)!r}: grounding reads a JSONL manifest (.jsonl) or a Flickr30k Entities split file "
            "beside Sentences/ and Annotations/"
        )
    if not data.images:
        raise ValueError(f"`--data` {str(path)!r} has no phrase linked to a box")
    return data


def _percent(hits: int, total: int) -> float | None:
    return 100.0 * hits / total if total else None


@torch.no_grad()
def evaluate_grounding(
    model: torch.nn.Module,
    processor: Any,
    data: GroundingData,
    phrase_mode: str = "token",
    proposals: bool = True,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Grounding accuracy with the annotated boxes as candidates, and at IoU >= 0.5 with the model's proposals
    (`proposals`), over all phrases and, where the data say which are held out, seen and held-out ones apart.

    Returns ``{"all" | "seen" | "held_out": {"phrases", "accuracy_annotated", "accuracy_proposals_iou50",
    "chance_annotated"}, "phrase_mode": ..., "num_images": ..., "num_captions": ...}``.
    """
    phrase_mode = check_phrase_mode(phrase_mode)
    processor = processor.as_region_mode() if hasattr(processor, "as_region_mode") else processor
    counts = {group: {"phrases": 0, "annotated": 0, "proposals": 0, "chance": 0.0} for group in GROUPS}
    device = next(model.parameters()).device
    with EvalMode(model):
        background = background_embedding(model, processor.tokenizer, templates=PHRASE_TEMPLATES) if proposals else None
        for image in tqdm(data.images, desc="grounding", unit="image", disable=not show_progress):
            batch = processor(images=[load_image(image.path)], boxes=[image.boxes], return_tensors="pt")
            pixel_values = batch["pixel_values"].to(device=device, dtype=model.dtype)
            boxes, box_mask = batch["boxes"], batch["box_mask"]
            for caption in image.captions:
                embeds = embed_phrases(model, processor, caption.text, caption.spans, phrase_mode)
                logits, _, _ = ground_phrases(model, pixel_values, embeds, boxes, box_mask)
                logits = logits.masked_fill(~box_mask[0][None], float("-inf"))
                chosen = logits.argmax(dim=-1).tolist()
                candidates = int(box_mask[0].sum())
                if proposals:
                    proposal_logits, proposal_boxes, proposal_mask = ground_phrases(
                        model, pixel_values, embeds, background_embed=background
                    )
                    proposal_logits = proposal_logits.masked_fill(~proposal_mask[None], float("-inf"))
                    picked = proposal_boxes[proposal_logits.argmax(dim=-1)]  # (P, 4), the frame of `boxes`
                for index, (targets, held_out) in enumerate(zip(caption.targets, caption.held_out)):
                    right = chosen[index] in targets
                    overlap = (
                        bool((box_iou(picked[index : index + 1], boxes[0, targets]) >= IOU_THRESHOLD).any())
                        if proposals
                        else False
                    )
                    for group in ("all", "held_out" if held_out else "seen"):
                        counts[group]["phrases"] += 1
                        counts[group]["annotated"] += right
                        counts[group]["proposals"] += overlap
                        counts[group]["chance"] += 1.0 / max(candidates, 1)
    results: dict[str, Any] = {}
    for group in GROUPS if data.has_held_out else ("all",):
        number = counts[group]["phrases"]
        results[group] = {
            "phrases": number,
            "accuracy_annotated": _percent(counts[group]["annotated"], number),
            "accuracy_proposals_iou50": _percent(counts[group]["proposals"], number) if proposals else None,
            "chance_annotated": 100.0 * counts[group]["chance"] / number if number else None,
        }
    results.update(
        phrase_mode=phrase_mode,
        num_images=len(data.images),
        num_captions=sum(len(image.captions) for image in data.images),
        iou_threshold=IOU_THRESHOLD,
    )
    return results


def grounding_markdown(results: dict[str, Any], title: str) -> str:
    """A table: per group of phrases, their number and the accuracies (percent)."""

    def figure(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    names = {"all": "all phrases", "seen": "seen combinations", "held_out": "held-out combinations"}
    lines = [
        f"## grounding: {title}",
        "",
        f"{results['num_images']} images, {results['num_captions']} captions; phrases embedded as "
        f"`{results['phrase_mode']}`; a phrase with several boxes is right on any of them.",
        "",
        "| phrases | number | accuracy, annotated boxes | chance | accuracy at IoU >= 0.5, own proposals |",
        "|---|---|---|---|---|",
    ]
    for group in GROUPS:
        if group in results:
            row = results[group]
            lines.append(
                f"| {names[group]} | {row['phrases']} | {figure(row['accuracy_annotated'])} | "
                f"{figure(row['chance_annotated'])} | {figure(row['accuracy_proposals_iou50'])} |"
            )
    return "\n".join(lines) + "\n"


def run_grounding_task(
    model: torch.nn.Module,
    processor: Any,
    data_path: str | Path,
    image_root: str | Path | None = None,
    split: str | None = None,
    phrase_mode: str = "token",
    model_name: str = "",
    command: str = "",
) -> tuple[dict[str, Any], str]:
    """`--task grounding`: the report (settings, results, command) and its markdown."""
    data = read_grounding_data(data_path, image_root, split)
    logger.info(
        "grounding: %d images, %d phrases (%s) from %s", len(data.images), data.num_phrases, data.source, data_path
    )
    results = evaluate_grounding(model, processor, data, phrase_mode, show_progress=True)
    report = {
        "task": "grounding",
        "settings": {
            "model": str(model_name),
            "data": str(data_path),
            "format": data.source,
            "image_root": str(image_root) if image_root is not None else None,
            "split": split,
            "phrase_mode": phrase_mode,
        },
        "results": results,
        "command": command,
    }
    return report, grounding_markdown(results, f"{Path(str(model_name)).name} on {Path(data_path).name}")


__all__ = [
    "GroundingData",
    "read_grounding_data",
    "read_flickr30k_entities",
    "read_grounding_manifest",
    "evaluate_grounding",
    "grounding_markdown",
    "run_grounding_task",
]
