"""Converts a CLIP checkpoint (transformers folder, OpenAI `.pt`, or open_clip state dict) into a HarmoCLIP folder.

    python -m conversion.convert_clip --source openai --checkpoint ViT-B-16.pt \
        --bpe-path bpe_simple_vocab_16e6.txt.gz --output harmoclip-vitb16 [--dense-mode value ...]

The output folder holds the model (`model.safetensors`), its config (CLIP's towers plus the HarmoCLIP settings given
on the command line), the processor files and the model's code files, so that
`AutoModel.from_pretrained(folder, trust_remote_code=True)` loads it. After writing, the folder is reloaded and its
image and text embeddings are compared with the source model's (its own forward pass: transformers' CLIPModel for
`hf`, OpenAI's architecture run on the original weights for `openai` / `open_clip`); the conversion fails above the
tolerance (1e-4 on L2-normalised embeddings). The folder is written beside the target and renamed into place only
once checked; an existing folder is replaced only with `--overwrite`.
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file as load_safetensors
from transformers import CLIPConfig, CLIPModel

from modeling_harmoclip import HarmoCLIPConfig, HarmoCLIPModel
from modeling_harmoclip.configuration_harmoclip import (
    DEFAULT_RECIPE,
    LEXEME_ALIASES,
    RECIPE_CHOICES,
    RECIPES,
    TEACHER_ALIASES,
    apply_recipe,
    recipe_defaults,
)
from plumbing.atomic_files import atomic_directory, check_output_dir
from plumbing.command_line import CommandParser, run_command, setup_logging
from plumbing.typed_values import coerce_value, type_name

from . import openai_forward
from .embedding_check import EmbeddingDiff, ImageEncoder, TextEncoder, check_inputs, embedding_diff, model_encoders
from .model_folder import HARMOCLIP_ONLY_PARAMETERS, require_model_type
from .openai_keys import ClipArchitecture, clip_config_from_architecture, infer_architecture, openai_to_hf_state_dict
from .processor_files import (
    OPENAI_IMAGE_MEAN,
    OPENAI_IMAGE_STD,
    load_tokenizer_and_image_processor,
    make_image_processor,
    save_harmoclip_processor,
    tokenizer_from_bpe,
)

logger = logging.getLogger(__name__)

SOURCES = ("hf", "openai", "open_clip")
DEFAULT_TOLERANCE = 1e-4


class ConversionCheckError(RuntimeError):
    """The converted model's embeddings differ from the source model's by more than the tolerance."""


@dataclass
class ClipSource:
    """A CLIP checkpoint read into transformers' layout, with the means to run the original model."""

    kind: str
    clip_config: CLIPConfig
    state_dict: dict[str, torch.Tensor]  # `CLIPModel` parameter names, float32
    tokenizer: Any
    image_processor: Any
    encoders: tuple[ImageEncoder, TextEncoder]  # the source model's own forward pass
    logit_scale: float


@dataclass(frozen=True)
class ConversionReport:
    output_dir: Path
    source: str
    diff: EmbeddingDiff


# ---------------------------------------------------------------------------------------------- reading sources


def _unwrap_state_dict(checkpoint: Any, path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors: training checkpoints wrap them in `state_dict`, DDP prefixes them with `module.`."""
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise ValueError(f"{path}: expected a state dict (a dict of tensors), got {type(checkpoint).__name__}")
    state_dict = {}
    for key, value in checkpoint.items():
        if not isinstance(value, torch.Tensor):
            continue  # e.g. integer attributes of old archives
        state_dict[key[len("module.") :] if key.startswith("module.") else key] = value
    return state_dict


def unreadable_checkpoint(path: Path, error: BaseException) -> ValueError:
    """The one error for a file that is not a checkpoint of tensors. torch's own message advises loading with
    `weights_only=False` (running whatever code the file holds), which this converter never does: it is left out."""
    if "Unsupported global" in str(error):
        reason = "it holds Python objects besides tensors, which are never unpickled"
    else:
        reason = "not a PyTorch or safetensors file of tensors, or a corrupt one"
    return ValueError(f"`--checkpoint`: {path} is not a readable checkpoint ({reason})")


def load_tensor_file(path: Path) -> Any:
    """Reads a weights file (`.safetensors`, TorchScript archive, or `torch.load(weights_only=True)`) on the CPU;
    anything unreadable raises `unreadable_checkpoint`."""
    try:
        if path.suffix == ".safetensors":
            return load_safetensors(str(path))
        if is_torchscript_archive(path):
            return torch.jit.load(str(path), map_location="cpu").state_dict()  # its weights only; its code is not run
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch and safetensors raise many types (UnpicklingError, EOFError, KeyError, ...)
        raise unreadable_checkpoint(path, error) from None


def is_torchscript_archive(path: Path) -> bool:
    """TorchScript archives are zip files with serialized code (`<name>/code/...`); plain state dicts are not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def read_openai_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """OpenAI's `.pt`: a TorchScript archive (its weights are read; its code is not run) or a plain state dict.

    Plain files are read with `torch.load(weights_only=True)`, which never unpickles arbitrary objects.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`checkpoint`: file not found: {path}")
    return _unwrap_state_dict(load_tensor_file(path), path)


def read_open_clip_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """open_clip weights: `.safetensors`, or `.bin` / `.pt` / `.pth` read with `torch.load(weights_only=True)`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`checkpoint`: file not found: {path}")
    if path.suffix in (".safetensors", ".bin", ".pt", ".pth"):
        return _unwrap_state_dict(load_tensor_file(path), path)
    raise ValueError(f"`checkpoint`: expected a .safetensors, .bin, .pt or .pth file, got {path.name}")


# open_clip options that change the architecture away from OpenAI's (and CLIPModel's), with their neutral values
# (training-only options such as patch_dropout do not matter).
_OPEN_CLIP_NEUTRAL_VISION = {
    "timm_model_name": None,
    "ls_init_value": None,
    "attentional_pool": False,
    "no_ln_pre": False,
    "final_ln_after_pool": False,
    "output_tokens": False,
    "act_kwargs": None,
    "norm_kwargs": None,
    "pos_embed_type": "learnable",
}
_OPEN_CLIP_NEUTRAL_TEXT = {
    "hf_model_name": None,
    "ls_init_value": None,
    "proj_bias": False,
    "embed_cls": False,
    "no_causal_mask": False,
    "final_ln_after_pool": False,
    "ln_post_emb": False,
    "act_kwargs": None,
    "norm_kwargs": None,
}


def read_open_clip_config(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model config, preprocess config) from an open_clip model config JSON (`embed_dim`, `vision_cfg`, `text_cfg`,
    `quick_gelu`) or a Hub `open_clip_config.json` (`model_cfg`, `preprocess_cfg`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`open_clip_config`: file not found: {path}")
    config = json.loads(path.read_text(encoding="utf-8"))
    model_cfg, preprocess_cfg = (
        (config["model_cfg"], config.get("preprocess_cfg", {})) if "model_cfg" in config else (config, {})
    )
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in model_cfg:
            raise ValueError(f"`open_clip_config` {path}: missing {key!r}")
    for section, neutral in (("vision_cfg", _OPEN_CLIP_NEUTRAL_VISION), ("text_cfg", _OPEN_CLIP_NEUTRAL_TEXT)):
        for key, value in model_cfg[section].items():
            if key in neutral and value and value != neutral[key]:  # unset / empty / zero means "off"
                raise ValueError(
                    f"`open_clip_config`: {section}.{key}={value!r} is not supported (no CLIPModel equivalent)"
                )
    if isinstance(model_cfg["vision_cfg"].get("layers"), (list, tuple)):
        raise ValueError("`open_clip_config`: ResNet image towers (vision_cfg.layers is a list) are not supported")
    for section, key, allowed in (("vision_cfg", "pool_type", ("tok",)), ("text_cfg", "pool_type", ("argmax",))):
        value = model_cfg[section].get(key)
        if value is not None and value not in allowed:
            raise ValueError(
                f"`open_clip_config`: {section}.{key}={value!r} is not supported (CLIPModel pools {allowed[0]!r})"
            )
    return model_cfg, preprocess_cfg


def _check_open_clip_architecture(arch: ClipArchitecture, model_cfg: dict[str, Any]) -> None:
    """The weights must have the shapes the config describes."""
    vision, text = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    image_size = vision.get("image_size", arch.image_size)
    image_size = image_size[0] if isinstance(image_size, (list, tuple)) else image_size
    expected = {
        "embed_dim": (model_cfg["embed_dim"], arch.embed_dim),
        "vision_cfg.width": (vision.get("width", arch.vision_width), arch.vision_width),
        "vision_cfg.layers": (vision.get("layers", arch.vision_layers), arch.vision_layers),
        "vision_cfg.patch_size": (vision.get("patch_size", arch.patch_size), arch.patch_size),
        "vision_cfg.image_size": (image_size, arch.image_size),
        "vision_cfg.mlp_ratio": (int(arch.vision_width * vision.get("mlp_ratio", 4.0)), arch.vision_mlp_width),
        "text_cfg.width": (text.get("width", arch.text_width), arch.text_width),
        "text_cfg.layers": (text.get("layers", arch.text_layers), arch.text_layers),
        "text_cfg.context_length": (text.get("context_length", arch.context_length), arch.context_length),
        "text_cfg.vocab_size": (text.get("vocab_size", arch.vocab_size), arch.vocab_size),
        "text_cfg.mlp_ratio": (int(arch.text_width * text.get("mlp_ratio", 4.0)), arch.text_mlp_width),
    }
    for name, (from_config, from_weights) in expected.items():
        if from_config != from_weights:
            raise ValueError(f"`open_clip_config`: {name} gives {from_config}, the weights {from_weights}")


def _openai_layout_source(
    kind: str, weights: dict[str, torch.Tensor], arch: ClipArchitecture, bpe_path: str | Path | None, mean, std
) -> ClipSource:
    if bpe_path is None:
        raise ValueError(
            f"`bpe_path` is required for --source {kind}: the tokenizer is built from bpe_simple_vocab_16e6.txt.gz"
        )
    reference = {key: value.detach().float() for key, value in weights.items()}  # OpenAI ships fp16 weights
    logit_scale = float(reference["logit_scale"]) if "logit_scale" in reference else None
    if logit_scale is None:
        raise ValueError("state dict: missing key 'logit_scale'")
    return ClipSource(
        kind=kind,
        clip_config=clip_config_from_architecture(arch, logit_scale),
        state_dict=openai_to_hf_state_dict(weights, arch),
        tokenizer=tokenizer_from_bpe(bpe_path, arch.vocab_size, arch.context_length),
        image_processor=make_image_processor(arch.image_size, mean, std),
        encoders=(
            lambda pixel_values: openai_forward.encode_image(reference, arch, pixel_values),
            lambda input_ids, attention_mask: openai_forward.encode_text(reference, arch, input_ids),
        ),
        logit_scale=logit_scale,
    )


def load_openai_source(
    checkpoint: str | Path, bpe_path: str | Path | None, hidden_act: str | None = None
) -> ClipSource:
    """OpenAI CLIP `.pt`; hyper-parameters inferred from the weights as OpenAI's `build_model` does (QuickGELU)."""
    weights = read_openai_checkpoint(checkpoint)
    arch = infer_architecture(weights, hidden_act=hidden_act or "quick_gelu")
    return _openai_layout_source("openai", weights, arch, bpe_path, OPENAI_IMAGE_MEAN, OPENAI_IMAGE_STD)


def load_open_clip_source(
    checkpoint: str | Path,
    open_clip_config: str | Path | None,
    bpe_path: str | Path | None,
    hidden_act: str | None = None,
) -> ClipSource:
    """open_clip weights + model config: heads and activation (GELU or QuickGELU) as the config says."""
    if open_clip_config is None:
        raise ValueError("`open_clip_config` is required for --source open_clip (the model config JSON)")
    model_cfg, preprocess_cfg = read_open_clip_config(open_clip_config)
    weights = read_open_clip_checkpoint(checkpoint)
    if any(key.startswith("text.") for key in weights):
        raise ValueError(
            "state dict: custom text towers (keys 'text.*', e.g. Hugging Face text encoders) are not supported"
        )
    vision, text = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    vision_width = (
        weights["visual.conv1.weight"].shape[0] if "visual.conv1.weight" in weights else vision.get("width", 768)
    )
    arch = infer_architecture(
        weights,
        hidden_act=hidden_act or ("quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu"),
        vision_heads=vision_width // vision.get("head_width", 64),
        text_heads=text.get("heads", 8),
    )
    _check_open_clip_architecture(arch, model_cfg)
    mean = preprocess_cfg.get("mean") or vision.get("image_mean") or OPENAI_IMAGE_MEAN
    std = preprocess_cfg.get("std") or vision.get("image_std") or OPENAI_IMAGE_STD
    return _openai_layout_source("open_clip", weights, arch, bpe_path, mean, std)


def load_hf_source(folder: str | Path) -> ClipSource:
    """A transformers CLIP folder: weights (safetensors; `.bin` read with `weights_only=True`), tokenizer and image
    processor reused."""
    folder = require_model_type(folder, "clip", "checkpoint")
    try:
        model = CLIPModel.from_pretrained(folder, dtype=torch.float32, weights_only=True).eval()
    except (pickle.UnpicklingError, EOFError, RuntimeError) as error:  # unreadable weights, not a missing file
        raise unreadable_checkpoint(folder, error) from None
    tokenizer, image_processor = load_tokenizer_and_image_processor(folder)
    return ClipSource(
        kind="hf",
        clip_config=model.config,
        state_dict={key: value.detach() for key, value in model.state_dict().items()},
        tokenizer=tokenizer,
        image_processor=image_processor,
        encoders=model_encoders(model),
        logit_scale=float(model.logit_scale.detach()),
    )


def load_source(
    source: str,
    checkpoint: str | Path,
    bpe_path: str | Path | None = None,
    open_clip_config: str | Path | None = None,
    hidden_act: str | None = None,
) -> ClipSource:
    """Reads a checkpoint of kind `source` ("hf", "openai" or "open_clip")."""
    if source == "hf":
        return load_hf_source(checkpoint)
    if source == "openai":
        return load_openai_source(checkpoint, bpe_path, hidden_act)
    if source == "open_clip":
        return load_open_clip_source(checkpoint, open_clip_config, bpe_path, hidden_act)
    raise ValueError(f"`source` must be one of {SOURCES}, got {source!r}")


# ---------------------------------------------------------------------------------------------- building the model


def build_harmoclip_model(source: ClipSource, **harmoclip_settings: Any) -> HarmoCLIPModel:
    """A HarmoCLIP model with the source's towers; only the HarmoCLIP-only parameters come from the config."""
    config = HarmoCLIPConfig.from_clip_config(source.clip_config, **harmoclip_settings)
    model = HarmoCLIPModel(config).eval()
    missing, unexpected = model.load_state_dict(source.state_dict, strict=False)
    if "region_logit_scale" in missing:  # from the source's trained `logit_scale` unless the mode says otherwise
        model.reset_region_logit_scale()
    if "region_projection.weight" in missing:  # the region heads start as the source's projections
        model.reset_region_heads()
    missing = set(missing) - HARMOCLIP_ONLY_PARAMETERS
    if missing or unexpected:
        raise ValueError(
            f"source weights do not fit the model: missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}"
        )
    return model


def verify_folder(folder: Path, source: ClipSource) -> EmbeddingDiff:
    """Reloads the written folder and compares its embeddings with the source model's."""
    model = HarmoCLIPModel.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer, _ = load_tokenizer_and_image_processor(folder)
    vision = model.config.vision_config
    inputs = check_inputs(tokenizer, vision.image_size, model.config.text_config.max_position_embeddings)
    return embedding_diff(
        source.encoders, model_encoders(model), inputs, (source.logit_scale, float(model.logit_scale.detach()))
    )


def convert_clip(
    source: str,
    checkpoint: str | Path,
    output_dir: str | Path,
    *,
    bpe_path: str | Path | None = None,
    open_clip_config: str | Path | None = None,
    hidden_act: str | None = None,
    overwrite: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    region_mode: bool = False,
    **harmoclip_settings: Any,
) -> ConversionReport:
    """Converts `checkpoint` into a HarmoCLIP folder at `output_dir` (see the module docstring).

    Args:
        source: "hf" (a transformers CLIP folder), "openai" (`.pt`) or "open_clip" (state dict + `open_clip_config`).
        bpe_path: OpenAI's `bpe_simple_vocab_16e6.txt.gz`, required for "openai" and "open_clip".
        hidden_act: overrides the activation ("quick_gelu" / "gelu") of "openai" / "open_clip" sources.
        region_mode: the processor's preset: square resize without crop (region tasks) instead of CLIP's
            shortest-edge resize and centre crop (the default, CLIP's own preprocessing).
        harmoclip_settings: `HarmoCLIPConfig` fields (dense_mode, gr_teacher, loss weights, ...).
    Raises:
        FileExistsError: `output_dir` exists and `overwrite` is False (checked before any work).
        ConversionCheckError: the reloaded folder's embeddings differ from the source's by more than `tolerance`.
    """
    check_output_dir(output_dir, overwrite)
    loaded = load_source(source, checkpoint, bpe_path, open_clip_config, hidden_act)
    model = build_harmoclip_model(loaded, **harmoclip_settings)
    with atomic_directory(output_dir, overwrite) as staging:
        model.save_pretrained(staging)
        save_harmoclip_processor(staging, loaded.tokenizer, loaded.image_processor, region_mode=region_mode)
        diff = verify_folder(staging, loaded)
        logger.info("conversion check (%s -> HarmoCLIP): %s", source, diff)
        if not diff.max <= tolerance:
            raise ConversionCheckError(f"converted model differs from the source: {diff} (tolerance {tolerance:g})")
    return ConversionReport(output_dir=Path(output_dir), source=source, diff=diff)


# ---------------------------------------------------------------------------------------------- command line


def add_harmoclip_setting_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per recipe field (`RECIPE_FIELDS`), written into the config (left out: the config's defaults)."""
    group = parser.add_argument_group("HarmoCLIP settings (written into config.json)")
    group.add_argument(
        "--recipe",
        help=f"a named recipe, one of {list(RECIPES)} (default: {DEFAULT_RECIPE}); the options below override its fields",
    )
    for name, default in recipe_defaults().items():
        choices = RECIPE_CHOICES.get(name)
        if name == "gr_teacher":
            choices = choices + tuple(TEACHER_ALIASES)  # an older name is read, then mapped
        elif name == "lexeme_mode":
            choices = choices + tuple(LEXEME_ALIASES)  # likewise, with a FutureWarning
        group.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            choices=choices,
            metavar=None if choices else type_name(type(default)),
            help=f"default: {default!r}",
        )


def harmoclip_settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe options given on the command line, read as their fields' types, over the fields of `--recipe`
    (with its name, `recipe_name`) when it is given."""
    given = {
        name: coerce_value(name, getattr(args, name), type(default), where=f"option `--{name.replace('_', '-')}`")
        for name, default in recipe_defaults().items()
        if getattr(args, name) is not None
    }
    if getattr(args, "recipe", None) is None:
        return given
    return apply_recipe(args.recipe, given) | {"recipe_name": args.recipe}


def build_parser() -> CommandParser:
    parser = CommandParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, choices=SOURCES)
    parser.add_argument(
        "--checkpoint", required=True, type=Path, help="CLIP folder (hf) or weights file (openai, open_clip)"
    )
    parser.add_argument("--output", required=True, type=Path, help="HarmoCLIP folder to write")
    parser.add_argument("--bpe-path", type=Path, help="bpe_simple_vocab_16e6.txt.gz (openai, open_clip)")
    parser.add_argument("--open-clip-config", type=Path, help="open_clip model config JSON (open_clip)")
    parser.add_argument(
        "--hidden-act", choices=("quick_gelu", "gelu"), help="override the activation (openai, open_clip)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--log-file", type=Path, help="also write the log to this file")
    parser.add_argument(
        "--tolerance", type=float, default=DEFAULT_TOLERANCE, help="max abs diff of normalised embeddings"
    )
    parser.add_argument(
        "--region-mode",
        action="store_true",
        help="processor preset: square resize without crop (region tasks) instead of CLIP's resize + centre crop",
    )
    add_harmoclip_setting_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The `harmoclip-convert` command; returns the exit code (a user's mistake: one line `error: ...`)."""

    def convert() -> str:
        args = build_parser().parse_args(argv)
        setup_logging(args.log_file)
        report = convert_clip(
            args.source,
            args.checkpoint,
            args.output,
            bpe_path=args.bpe_path,
            open_clip_config=args.open_clip_config,
            hidden_act=args.hidden_act,
            overwrite=args.overwrite,
            tolerance=args.tolerance,
            region_mode=args.region_mode,
            **harmoclip_settings_from_args(args),
        )
        return f"wrote {report.output_dir} ({report.source}); {report.diff}"

    return run_command(convert)


if __name__ == "__main__":
    sys.exit(main())
