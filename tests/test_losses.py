"""The loss terms on hand-built embeddings."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from modeling_harmoclip.losses import (
    LocalRows,
    false_negatives,
    global_contrastive_loss,
    global_region_alignment_loss,
    harmoclip_loss,
    lexeme_region_contrastive_loss,
    region_language_alignment_loss,
    same_phrase_negatives,
)


def _unit(rows: int, dim: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_aligned_inputs_give_near_zero_loss() -> None:
    embeds = torch.eye(8)
    assert global_contrastive_loss(embeds, embeds, 100.0).item() < 1e-6
    assert lexeme_region_contrastive_loss(embeds, embeds, 100.0).item() < 1e-6
    assert global_region_alignment_loss(embeds, embeds).item() < 1e-6


def test_random_inputs_give_about_log_n() -> None:
    n = 256
    image, text = _unit(n, 512, 0), _unit(n, 512, 1)
    assert abs(global_contrastive_loss(image, text, 1.0).item() - math.log(n)) < 0.05
    assert abs(global_region_alignment_loss(image, text).item() - 1.0) < 0.05


def test_gc_matches_transformers_clip_loss() -> None:
    from transformers.models.clip.modeling_clip import image_text_contrastive_loss

    image, text = _unit(6, 16, 2), _unit(6, 16, 3)
    expected = image_text_contrastive_loss(14.0 * text @ image.t())
    assert torch.allclose(global_contrastive_loss(image, text, 14.0), expected, atol=1e-6)


def test_same_phrase_negatives_are_left_out() -> None:
    # Regions 0 and 1 are both "a dog": each region's embedding equals both dog lexemes.
    dog = F.normalize(torch.tensor([1.0, 0.0, 0.0]), dim=0)
    cat = F.normalize(torch.tensor([0.0, 1.0, 0.0]), dim=0)
    regions = torch.stack([dog, dog, cat])
    lexemes = torch.stack([dog, dog, cat])
    phrase_ids = torch.tensor([7, 7, 9])
    masked = lexeme_region_contrastive_loss(regions, lexemes, 50.0, phrase_ids)
    unmasked = lexeme_region_contrastive_loss(regions, lexemes, 50.0, None)
    assert masked.item() < 1e-6  # the duplicate "a dog" no longer competes with the positive
    assert abs(unmasked.item() - (2 / 3) * math.log(2)) < 1e-3  # two of three rows split 50/50 between two dogs


def test_same_phrase_mask_shape_and_offset() -> None:
    mask = same_phrase_negatives(torch.tensor([3, 4]), torch.tensor([3, 4, 3, 4, 5]), offset=2)
    assert mask.tolist() == [[True, False, False, False, False], [False, True, False, False, False]]


# A hand-built batch: "a man" and "a person" on two COCO person boxes (category 1), "a dog" (category 18), and two
# JSONL regions without category, both "a red kite" (the phrase-text fallback), plus "a kite" without category.
PHRASES = ["a man", "a person", "a dog", "a red kite", "a red kite", "a kite"]
PHRASE_IDS = torch.tensor([101, 102, 103, 104, 104, 105])
CATEGORY_IDS = torch.tensor([1, 1, 18, -1, -1, -1])


def _loop_lrc(regions: torch.Tensor, lexemes: torch.Tensor, scale: float, phrase_ids, category_ids) -> float:
    """LRC written pair by pair: column j is left out of row i when it names the same thing (and j != i)."""

    def left_out(i: int, j: int) -> bool:
        same_category = category_ids[i] >= 0 and category_ids[i] == category_ids[j]
        return j != i and (same_category or phrase_ids[i] == phrase_ids[j])

    n, total = regions.shape[0], 0.0
    for a, b in ((regions, lexemes), (lexemes, regions)):
        for i in range(n):
            logits = [scale * float(a[i] @ b[j]) for j in range(n) if not left_out(i, j)]
            total += -scale * float(a[i] @ b[i]) + math.log(sum(math.exp(value) for value in logits))
    return total / (2 * n)


def test_same_category_negatives_are_left_out() -> None:
    ignore = false_negatives(PHRASE_IDS, None, CATEGORY_IDS, None)
    assert ignore[0].tolist() == [False, True, False, False, False, False]  # "a man" vs "a person": same category
    assert ignore[1].tolist() == [True, False, False, False, False, False]
    assert ignore[3].tolist() == [False, False, False, False, True, False]  # no category: same phrase text only
    assert not ignore[5].any() and not ignore[2].any()  # unknown categories (-1) are not a shared category
    regions, lexemes = _unit(6, 16, 9), _unit(6, 16, 10)
    loss = lexeme_region_contrastive_loss(regions, lexemes, 20.0, PHRASE_IDS, category_ids=CATEGORY_IDS)
    assert abs(loss.item() - _loop_lrc(regions, lexemes, 20.0, PHRASE_IDS.tolist(), CATEGORY_IDS.tolist())) < 1e-4
    by_text = lexeme_region_contrastive_loss(regions, lexemes, 20.0, PHRASE_IDS)
    assert abs(by_text.item() - _loop_lrc(regions, lexemes, 20.0, PHRASE_IDS.tolist(), [-1] * 6)) < 1e-4
    assert abs(loss.item() - by_text.item()) > 1e-3
    # A man's region that looks like a person is no longer pushed away from "a person".
    person = F.normalize(torch.tensor([1.0, 0.0, 0.0]), dim=0)
    dog = F.normalize(torch.tensor([0.0, 1.0, 0.0]), dim=0)
    same = torch.stack([person, person, dog])
    masked = lexeme_region_contrastive_loss(same, same, 50.0, PHRASE_IDS[:3], category_ids=CATEGORY_IDS[:3])
    assert masked.item() < 1e-6
    assert lexeme_region_contrastive_loss(same, same, 50.0, PHRASE_IDS[:3]).item() > 0.4


def test_local_rows_average_to_the_full_loss() -> None:
    """Two processes' local losses (own rows against gathered columns) average to the single-batch loss."""
    image, text = _unit(10, 16, 4), _unit(10, 16, 5)
    ids = torch.tensor([0, 1, 2, 0, 3, 4, 5, 6, 1, 7])
    full_gc = global_contrastive_loss(image, text, 10.0)
    full_lrc = lexeme_region_contrastive_loss(image, text, 10.0, ids)
    full_gr = global_region_alignment_loss(image, text)
    sizes = [4, 6]  # unequal shares: the normalizer makes the average exact
    world, total = len(sizes), sum(sizes)
    gc_parts, lrc_parts, gr_parts, start = [], [], [], 0
    for size in sizes:
        rows = slice(start, start + size)
        gc_parts.append(
            global_contrastive_loss(
                image[rows],
                text[rows],
                10.0,
                all_image_embeds=image,
                all_text_embeds=text,
                offset=start,
                normalizer=total / world,
            )
        )
        lrc_parts.append(
            lexeme_region_contrastive_loss(
                image[rows],
                text[rows],
                10.0,
                ids[rows],
                all_region_embeds=image,
                all_lexeme_embeds=text,
                all_phrase_ids=ids,
                offset=start,
                normalizer=total / world,
            )
        )
        gr_parts.append(global_region_alignment_loss(image[rows], text[rows], normalizer=total / world))
        start += size
    assert torch.allclose(torch.stack(gc_parts).mean(), full_gc, atol=1e-6)
    categories = torch.tensor([5, -1, 5, 2, -1, 2, 9, -1, 5, 9])
    full_lrc_categories = lexeme_region_contrastive_loss(image, text, 10.0, ids, category_ids=categories)
    parts, start = [], 0
    for size in sizes:
        rows = slice(start, start + size)
        parts.append(
            lexeme_region_contrastive_loss(
                image[rows],
                text[rows],
                10.0,
                ids[rows],
                category_ids=categories[rows],
                all_region_embeds=image,
                all_lexeme_embeds=text,
                all_phrase_ids=ids,
                all_category_ids=categories,
                offset=start,
                normalizer=total / world,
            )
        )
        start += size
    assert torch.allclose(torch.stack(parts).mean(), full_lrc_categories, atol=1e-6)
    assert torch.allclose(torch.stack(lrc_parts).mean(), full_lrc, atol=1e-6)
    assert torch.allclose(torch.stack(gr_parts).mean(), full_gr, atol=1e-6)


def test_gradients_are_finite_and_teacher_gets_none() -> None:
    regions = _unit(5, 8, 6).requires_grad_()
    lexemes = _unit(5, 8, 7).requires_grad_()
    teacher = _unit(5, 8, 8).requires_grad_()
    ids = torch.tensor([1, 1, 2, 3, 1])
    loss = lexeme_region_contrastive_loss(regions, lexemes, 30.0, ids) + global_region_alignment_loss(regions, teacher)
    loss = loss + global_contrastive_loss(regions, lexemes, torch.tensor(30.0))
    loss.backward()
    assert torch.isfinite(regions.grad).all() and regions.grad.abs().sum() > 0
    assert torch.isfinite(lexemes.grad).all() and lexemes.grad.abs().sum() > 0
    assert teacher.grad is None


def _region_batch() -> dict[str, torch.Tensor]:
    """2 images with 3 box slots: (0, 0), (0, 2), (1, 1) linked; (0, 1) valid without phrase; (1, 0), (1, 2) padding."""
    regions = F.normalize(torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(9)), dim=-1)
    return dict(
        region_embeds=regions,
        lexeme_embeds=F.normalize(torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(10)), dim=-1),
        teacher_region_embeds=F.normalize(torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(11)), dim=-1),
        region_mask=torch.tensor([[True, True, True], [False, True, False]]),
        linked_mask=torch.tensor([[True, False, True], [False, True, False]]),
        phrase_ids=torch.tensor([[4, -1, 4], [-1, 5, -1]]),
    )


def test_harmoclip_loss_selects_and_weights_the_terms() -> None:
    image, text = _unit(2, 8, 12), _unit(2, 8, 13)
    scale, region_scale = torch.tensor(2.0), torch.tensor(3.0)
    batch = _region_batch()
    loss = harmoclip_loss(
        image,
        text,
        scale,
        gc_weight=1.0,
        lrc_weight=0.5,
        rla_weight=0.0,
        gr_weight=2.0,
        region_logit_scale=region_scale,
        **batch,
    )
    linked, valid = batch["linked_mask"], batch["region_mask"]
    gc = global_contrastive_loss(image, text, scale.exp())
    lrc = lexeme_region_contrastive_loss(
        batch["region_embeds"][linked], batch["lexeme_embeds"][linked], region_scale.exp(), batch["phrase_ids"][linked]
    )
    gr = (1 - (batch["region_embeds"][valid] * batch["teacher_region_embeds"][valid]).sum(-1)).mean()  # 3 valid boxes
    torch.testing.assert_close(loss.gc, gc)
    torch.testing.assert_close(loss.lrc, lrc)
    torch.testing.assert_close(loss.gr, gr)
    torch.testing.assert_close(loss.total, gc + 0.5 * lrc + 2.0 * gr)
    assert set(loss.as_floats()) == {"loss", "loss_gc", "loss_lrc", "loss_gr"}

    # Weight 0 or missing inputs: the term is not computed, and the total is the rest.
    only_gr = harmoclip_loss(
        image,
        text,
        scale,
        gc_weight=0.0,
        lrc_weight=1.0,
        rla_weight=0.0,
        gr_weight=3.0,
        region_embeds=batch["region_embeds"],
        region_mask=valid,
        teacher_region_embeds=batch["teacher_region_embeds"],
    )
    assert only_gr.gc is None and only_gr.lrc is None
    torch.testing.assert_close(only_gr.total, 3.0 * gr)
    unlinked = dict(batch, linked_mask=torch.zeros_like(linked))
    no_links = harmoclip_loss(
        image,
        text,
        scale,
        gc_weight=1.0,
        lrc_weight=1.0,
        rla_weight=0.0,
        gr_weight=0.0,
        region_logit_scale=region_scale,
        **unlinked,
    )
    assert no_links.lrc is None and no_links.gr is None
    torch.testing.assert_close(no_links.total, gc)
    torch.testing.assert_close(
        harmoclip_loss(
            image, text, scale, gc_weight=1.0, lrc_weight=1.0, rla_weight=0.0, gr_weight=1.0, gatherer=LocalRows()
        ).total,
        gc,
    )


@pytest.mark.parametrize(
    "weights, inputs",
    [
        (dict(gc_weight=0.0, lrc_weight=1.0, rla_weight=1.0, gr_weight=1.0), {}),
        (
            dict(gc_weight=0.0, lrc_weight=1.0, rla_weight=0.0, gr_weight=0.0),
            {"linked_mask": torch.zeros(2, 3, dtype=torch.bool)},
        ),
        (
            dict(gc_weight=0.0, lrc_weight=0.0, rla_weight=0.0, gr_weight=1.0),
            {"region_mask": torch.zeros(2, 3, dtype=torch.bool)},
        ),
    ],
    ids=["no-boxes", "no-linked-box", "no-valid-box"],
)
def test_harmoclip_loss_without_an_applicable_term_says_why(weights, inputs) -> None:
    batch = dict(_region_batch(), **inputs) if inputs else {}
    with pytest.raises(ValueError, match=r"no loss term applies to this batch with weights \{'gc': 0.0, "):
        harmoclip_loss(
            _unit(2, 8, 12),
            _unit(2, 8, 13),
            torch.tensor(2.0),
            **weights,
            region_logit_scale=torch.tensor(1.0),
            **batch,
        )


def test_region_language_alignment_by_hand() -> None:
    """RLA on 3 pairs in 2-d, the softmaxes written out; the two "dog" phrases (same id) do not compete."""
    regions = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    phrases = torch.tensor([[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]])
    ids = torch.tensor([4, 5, 4])  # pairs 0 and 2 are the same phrase text
    scale = 2.0
    sim = [[sum(a * b for a, b in zip(r, p)) for p in phrases.tolist()] for r in regions.tolist()]

    def cross_entropy(row: list[float], target: int, left_out: set[int]) -> float:
        kept = [j for j in range(len(row)) if j not in left_out]
        return -scale * row[target] + math.log(sum(math.exp(scale * row[j]) for j in kept))

    same = {0: {2}, 1: set(), 2: {0}}
    columns = [list(column) for column in zip(*sim)]  # phrase i against every region
    expected = (
        sum(cross_entropy(sim[i], i, same[i]) for i in range(3)) / 3
        + sum(cross_entropy(columns[i], i, same[i]) for i in range(3)) / 3
    ) / 2
    assert abs(region_language_alignment_loss(regions, phrases, scale, ids).item() - expected) < 1e-5
    unmasked = (
        sum(cross_entropy(sim[i], i, set()) for i in range(3)) / 3
        + sum(cross_entropy(columns[i], i, set()) for i in range(3)) / 3
    ) / 2
    assert abs(region_language_alignment_loss(regions, phrases, scale).item() - unmasked) < 1e-5
    # Local rows against gathered columns average to the full loss, as LRC's do.
    parts = [
        region_language_alignment_loss(
            regions[rows],
            phrases[rows],
            scale,
            ids[rows],
            all_region_embeds=regions,
            all_phrase_embeds=phrases,
            all_phrase_ids=ids,
            offset=rows.start,
            normalizer=1.5,
        )
        for rows in (slice(0, 1), slice(1, 3))
    ]
    assert abs(torch.stack(parts).mean().item() - expected) < 1e-5


def test_teacher_gets_gradient_only_when_asked() -> None:
    regions = _unit(4, 8, 11).requires_grad_()
    teacher = _unit(4, 8, 12).requires_grad_()
    global_region_alignment_loss(regions, teacher, teacher_grad=True).backward()
    # d/dt (1 - r.t) for unit rows, through the normalisation: -(r - (r.t) t) / |t| / n, here |t| = 1.
    with torch.no_grad():
        expected = -(regions - (regions * teacher).sum(-1, keepdim=True) * teacher) / 4
    assert torch.allclose(teacher.grad, expected, atol=1e-6)


def test_harmoclip_loss_passes_categories_and_teacher_gradient() -> None:
    image, text = _unit(2, 8, 12), _unit(2, 8, 13)
    batch = _region_batch()
    batch["teacher_region_embeds"] = batch["teacher_region_embeds"].clone().requires_grad_()
    categories = torch.tensor([[7, -1, 8], [-1, 7, -1]])  # (0, 0) and (1, 1) share a category
    loss = harmoclip_loss(
        image,
        text,
        torch.tensor(2.0),
        gc_weight=0.0,
        lrc_weight=1.0,
        rla_weight=0.0,
        gr_weight=1.0,
        region_logit_scale=torch.tensor(3.0),
        category_ids=categories,
        teacher_grad=True,
        **batch,
    )
    linked = batch["linked_mask"]
    expected = lexeme_region_contrastive_loss(
        batch["region_embeds"][linked],
        batch["lexeme_embeds"][linked],
        torch.tensor(3.0).exp(),
        batch["phrase_ids"][linked],
        category_ids=categories[linked],
    )
    torch.testing.assert_close(loss.lrc, expected)
    assert not torch.allclose(
        loss.lrc,
        lexeme_region_contrastive_loss(
            batch["region_embeds"][linked],
            batch["lexeme_embeds"][linked],
            torch.tensor(3.0).exp(),
            batch["phrase_ids"][linked],
        ),
    )
    loss.total.backward()
    assert batch["teacher_region_embeds"].grad is not None and batch["teacher_region_embeds"].grad.abs().sum() > 0
