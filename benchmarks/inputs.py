"""What the benchmarks run on: the model geometries (a from-scratch ViT-B/16 HarmoCLIP at 224 px, or the shipped tiny
one), random weights of a seed, random pixels and boxes, generated captions, and a temporary folder for the inputs
written to disk."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from training.config import PROJECT_ROOT

# OpenAI's BPE merge list, shipped with the project: CLIP's full 49,408-token vocabulary.
OPENAI_BPE = PROJECT_ROOT / "assets" / "bpe_simple_vocab_16e6.txt.gz"


# ---------------------------------------------------------------- models


def vitb16_config(**overrides: Any):
    """A `TrainConfig` for a from-scratch ViT-B/16 HarmoCLIP at 224 px with OpenAI's full BPE vocabulary."""
    from training.config import TrainConfig

    settings = dict(
        model_preset="vit-b-16",
        image_size=224,
        patch_size=16,
        tokenizer_num_merges=None,
        tokenizer_bpe=str(OPENAI_BPE),
        evaluate_at_end=False,
        report_to="none",
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def model_config_for(preset: str, **overrides: Any):
    """The benchmark's model geometry: "vit-b-16" (224 px, patch 16) or "tiny" (the shipped default, 64 px, patch 8)."""
    if preset == "vit-b-16":
        return vitb16_config(**overrides)
    if preset == "tiny":
        return vitb16_config(
            **{"model_preset": "tiny", "image_size": 64, "patch_size": 8, "tokenizer_num_merges": 2000, **overrides}
        )
    raise ValueError(f"model preset must be 'vit-b-16' or 'tiny', got {preset!r}")


def build_model(preset: str, seed: int, **overrides: Any):
    """(HarmoCLIPModel in eval mode, HarmoCLIPProcessor, TrainConfig) of `preset`, random weights of `seed`."""
    from training.builders import build_model_and_processor

    config = model_config_for(preset, seed=seed, **overrides)
    model, processor = build_model_and_processor(config)
    return model.eval(), processor, config


# ---------------------------------------------------------------- pixels and boxes


def random_pixel_values(num_images: int, image_size: int, generator: torch.Generator) -> torch.Tensor:
    """(B, 3, S, S) standard-normal pixel values, as a processor's output would be shaped."""
    return torch.randn(num_images, 3, image_size, image_size, generator=generator)


def random_boxes(num_images: int, num_boxes: int, generator: torch.Generator) -> torch.Tensor:
    """(B, N, 4) normalised xyxy boxes, sides between 10% and 60% of the image, inside it."""
    sides = torch.rand(num_images, num_boxes, 2, generator=generator) * 0.5 + 0.1
    corners = torch.rand(num_images, num_boxes, 2, generator=generator) * (1 - sides)
    return torch.cat([corners, corners + sides], dim=-1)


# ---------------------------------------------------------------- captions

_SUBJECTS = (
    "a man",
    "a woman",
    "two children",
    "a small dog",
    "an old man",
    "a group of people",
    "a brown horse",
    "a young girl",
    "a cat",
    "three surfers",
    "a chef",
    "a black and white bird",
)
_ACTIONS = (
    "riding",
    "holding",
    "standing next to",
    "looking at",
    "sitting on",
    "walking past",
    "carrying",
    "playing with",
)
_OBJECTS = (
    "a red bicycle",
    "a wooden bench",
    "a large umbrella",
    "a frisbee",
    "a pizza with mushrooms",
    "a blue car",
    "a kite",
    "the kitchen counter",
    "a laptop computer",
    "a wave",
    "a tennis racket",
    "a plate of food",
)
_PLACES = (
    "in a park",
    "on a busy street",
    "near the beach",
    "in a kitchen",
    "under a tree",
    "at the train station",
    "in a snowy field",
    "beside a river",
    "",
    "",
)


def sample_captions(count: int, seed: int) -> list[str]:
    """`count` COCO-like captions ("A man riding a red bicycle on a busy street."), a function of `seed`."""
    generator = torch.Generator().manual_seed(seed)

    def pick(options: Sequence[str]) -> str:
        return options[int(torch.randint(len(options), (1,), generator=generator))]

    captions = []
    for _ in range(count):
        words = [pick(_SUBJECTS), pick(_ACTIONS), pick(_OBJECTS), pick(_PLACES)]
        if int(torch.randint(3, (1,), generator=generator)) == 0:
            words += ["while", pick(_SUBJECTS), pick(_ACTIONS), pick(_OBJECTS)]
        text = " ".join(word for word in words if word)
        captions.append(text[0].upper() + text[1:] + ".")
    return captions


# ---------------------------------------------------------------- files


@contextlib.contextmanager
def temporary_folder(prefix: str) -> Iterator[Path]:
    """A folder for inputs written to disk (manifests, images, teacher caches), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        yield Path(folder)
