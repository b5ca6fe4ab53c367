"""Comparing the global image and text embeddings of two models on the same inputs (the conversion check)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Texts tokenized by the output folder's tokenizer for the check (real words: BPE merges, start and end tokens).
CHECK_TEXTS = ("a photo of a cat", "a man in a red shirt", "two dogs playing in the snow")

ImageEncoder = Callable[[torch.Tensor], torch.Tensor]  # (B, 3, H, W) -> (B, D)
TextEncoder = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # input_ids, attention_mask (B, T) -> (B, D)


@dataclass(frozen=True)
class CheckInputs:
    pixel_values: torch.Tensor  # (B, 3, H, W), standard-normal like normalised images
    input_ids: torch.Tensor  # (B_txt, T)
    attention_mask: torch.Tensor  # (B_txt, T)


@dataclass(frozen=True)
class EmbeddingDiff:
    """Max abs differences between two models' L2-normalised embeddings (and the logit scales)."""

    image: float
    text: float
    logit_scale: float

    @property
    def max(self) -> float:
        return max(self.image, self.text, self.logit_scale)

    def __str__(self) -> str:
        return f"max abs diff: image {self.image:.3g}, text {self.text:.3g}, logit_scale {self.logit_scale:.3g}"


def check_inputs(tokenizer, image_size: int, context_length: int, num_images: int = 2, seed: int = 0) -> CheckInputs:
    """Deterministic random images and the `CHECK_TEXTS` tokenized (padded to `context_length`)."""
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(num_images, 3, image_size, image_size, generator=generator)
    tokens = tokenizer(
        list(CHECK_TEXTS), padding="max_length", max_length=context_length, truncation=True, return_tensors="pt"
    )
    return CheckInputs(pixel_values, tokens["input_ids"], tokens["attention_mask"])


def model_encoders(model) -> tuple[ImageEncoder, TextEncoder]:
    """`get_image_features` / `get_text_features` of a `CLIPModel` (or subclass) as plain tensor functions."""

    @torch.no_grad()
    def encode_image(pixel_values: torch.Tensor) -> torch.Tensor:
        return model.get_image_features(pixel_values=pixel_values).pooler_output

    @torch.no_grad()
    def encode_text(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output

    return encode_image, encode_text


def embedding_diff(
    reference: tuple[ImageEncoder, TextEncoder],
    candidate: tuple[ImageEncoder, TextEncoder],
    inputs: CheckInputs,
    logit_scales: tuple[float, float] = (0.0, 0.0),
) -> EmbeddingDiff:
    """Runs both encoders on `inputs` and returns the max abs difference of the L2-normalised embeddings."""

    def normalised(encoders: tuple[ImageEncoder, TextEncoder]) -> tuple[torch.Tensor, torch.Tensor]:
        image = encoders[0](inputs.pixel_values).float()
        text = encoders[1](inputs.input_ids, inputs.attention_mask).float()
        return F.normalize(image, dim=-1), F.normalize(text, dim=-1)

    ref_image, ref_text = normalised(reference)
    new_image, new_text = normalised(candidate)
    if ref_image.shape != new_image.shape or ref_text.shape != new_text.shape:
        raise ValueError(
            f"embedding shapes differ: image {tuple(ref_image.shape)} vs {tuple(new_image.shape)}, "
            f"text {tuple(ref_text.shape)} vs {tuple(new_text.shape)}"
        )
    return EmbeddingDiff(
        image=(ref_image - new_image).abs().max().item(),
        text=(ref_text - new_text).abs().max().item(),
        logit_scale=abs(float(logit_scales[0]) - float(logit_scales[1])),
    )


__all__ = ["CHECK_TEXTS", "CheckInputs", "EmbeddingDiff", "check_inputs", "model_encoders", "embedding_diff"]
