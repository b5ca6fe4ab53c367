"""HarmoCLIP's loss terms as plain functions on embeddings.

Nothing here talks to `torch.distributed`. For a multi-process run the training code gathers the embeddings of all
processes (with gradients) and passes its own rows as ``*_embeds`` and the gathered rows as ``all_*``, together with
the position of its first row in the gathered batch (`offset`): each process then computes only its rows of the
logit matrix (open_clip's "local loss"). With a `normalizer` (the number of rows of the whole global batch divided by
the number of processes) the per-process losses average, across processes, to exactly the single-process loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _reduce(per_row: torch.Tensor, normalizer: float | None) -> torch.Tensor:
    if normalizer is None:
        return per_row.mean()
    return per_row.sum() / normalizer


def symmetric_infonce(
    embeds_a: torch.Tensor,
    embeds_b: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    all_embeds_a: torch.Tensor | None = None,
    all_embeds_b: torch.Tensor | None = None,
    offset: int = 0,
    ignore_a: torch.Tensor | None = None,
    ignore_b: torch.Tensor | None = None,
    normalizer: float | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE where row ``i`` of `embeds_a` and of `embeds_b` form the positive pair.

    Args:
        embeds_a, embeds_b: (n, D) L2-normalised embeddings of this process's rows.
        logit_scale: the temperature multiplier (already exponentiated), a scalar.
        all_embeds_a, all_embeds_b: (M, D) the gathered rows of every process (default: this process's rows).
        offset: index of this process's first row in the gathered rows.
        ignore_a: (n, M) bool, True where ``a_i`` vs ``all_b_j`` is a negative to leave out (never the positive).
        ignore_b: (n, M) bool, likewise for ``b_i`` vs ``all_a_j``.
        normalizer: divide the summed row losses by this instead of taking the mean.
    Returns:
        Scalar loss: (CE(a -> b) + CE(b -> a)) / 2.
    """
    all_embeds_a = embeds_a if all_embeds_a is None else all_embeds_a
    all_embeds_b = embeds_b if all_embeds_b is None else all_embeds_b
    targets = torch.arange(embeds_a.shape[0], device=embeds_a.device) + offset
    logits_a = logit_scale * embeds_a @ all_embeds_b.t()  # (n, M)
    logits_b = logit_scale * embeds_b @ all_embeds_a.t()  # (n, M)
    if ignore_a is not None:
        logits_a = logits_a.masked_fill(ignore_a, float("-inf"))
    if ignore_b is not None:
        logits_b = logits_b.masked_fill(ignore_b, float("-inf"))
    loss_a = F.cross_entropy(logits_a.float(), targets, reduction="none")
    loss_b = F.cross_entropy(logits_b.float(), targets, reduction="none")
    return (_reduce(loss_a, normalizer) + _reduce(loss_b, normalizer)) / 2


def global_contrastive_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    all_image_embeds: torch.Tensor | None = None,
    all_text_embeds: torch.Tensor | None = None,
    offset: int = 0,
    normalizer: float | None = None,
) -> torch.Tensor:
    """GC: CLIP's symmetric image-caption InfoNCE. `image_embeds`, `text_embeds`: (n, D) normalised, paired by row."""
    return symmetric_infonce(
        image_embeds,
        text_embeds,
        logit_scale,
        all_embeds_a=all_image_embeds,
        all_embeds_b=all_text_embeds,
        offset=offset,
        normalizer=normalizer,
    )


def same_phrase_negatives(phrase_ids: torch.Tensor, all_phrase_ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """(n, M) bool: True where column j carries the same phrase as row i but is not its own pair (j != offset + i)."""
    same = phrase_ids[:, None] == all_phrase_ids[None, :]
    own = torch.arange(phrase_ids.shape[0], device=phrase_ids.device)[:, None] + offset
    columns = torch.arange(all_phrase_ids.shape[0], device=phrase_ids.device)[None, :]
    return same & (columns != own)


def lexeme_region_contrastive_loss(
    region_embeds: torch.Tensor,
    lexeme_embeds: torch.Tensor,
    logit_scale: torch.Tensor | float,
    phrase_ids: torch.Tensor | None = None,
    *,
    all_region_embeds: torch.Tensor | None = None,
    all_lexeme_embeds: torch.Tensor | None = None,
    all_phrase_ids: torch.Tensor | None = None,
    offset: int = 0,
    normalizer: float | None = None,
) -> torch.Tensor:
    """LRC: symmetric InfoNCE between linked regions and lexemes (phrases), row ``i`` of each forming a pair.

    Negatives whose phrase is the same text as the positive's (equal `phrase_ids`, e.g. two "a dog" in the batch)
    are left out of the softmax rather than pushed apart.

    Args:
        region_embeds, lexeme_embeds: (R, D) normalised embeddings of this process's linked regions and phrases.
        phrase_ids: (R,) int64 phrase-text ids; None disables the masking.
        all_*: the gathered rows of every process, (M, D) and (M,); `offset`, `normalizer`: see `symmetric_infonce`.
    """
    ignore = None
    if phrase_ids is not None:
        all_phrase_ids = phrase_ids if all_phrase_ids is None else all_phrase_ids
        ignore = same_phrase_negatives(phrase_ids, all_phrase_ids, offset)
    return symmetric_infonce(
        region_embeds,
        lexeme_embeds,
        logit_scale,
        all_embeds_a=all_region_embeds,
        all_embeds_b=all_lexeme_embeds,
        offset=offset,
        ignore_a=ignore,
        ignore_b=ignore,
        normalizer=normalizer,
    )


def global_region_alignment_loss(
    region_embeds: torch.Tensor, teacher_embeds: torch.Tensor, normalizer: float | None = None
) -> torch.Tensor:
    """GR: mean of ``1 - cos(region, teacher crop embedding)`` over rows. Both (R, D); the teacher gets no gradient."""
    cosine = F.cosine_similarity(region_embeds.float(), teacher_embeds.detach().float(), dim=-1)
    return _reduce(1.0 - cosine, normalizer)


__all__ = [
    "symmetric_infonce",
    "global_contrastive_loss",
    "lexeme_region_contrastive_loss",
    "global_region_alignment_loss",
    "same_phrase_negatives",
]
