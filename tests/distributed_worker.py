"""One training micro-step on a fixed global batch, for the distributed-equivalence test.

    python tests/distributed_worker.py --out single.pt                       # one process, the whole batch
    torchrun --nproc_per_node 2 tests/distributed_worker.py --out dual.pt    # two processes, half each

Writes (from the main process) every loss term, averaged over processes, and every parameter's gradient after the
data-parallel reduction. Both runs go through `training.train.forward_objective`, the training loop's own step.
"""

from __future__ import annotations

import argparse

import torch
from accelerate import Accelerator

from conftest import tiny_clip_config, tiny_harmoclip_model
from training.config import TrainConfig
from training.teacher import frozen_copy
from training.train import end_distributed_run, forward_objective, lock_parameters

GLOBAL_BATCH = 6


def global_batch() -> dict[str, torch.Tensor]:
    """6 captions/images, 3 boxes each with its teacher crop; repeated phrase and category ids across the halves; one
    image with no
    linked box."""
    generator = torch.Generator().manual_seed(11)
    vocab = tiny_clip_config().text_config.vocab_size
    length = 10
    ids = torch.randint(0, vocab - 2, (GLOBAL_BATCH, length), generator=generator)
    ids[:, 0], ids[:, -1] = vocab - 2, vocab - 1
    corner = torch.rand(GLOBAL_BATCH, 3, 2, generator=generator) * 0.5
    boxes = torch.cat([corner, corner + 0.2 + 0.3 * torch.rand(GLOBAL_BATCH, 3, 2, generator=generator)], dim=-1)
    box_mask = torch.ones(GLOBAL_BATCH, 3, dtype=torch.bool)
    box_mask[1, 2] = box_mask[4, 1:] = False
    phrase_ids = torch.tensor([[5, 6, -1], [7, -1, -1], [-1, -1, -1], [5, 8, 9], [6, -1, -1], [10, 5, -1]])
    # Categories shared across the two halves (phrases 7 and 10, 8 and 6 name the same things), some unknown.
    category_ids = torch.tensor([[1, 2, -1], [3, -1, -1], [-1, -1, -1], [1, 2, -1], [2, -1, -1], [3, -1, -1]])
    phrase_mask = torch.zeros(GLOBAL_BATCH, 3, length, dtype=torch.bool)
    for b in range(GLOBAL_BATCH):
        for n in range(3):
            if phrase_ids[b, n] >= 0 and box_mask[b, n]:
                start = 1 + (2 * n + b) % 6
                phrase_mask[b, n, start : start + 2] = True
    return dict(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        pixel_values=torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=generator),
        boxes=boxes,
        box_mask=box_mask,
        phrase_token_mask=phrase_mask,
        phrase_ids=torch.where(box_mask, phrase_ids, -1),
        # The GR teacher's crops, as the collator cuts them (`return_crops=True`): one per kept box.
        crop_pixel_values=torch.randn(GLOBAL_BATCH, 3, 3, 32, 32, generator=generator),
        crop_mask=box_mask.clone(),
        category_ids=torch.where(box_mask, category_ids, -1),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--gr-teacher", default="frozen")
    args = parser.parse_args()
    accelerator = Accelerator(cpu=True)
    # Every term on, the token-level LRC and the sentence-level RLA together.
    config = TrainConfig(
        batch_size=GLOBAL_BATCH // accelerator.num_processes,
        gr_teacher=args.gr_teacher,
        loss_lrc_weight=1.0,
        loss_rla_weight=0.5,
    )
    model = tiny_harmoclip_model(seed=0, loss_rla_weight=0.5)
    model.train()
    lock_parameters(model, config)
    teacher = frozen_copy(model)
    model = accelerator.prepare(model)
    unwrapped = accelerator.unwrap_model(model)
    share = GLOBAL_BATCH // accelerator.num_processes
    rows = slice(accelerator.process_index * share, (accelerator.process_index + 1) * share)
    batch = {key: value[rows] for key, value in global_batch().items()}
    terms = forward_objective(model, unwrapped, batch, config, accelerator, teacher)
    accelerator.backward(terms.total)
    losses = {name: float(accelerator.reduce(torch.tensor(value), "mean")) for name, value in terms.as_floats().items()}
    grads = {
        name: parameter.grad.clone() for name, parameter in unwrapped.named_parameters() if parameter.grad is not None
    }
    end_distributed_run(accelerator)
    if accelerator.is_main_process:
        torch.save({"losses": losses, "grads": grads, "processes": accelerator.num_processes}, args.out)


if __name__ == "__main__":
    main()
