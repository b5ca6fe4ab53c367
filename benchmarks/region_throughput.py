"""Region embeddings: HarmoCLIP's one pass plus RoIAlign against crop-and-encode, with the same weights.

    python -m benchmarks.region_throughput                      # CPU, ViT-B/16 at 224 px, 1, 4, 16, 64 boxes per image
    python -m benchmarks.region_throughput --device cuda --dtype bf16

HarmoCLIP (`get_region_features`): one pass of the image encoder per image, RoIAlign of the dense map at every box.
Crop-and-encode: every box cut from the image with `roi_align` at the model's input size and encoded by
`get_crop_features` (in chunks of `--crop-chunk` crops), the way a plain CLIP embeds regions. Both run under
`torch.no_grad()` and the same autocast. Target: at N boxes per image, HarmoCLIP at least 0.9 x N times faster.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from benchmarks.harness import BenchmarkSpec, Measurement, inference, write_profiles
from benchmarks.inputs import build_model, random_boxes, random_pixel_values
from benchmarks.tables import ratio_cell, spread_cell, target
from benchmarks.timing import ratio_summary, summarize, time_side_by_side
from modeling_harmoclip.modeling_harmoclip import roi_align

NAME = "region_throughput"
TARGET_FACTOR = 0.9  # HarmoCLIP at least 0.9 x N times faster at N boxes per image


def crop_and_encode(model, pixel_values: torch.Tensor, boxes: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """The plain-CLIP way to embed regions: each box cut out with RoIAlign at the model's input size and encoded by
    `get_crop_features`, `chunk_size` crops per call.

    The cutting stands in, on the device, for the processor's crops of the original images (which the data loader's
    workers cut in training and evaluation); the encoding is the same.

    Args: pixel_values (B, 3, H, W); boxes (B, N, 4) normalised xyxy. Returns (B, N, D) float32, L2-normalised.
    """
    batch, num_boxes = boxes.shape[:2]
    size = model.config.vision_config.image_size
    height, width = pixel_values.shape[-2:]
    scale = boxes.new_tensor([width, height, width, height], dtype=torch.float32)
    image_index = torch.arange(batch, device=boxes.device, dtype=torch.float32).repeat_interleave(num_boxes)[:, None]
    rois = torch.cat([image_index, boxes.float().reshape(-1, 4) * scale], dim=1)
    embeds = []
    for chunk in rois.split(chunk_size):
        crops = roi_align(pixel_values.float(), chunk, output_size=(size, size), sampling_ratio=-1, aligned=True)
        embeds.append(model.get_crop_features(crops.to(pixel_values.dtype)[None], chunk_size=chunk_size)[0])
    return torch.cat(embeds).reshape(batch, num_boxes, -1)


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options of this benchmark; the harness adds the common ones."""
    parser.add_argument(
        "--boxes", default=None, help="boxes per image, comma-separated (default 1,4,16,64; --quick 1,4)"
    )
    parser.add_argument(
        "--images",
        type=int,
        default=None,
        help="images per call (default 1 on the CPU; 256 on CUDA, where smaller calls are bound by "
        "kernel-launch overhead rather than by the GPU)",
    )
    parser.add_argument(
        "--crop-chunk",
        type=int,
        default=None,
        help="crops encoded per call by crop-and-encode (default 64 on the CPU, 256 on CUDA)",
    )


def measure_box_count(
    methods: dict[str, Any], args: argparse.Namespace, num_images: int, count: int
) -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
    """Both methods timed side by side at `count` boxes per image: the JSON result, the speed-up target and the
    table row."""
    times = time_side_by_side(
        methods,
        args.device,
        args.repeats,
        warmup=args.warmup if args.device.type == "cuda" else 0,
        progress=f"{NAME} {count} boxes",
    )
    ours, theirs = summarize(times["harmoclip"]), summarize(times["crop_and_encode"])
    speedup = ratio_summary(times["crop_and_encode"], times["harmoclip"])
    total_boxes = num_images * count
    result = {
        "boxes_per_image": count,
        "images": num_images,
        "harmoclip": ours,
        "crop_and_encode": theirs,
        "harmoclip_boxes_per_s": total_boxes / ours["median_s"],
        "crop_boxes_per_s": total_boxes / theirs["median_s"],
        "speedup": speedup,
    }
    wanted = TARGET_FACTOR * count
    goal = target(
        f"region speed-up at {count} boxes/image", f">= {wanted:g} (0.9 x N)", speedup["median"], wanted, True
    )
    row = [
        count,
        total_boxes / ours["median_s"],
        total_boxes / theirs["median_s"],
        ours["median_s"] * 1e3,
        theirs["median_s"] * 1e3,
        ratio_cell(speedup),
        wanted,
        speedup["median"] >= wanted,
        spread_cell(ours, theirs),
    ]
    return result, goal, row


def measure(args: argparse.Namespace) -> Measurement:
    """Both methods side by side at each box count, on the same images, boxes and weights."""
    box_counts = [int(n) for n in (args.boxes or ("1,4" if args.quick else "1,4,16,64")).split(",")]
    num_images = args.images or (256 if args.device.type == "cuda" else 1)
    args.crop_chunk = args.crop_chunk or (256 if args.device.type == "cuda" else 64)
    if num_images < 1 or args.crop_chunk < 1 or min(box_counts) < 1:
        raise ValueError("--images, --crop-chunk and --boxes must be >= 1")
    model, _, config = build_model(args.preset, args.seed)
    model.to(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    pixel_values = random_pixel_values(num_images, config.image_size, generator).to(args.device)

    def methods_for(boxes: torch.Tensor) -> dict:
        return {
            "harmoclip": inference(args, model.get_region_features, pixel_values, boxes),
            "crop_and_encode": inference(args, crop_and_encode, model, pixel_values, boxes, args.crop_chunk),
        }

    # On the CPU one warm-up at the smallest count suffices; on CUDA every new shape gets its own (kernel choice).
    first = methods_for(random_boxes(num_images, box_counts[0], generator).to(args.device))
    time_side_by_side(first, args.device, repeats=0, warmup=args.warmup)
    results, targets, rows = [], [], []
    for count in box_counts:
        methods = methods_for(random_boxes(num_images, count, generator).to(args.device))
        result, goal, row = measure_box_count(methods, args, num_images, count)
        results.append(result)
        targets.append(goal)
        rows.append(row)
    # One call of each method at the largest box count.
    write_profiles(args, {f"{name}-{box_counts[-1]}boxes": method for name, method in methods.items()}, args.device)
    settings = {
        "model_preset": args.preset,
        "image_size": config.image_size,
        "patch_size": config.patch_size,
        "images_per_call": num_images,
        "boxes_per_image": box_counts,
        "crop_chunk": args.crop_chunk,
    }
    notes = [
        f"{args.preset} geometry ({config.image_size} px, patch {config.patch_size}), random weights, {num_images} "
        f"image(s) per call; median of {args.repeats} alternating rounds; speed-up = crop-and-encode time / HarmoCLIP "
        "time (median of the rounds' ratios, min-max in brackets); spread = (max - min) / median of the noisier method."
    ]
    columns = [
        "boxes/image",
        "HarmoCLIP boxes/s",
        "crop+encode boxes/s",
        "HarmoCLIP ms/call",
        "crop+encode ms/call",
        "speed-up (min-max)",
        "target",
        "met",
        "spread",
    ]
    return Measurement(columns, rows, results, settings, notes, targets)


SPEC = BenchmarkSpec(NAME, __doc__, measure, options=add_options, cpu_repeats=3, cuda_repeats=10, model_preset=True)
main = SPEC.main

if __name__ == "__main__":
    sys.exit(main())
