"""`recipe_loss`, the loss assembly the model and the training step share, against hand computations: the phrase ids
and (when the recipe masks them) the categories leave out false negatives of LRC, the teacher gets a gradient only
under FineCLIP's live teacher, and the given row gatherer is the one used."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from loss_reference import infonce_by_hand
from modeling_harmoclip.configuration_harmoclip import HarmoCLIPConfig
from modeling_harmoclip.losses import LocalRows, recipe_loss

REGION_LOG_SCALE = math.log(5.0)


def _unit(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _outputs() -> SimpleNamespace:
    """One image, four linked boxes (D = 8)."""
    return SimpleNamespace(
        image_embeds=_unit((1, 8), 0),
        text_embeds=_unit((1, 8), 1),
        region_embeds=_unit((1, 4, 8), 2).requires_grad_(),
        lexeme_embeds=_unit((1, 4, 8), 3),
        phrase_embeds=_unit((1, 4, 8), 4),
        linked_mask=torch.ones(1, 4, dtype=torch.bool),
        region_mask=torch.ones(1, 4, dtype=torch.bool),
    )


def test_phrase_ids_and_masked_categories_leave_out_false_negatives() -> None:
    outputs = _outputs()
    phrase_ids = torch.tensor([[7, 7, 8, 9]])  # boxes 0 and 1 name the same phrase
    category_ids = torch.tensor([[-1, -1, 3, 3]])  # boxes 2 and 3 are of one category
    regions, lexemes = outputs.region_embeds[0].detach(), outputs.lexeme_embeds[0]
    for masks_categories, left_out in [
        (True, [(0, 1), (1, 0), (2, 3), (3, 2)]),
        (False, [(0, 1), (1, 0)]),
    ]:
        recipe = HarmoCLIPConfig.from_recipe("harmoclip", lrc_mask_categories=masks_categories)
        loss = recipe_loss(
            recipe,
            outputs,
            torch.tensor(math.log(10.0)),
            torch.tensor(REGION_LOG_SCALE),
            phrase_ids=phrase_ids,
            category_ids=category_ids,
        )
        torch.testing.assert_close(loss.lrc, infonce_by_hand(regions, lexemes, 5.0, left_out))


def test_the_teacher_gets_a_gradient_only_from_a_live_teacher_recipe() -> None:
    for name, expect_grad in [("fineclip", True), ("harmoclip", False)]:
        recipe = HarmoCLIPConfig.from_recipe(name)
        assert (recipe.gr_teacher == "self_with_grad") is expect_grad
        teacher = _unit((1, 4, 8), 5).requires_grad_()
        loss = recipe_loss(
            recipe, _outputs(), torch.tensor(0.0), torch.tensor(REGION_LOG_SCALE), teacher_region_embeds=teacher
        )
        assert loss.gr is not None
        loss.total.backward()
        assert bool(teacher.grad is not None and teacher.grad.abs().sum() > 0) is expect_grad, name


def test_the_given_row_gatherer_is_used() -> None:
    class CountingRows(LocalRows):
        def __init__(self) -> None:
            self.calls = 0

        def rows(self, rows: torch.Tensor, counts: list[int], with_grad: bool) -> torch.Tensor:
            self.calls += 1
            return rows

    gatherer = CountingRows()
    recipe = HarmoCLIPConfig.from_recipe("harmoclip")
    recipe_loss(recipe, _outputs(), torch.tensor(0.0), torch.tensor(REGION_LOG_SCALE), gatherer=gatherer)
    assert gatherer.calls > 0
