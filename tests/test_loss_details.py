"""Details of the losses a user would notice, each against a hand computation: category 0 is a category like any
other (only -1 means none), categories mask negatives without phrase ids too, the reported terms' names, and the
teacher's gradient left off unless asked for."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from loss_reference import infonce_by_hand
from modeling_harmoclip.losses import (
    HarmoCLIPLoss,
    false_negatives,
    harmoclip_loss,
    lexeme_region_contrastive_loss,
    same_phrase_negatives,
    symmetric_infonce,
)


def _unit(rows: int, dim: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_category_zero_is_a_category_and_minus_one_is_none() -> None:
    regions, lexemes = _unit(4, 8, 0), _unit(4, 8, 1)
    categories = torch.tensor([0, 0, -1, -1])  # rows 0 and 1 share category 0; rows 2 and 3 have none
    # Without phrase ids: only the category masks, in both directions.
    expected = infonce_by_hand(regions, lexemes, 5.0, [(0, 1), (1, 0)])
    loss = lexeme_region_contrastive_loss(regions, lexemes, 5.0, category_ids=categories)
    torch.testing.assert_close(loss, expected)
    assert false_negatives(None, None, categories).tolist() == [
        [False, True, False, False],
        [True, False, False, False],
        [False, False, False, False],
        [False, False, False, False],
    ]
    # Gathered columns: category 0 of this process's row against a gathered column of category 0.
    mask = false_negatives(None, None, torch.tensor([0, -1]), torch.tensor([-1, 0, 0, -1, 3]), offset=1)
    assert mask.tolist() == [[False, False, True, False, False], [False, False, False, False, False]]


def test_phrase_and_category_masks_add_up() -> None:
    mask = false_negatives(torch.tensor([4, 4, 5]), None, torch.tensor([1, -1, 1]))
    assert mask.tolist() == [[False, True, True], [True, False, False], [True, False, False]]


def test_the_report_names_each_computed_term() -> None:
    loss = HarmoCLIPLoss(
        total=torch.tensor(3.0), gc=torch.tensor(1.0), lrc=None, gr=torch.tensor(0.5), rla=torch.tensor(0.25)
    )
    assert loss.as_floats() == {"loss": 3.0, "loss_gc": 1.0, "loss_gr": 0.5, "loss_rla": 0.25}
    assert HarmoCLIPLoss(total=torch.tensor(2.0), lrc=torch.tensor(2.0)).as_floats() == {"loss": 2.0, "loss_lrc": 2.0}


def test_the_teacher_gets_no_gradient_by_default() -> None:
    regions = _unit(4, 8, 2).reshape(2, 2, 8).requires_grad_()
    teacher = _unit(4, 8, 3).reshape(2, 2, 8).requires_grad_()
    loss = harmoclip_loss(
        _unit(2, 8, 4),
        _unit(2, 8, 5),
        torch.tensor(1.0),
        gc_weight=0.0,
        lrc_weight=0.0,
        rla_weight=0.0,
        gr_weight=1.0,
        region_embeds=regions,
        region_mask=torch.tensor([[True, True], [True, False]]),
        teacher_region_embeds=teacher,
    )
    loss.total.backward()
    assert teacher.grad is None and regions.grad is not None
    valid = torch.tensor([[True, True], [True, False]])
    expected = (1 - F.cosine_similarity(regions[valid], teacher[valid], dim=-1)).mean()
    torch.testing.assert_close(loss.gr, expected)
    assert loss.rla is None and loss.lrc is None and loss.gc is None


def test_the_public_helpers_default_to_one_process() -> None:
    """Called without `offset`, row i's positive is column i (the one-process case), by hand."""
    first, second = _unit(3, 8, 6), _unit(3, 8, 7)
    torch.testing.assert_close(symmetric_infonce(first, second, 4.0), infonce_by_hand(first, second, 4.0, []))
    assert same_phrase_negatives(torch.tensor([1, 2, 1]), torch.tensor([1, 2, 1])).tolist() == [
        [False, False, True],
        [False, False, False],
        [True, False, False],
    ]


def test_without_an_applicable_term_the_error_says_what_each_term_needs() -> None:
    weights = dict(gc_weight=0.0, lrc_weight=1.0, rla_weight=0.0, gr_weight=1.0)
    with pytest.raises(ValueError) as caught:
        harmoclip_loss(_unit(2, 8, 8), _unit(2, 8, 9), torch.tensor(1.0), **weights)
    assert str(caught.value) == (
        "no loss term applies to this batch with weights {'gc': 0.0, 'lrc': 1.0, 'rla': 0.0, 'gr': 1.0, 'gd': 0.0}: GC "
        "needs a weight > 0, LRC and RLA boxes linked to phrases, GR boxes and `teacher_region_embeds`, GD "
        "`teacher_global`"
    )
