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

from benchmarks.harness import BenchmarkSpec, Measurement, inference
from benchmarks.inputs import build_model, random_pixel_values, sample_captions
from benchmarks.tables import ratio_cell, spread_cell, target
from benchmarks.timing import ratio_summary, summarize, time_side_by_side

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


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options of this benchmark; the harness adds the common ones."""
    parser.add_argument("--images", type=int, default=None, help="images per call (default 2 on the CPU, 64 on CUDA)")
    parser.add_argument(
        "--captions", type=int, default=None, help="captions per call (default 16 on the CPU, 256 on CUDA)"
    )


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
        ratio_cell(ratio, digits=3),
        ratio["median"] <= 1 + TOLERANCE,
        spread_cell(ours, theirs),
    ]
    return result, goal, row


def measure(args: argparse.Namespace) -> Measurement:
    """Each tower of HarmoCLIP and of CLIPModel with the same weights, checked equal, then side by side."""
    on_cuda = args.device.type == "cuda"
    num_images = args.images or (64 if on_cuda else 2)
    num_captions = args.captions or (256 if on_cuda else 16)
    model, processor, config = build_model(args.preset, args.seed)
    clip = plain_clip_with_same_weights(model)
    model.to(args.device)
    clip.to(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    pixel_values = random_pixel_values(num_images, config.image_size, generator).to(args.device)
    text = processor.tokenizer(sample_captions(num_captions, args.seed), padding=True, return_tensors="pt").to(
        args.device
    )

    def image_features(which):
        return inference(args, which.get_image_features, pixel_values=pixel_values)

    def text_features(which):
        return inference(
            args, which.get_text_features, input_ids=text["input_ids"], attention_mask=text["attention_mask"]
        )

    differences = {
        "image": float((image_features(model)().pooler_output - image_features(clip)().pooler_output).abs().max()),
        "text": float((text_features(model)().pooler_output - text_features(clip)().pooler_output).abs().max()),
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
    settings = {
        "model_preset": args.preset,
        "image_size": config.image_size,
        "images_per_call": num_images,
        "captions_per_call": num_captions,
        "caption_tokens": int(text["input_ids"].shape[1]),
        "attn_implementation": model.config._attn_implementation,
    }
    notes = [
        f"{args.preset} geometry, random weights; the two models give the same outputs (max |difference| "
        f"{max(differences.values()):.1e}); time ratio = HarmoCLIP / CLIPModel per round, median of {args.repeats} "
        "alternating rounds (min-max in brackets). Both call the same inherited `CLIPModel` code, so any difference "
        "is measurement noise; the spread column shows how large it is."
    ]
    columns = ["method", "batch", "HarmoCLIP /s", "CLIPModel /s", "time ratio (min-max)", "within 2%", "spread"]
    return Measurement(columns, rows, results, settings, notes, targets)


SPEC = BenchmarkSpec(
    NAME, __doc__, measure, options=add_options, cpu_repeats=7, cuda_repeats=30, quick_repeats=3, model_preset=True
)
main = SPEC.main

if __name__ == "__main__":
    sys.exit(main())
