"""The training objective across processes: `modeling_harmoclip.losses.harmoclip_loss` with the embeddings of every
process gathered by `torch.distributed` (the model and its loss never touch `torch.distributed` themselves).

Each process computes only its own rows of each logit matrix against the gathered columns (open_clip's local loss)
and divides by ``rows of the global batch / number of processes``. Data-parallel training averages the processes'
gradients, so the result equals, to rounding, the loss and gradients of one process holding the whole global batch
(tests/test_training.py checks this under torchrun).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


class DistributedRows:
    """The `RowGatherer` of a `torch.distributed` run (one process without a process group: nothing to gather)."""

    def __init__(self) -> None:
        initialized = dist.is_available() and dist.is_initialized()
        self.world_size = dist.get_world_size() if initialized else 1
        self.rank = dist.get_rank() if initialized else 0

    def counts(self, count: int, device: torch.device) -> list[int]:
        """Every process's row count (no gradient)."""
        if self.world_size == 1:
            return [count]
        local = torch.tensor([count], device=device, dtype=torch.long)
        parts = [torch.zeros_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local)
        return [int(part.item()) for part in parts]

    def rows(self, rows: torch.Tensor, counts: list[int], with_grad: bool) -> torch.Tensor:
        """Concatenates every process's `rows` (n_i, ...) in rank order, padding to the longest for the collective.

        With `with_grad`, gradients flow back to each process's own rows (the backward sums the processes' gradients).
        """
        if len(counts) == 1:
            return rows
        longest = max(counts)
        padded = (
            F.pad(rows, (0, 0) * (rows.dim() - 1) + (0, longest - rows.shape[0])) if rows.shape[0] < longest else rows
        )
        padded = padded.contiguous()
        if with_grad:
            from torch.distributed.nn.functional import all_gather as all_gather_with_grad

            parts = all_gather_with_grad(padded)
        else:
            parts = [torch.empty_like(padded) for _ in counts]
            dist.all_gather(parts, padded)
        return torch.cat([part[:count] for part, count in zip(parts, counts)], dim=0)


__all__ = ["DistributedRows"]
