"""The loss terms on hand-built embeddings."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from modeling_harmoclip.losses import (
    global_contrastive_loss,
    global_region_alignment_loss,
    lexeme_region_contrastive_loss,
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
            global_contrastive_loss(image[rows], text[rows], 10.0, all_image_embeds=image, all_text_embeds=text,
                                    offset=start, normalizer=total / world)
        )
        lrc_parts.append(
            lexeme_region_contrastive_loss(image[rows], text[rows], 10.0, ids[rows], all_region_embeds=image,
                                           all_lexeme_embeds=text, all_phrase_ids=ids, offset=start,
                                           normalizer=total / world)
        )
        gr_parts.append(global_region_alignment_loss(image[rows], text[rows], normalizer=total / world))
        start += size
    assert torch.allclose(torch.stack(gc_parts).mean(), full_gc, atol=1e-6)
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
