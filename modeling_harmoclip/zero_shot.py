"""Zero-shot scoring, the one implementation: prompt-ensembled label embeddings (CLIP's zero-shot classifier), the
per-model label cache every pipeline reads, and label probabilities, the softmax over labels of
``exp(logit_scale) * cos(embedding, label)``, with or without a background label that competes and is then dropped.

The pipelines, the evaluation, the Space and the benchmarks all call these functions, so a box, a patch, a crop or a
whole image is scored the same way everywhere. A leaf module: it imports torch and the standard library only.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

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
# The label that competes with the candidates in every softmax of detection and segmentation and is then dropped.
DEFAULT_BACKGROUND = "background"


def check_strings(values: Any, name: str) -> list[str]:
    """`values` as a non-empty list of strings; a `TypeError` naming `name` and the item otherwise."""
    if isinstance(values, str) or not isinstance(values, Sequence) or len(values) == 0:
        raise TypeError(f"`{name}` must be a non-empty list of strings, got {values!r}")
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise TypeError(f"`{name}`[{index}] must be a string, got {type(value).__name__}: {value!r}")
    return list(values)


def check_top_k(top_k: Any) -> int | None:
    """`top_k` as a positive int or None (keep all); a `ValueError` naming it otherwise."""
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"`top_k` must be a positive int or None, got {top_k!r}")
    return top_k


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


# ---------------------------------------------------------------------------------------------- label embeddings


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
    flat = check_strings([prompt for class_prompts in prompts for prompt in class_prompts], "prompts")
    device = model_device(model)
    embeds = []
    starts = range(0, len(flat), batch_size)
    for first in progress(starts) if progress is not None else starts:
        tokens = tokenizer(flat[first : first + batch_size], padding=True, truncation=True, return_tensors="pt")
        features = model.get_text_features(
            input_ids=tokens["input_ids"].to(device), attention_mask=tokens["attention_mask"].to(device)
        )
        features = getattr(features, "pooler_output", features)
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
    labels = check_strings(labels, "labels")
    templates = check_templates(templates)
    return prompt_ensemble_embeddings(
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
    labels = check_strings(labels, "labels")
    templates = check_templates(templates)
    device = model_device(model)
    if label_embeds is not None:
        return _checked_label_embeds(model, labels, label_embeds, device)
    if not cache:
        return label_embeddings(model, tokenizer, labels, templates)
    entries = _LABEL_CACHE.setdefault(model, OrderedDict())
    key = (tuple(labels), tuple(templates), id(tokenizer), _weights_state(model))
    if key in entries:
        entries.move_to_end(key)
        return entries[key][1].clone()
    embeds = label_embeddings(model, tokenizer, labels, templates)
    entries[key] = (tokenizer, embeds)
    while len(entries) > LABEL_CACHE_SIZE:
        entries.popitem(last=False)
    return embeds.clone()


def encode_candidates(
    model: torch.nn.Module,
    tokenizer: Any,
    candidate_labels: Sequence[str],
    background_label: str | None = DEFAULT_BACKGROUND,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    label_embeds: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(L, D) candidate label embeddings and the (D,) background's (None without a background label), both through
    `resolve_label_embeddings`: the caller's `label_embeds` for the candidates when given, otherwise reused across
    calls like every pipeline's."""
    candidate_labels = check_strings(candidate_labels, "candidate_labels")
    if background_label is not None:
        if not isinstance(background_label, str) or not background_label.strip():
            raise ValueError(f"`background_label` must be a non-empty string or None, got {background_label!r}")
        if background_label in candidate_labels:
            raise ValueError(
                f"`background_label` {background_label!r} is also a candidate label; choose another or None"
            )
    embeds = resolve_label_embeddings(model, tokenizer, candidate_labels, templates, label_embeds)
    if background_label is None:
        return embeds, None
    return embeds, resolve_label_embeddings(model, tokenizer, [background_label], templates)[0]


# ---------------------------------------------------------------------------------------------- scoring


def _scale(logit_scale: torch.Tensor | float) -> float:
    """The temperature multiplier as a Python float (`model.logit_scale.exp()` or a number)."""
    return float(logit_scale.detach()) if isinstance(logit_scale, torch.Tensor) else float(logit_scale)


def similarity_probabilities(
    similarity: torch.Tensor, logit_scale: torch.Tensor | float, dim: int = -1
) -> torch.Tensor:
    """Cosine similarities with labels -> the softmax over labels (along `dim`) of ``logit_scale * cos``."""
    return (_scale(logit_scale) * similarity).softmax(dim=dim)


def label_and_background_probabilities(
    embeds: torch.Tensor,
    label_embeds: torch.Tensor,
    logit_scale: torch.Tensor | float,
    background_embed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scoring with a background: the softmax over the L labels and, if given, the background embedding of
    ``logit_scale * cos(embedding, label)``; the background's column is returned apart.

    Args:
        embeds: (..., D) L2-normalised region, patch, crop or image embeddings; label_embeds: (L, D) from
            `label_embeddings`; background_embed: (D,) or None; logit_scale: the multiplier, e.g.
            `model.logit_scale.exp()` (CLIP's learned value is about 100).
    Returns:
        (..., L) float32 label probabilities and (...) background probabilities (None without a background).
    """
    if embeds.shape[-1] != label_embeds.shape[-1] or label_embeds.dim() != 2:
        raise ValueError(
            f"`label_embeds` must have shape (L, {embeds.shape[-1]}) to match `embeds` {tuple(embeds.shape)}, got "
            f"{tuple(label_embeds.shape)}"
        )
    classes = label_embeds if background_embed is None else torch.cat([label_embeds, background_embed.reshape(1, -1)])
    probabilities = (_scale(logit_scale) * embeds.float() @ classes.float().to(embeds.device).t()).softmax(dim=-1)
    if background_embed is None:
        return probabilities, None
    return probabilities[..., :-1], probabilities[..., -1]


def label_probabilities(
    embeds: torch.Tensor,
    label_embeds: torch.Tensor,
    logit_scale: torch.Tensor | float,
    background_embed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Region (or image) scoring: softmax over labels (and the background, dropped after) of
    ``logit_scale * cos(embedding, label)``: (..., D) embeddings -> (..., L) float32 probabilities."""
    return label_and_background_probabilities(embeds, label_embeds, logit_scale, background_embed)[0]


__all__ = [
    "DEFAULT_TEMPLATES",
    "DEFAULT_BACKGROUND",
    "TEXT_BATCH_SIZE",
    "LABEL_CACHE_SIZE",
    "check_strings",
    "check_top_k",
    "check_templates",
    "model_device",
    "prompt_ensemble_embeddings",
    "label_embeddings",
    "clear_label_cache",
    "resolve_label_embeddings",
    "encode_candidates",
    "similarity_probabilities",
    "label_and_background_probabilities",
    "label_probabilities",
]
