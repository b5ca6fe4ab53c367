"""HarmoCLIP's loss: the terms as plain functions on embeddings, and `harmoclip_loss`, the one place that selects the
terms that apply and weights them, and `recipe_loss`, which reads the weights from a recipe (the model's
`forward(return_loss=True)` and the training step both call it).

Nothing here talks to `torch.distributed`. For a multi-process run the training code passes a `RowGatherer` that
gathers the embeddings of all processes (with gradients): each process then computes only its own rows of each logit
matrix against the gathered columns (open_clip's "local loss", `ClipLoss(local_loss=True, gather_with_grad=True)`),
given the position of its first row in the gathered batch (`offset`). With a `normalizer` (the rows of the whole
global batch divided by the number of processes) the per-process losses average, across processes, to exactly the
single-process loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from .configuration_harmoclip import loss_weights


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


def false_negatives(
    phrase_ids: torch.Tensor | None,
    all_phrase_ids: torch.Tensor | None,
    category_ids: torch.Tensor | None = None,
    all_category_ids: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor | None:
    """(n, M) bool: the negatives LRC leaves out, never a row's own pair (column offset + i).

    A pair j is a false negative of row i when both carry the same category (ids >= 0: a COCO category, a Flickr30k
    Entities type or chain, a region's label) or, whatever their categories, the same phrase text. Ids are (n,)
    for this process's rows and (M,) for the gathered ones; None when the batch has none. Returns None when neither
    kind of id is given.
    """
    ignore = None
    if phrase_ids is not None:
        ignore = same_phrase_negatives(phrase_ids, phrase_ids if all_phrase_ids is None else all_phrase_ids, offset)
    if category_ids is not None:
        all_category_ids = category_ids if all_category_ids is None else all_category_ids
        known = (category_ids[:, None] >= 0) & (all_category_ids[None, :] >= 0)
        same = same_phrase_negatives(category_ids, all_category_ids, offset) & known  # equal ids, own pair excluded
        ignore = same if ignore is None else ignore | same
    return ignore


def lexeme_region_contrastive_loss(
    region_embeds: torch.Tensor,
    lexeme_embeds: torch.Tensor,
    logit_scale: torch.Tensor | float,
    phrase_ids: torch.Tensor | None = None,
    *,
    category_ids: torch.Tensor | None = None,
    all_region_embeds: torch.Tensor | None = None,
    all_lexeme_embeds: torch.Tensor | None = None,
    all_phrase_ids: torch.Tensor | None = None,
    all_category_ids: torch.Tensor | None = None,
    offset: int = 0,
    normalizer: float | None = None,
) -> torch.Tensor:
    """LRC: symmetric InfoNCE between linked regions and lexemes (phrases), row ``i`` of each forming a pair.

    Negatives that name the same thing as the positive are left out of the softmax rather than pushed apart: those
    of the same category (equal `category_ids` >= 0, e.g. "a man" and "a person" on two COCO person boxes) and those
    of the same phrase text (equal `phrase_ids`, e.g. two "a dog"), the fallback where the data has no category.

    Args:
        region_embeds, lexeme_embeds: (R, D) normalised embeddings of this process's linked regions and phrases.
        phrase_ids: (R,) int64 phrase-text ids; None: no masking by text.
        category_ids: (R,) int64 category ids, -1 for a region without category; None: no masking by category.
        all_*: the gathered rows of every process, (M, D) and (M,); `offset`, `normalizer`: see `symmetric_infonce`.
    """
    ignore = false_negatives(phrase_ids, all_phrase_ids, category_ids, all_category_ids, offset)
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


def region_language_alignment_loss(
    region_embeds: torch.Tensor,
    phrase_embeds: torch.Tensor,
    logit_scale: torch.Tensor | float,
    phrase_ids: torch.Tensor | None = None,
    *,
    category_ids: torch.Tensor | None = None,
    all_region_embeds: torch.Tensor | None = None,
    all_phrase_embeds: torch.Tensor | None = None,
    all_phrase_ids: torch.Tensor | None = None,
    all_category_ids: torch.Tensor | None = None,
    offset: int = 0,
    normalizer: float | None = None,
) -> torch.Tensor:
    """RLA: symmetric InfoNCE between linked regions and the sentence-level embeddings of their phrases (each phrase
    encoded as its own text through the whole text tower, end-of-text pooled, as FineCLIP's region captions).

    The same contrast as LRC on other text embeddings, with the same false-negative masking: negatives whose phrase
    text or category equals the positive's are left out.

    Args:
        region_embeds, phrase_embeds: (R, D) normalised, row ``i`` of each forming a pair.
        phrase_ids: (R,) int64 phrase-text ids; None disables the masking.
        all_*: the gathered rows of every process, (M, D) and (M,); `offset`, `normalizer`: see `symmetric_infonce`.
    """
    return lexeme_region_contrastive_loss(
        region_embeds,
        phrase_embeds,
        logit_scale,
        phrase_ids,
        category_ids=category_ids,
        all_region_embeds=all_region_embeds,
        all_lexeme_embeds=all_phrase_embeds,
        all_phrase_ids=all_phrase_ids,
        all_category_ids=all_category_ids,
        offset=offset,
        normalizer=normalizer,
    )


def global_region_alignment_loss(
    region_embeds: torch.Tensor,
    teacher_embeds: torch.Tensor,
    normalizer: float | None = None,
    *,
    teacher_grad: bool = False,
) -> torch.Tensor:
    """GR: mean of ``1 - cos(region, teacher crop embedding)`` over rows. Both (R, D).

    The teacher gets no gradient unless `teacher_grad` (the live model as its own teacher, as FineCLIP trains).
    """
    teacher_embeds = teacher_embeds if teacher_grad else teacher_embeds.detach()
    cosine = F.cosine_similarity(region_embeds.float(), teacher_embeds.float(), dim=-1)
    return _reduce(1.0 - cosine, normalizer)


def global_distillation_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor | float,
    teacher_image_embeds: torch.Tensor,
    teacher_text_embeds: torch.Tensor,
    teacher_logit_scale: torch.Tensor | float,
    normalizer: float | None = None,
) -> torch.Tensor:
    """GD: learning without forgetting (Li and Hoiem, 2016) on CLIP's outputs. The teacher (the starting model) and the
    student each give a softmax over the batch's captions for every image, and over its images for every caption; the
    loss is the mean of the two directions' KL(teacher || student), summed over columns and averaged over rows.

    Args:
        image_embeds, text_embeds: (n, D) the student's L2-normalised global embeddings, paired by row.
        logit_scale: the student's temperature multiplier (exponentiated); teacher_*: the same of the teacher, whose
            embeddings get no gradient.
        normalizer: divide the summed row losses by this instead of taking the mean (see `symmetric_infonce`).
    """
    student = logit_scale * image_embeds.float() @ text_embeds.float().t()  # (n, n)
    teacher = (teacher_logit_scale * teacher_image_embeds.float() @ teacher_text_embeds.float().t()).detach()
    per_row = []
    for student_logits, teacher_logits in ((student, teacher), (student.t(), teacher.t())):
        target = teacher_logits.log_softmax(dim=-1)
        per_row.append((target.exp() * (target - student_logits.log_softmax(dim=-1))).sum(dim=-1))
    return (_reduce(per_row[0], normalizer) + _reduce(per_row[1], normalizer)) / 2


class RowGatherer(Protocol):
    """How the loss sees the rows of every process. `LocalRows` (one process) is the default; the training code
    supplies a `torch.distributed` one."""

    world_size: int
    rank: int

    def counts(self, count: int, device: torch.device) -> list[int]:
        """Every process's row count, in rank order (the same list on every process)."""
        ...

    def rows(self, rows: torch.Tensor, counts: list[int], with_grad: bool) -> torch.Tensor:
        """(n_i, ...) rows of this process -> (sum(counts), ...) rows of all processes in rank order."""
        ...


class LocalRows:
    """One process holds the whole batch: nothing to gather."""

    world_size = 1
    rank = 0

    def counts(self, count: int, device: torch.device) -> list[int]:
        return [count]

    def rows(self, rows: torch.Tensor, counts: list[int], with_grad: bool) -> torch.Tensor:
        return rows


@dataclass
class HarmoCLIPLoss:
    """The weighted total and each unweighted term (None where it does not apply), all scalars."""

    total: torch.Tensor
    gc: torch.Tensor | None = None
    lrc: torch.Tensor | None = None
    gr: torch.Tensor | None = None
    rla: torch.Tensor | None = None
    gd: torch.Tensor | None = None

    def as_floats(self) -> dict[str, float]:
        """``{"loss": ..., "loss_gc": ..., ...}`` for the terms that were computed."""
        values = {
            "loss": self.total,
            "loss_gc": self.gc,
            "loss_lrc": self.lrc,
            "loss_gr": self.gr,
            "loss_rla": self.rla,
            "loss_gd": self.gd,
        }
        return {name: float(value.detach()) for name, value in values.items() if value is not None}

    @classmethod
    def weighted(cls, terms: dict[str, torch.Tensor], weights: dict[str, float]) -> HarmoCLIPLoss:
        """The loss of the computed `terms` (name -> unweighted scalar, names "gc", "lrc", "rla", "gr", "gd"): their sum
        weighted by `weights`, each term kept."""
        total = torch.stack([weights[name] * term for name, term in terms.items()]).sum()
        return cls(total=total, **{name: terms.get(name) for name in ("gc", "lrc", "gr", "rla", "gd")})


def harmoclip_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    gc_weight: float,
    lrc_weight: float,
    rla_weight: float,
    gr_weight: float,
    gd_weight: float = 0.0,
    region_embeds: torch.Tensor | None = None,
    lexeme_embeds: torch.Tensor | None = None,
    phrase_embeds: torch.Tensor | None = None,
    linked_mask: torch.Tensor | None = None,
    region_mask: torch.Tensor | None = None,
    phrase_ids: torch.Tensor | None = None,
    category_ids: torch.Tensor | None = None,
    region_logit_scale: torch.Tensor | None = None,
    teacher_region_embeds: torch.Tensor | None = None,
    teacher_grad: bool = False,
    teacher_global: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    gatherer: RowGatherer | None = None,
) -> HarmoCLIPLoss:
    """``gc_weight GC + lrc_weight LRC + rla_weight RLA + gr_weight GR + gd_weight GD`` over the terms that apply to
    this batch.

    The terms:
        GC: CLIP's symmetric InfoNCE between images and captions (`global_contrastive_loss`), temperature
            `logit_scale`.
        LRC: symmetric InfoNCE between linked regions and their phrases' token states in the caption
            (`lexeme_region_contrastive_loss`), temperature `region_logit_scale`.
        RLA: the same contrast against the phrases encoded alone, sentence level (`region_language_alignment_loss`),
            temperature `region_logit_scale`.
        GR: ``1 - cos`` between each valid region and its teacher crop embedding (`global_region_alignment_loss`).
        GD: the KL divergence of the live model's image-caption softmaxes from the starting model's
            (`global_distillation_loss`), over each process's own batch.

    A term applies when its weight is > 0 and its inputs are given: GC always; LRC with `region_embeds`,
    `lexeme_embeds` and `linked_mask`, RLA with `region_embeds`, `phrase_embeds` and `linked_mask`, each with at
    least one linked box in the (gathered) batch; GR with `region_embeds`, `teacher_region_embeds` and `region_mask`
    and at least one valid box in the (gathered) batch; GD with `teacher_global`. The decisions use the gathered counts, so every process takes
    the same ones. When no term applies a `ValueError` says why: asking for a loss that cannot be computed is a
    mistake of the caller, never a silent `None`.

    Args:
        image_embeds, text_embeds: (b, D) L2-normalised global embeddings of this process's images and captions.
        logit_scale, region_logit_scale: the learnable log temperatures of GC and of LRC/RLA (exponentiated here).
        gc_weight, lrc_weight, rla_weight, gr_weight: the weights (`loss_weights(config)` gives a config's); a term
            with weight 0 is not computed.
        region_embeds, lexeme_embeds, phrase_embeds: (b, N, D) normalised region, lexeme (LRC) and phrase (RLA)
            embeddings; linked_mask (b, N): boxes with a phrase; region_mask (b, N): valid boxes.
        phrase_ids, category_ids: (b, N) phrase-text and category ids (-1: none); negatives of the same phrase text
            or category are left out of LRC and RLA.
        teacher_region_embeds: (b, N, D) the GR targets; `teacher_grad`: GR back-propagates into them (the live model
            as its own teacher, FineCLIP's self-distillation).
        teacher_global: the starting model's (b, D) image and caption embeddings of the batch and its log temperature,
            GD's targets.
        gatherer: how the rows of other processes are seen (default `LocalRows`: this batch alone).
    Returns:
        `HarmoCLIPLoss` with the weighted total and the unweighted terms.
    """
    gatherer = LocalRows() if gatherer is None else gatherer
    weights = {"gc": gc_weight, "lrc": lrc_weight, "rla": rla_weight, "gr": gr_weight, "gd": gd_weight}
    terms: dict[str, torch.Tensor] = {}
    if gc_weight > 0:
        terms["gc"] = _global_term(image_embeds, text_embeds, logit_scale, gatherer)
    for name, texts in (("lrc", lexeme_embeds), ("rla", phrase_embeds)):
        if weights[name] > 0 and region_embeds is not None and texts is not None and linked_mask is not None:
            term = _phrase_term(
                name, region_embeds, texts, linked_mask, phrase_ids, category_ids, region_logit_scale, gatherer
            )
            if term is not None:
                terms[name] = term
    if gr_weight > 0 and region_embeds is not None and teacher_region_embeds is not None and region_mask is not None:
        term = _region_alignment_term(region_embeds, teacher_region_embeds, region_mask, teacher_grad, gatherer)
        if term is not None:
            terms["gr"] = term
    if gd_weight > 0 and teacher_global is not None:
        teacher_image_embeds, teacher_text_embeds, teacher_logit_scale = teacher_global
        terms["gd"] = global_distillation_loss(
            image_embeds,
            text_embeds,
            logit_scale.exp(),
            teacher_image_embeds,
            teacher_text_embeds,
            teacher_logit_scale.exp(),
        )
    if not terms:
        raise ValueError(
            f"no loss term applies to this batch with weights {weights}: GC needs a weight > 0, "
            "LRC and RLA boxes linked to phrases, GR boxes and `teacher_region_embeds`, GD `teacher_global`"
        )
    return HarmoCLIPLoss.weighted(terms, weights)


def recipe_loss(
    recipe: Any,
    outputs: Any,
    logit_scale: torch.Tensor,
    region_logit_scale: torch.Tensor,
    phrase_ids: torch.Tensor | None = None,
    category_ids: torch.Tensor | None = None,
    teacher_region_embeds: torch.Tensor | None = None,
    gatherer: RowGatherer | None = None,
    teacher_global: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> HarmoCLIPLoss:
    """A recipe's loss on a model's outputs: the one assembly that `HarmoCLIPModel.forward(return_loss=True)` and the
    training step (training/step.py) share.

    Args:
        recipe: a `HarmoCLIPConfig` or a `TrainConfig` (its loss weights, `gr_teacher`, `lrc_mask_categories`).
        outputs: a `HarmoCLIPOutput` (or anything with its `image_embeds`, `text_embeds`, `region_embeds`,
            `lexeme_embeds`, `phrase_embeds`, `linked_mask`, `region_mask`).
        logit_scale, region_logit_scale: the model's `logit_scale` and `lrc_rla_logit_scale`.
        phrase_ids, category_ids: (B, N) ids (category ids are used when `recipe.lrc_mask_categories`).
        teacher_region_embeds: (B, N, D) GR targets; gatherer: as `harmoclip_loss` (default this batch alone).
        teacher_global: GD's targets (`harmoclip_loss`), the starting model's global embeddings of the batch.
    """
    return harmoclip_loss(
        outputs.image_embeds.float(),
        outputs.text_embeds.float(),
        logit_scale,
        **loss_weights(recipe),
        region_embeds=outputs.region_embeds,
        lexeme_embeds=outputs.lexeme_embeds,
        phrase_embeds=outputs.phrase_embeds,
        linked_mask=outputs.linked_mask,
        region_mask=outputs.region_mask,
        phrase_ids=phrase_ids,
        category_ids=category_ids if recipe.lrc_mask_categories else None,
        region_logit_scale=region_logit_scale,
        teacher_region_embeds=teacher_region_embeds,
        teacher_grad=recipe.gr_teacher == "self_with_grad",
        teacher_global=teacher_global,
        gatherer=gatherer,
    )


def _normalizer(counts: list[int], world_size: int) -> float | None:
    """The divisor that makes the per-process losses average to the single-process loss (None: one process)."""
    return None if world_size == 1 else sum(counts) / world_size


def _global_term(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor, gatherer: RowGatherer
) -> torch.Tensor:
    """GC over the gathered batch; `image_embeds`, `text_embeds`: (b, D)."""
    counts = gatherer.counts(image_embeds.shape[0], image_embeds.device)
    return global_contrastive_loss(
        image_embeds,
        text_embeds,
        logit_scale.exp(),
        all_image_embeds=gatherer.rows(image_embeds, counts, with_grad=True),
        all_text_embeds=gatherer.rows(text_embeds, counts, with_grad=True),
        offset=sum(counts[: gatherer.rank]),
        normalizer=_normalizer(counts, gatherer.world_size),
    )


def _phrase_term(
    name: str,
    region_embeds: torch.Tensor,
    texts: torch.Tensor,
    linked_mask: torch.Tensor,
    phrase_ids: torch.Tensor | None,
    category_ids: torch.Tensor | None,
    region_logit_scale: torch.Tensor,
    gatherer: RowGatherer,
) -> torch.Tensor | None:
    """LRC (`name` "lrc", `texts` the lexemes) or RLA ("rla", the phrases encoded alone) on the linked boxes of the
    gathered batch; (b, N, D) embeddings, (b, N) masks and ids. None when no process has a linked box."""
    regions, texts = region_embeds[linked_mask], texts[linked_mask]
    ids = phrase_ids[linked_mask] if phrase_ids is not None else None
    categories = category_ids[linked_mask] if category_ids is not None else None
    counts = gatherer.counts(regions.shape[0], regions.device)
    if sum(counts) == 0:
        return None
    all_regions = gatherer.rows(regions, counts, with_grad=True)
    all_texts = gatherer.rows(texts, counts, with_grad=True)
    common = dict(
        category_ids=categories,
        all_region_embeds=all_regions,
        all_phrase_ids=gatherer.rows(ids, counts, with_grad=False) if ids is not None else None,
        all_category_ids=gatherer.rows(categories, counts, with_grad=False) if categories is not None else None,
        offset=sum(counts[: gatherer.rank]),
        normalizer=_normalizer(counts, gatherer.world_size),
    )
    if name == "lrc":
        loss = lexeme_region_contrastive_loss(
            regions, texts, region_logit_scale.exp(), ids, all_lexeme_embeds=all_texts, **common
        )
    else:
        loss = region_language_alignment_loss(
            regions, texts, region_logit_scale.exp(), ids, all_phrase_embeds=all_texts, **common
        )
    if regions.shape[0] == 0:  # keep the gathered rows in the graph: every process must run their backward
        loss = loss + 0.0 * (all_regions.sum() + all_texts.sum())
    return loss


def _region_alignment_term(
    region_embeds: torch.Tensor,
    teacher_region_embeds: torch.Tensor,
    region_mask: torch.Tensor,
    teacher_grad: bool,
    gatherer: RowGatherer,
) -> torch.Tensor | None:
    """GR on the valid boxes ((b, N) `region_mask`) of (b, N, D) embeddings; None when no process has a box."""
    counts = gatherer.counts(int(region_mask.sum()), region_embeds.device)
    if sum(counts) == 0:
        return None
    return global_region_alignment_loss(
        region_embeds[region_mask],
        teacher_region_embeds[region_mask],
        normalizer=_normalizer(counts, gatherer.world_size),
        teacher_grad=teacher_grad,
    )


__all__ = [
    "harmoclip_loss",
    "recipe_loss",
    "HarmoCLIPLoss",
    "RowGatherer",
    "LocalRows",
    "symmetric_infonce",
    "global_contrastive_loss",
    "lexeme_region_contrastive_loss",
    "region_language_alignment_loss",
    "global_region_alignment_loss",
    "global_distillation_loss",
    "same_phrase_negatives",
    "false_negatives",
]
