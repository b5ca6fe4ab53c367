"""Shared by the Space tests: a tiny HarmoCLIP folder laid out like a Hub repository, a test picture, and imports of
the Space's modules (the Space folder is its own root, as on the Hub, not a package of the project)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

from PIL import Image, ImageDraw

from conftest import ROOT, tiny_harmoclip_model
from modeling_harmoclip.image_processing_harmoclip import clip_image_processor
from modeling_harmoclip.processing_harmoclip import HarmoCLIPProcessor

SPACE_DIR = ROOT / "space"
IMAGE_SIZE = (96, 64)  # width, height of `scene_image`
BOXES_TEXT = "8, 8, 40, 40\n[50, 20, 90, 60]"
BOXES = [[8.0, 8.0, 40.0, 40.0], [50.0, 20.0, 90.0, 60.0]]
LABELS_TEXT = "red square, blue circle\ngreen grass"
LABELS = ["red square", "blue circle", "green grass"]


def space_module(name: str) -> ModuleType:
    """Imports `space/<name>.py` the way the Space runs it: with its own folder first on the path."""
    if str(SPACE_DIR) not in sys.path:
        sys.path.insert(0, str(SPACE_DIR))
    return importlib.import_module(name)


def save_tiny_model_folder(folder: Path, tokenizer) -> Path:
    """A tiny random HarmoCLIP model and its processor (32 px input, 4 x 4 patches) saved side by side."""
    tiny_harmoclip_model(seed=5).save_pretrained(folder)
    HarmoCLIPProcessor(clip_image_processor(32), tokenizer, region_mode=True).save_pretrained(folder)
    return folder


def scene_image() -> Image.Image:
    """A 96 x 64 picture: a red square and a blue disc on green."""
    image = Image.new("RGB", IMAGE_SIZE, (40, 140, 60))
    pen = ImageDraw.Draw(image)
    pen.rectangle([8, 8, 40, 40], fill=(220, 30, 30))
    pen.ellipse([50, 20, 90, 60], fill=(30, 60, 220))
    return image
