"""Eager against `torch.compile`d region and dense features, with the same weights and inputs.

    python -m benchmarks.compile_speed                               # CPU, ViT-B/16, 1 image, 16 boxes
    python -m benchmarks.compile_speed --device cuda --dtype bf16    # GPU: 16 images per call, bf16 autocast

Methods: `get_region_features` and `get_dense_features` eagerly, and compiled (`torch.compile(..., fullgraph=True)`:
one graph, no graph break; the box checks run eagerly first, as `HarmoCLIPModel.compiled_region_features` does).
The first compiled call (tracing and code generation) is timed on its own and reported as the compile time; the
rounds that follow alternate eager and compiled calls. Ratios: eager time over compiled time, round by round.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.harness import BenchmarkSpec, Measurement, inference
from benchmarks.inputs import build_model, random_boxes, random_pixel_values
from benchmarks.tables import ratio_cell, spread_cell
from benchmarks.timing import ratio_summary, summarize, synchronize, time_side_by_side

NAME = "compile_speed"


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options of this benchmark; the harness adds the common ones."""
    parser.add_argument("--images", type=int, default=None, help="images per call (default 1 on the CPU, 16 on CUDA)")
    parser.add_argument("--boxes", type=int, default=16, help="boxes per image")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument("--mode", default=None, help="torch.compile mode, e.g. max-autotune (default torch's)")


def measure_pairs(
    pairs: dict[str, tuple[Callable[[], Any], Callable[[], Any]]], args: argparse.Namespace, num_images: int
) -> tuple[list[dict[str, Any]], list[list[Any]]]:
    """For each call, its (eager, compiled) pair: the first compiled call's time, the largest difference between their
    outputs and both timed side by side; the JSON results and the table's rows."""
    results, rows = [], []
    for name, (eager, compiled) in pairs.items():
        synchronize(args.device)
        start = time.perf_counter()
        compiled()
        synchronize(args.device)
        compile_s = time.perf_counter() - start
        with torch.no_grad():
            difference = float((eager().float() - compiled().float()).abs().max())
        times = time_side_by_side(
            {"eager": eager, "compiled": compiled}, args.device, args.repeats, args.warmup, progress=f"{NAME} {name}"
        )
        ours, theirs = summarize(times["eager"]), summarize(times["compiled"])
        speedup = ratio_summary(times["eager"], times["compiled"])
        results.append(
            {
                "method": name,
                "eager": ours,
                "compiled": theirs,
                "compile_s": compile_s,
                "speedup": speedup,
                "max_abs_diff": difference,
                "images_per_s_eager": num_images / ours["median_s"],
                "images_per_s_compiled": num_images / theirs["median_s"],
            }
        )
        rows.append(
            [
                name,
                ours["median_s"] * 1e3,
                theirs["median_s"] * 1e3,
                ratio_cell(speedup),
                compile_s,
                difference,
                spread_cell(ours, theirs),
            ]
        )
    return results, rows


def measure(args: argparse.Namespace) -> Measurement:
    """Each call eagerly and compiled: the compile time, the outputs' difference, then side by side."""
    num_images = args.images or (16 if args.device.type == "cuda" else 1)
    if num_images < 1 or args.boxes < 1:
        raise ValueError(f"--images and --boxes must be >= 1, got {num_images} and {args.boxes}")
    model, _, config = build_model(args.preset, args.seed)
    model.to(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    pixel_values = random_pixel_values(num_images, config.image_size, generator).to(args.device)
    boxes = random_boxes(num_images, args.boxes, generator).to(args.device)
    options = {"backend": args.backend, "mode": args.mode, "fullgraph": True}
    compiled_regions = model.compiled_region_features(**options)
    compiled_dense = torch.compile(model.get_dense_features, **options)

    pairs = {
        "get_region_features": (
            inference(args, model.get_region_features, pixel_values, boxes),
            inference(args, compiled_regions, pixel_values, boxes),
        ),
        "get_dense_features": (
            inference(args, model.get_dense_features, pixel_values),
            inference(args, compiled_dense, pixel_values),
        ),
    }
    results, rows = measure_pairs(pairs, args, num_images)
    settings = {
        "model_preset": args.preset,
        "image_size": config.image_size,
        "images_per_call": num_images,
        "boxes_per_image": args.boxes,
        "backend": args.backend,
        "mode": args.mode,
    }
    notes = [
        f"{args.preset} geometry, random weights, {num_images} image(s) and {args.boxes} boxes per image per call; "
        f"torch.compile(backend={args.backend!r}, mode={args.mode!r}, fullgraph=True); median of {args.repeats} "
        "alternating rounds after the compile call and warm-up; speed-up = eager time / compiled time (median of "
        "the rounds' ratios, min-max in brackets); max abs diff: compiled against eager outputs."
    ]
    columns = ["call", "eager ms", "compiled ms", "speed-up (min-max)", "compile s", "max abs diff", "spread"]
    return Measurement(columns, rows, results, settings, notes)


SPEC = BenchmarkSpec(
    NAME, __doc__, measure, options=add_options, cpu_repeats=5, cuda_repeats=20, warmup=2, model_preset=True
)
main = SPEC.main


if __name__ == "__main__":
    sys.exit(main())
