"""The tokenizer and image processor saved beside a converted model, built or loaded with transformers' CLIP classes.

`save_processor` is the one place that decides which processor class the output folder carries.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from transformers import AutoImageProcessor, AutoTokenizer, CLIPProcessor, CLIPTokenizer

from .clip_vocab import NUM_CLIP_MERGES, write_clip_tokenizer_files

try:  # transformers 5 without torchvision: the PIL backend (CLIPImageProcessor falls back to it with a warning)
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as ClipImageProcessor
except ImportError:  # pragma: no cover - other transformers builds
    from transformers import CLIPImageProcessor as ClipImageProcessor

# OpenAI CLIP's normalisation (also transformers' CLIP default).
OPENAI_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
NUM_BASE_TOKENS = 512 + 2  # byte tokens, byte tokens + "</w>", start and end of text


def make_image_processor(image_size: int, mean=OPENAI_IMAGE_MEAN, std=OPENAI_IMAGE_STD):
    """OpenAI's preprocessing: bicubic resize of the short side to `image_size`, centre crop, normalise."""
    return ClipImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        resample=3,  # PIL bicubic
        image_mean=list(mean),
        image_std=list(std),
    )


def tokenizer_from_bpe(bpe_path: str | Path, vocab_size: int, context_length: int) -> CLIPTokenizer:
    """OpenAI's tokenizer from its BPE merge file, with as many merges as the model's vocabulary has room for.

    A full CLIP (49,408 tokens) uses all 48,894 merges; a smaller embedding table uses the first merges.
    """
    num_merges = vocab_size - NUM_BASE_TOKENS
    if not 0 <= num_merges <= NUM_CLIP_MERGES:
        raise ValueError(
            f"token embedding has {vocab_size} rows; OpenAI's BPE vocabulary has {NUM_BASE_TOKENS} to "
            f"{NUM_BASE_TOKENS + NUM_CLIP_MERGES} tokens"
        )
    with tempfile.TemporaryDirectory() as folder:
        write_clip_tokenizer_files(bpe_path, folder, num_merges=num_merges)
        tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=context_length)
    if len(tokenizer) != vocab_size:
        raise ValueError(f"tokenizer built from {bpe_path} has {len(tokenizer)} tokens, the model {vocab_size}")
    return tokenizer


def load_tokenizer_and_image_processor(folder: str | Path):
    """The tokenizer and image processor saved in a transformers model folder (plain classes, no remote code).

    `trust_remote_code=False`: the folder's `auto_map` names HarmoCLIP's code, which transformers would otherwise
    offer to run with a "[y/N]" question on a terminal; the plain classes never need it.
    """
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    image_processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=False)
    return tokenizer, image_processor


def save_processor(folder: str | Path, tokenizer, image_processor) -> None:
    """Writes a plain `CLIPProcessor` (no remote code): what an exported CLIP folder carries."""
    if callable(getattr(image_processor, "to_clip", None)):  # HarmoCLIP's image processor: its CLIP settings
        image_processor = image_processor.to_clip()
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)


def save_harmoclip_processor(folder: str | Path, tokenizer, image_processor, region_mode: bool = False) -> None:
    """Writes a `HarmoCLIPProcessor` (boxes, phrase spans; its code file too) that
    `AutoProcessor.from_pretrained(folder, trust_remote_code=True)` loads."""
    from modeling_harmoclip.processing_harmoclip import HarmoCLIPProcessor

    HarmoCLIPProcessor(image_processor=image_processor, tokenizer=tokenizer, region_mode=region_mode).save_pretrained(
        folder
    )


__all__ = [
    "OPENAI_IMAGE_MEAN",
    "OPENAI_IMAGE_STD",
    "make_image_processor",
    "tokenizer_from_bpe",
    "load_tokenizer_and_image_processor",
    "save_processor",
    "save_harmoclip_processor",
]
