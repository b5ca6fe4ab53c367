"""Contrastive terms written out by hand: the references the loss tests compare HarmoCLIP's losses with."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def infonce_by_hand(
    first: torch.Tensor, second: torch.Tensor, scale: float | torch.Tensor, left_out: list[tuple[int, int]] = ()
) -> torch.Tensor:
    """Symmetric InfoNCE of (K, D) rows paired by index at temperature multiplier `scale`, the (i, j) pairs of
    `left_out` removed from the logits (false negatives)."""
    logits = scale * first @ second.t()
    for i, j in left_out:
        logits[i, j] = float("-inf")
    targets = torch.arange(len(first))
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2
