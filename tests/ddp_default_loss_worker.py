"""A few steps of the default loss under plain `DistributedDataParallel` with `find_unused_parameters=False` (what
transformers' Trainer chooses under gradient checkpointing), with no parameter frozen by hand.

    torchrun --nproc_per_node 2 tests/ddp_default_loss_worker.py --out params.pt

Each process trains on its own half of a fixed batch (boxes and teacher crops, so every default loss term applies);
the main process writes the parameters after the last step, every process checks that the replicas agree.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from conftest import tiny_harmoclip_model
from model_batches import training_batch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = tiny_harmoclip_model(seed=0).train()  # the default config: GC + GR, `region_logit_scale_mode: shared`
    batch = training_batch(model)  # teacher crops from the starting weights
    half = {key: value[rank : rank + 1] for key, value in batch.items()}
    ddp = DistributedDataParallel(model, find_unused_parameters=False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(args.steps):
        optimizer.zero_grad()
        ddp(**half, return_loss=True).loss.backward()
        optimizer.step()
    state = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, state)
    for other in gathered[1:]:
        for name, value in gathered[0].items():
            assert torch.equal(value, other[name]), f"replicas differ at {name}"
    if rank == 0:
        torch.save({"state": state, "world_size": dist.get_world_size(), "steps": args.steps}, args.out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
