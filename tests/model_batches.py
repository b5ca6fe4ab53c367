"""Inputs for the tiny random models of `conftest.py`: token ids, images and a whole training batch with boxes,
phrases and teacher crop embeddings."""

from __future__ import annotations

import torch

from conftest import tiny_clip_config
from modeling_harmoclip import HarmoCLIPModel

VOCAB = tiny_clip_config().text_config.vocab_size
BOS, EOS = VOCAB - 2, VOCAB - 1


def random_captions(batch: int, length: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, length) token ids from BOS to EOS (padded with EOS after it, rows of different lengths) and their
    attention mask."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB - 2, (batch, length), generator=generator)
    ids[:, 0] = BOS
    attention = torch.ones_like(ids)
    for row in range(batch):  # captions of different lengths, padded after their EOS
        end = length - 1 - (row % 3)
        ids[row, end] = EOS
        ids[row, end + 1 :] = EOS
        attention[row, end + 1 :] = 0
    return ids, attention


def random_images(batch: int, size: int = 32, seed: int = 1) -> torch.Tensor:
    """(batch, 3, size, size) standard-normal pixel values."""
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def training_batch(model: HarmoCLIPModel) -> dict[str, torch.Tensor]:
    """Two images with two box slots each: box (0, 0) and (1, 0) linked to a phrase, (0, 1) valid without one, (1, 1)
    padding; the teacher's crop embeddings are `model`'s own (B, N, D)."""
    ids, attention = random_captions(2)
    pixels = random_images(2)
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]], [[0.2, 0.2, 0.8, 0.8], [0.0, 0.0, 0.0, 0.0]]])
    box_mask = torch.tensor([[True, True], [True, False]])
    phrase_mask = torch.zeros(2, 2, ids.shape[1], dtype=torch.bool)
    phrase_mask[0, 0, 1:3] = True
    phrase_mask[1, 0, 4:6] = True
    phrase_ids = torch.tensor([[11, -1], [12, -1]])  # box (0, 1) has no phrase, box (1, 1) is padding
    teacher = model.get_crop_features(random_images(4, seed=2).reshape(2, 2, 3, 32, 32), box_mask)
    return dict(
        input_ids=ids,
        attention_mask=attention,
        pixel_values=pixels,
        boxes=boxes,
        box_mask=box_mask,
        phrase_token_mask=phrase_mask,
        phrase_ids=phrase_ids,
        teacher_region_embeds=teacher,
    )
