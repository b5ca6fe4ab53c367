"""`harmoclip_loss` as each of two processes computes it, seen in one process: a batch split over two ranks, each rank's
loss taken with the rows of both (a `RowGatherer` that reads the other rank's rows from the whole batch, with or
without their gradient as `torch.distributed`'s gather does). The mean of the two ranks' losses, and its gradient,
must be those of the whole batch written out by hand (symmetric InfoNCE, same-phrase and same-category negatives left
out; 1 - cos). The multi-process runs under torchrun check the real gatherer; these check the loss's use of it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modeling_harmoclip.losses import harmoclip_loss

SHARES = [2, 3]  # images per rank: unequal, so the normaliser matters
BOXES, DIM = 2, 8


class SplitRows:
    """Rank `rank` of `len(counts)` processes. `counts_of_call`: every rank's row count of the one gathered quantity
    a call of the loss uses; `whole`: the whole batch's tensors, from which the other ranks' rows are read. With
    `with_grad` the gathered rows stay in the graph of `whole` (all_gather with gradient: each rank's loss sends
    gradient to every rank's rows), else all are detached."""

    def __init__(self, rank: int, counts: list[int], whole: list[torch.Tensor]) -> None:
        self.rank, self.world_size, self._counts, self._whole = rank, len(counts), counts, whole

    def counts(self, count: int, device: torch.device) -> list[int]:
        assert count == self._counts[self.rank], (count, self._counts)
        return list(self._counts)

    def rows(self, rows: torch.Tensor, counts: list[int], with_grad: bool) -> torch.Tensor:
        start = sum(counts[: self.rank])
        for whole in self._whole:
            if whole.shape[1:] == rows.shape[1:] and len(whole) == sum(counts) and whole.dtype == rows.dtype:
                if torch.equal(whole[start : start + len(rows)].detach(), rows.detach()):
                    return whole if with_grad else whole.detach()
        raise AssertionError(f"rows {tuple(rows.shape)} are no rank's share of a known tensor")


def _leaf(*shape: int, seed: int) -> torch.Tensor:
    values = F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)
    return values.requires_grad_()


def _infonce_by_hand(first: torch.Tensor, second: torch.Tensor, scale: float, same: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of matched rows; `same[i, j]` (i != j) leaves column j out of row i's negatives."""
    logits = scale * first @ second.t()
    off_diagonal = same & ~torch.eye(len(first), dtype=torch.bool)
    logits = logits.masked_fill(off_diagonal, float("-inf"))
    targets = torch.arange(len(first))
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


def _ranks() -> list[slice]:
    bounds = [0, SHARES[0], sum(SHARES)]
    return [slice(bounds[r], bounds[r + 1]) for r in range(len(SHARES))]


def test_global_contrast_over_two_ranks_is_the_whole_batch() -> None:
    images, texts = _leaf(5, DIM, seed=0), _leaf(5, DIM, seed=1)
    scale = torch.tensor(2.0)
    losses = []
    for rank, rows in enumerate(_ranks()):
        gatherer = SplitRows(rank, SHARES, [images, texts])
        weights = dict(gc_weight=1.0, lrc_weight=0.0, rla_weight=0.0, gr_weight=0.0)
        losses.append(harmoclip_loss(images[rows], texts[rows], scale, gatherer=gatherer, **weights).gc)
    mean = torch.stack(losses).mean()
    same = torch.zeros(5, 5, dtype=torch.bool)
    expected = _infonce_by_hand(images.detach(), texts.detach(), float(scale.exp()), same)
    torch.testing.assert_close(mean, expected)
    mean.backward()
    images_again, texts_again = images.detach().clone().requires_grad_(), texts.detach().clone().requires_grad_()
    _infonce_by_hand(images_again, texts_again, float(scale.exp()), same).backward()
    torch.testing.assert_close(images.grad, images_again.grad)
    torch.testing.assert_close(texts.grad, texts_again.grad)


@pytest.mark.parametrize("term", ["lrc", "rla"])
def test_phrase_terms_over_two_ranks_are_the_whole_batch(term: str) -> None:
    regions, words = _leaf(5, BOXES, DIM, seed=2), _leaf(5, BOXES, DIM, seed=3)
    linked = torch.tensor([[True, False], [True, True], [False, True], [True, True], [True, False]])
    # Phrase ids 100+ (two boxes share "101"), categories 1-3 (-1: none; two boxes share 2): distinct from the
    # phrase ids, so the gatherer can tell the two apart.
    phrase_ids = torch.tensor([[100, -1], [101, 102], [-1, 103], [101, 104], [105, -1]])
    categories = torch.tensor([[2, -1], [-1, 1], [-1, 2], [3, -1], [-1, -1]])
    whole = [regions[linked], words[linked], phrase_ids[linked], categories[linked]]
    counts = [int(linked[rows].sum()) for rows in _ranks()]
    scale = torch.tensor(1.5)
    losses = []
    for rank, rows in enumerate(_ranks()):
        texts = {"lexeme_embeds" if term == "lrc" else "phrase_embeds": words[rows]}
        weights = dict(gc_weight=0.0, lrc_weight=float(term == "lrc"), rla_weight=float(term == "rla"), gr_weight=0.0)
        loss = harmoclip_loss(
            _leaf(SHARES[rank], DIM, seed=9),
            _leaf(SHARES[rank], DIM, seed=10),
            torch.tensor(1.0),
            region_embeds=regions[rows],
            linked_mask=linked[rows],
            phrase_ids=phrase_ids[rows],
            category_ids=categories[rows],
            region_logit_scale=scale,
            gatherer=SplitRows(rank, counts, whole),
            **texts,
            **weights,
        )
        assert loss.gc is None and loss.gr is None
        losses.append(getattr(loss, term))
    mean = torch.stack(losses).mean()
    ids, cats = whole[2], whole[3]
    same = (ids[:, None] == ids[None, :]) | ((cats[:, None] == cats[None, :]) & (cats[:, None] >= 0))
    regions_again, words_again = regions.detach().clone().requires_grad_(), words.detach().clone().requires_grad_()
    expected = _infonce_by_hand(regions_again[linked], words_again[linked], float(scale.exp()), same)
    torch.testing.assert_close(mean, expected.detach())
    mean.backward()
    expected.backward()
    torch.testing.assert_close(regions.grad, regions_again.grad)
    torch.testing.assert_close(words.grad, words_again.grad)


def test_region_alignment_over_two_ranks_is_the_whole_batch() -> None:
    regions, teacher = _leaf(5, BOXES, DIM, seed=4), _leaf(5, BOXES, DIM, seed=5).detach()
    valid = torch.tensor([[True, True], [True, False], [False, False], [True, True], [False, False]])  # 3 and 2
    counts = [int(valid[rows].sum()) for rows in _ranks()]
    losses = []
    for rank, rows in enumerate(_ranks()):
        weights = dict(gc_weight=0.0, lrc_weight=0.0, rla_weight=0.0, gr_weight=1.0)
        loss = harmoclip_loss(
            _leaf(SHARES[rank], DIM, seed=9),
            _leaf(SHARES[rank], DIM, seed=10),
            torch.tensor(1.0),
            region_embeds=regions[rows],
            region_mask=valid[rows],
            teacher_region_embeds=teacher[rows],
            gatherer=SplitRows(rank, counts, [regions[valid], teacher[valid]]),
            **weights,
        )
        losses.append(loss.gr)
    expected = (1 - (regions.detach()[valid] * teacher[valid]).sum(dim=-1)).mean()  # unit rows: cos = dot
    torch.testing.assert_close(torch.stack(losses).mean(), expected)


def test_a_rank_without_linked_boxes_and_batches_without_ids() -> None:
    """Rank 0 has no linked box (its term is 0 but still a term), and no phrase or category ids are given: the mean
    is still the whole batch's contrast, every negative kept."""
    regions, words = _leaf(5, BOXES, DIM, seed=6), _leaf(5, BOXES, DIM, seed=7)
    linked = torch.tensor([[False, False], [False, False], [True, True], [False, True], [True, False]])
    whole = [regions[linked], words[linked]]
    counts = [int(linked[rows].sum()) for rows in _ranks()]
    assert counts == [0, 4]
    scale = torch.tensor(1.2)
    losses = []
    for rank, rows in enumerate(_ranks()):
        loss = harmoclip_loss(
            _leaf(SHARES[rank], DIM, seed=9),
            _leaf(SHARES[rank], DIM, seed=10),
            torch.tensor(1.0),
            gc_weight=0.0,
            lrc_weight=1.0,
            rla_weight=0.0,
            gr_weight=0.0,
            region_embeds=regions[rows],
            lexeme_embeds=words[rows],
            linked_mask=linked[rows],
            region_logit_scale=scale,
            gatherer=SplitRows(rank, counts, whole),
        )
        losses.append(loss.lrc)
    assert losses[0] is not None and float(losses[0].detach()) == 0.0 and losses[0].requires_grad
    same = torch.zeros(4, 4, dtype=torch.bool)
    expected = _infonce_by_hand(regions.detach()[linked], words.detach()[linked], float(scale.exp()), same)
    torch.testing.assert_close(torch.stack(losses).mean(), expected)
