"""Global path: HarmoCLIP's `get_image_features` / `get_text_features` against transformers' `CLIPModel` with the
same weights.

    python -m benchmarks.global_overhead                      # CPU, ViT-B/16 at 224 px
    python -m benchmarks.global_overhead --device cuda --dtype bf16

The plain `CLIPModel` is built from HarmoCLIP's tower configs and loads HarmoCLIP's state dict (everything but
`region_logit_scale`); the outputs are checked to be identical before timing. Target: HarmoCLIP within 2% of CLIP.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
from transformers import CLIPConfig, CLIPModel

from benchmarks.common import (
    add_common_arguments,
    autocast,
    benchmark_main,
    build_model,
    finish,
    markdown_table,
    ratio_summary,
    resolve_common,
    sample_captions,
    summarize,
    target,
    time_side_by_side,
)
from plumbing.command_line import CommandParser

NAME = "global_overhead"
TOLERANCE = 0.02  # HarmoCLIP's global path at most 2% slower than CLIPModel's


def plain_clip_with_same_weights(model) -> CLIPModel:
    """A transformers `CLIPModel` with `model`'s towers and weights (HarmoCLIP's extra parameter left out)."""
    config = model.config
    clip_config = CLIPConfig(
        text_config=config.text_config.to_dict(),
        vision_config=config.vision_config.to_dict(),
        projection_dim=config.projection_dim,
        logit_scale_init_value=config.logit_scale_init_value,
    )
    clip_config._attn_implementation = config._attn_implementation
    clip = CLIPModel(clip_config)
    missing, unexpected = clip.load_state_dict(model.state_dict(), strict=False)
    if missing or unexpected != ["region_logit_scale"]:
        raise RuntimeError(
            f"CLIPModel does not match HarmoCLIP's parameters: missing {missing}, unexpected {unexpected}"
        )
    return clip.eval()


def build_parser() -> CommandParser:
    parser = CommandParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, cpu_repeats=7, cuda_repeats=30)
    parser.add_argument("--images", type=int, default=None, help="images per call (default 2 on the CPU, 64 on CUDA)")
    parser.add_argument(
        "--captions", type=int, default=None, help="captions per call (default 16 on the CPU, 256 on CUDA)"
    )
    parser.add_argument(
        "--model-preset", default=None, choices=["vit-b-16", "tiny"], help="default vit-b-16 (--quick: tiny)"
    )
    return parser


def tower_report(
    tower: str, times: dict[str, list[float]], count: int, unit: str, difference: float
) -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
    """One tower's side-by-side times (HarmoCLIP and CLIPModel, `count` inputs a call) as the JSON result, the
    overhead target and the table row."""
    ours, theirs = summarize(times["harmoclip"]), summarize(times["clip"])
    ratio = ratio_summary(times["harmoclip"], times["clip"])
    result = {
        "tower": tower,
        "batch": count,
        "harmoclip": ours,
        "clip": theirs,
        "time_ratio": ratio,
        "harmoclip_per_s": count / ours["median_s"],
        "clip_per_s": count / theirs["median_s"],
        "max_abs_difference": difference,
    }
    goal = target(
        f"get_{tower}_features time / CLIPModel's", f"<= {1 + TOLERANCE:g}", ratio["median"], 1 + TOLERANCE, False
    )
    row = [
        f"get_{tower}_features",
        f"{count} {unit}",
        count / ours["median_s"],
        count / theirs["median_s"],
        f"{ratio['median']:.3f} ({ratio['min']:.3f}-{ratio['max']:.3f})",
        ratio["median"] <= 1 + TOLERANCE,
        f"{max(ours['spread'], theirs['spread']):.0%}",
    ]
    return result, goal, row


def run(args: argparse.Namespace) -> dict:
    args = resolve_common(args, quick_repeats=3)
    preset = args.model_preset or ("tiny" if args.quick else "vit-b-16")
    on_cuda = args.device.type == "cuda"
    num_images = args.images or (64 if on_cuda else 2)
    num_captions = args.captions or (256 if on_cuda else 16)
    model, processor, config = build_model(preset, args.seed)
    clip = plain_clip_with_same_weights(model)
    model.to(args.device)
    clip.to(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    pixel_values = torch.randn(num_images, 3, config.image_size, config.image_size, generator=generator).to(args.device)
    text = processor.tokenizer(sample_captions(num_captions, args.seed), padding=True, return_tensors="pt").to(
        args.device
    )

    def image_features(which):
        def call():
            with torch.no_grad(), autocast(args.device, args.dtype):
                return which.get_image_features(pixel_values=pixel_values).pooler_output

        return call

    def text_features(which):
        def call():
            with torch.no_grad(), autocast(args.device, args.dtype):
                return which.get_text_features(
                    input_ids=text["input_ids"], attention_mask=text["attention_mask"]
                ).pooler_output

        return call

    differences = {
        "image": float((image_features(model)() - image_features(clip)()).abs().max()),
        "text": float((text_features(model)() - text_features(clip)()).abs().max()),
    }
    # The same code on the same weights: bit-identical in float32 on the CPU; GPU kernels under autocast may pick
    # other algorithms from call to call, so there a small difference is allowed.
    allowed = 0.0 if args.device.type == "cpu" and args.dtype == torch.float32 else 1e-2
    if max(differences.values()) > allowed:
        raise RuntimeError(f"HarmoCLIP and CLIPModel disagree with the same weights: max |difference| {differences}")

    results, targets, rows = [], [], []
    for tower, make, count, unit in (
        ("image", image_features, num_images, "images"),
        ("text", text_features, num_captions, "captions"),
    ):
        times = time_side_by_side(
            {"harmoclip": make(model), "clip": make(clip)},
            args.device,
            args.repeats,
            args.warmup,
            progress=f"{NAME} {tower}",
        )
        result, goal, row = tower_report(tower, times, count, unit, differences[tower])
        results.append(result)
        targets.append(goal)
        rows.append(row)
    table = markdown_table(
        ["method", "batch", "HarmoCLIP /s", "CLIPModel /s", "time ratio (min-max)", "within 2%", "spread"], rows
    )
    settings = {
        "model_preset": preset,
        "image_size": config.image_size,
        "images_per_call": num_images,
        "captions_per_call": num_captions,
        "caption_tokens": int(text["input_ids"].shape[1]),
        "attn_implementation": model.config._attn_implementation,
    }
    notes = [
        f"{preset} geometry, random weights; the two models give the same outputs (max |difference| {max(differences.values()):.1e}); time ratio = HarmoCLIP / CLIPModel "
        f"per round, median of {args.repeats} alternating rounds (min-max in brackets). Both call the same inherited "
        "`CLIPModel` code, so any difference is measurement noise; the spread column shows how large it is."
    ]
    return finish(NAME, args, settings, results, table, targets, notes)


def main(argv: list[str] | None = None) -> int:
    """The benchmark as a command; returns the exit code (a user's mistake: one line `error: ...`)."""
    return benchmark_main(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
