"""The training objective across processes: gather embeddings with gradients, then HarmoCLIP's loss terms.

Each process computes only its own rows of each logit matrix against the gathered columns (open_clip's local loss)
and divides by ``rows of the global batch / number of processes``. Data-parallel training averages the processes'
gradients, so the result equals, to rounding, the loss and gradients of one process holding the whole global batch
(tests/test_distributed.py checks this under torchrun).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from modeling_harmoclip.losses import (
    global_contrastive_loss,
    global_region_alignment_loss,
    lexeme_region_contrastive_loss,
)


@dataclass
class LossTerms:
    """The weighted total and each unweighted term (None where it does not apply), all scalars."""

    total: torch.Tensor
    gc: torch.Tensor | None = None
    lrc: torch.Tensor | None = None
    gr: torch.Tensor | None = None

    def as_floats(self) -> dict[str, float]:
        values = {"loss": self.total, "loss_gc": self.gc, "loss_lrc": self.lrc, "loss_gr": self.gr}
        return {name: float(value.detach()) for name, value in values.items() if value is not None}


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def gather_counts(count: int, device: torch.device) -> list[int]:
    """Every process's row count (no gradient)."""
    world, _ = _world()
    if world == 1:
        return [count]
    local = torch.tensor([count], device=device, dtype=torch.long)
    parts = [torch.zeros_like(local) for _ in range(world)]
    dist.all_gather(parts, local)
    return [int(part.item()) for part in parts]


def gather_rows(rows: torch.Tensor, counts: list[int], with_grad: bool) -> torch.Tensor:
    """Concatenates every process's `rows` (n_i, ...) in rank order, padding to the longest for the collective.

    With `with_grad`, gradients flow back to each process's own rows (the backward sums the processes' gradients).
    """
    if len(counts) == 1:
        return rows
    longest = max(counts)
    padded = F.pad(rows, (0, 0) * (rows.dim() - 1) + (0, longest - rows.shape[0])) if rows.shape[0] < longest else rows
    padded = padded.contiguous()
    if with_grad:
        from torch.distributed.nn.functional import all_gather as all_gather_with_grad

        parts = all_gather_with_grad(padded)
    else:
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
    return torch.cat([part[:count] for part, count in zip(parts, counts)], dim=0)


def compute_objective(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    weights: tuple[float, float, float],
    region_embeds: torch.Tensor | None = None,
    lexeme_embeds: torch.Tensor | None = None,
    linked_mask: torch.Tensor | None = None,
    region_mask: torch.Tensor | None = None,
    phrase_ids: torch.Tensor | None = None,
    region_logit_scale: torch.Tensor | None = None,
    teacher_region_embeds: torch.Tensor | None = None,
) -> LossTerms:
    """HarmoCLIP's loss on this process's batch, exact across processes.

    Args:
        image_embeds, text_embeds: (b, D) normalised global embeddings of this process's images and captions.
        logit_scale, region_logit_scale: the learnable log temperatures (exponentiated here).
        weights: (w_gc, w_lrc, w_gr); a term with weight 0 is not computed.
        region_embeds, lexeme_embeds: (b, N, D) normalised; `linked_mask` (b, N) boxes with a phrase;
        region_mask (b, N) valid boxes; phrase_ids (b, N) phrase-text ids (-1: none);
        teacher_region_embeds: (b, N, D) the GR targets, or None to skip GR.
    """
    w_gc, w_lrc, w_gr = weights
    world, rank = _world()
    device = image_embeds.device
    terms: dict[str, torch.Tensor] = {}

    if w_gc > 0:
        counts = gather_counts(image_embeds.shape[0], device)
        offset = sum(counts[:rank])
        terms["gc"] = global_contrastive_loss(
            image_embeds,
            text_embeds,
            logit_scale.exp(),
            all_image_embeds=gather_rows(image_embeds, counts, with_grad=True),
            all_text_embeds=gather_rows(text_embeds, counts, with_grad=True),
            offset=offset,
            normalizer=None if world == 1 else sum(counts) / world,
        )

    if w_lrc > 0 and region_embeds is not None and lexeme_embeds is not None and linked_mask is not None:
        regions, lexemes = region_embeds[linked_mask], lexeme_embeds[linked_mask]
        ids = phrase_ids[linked_mask] if phrase_ids is not None else None
        counts = gather_counts(regions.shape[0], device)
        if sum(counts) > 0:  # the same decision on every process
            all_regions = gather_rows(regions, counts, with_grad=True)
            all_lexemes = gather_rows(lexemes, counts, with_grad=True)
            all_ids = gather_rows(ids, counts, with_grad=False) if ids is not None else None
            loss = lexeme_region_contrastive_loss(
                regions,
                lexemes,
                region_logit_scale.exp(),
                ids,
                all_region_embeds=all_regions,
                all_lexeme_embeds=all_lexemes,
                all_phrase_ids=all_ids,
                offset=sum(counts[:rank]),
                normalizer=None if world == 1 else sum(counts) / world,
            )
            if regions.shape[0] == 0:  # keep the gathered rows in the graph: every process must run their backward
                loss = loss + 0.0 * (all_regions.sum() + all_lexemes.sum())
            terms["lrc"] = loss

    if w_gr > 0 and region_embeds is not None and teacher_region_embeds is not None and region_mask is not None:
        counts = gather_counts(int(region_mask.sum()), device)
        if sum(counts) > 0:
            loss = global_region_alignment_loss(
                region_embeds[region_mask],
                teacher_region_embeds[region_mask],
                normalizer=None if world == 1 else sum(counts) / world,
            )
            terms["gr"] = loss

    weighted = [weight * terms[name] for weight, name in ((w_gc, "gc"), (w_lrc, "lrc"), (w_gr, "gr")) if name in terms]
    if not weighted:
        raise ValueError("no loss term applies to this batch (check the loss weights and that boxes are given)")
    return LossTerms(total=torch.stack(weighted).sum(), gc=terms.get("gc"), lrc=terms.get("lrc"), gr=terms.get("gr"))
