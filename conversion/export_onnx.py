"""Exports a HarmoCLIP folder as two ONNX graphs, checked with onnxruntime against PyTorch.

    python -m conversion.export_onnx --model harmoclip-vitb16 --output-dir harmoclip-vitb16-onnx

- `region.onnx`: the image encoder with the dense and region heads. Inputs `pixel_values` (B, 3, H, W) float32,
  `boxes` (B, N, 4) float32 normalised xyxy (as the processor returns them), `box_mask` (B, N) bool; outputs
  `region_embeds` (B, N, D) (L2-normalised, zeros for masked boxes) and `dense_features` (B, D, h, w) (L2-normalised
  per patch). B and N are dynamic.
- `text.onnx`: the text tower. Inputs `input_ids` and `attention_mask` (B, T) int64; output `text_embeds` (B, D),
  L2-normalised. B and T are dynamic.
- `onnx_export.json`: the input and output names, the image size, `logit_scale` (the exponentiated temperature the
  scores use) and the measured differences from PyTorch.

Both graphs come from torch's ONNX exporter (`torch.onnx.export(..., dynamo=True)`) and are run with onnxruntime on
inputs of other batch sizes, box counts and text lengths than the traced ones before the folder is written; a
difference above `ONNX_TOLERANCE` from the PyTorch model fails the export and leaves nothing behind.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from modeling_harmoclip import HarmoCLIPConfig, HarmoCLIPModel
from plumbing.atomic_files import atomic_directory, check_output_dir
from plumbing.command_line import CommandParser, run_command, setup_logging

from .model_folder import require_model_type

logger = logging.getLogger(__name__)

ONNX_TOLERANCE = 1e-4
REGION_FILE, TEXT_FILE, MANIFEST_FILE = "region.onnx", "text.onnx", "onnx_export.json"
REGION_INPUTS, REGION_OUTPUTS = ("pixel_values", "boxes", "box_mask"), ("region_embeds", "dense_features")
TEXT_INPUTS, TEXT_OUTPUTS = ("input_ids", "attention_mask"), ("text_embeds",)
# Above this many bytes of weights a graph keeps them in a `<file>.data` file beside it (protobuf's 2 GiB limit).
SINGLE_FILE_LIMIT = 1_500_000_000


# What the export and its check import; the project's `onnx` extra installs them.
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


class MissingOnnxPackages(RuntimeError):
    """A package the ONNX export needs is not installed."""


def check_onnx_packages() -> None:
    """Raises `MissingOnnxPackages` naming the missing packages and the extra that installs them, in one line."""
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingOnnxPackages(
            f"the ONNX export needs {', '.join(missing)}, not installed: pip install 'harmoclip[onnx]' "
            f"(or pip install {' '.join(ONNX_PACKAGES)})"
        )


class OnnxCheckError(RuntimeError):
    """An exported graph's outputs differ from the PyTorch model's by more than `ONNX_TOLERANCE`."""


class RegionGraph(nn.Module):
    """(pixel_values (B, 3, H, W), boxes (B, N, 4), box_mask (B, N)) -> (region_embeds (B, N, D), dense (B, D, h, w))
    of `HarmoCLIPModel.get_region_and_dense_features`."""

    def __init__(self, model: HarmoCLIPModel):
        super().__init__()
        self.model = model

    def forward(
        self, pixel_values: torch.Tensor, boxes: torch.Tensor, box_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.get_region_and_dense_features(pixel_values, boxes, box_mask)


class TextGraph(nn.Module):
    """(input_ids, attention_mask (B, T)) -> (B, D) L2-normalised `get_text_features`."""

    def __init__(self, model: HarmoCLIPModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        features = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return F.normalize(features.float(), dim=-1, eps=1e-12)


@dataclass(frozen=True)
class OnnxExportReport:
    output_dir: Path
    region_max_diff: float
    text_max_diff: float

    def __str__(self) -> str:
        return (
            f"wrote {self.output_dir} ({REGION_FILE}, {TEXT_FILE}); max abs diff from PyTorch: region "
            f"{self.region_max_diff:.3g}, text {self.text_max_diff:.3g} (tolerance {ONNX_TOLERANCE:g})"
        )


def region_inputs(
    batch: int, num_boxes: int, image_size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random (B, 3, S, S) images, (B, N, 4) boxes inside them and a (B, N) mask with the last box of image 0 off."""
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch, 3, image_size, image_size, generator=generator)
    corner = torch.rand(batch, num_boxes, 2, generator=generator) * 0.6
    boxes = torch.cat([corner, corner + torch.rand(batch, num_boxes, 2, generator=generator) * 0.4 + 0.02], dim=-1)
    box_mask = torch.ones(batch, num_boxes, dtype=torch.bool)
    box_mask[0, -1] = num_boxes == 1
    return pixel_values, boxes, box_mask


def text_inputs(config: HarmoCLIPConfig, batch: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (B, T) token ids framed by the start and end tokens, the rows padded after their end token."""
    text_config = config.text_config
    eos = text_config.eos_token_id
    eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    generator = torch.Generator().manual_seed(seed)
    # Ordinary tokens only: below the special tokens, which CLIP's vocabulary puts last.
    ids = torch.randint(
        0, min(text_config.vocab_size - 2, eos, text_config.bos_token_id), (batch, length), generator=generator
    )
    ids[:, 0] = text_config.bos_token_id
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(batch):
        end = length - 1 - (row % max(length - 2, 1))
        ids[row, end:] = eos
        attention_mask[row, end + 1 :] = 0
    return ids, attention_mask


def _export(module: nn.Module, inputs: tuple, path: Path, names: tuple, outputs: tuple, dynamic: dict) -> None:
    weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    torch.onnx.export(
        module,
        inputs,
        str(path),
        input_names=list(names),
        output_names=list(outputs),
        dynamic_shapes=dynamic,
        dynamo=True,
        external_data=weight_bytes > SINGLE_FILE_LIMIT,
        verbose=False,
    )


def _max_diff(session, feeds: dict[str, torch.Tensor], expected: tuple[torch.Tensor, ...]) -> float:
    outputs = session.run(None, {name: value.numpy() for name, value in feeds.items()})
    if len(outputs) != len(expected):
        raise OnnxCheckError(f"the ONNX graph gave {len(outputs)} outputs, expected {len(expected)}")
    diffs = []
    for got, want in zip(outputs, expected):
        if tuple(got.shape) != tuple(want.shape):
            raise OnnxCheckError(f"ONNX output of shape {tuple(got.shape)}, PyTorch {tuple(want.shape)}")
        diffs.append(float((torch.from_numpy(got).double() - want.double()).abs().max()))
    return max(diffs)


def check_region_graph(path: Path, model: HarmoCLIPModel, batch: int = 3, num_boxes: int = 5, seed: int = 1) -> float:
    """Max abs difference between `region.onnx` under onnxruntime and the PyTorch model, on a batch and box count
    other than the traced ones."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pixel_values, boxes, box_mask = region_inputs(batch, num_boxes, model.config.vision_config.image_size, seed)
    with torch.no_grad():
        expected = model.get_region_and_dense_features(pixel_values, boxes, box_mask)
    return _max_diff(session, dict(zip(REGION_INPUTS, (pixel_values, boxes, box_mask))), expected)


def check_text_graph(path: Path, model: HarmoCLIPModel, batch: int = 3, length: int = 9, seed: int = 1) -> float:
    """Max abs difference between `text.onnx` under onnxruntime and the PyTorch model, on a batch and text length
    other than the traced ones."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_ids, attention_mask = text_inputs(model.config, batch, length, seed)
    with torch.no_grad():
        expected = (TextGraph(model)(input_ids, attention_mask),)
    return _max_diff(session, dict(zip(TEXT_INPUTS, (input_ids, attention_mask))), expected)


def export_onnx(model_dir: str | Path, output_dir: str | Path, overwrite: bool = False) -> OnnxExportReport:
    """Writes `region.onnx`, `text.onnx` and `onnx_export.json` of the HarmoCLIP folder `model_dir` to `output_dir`
    (atomically), after checking both graphs with onnxruntime.

    An existing empty `output_dir` is written into (a folder made ready for the export); one with files needs
    `overwrite`.

    Raises:
        MissingOnnxPackages: onnx, onnxscript or onnxruntime is not installed (the `onnx` extra).
        FileExistsError: `output_dir` exists with files in it and `overwrite` is False.
        FileNotFoundError / ValueError: `model_dir` is not a HarmoCLIP folder.
        OnnxCheckError: a graph's outputs differ from PyTorch's by more than `ONNX_TOLERANCE`.
    """
    check_onnx_packages()
    output = Path(output_dir)
    if output.is_dir() and not any(output.iterdir()):
        overwrite = True  # an empty folder holds nothing to lose: replaced by the finished export in one rename
    check_output_dir(output_dir, overwrite)
    model_dir = require_model_type(model_dir, HarmoCLIPConfig.model_type, "model_dir")
    model = HarmoCLIPModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    image_size = model.config.vision_config.image_size
    batch, boxes_dim = torch.export.Dim("batch"), torch.export.Dim("boxes")
    text_batch, length = torch.export.Dim("text_batch"), torch.export.Dim("sequence")
    with atomic_directory(output_dir, overwrite) as staging, torch.no_grad():
        logger.info("exporting the image encoder with the dense and region heads to %s", REGION_FILE)
        _export(
            RegionGraph(model).eval(),
            region_inputs(2, 3, image_size, seed=0),
            staging / REGION_FILE,
            REGION_INPUTS,
            REGION_OUTPUTS,
            {"pixel_values": {0: batch}, "boxes": {0: batch, 1: boxes_dim}, "box_mask": {0: batch, 1: boxes_dim}},
        )
        logger.info("exporting the text tower to %s", TEXT_FILE)
        _export(
            TextGraph(model).eval(),
            text_inputs(model.config, 2, 7, seed=0),
            staging / TEXT_FILE,
            TEXT_INPUTS,
            TEXT_OUTPUTS,
            {"input_ids": {0: text_batch, 1: length}, "attention_mask": {0: text_batch, 1: length}},
        )
        report = OnnxExportReport(
            Path(output_dir),
            check_region_graph(staging / REGION_FILE, model),
            check_text_graph(staging / TEXT_FILE, model),
        )
        logger.info("onnxruntime check: %s", report)
        if not max(report.region_max_diff, report.text_max_diff) <= ONNX_TOLERANCE:
            raise OnnxCheckError(f"the ONNX graphs differ from the PyTorch model: {report}")
        manifest = {
            "region": {"file": REGION_FILE, "inputs": list(REGION_INPUTS), "outputs": list(REGION_OUTPUTS)},
            "text": {"file": TEXT_FILE, "inputs": list(TEXT_INPUTS), "outputs": list(TEXT_OUTPUTS)},
            "image_size": image_size,
            "patch_size": model.config.vision_config.patch_size,
            "projection_dim": model.config.projection_dim,
            "logit_scale": float(model.logit_scale.exp()),
            "check": {key: value for key, value in asdict(report).items() if key != "output_dir"},
            "tolerance": ONNX_TOLERANCE,
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return report


def main(argv: list[str] | None = None) -> int:
    """The `harmoclip-export-onnx` command; returns the exit code (a user's mistake: one line `error: ...`)."""

    def export() -> str:
        parser = CommandParser(description=__doc__.split("\n\n")[0])
        parser.add_argument("--model", required=True, type=Path, help="HarmoCLIP folder")
        parser.add_argument("--output-dir", required=True, type=Path, help="folder to write the ONNX graphs to")
        parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
        parser.add_argument("--log-file", type=Path, help="also write the log to this file")
        args = parser.parse_args(argv)
        setup_logging(args.log_file)
        return str(export_onnx(args.model, args.output_dir, overwrite=args.overwrite))

    return run_command(export)


if __name__ == "__main__":
    sys.exit(main())
