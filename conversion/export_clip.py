"""Exports the global towers of a HarmoCLIP folder as a plain transformers `CLIPModel` folder.

    python -m conversion.export_clip --model harmoclip-vitb16 --output harmoclip-vitb16-clip

The result has `model_type: clip`, no `auto_map` and no code files: what the Hub's hosted widget and the
zero-shot-image-classification pipeline serve without remote code. Its image and text embeddings are those of the
HarmoCLIP model (checked after writing); region embeddings need the HarmoCLIP model itself.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel

from modeling_harmoclip import HarmoCLIPConfig, HarmoCLIPModel
from plumbing.atomic_files import atomic_directory, check_output_dir
from plumbing.command_line import CommandParser, run_command, setup_logging

from .embedding_check import EmbeddingDiff, check_inputs, embedding_diff, model_encoders
from .model_folder import HARMOCLIP_ONLY_PARAMETERS, require_model_type
from .processor_files import load_tokenizer_and_image_processor, save_processor

logger = logging.getLogger(__name__)

# The export runs the same CLIP code on the same weights: any difference is a bug.
EXPORT_TOLERANCE = 1e-6


class ExportCheckError(RuntimeError):
    """The exported CLIPModel's embeddings differ from the HarmoCLIP model's."""


@dataclass(frozen=True)
class ExportReport:
    output_dir: Path
    diff: EmbeddingDiff


def clip_config_from_harmoclip(config: HarmoCLIPConfig) -> CLIPConfig:
    """A plain `CLIPConfig` with the same towers (the HarmoCLIP settings and `auto_map` left out)."""
    return CLIPConfig(
        text_config=config.text_config.to_dict(),
        vision_config=config.vision_config.to_dict(),
        projection_dim=config.projection_dim,
        logit_scale_init_value=config.logit_scale_init_value,
    )


def to_clip_model(model: HarmoCLIPModel) -> CLIPModel:
    """A `CLIPModel` holding the HarmoCLIP model's global towers (every CLIP parameter, by name)."""
    clip = CLIPModel(clip_config_from_harmoclip(model.config)).eval()
    state_dict = {name: value for name, value in model.state_dict().items() if name not in HARMOCLIP_ONLY_PARAMETERS}
    clip.load_state_dict(state_dict, strict=True)
    return clip


def export_clip(
    model_dir: str | Path, output_dir: str | Path, overwrite: bool = False, readme_text: str | None = None
) -> ExportReport:
    """Writes the plain-CLIP export of the HarmoCLIP folder `model_dir` to `output_dir` (atomically), with
    `readme_text` as its README.md if given.

    Raises:
        FileExistsError: `output_dir` exists and `overwrite` is False.
        ValueError: `model_dir` is not a HarmoCLIP folder.
        ExportCheckError: the reloaded export's embeddings differ from the HarmoCLIP model's.
    """
    check_output_dir(output_dir, overwrite)
    model_dir = require_model_type(model_dir, HarmoCLIPConfig.model_type, "model_dir")
    model = HarmoCLIPModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer, image_processor = load_tokenizer_and_image_processor(model_dir)
    clip = to_clip_model(model)
    with atomic_directory(output_dir, overwrite) as staging:
        clip.save_pretrained(staging)
        save_processor(staging, tokenizer, image_processor)
        if readme_text is not None:
            (staging / "README.md").write_text(readme_text, encoding="utf-8")
        exported = CLIPModel.from_pretrained(staging, dtype=torch.float32).eval()
        inputs = check_inputs(
            tokenizer, model.config.vision_config.image_size, model.config.text_config.max_position_embeddings
        )
        scales = (float(model.logit_scale.detach()), float(exported.logit_scale.detach()))
        diff = embedding_diff(model_encoders(model), model_encoders(exported), inputs, scales)
        logger.info("export check (HarmoCLIP -> CLIP): %s", diff)
        if not diff.max <= EXPORT_TOLERANCE:
            raise ExportCheckError(f"exported CLIPModel differs from the HarmoCLIP model: {diff}")
    return ExportReport(output_dir=Path(output_dir), diff=diff)


def main(argv: list[str] | None = None) -> int:
    """The `harmoclip-export` command; returns the exit code (a user's mistake: one line `error: ...`)."""

    def export() -> str:
        parser = CommandParser(description=__doc__.split("\n\n")[0])
        parser.add_argument("--model", required=True, type=Path, help="HarmoCLIP folder")
        parser.add_argument("--output", required=True, type=Path, help="CLIPModel folder to write")
        parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
        parser.add_argument("--log-file", type=Path, help="also write the log to this file")
        args = parser.parse_args(argv)
        setup_logging(args.log_file)
        report = export_clip(args.model, args.output, overwrite=args.overwrite)
        return f"wrote {report.output_dir}; {report.diff}"

    return run_command(export)


if __name__ == "__main__":
    sys.exit(main())
