"""Images per second through the region-classification pipeline: batched (`batch_size` 1, 8, 32) against one call per
image, with the same weights, images, boxes and labels.

    python -m benchmarks.pipeline_throughput                         # CPU: tiny and ViT-B/16 geometries
    python -m benchmarks.pipeline_throughput --model-preset tiny --images 32 --batch-sizes 1,8,32
    python -m benchmarks.pipeline_throughput --device cuda --dtype bf16

Methods (each reads the same `--images` images of mixed sizes, 1 to `--boxes` boxes each, `--labels` labels with the
default prompt ensemble):
- `per image, labels encoded each call`: one pipeline call per image, the label cache cleared before each, which is
  what every call cost before label embeddings were reused;
- `per image`: one pipeline call per image (the labels are encoded by the first call and reused);
- `batch_size=K`: one call with the list of images, K images per pass of the image encoder.
The pipeline runs in the model's dtype (`--dtype bf16` on CUDA casts the model, as `pipeline(..., dtype=...)` does).
Ratios: the per-image time over each method's, round by round.
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.harness import BenchmarkSpec, Measurement
from benchmarks.inputs import build_model
from benchmarks.tables import ratio_cell, spread_cell
from benchmarks.timing import ratio_summary, summarize, time_side_by_side

NAME = "pipeline_throughput"
PER_IMAGE, PER_IMAGE_UNCACHED = "per image", "per image, labels encoded each call"
LABEL_NAMES = (
    "dog", "cat", "person", "bicycle", "car", "tree", "bench", "umbrella", "kite", "pizza",
    "horse", "bird", "laptop", "boat", "train", "clock", "chair", "cup", "book", "wave",
)  # fmt: skip


def sample_inputs(count: int, max_boxes: int, seed: int) -> list[dict]:
    """`count` random RGB images of sizes between 96 and 640 px a side, each with 1 to `max_boxes` boxes (xyxy pixels)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    items = []
    for _ in range(count):
        width, height = (int(side) for side in rng.integers(96, 641, size=2))
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
        boxes = []
        for _ in range(int(rng.integers(1, max_boxes + 1))):
            w, h = rng.uniform(0.1, 0.6) * width, rng.uniform(0.1, 0.6) * height
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            boxes.append([round(x, 1), round(y, 1), round(x + w, 1), round(y + h, 1)])
        items.append({"image": image, "boxes": boxes})
    return items


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options of this benchmark; the harness adds the common ones."""
    parser.add_argument(
        "--model-preset",
        default=None,
        help="comma-separated geometries among tiny, vit-b-16 (default tiny,vit-b-16; --quick tiny)",
    )
    parser.add_argument("--images", type=int, default=None, help="images per round (default 32; --quick 4)")
    parser.add_argument("--boxes", type=int, default=8, help="at most this many boxes per image (1 to it)")
    parser.add_argument("--labels", type=int, default=10, help=f"candidate labels (at most {len(LABEL_NAMES)})")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated batch sizes (default 1,8,32; --quick 1,2)")
    parser.add_argument("--skip-uncached", action="store_true", help=f"leave out the '{PER_IMAGE_UNCACHED}' method")


def measure_preset(args: argparse.Namespace, preset: str, items: list[dict], labels: list[str], batch_sizes: list[int]):
    """Times the methods on one geometry; returns (result rows, table rows)."""
    from transformers import pipeline

    from modeling_harmoclip.pipeline_harmoclip import REGION_CLASSIFICATION_TASK, clear_label_cache

    model, processor, _ = build_model(preset, args.seed)
    model.to(device=args.device, dtype=args.dtype)
    classifier = pipeline(REGION_CLASSIFICATION_TASK, model=model, processor=processor, device=args.device)

    def per_image(uncached: bool):
        def run():
            for item in items:
                if uncached:
                    clear_label_cache(model)
                classifier(item["image"], boxes=item["boxes"], candidate_labels=labels)

        return run

    def batched(size: int):
        return lambda: classifier(items, candidate_labels=labels, batch_size=size)

    methods = {PER_IMAGE: per_image(False)}
    if not args.skip_uncached:
        methods[PER_IMAGE_UNCACHED] = per_image(True)
    methods.update({f"batch_size={size}": batched(size) for size in batch_sizes})
    with torch.no_grad():
        times = time_side_by_side(methods, args.device, args.repeats, args.warmup, progress=f"{NAME} {preset}")
    results, rows = [], []
    for name, seconds in times.items():
        summary = summarize(seconds)
        speedup = ratio_summary(times[PER_IMAGE], seconds)
        results.append(
            {
                "model_preset": preset,
                "method": name,
                "time": summary,
                "images_per_s": len(items) / summary["median_s"],
                "speedup_over_per_image": speedup,
            }
        )
        rows.append(
            [
                preset,
                name,
                len(items) / summary["median_s"],
                summary["median_s"],
                ratio_cell(speedup),
                spread_cell(summary),
            ]
        )
    return results, rows


def measure(args: argparse.Namespace) -> Measurement:
    """Per image, per image without the label cache and each batch size, side by side, on each geometry."""
    presets = [name.strip() for name in (args.model_preset or ("tiny" if args.quick else "tiny,vit-b-16")).split(",")]
    unknown = sorted(set(presets) - {"tiny", "vit-b-16"})
    if unknown:
        raise ValueError(f"--model-preset: unknown geometry {unknown}; choose from tiny, vit-b-16")
    num_images = args.images or (4 if args.quick else 32)
    batch_sizes = [int(size) for size in (args.batch_sizes or ("1,2" if args.quick else "1,8,32")).split(",")]
    if num_images < 1 or args.boxes < 1 or min(batch_sizes) < 1 or not 1 <= args.labels <= len(LABEL_NAMES):
        raise ValueError(
            f"--images, --boxes and --batch-sizes must be >= 1 and --labels in [1, {len(LABEL_NAMES)}], got "
            f"{num_images}, {args.boxes}, {batch_sizes} and {args.labels}"
        )
    items = sample_inputs(num_images, args.boxes, args.seed)
    labels = list(LABEL_NAMES[: args.labels])
    results, rows = [], []
    for preset in presets:
        preset_results, preset_rows = measure_preset(args, preset, items, labels, batch_sizes)
        results += preset_results
        rows += preset_rows
    settings = {
        "model_presets": presets,
        "images": num_images,
        "boxes_per_image": [len(item["boxes"]) for item in items],
        "labels": len(labels),
        "batch_sizes": batch_sizes,
    }
    notes = [
        f"{num_images} random images of 96-640 px a side with 1-{args.boxes} boxes each, {len(labels)} labels with the "
        f"default 8-template prompt ensemble; random weights; median of {args.repeats} alternating rounds; speed-up = "
        "per-image time / the method's time (median of the rounds' ratios, min-max in brackets)."
    ]
    columns = ["geometry", "method", "images/s", "s/round", "speed-up over per image (min-max)", "spread"]
    return Measurement(columns, rows, results, settings, notes)


SPEC = BenchmarkSpec(NAME, __doc__, measure, options=add_options, cpu_repeats=3, cuda_repeats=10)
main = SPEC.main


if __name__ == "__main__":
    sys.exit(main())
