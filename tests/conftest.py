"""Shared fixtures: tiny CLIP/HarmoCLIP configs and models, CLIP-format tokenizers built from OpenAI's BPE file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import CLIPConfig, CLIPTokenizer

from conversion.clip_vocab import write_clip_tokenizer_files
from modeling_harmoclip import HarmoCLIPConfig, HarmoCLIPModel

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets"
BPE_PATH = ASSETS / "bpe_simple_vocab_16e6.txt.gz"
TINY_MERGES = 2000  # vocabulary of 256 * 2 + 2000 + 2 = 2514 tokens
TINY_VOCAB_SIZE = 512 + TINY_MERGES + 2


def tiny_clip_config(
    vocab_size: int = TINY_VOCAB_SIZE, image_size: int = 32, patch_size: int = 8, **kwargs
) -> CLIPConfig:
    """A CLIP config small enough for unit tests (2 layers of width 32 per tower, 16-d joint space)."""
    return CLIPConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=image_size,
            patch_size=patch_size,
        ),
        projection_dim=16,
        **kwargs,
    )


def tiny_harmoclip_config(**settings) -> HarmoCLIPConfig:
    return HarmoCLIPConfig.from_clip_config(tiny_clip_config(), **settings)


def tiny_harmoclip_model(seed: int = 0, **settings) -> HarmoCLIPModel:
    torch.manual_seed(seed)
    return HarmoCLIPModel(tiny_harmoclip_config(**settings)).eval()


def save_tiny_folder(folder: Path, tokenizer: CLIPTokenizer, seed: int, region_mode: bool = False) -> HarmoCLIPModel:
    """A tiny random HarmoCLIP model (`seed`) and a tiny processor saved side by side in `folder`, as a Hub repository
    holds them (model code and `custom_pipelines` in the config); returns the model."""
    model = tiny_harmoclip_model(seed=seed)
    model.save_pretrained(folder)
    tiny_processor(tokenizer, region_mode=region_mode).save_pretrained(folder)
    return model


def text_tower_calls(model) -> list[int]:
    """A counter of the text tower's forward passes (a forward hook on the model's own module): `calls[0]`."""
    calls = [0]

    def count(*_):
        calls[0] += 1

    model.text_model.register_forward_hook(count)
    return calls


@pytest.fixture
def tiny_model() -> HarmoCLIPModel:
    return tiny_harmoclip_model()


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """vocab.json + merges.txt in CLIP's format with the first 2000 of OpenAI's merges."""
    folder = tmp_path_factory.mktemp("tiny_tokenizer")
    write_clip_tokenizer_files(BPE_PATH, folder, num_merges=TINY_MERGES)
    return folder


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(tiny_tokenizer_dir, model_max_length=77)


def tiny_processor(tokenizer: CLIPTokenizer, region_mode: bool = False, image_size: int = 32):
    """A HarmoCLIP processor for the tiny models: CLIP's resize + centre crop at 32 px (or the square preset)."""
    from modeling_harmoclip.image_processing_harmoclip import clip_image_processor
    from modeling_harmoclip.processing_harmoclip import HarmoCLIPProcessor

    return HarmoCLIPProcessor(clip_image_processor(image_size), tokenizer, region_mode=region_mode)


@pytest.fixture(scope="session")
def real_tokenizer_dir(tmp_path_factory) -> Path:
    """OpenAI CLIP's full 49,408-token vocabulary."""
    folder = tmp_path_factory.mktemp("real_tokenizer")
    write_clip_tokenizer_files(BPE_PATH, folder)
    return folder


# The project's own packages: a "fresh process that cannot import the project" blocks them, so anything it loads
# must come from a saved folder (remote code), not from this checkout.
PROJECT_PACKAGES = ("modeling_harmoclip", "training", "conversion")

_BLOCKER = """
import sys
for _name in {packages!r}:
    sys.modules[_name] = None  # any `import {{name}}` now raises ImportError
"""


def run_isolated(
    code: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh Python process, in `cwd` (outside the checkout), unable to import the project."""
    full_env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    full_env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    full_env.update(env or {})
    script = _BLOCKER.format(packages=PROJECT_PACKAGES) + code
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise AssertionError(f"isolated process failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def offline_hub_cache(folder: Path, root: Path, repo_id: str = "org/harmoclip-vitb16") -> dict[str, str]:
    """Lays the files of `folder` out under `root` as huggingface_hub's cache of `repo_id` (content-addressed blobs,
    linked from a snapshot named by a commit that `refs/main` points to); returns the environment that makes a fresh
    process load `repo_id` from it, offline."""
    repo = root / "hub" / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs").mkdir()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        blob = repo / "blobs" / f"blob-{file.name}"
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(Path("../..") / "blobs" / blob.name)
    return {"HF_HUB_CACHE": str(root / "hub"), "HF_HOME": str(root / "home")}
