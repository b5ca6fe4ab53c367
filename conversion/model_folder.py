"""Facts about transformers model folders that conversion, export and publishing check before reading them."""

from __future__ import annotations

import json
from pathlib import Path

# Parameters a HarmoCLIP model has beyond CLIPModel's: set on conversion (as the config says), dropped on export (the
# region and lexeme heads exist with `region_heads` only).
HARMOCLIP_ONLY_PARAMETERS = frozenset({"region_logit_scale", "region_projection.weight", "lexeme_projection.weight"})


def require_model_type(folder: str | Path, expected: str, argument: str) -> Path:
    """Checks that `folder` holds a transformers model of `model_type == expected`; returns it as a `Path`.

    Raises `FileNotFoundError` (no config.json) or `ValueError` (another model type), naming `argument`.
    """
    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"`{argument}`: {folder} is not a transformers model folder (no config.json)")
    model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    if model_type != expected:
        raise ValueError(f"`{argument}`: {folder} holds a {model_type!r} model, expected model_type {expected!r}")
    return folder


__all__ = ["HARMOCLIP_ONLY_PARAMETERS", "require_model_type"]
