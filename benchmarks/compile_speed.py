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

from benchmarks.common import (
    add_common_arguments,
    autocast,
    benchmark_main,
    build_model,
    finish,
    markdown_table,
    ratio_summary,
    resolve_common,
    summarize,
    synchronize,
    time_side_by_side,
)
from benchmarks.region_throughput import random_boxes
from plumbing.command_line import CommandParser

NAME = "compile_speed"


def build_parser() -> CommandParser:
    parser = CommandParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, cpu_repeats=5, cuda_repeats=20, warmup=2)
    parser.add_argument("--images", type=int, default=None, help="images per call (default 1 on the CPU, 16 on CUDA)")
    parser.add_argument("--boxes", type=int, default=16, help="boxes per image")
    parser.add_argument(
        "--model-preset", default=None, choices=["vit-b-16", "tiny"], help="default vit-b-16 (--quick: tiny)"
    )
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument("--mode", default=None, help="torch.compile mode, e.g. max-autotune (default torch's)")
    return parser


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
                f"{speedup['median']:.2f} ({speedup['min']:.2f}-{speedup['max']:.2f})",
                compile_s,
                difference,
                f"{max(ours['spread'], theirs['spread']):.0%}",
            ]
        )
    return results, rows


def run(args: argparse.Namespace) -> dict:
    args = resolve_common(args)
    preset = args.model_preset or ("tiny" if args.quick else "vit-b-16")
    num_images = args.images or (16 if args.device.type == "cuda" else 1)
    if num_images < 1 or args.boxes < 1:
        raise ValueError(f"--images and --boxes must be >= 1, got {num_images} and {args.boxes}")
    model, _, config = build_model(preset, args.seed)
    model.to(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    pixel_values = torch.randn(num_images, 3, config.image_size, config.image_size, generator=generator)
    pixel_values = pixel_values.to(args.device)
    boxes = random_boxes(num_images, args.boxes, generator).to(args.device)
    options = {"backend": args.backend, "mode": args.mode, "fullgraph": True}
    compiled_regions = model.compiled_region_features(**options)
    compiled_dense = torch.compile(model.get_dense_features, **options)

    def call(function, *inputs):
        def method():
            with torch.no_grad(), autocast(args.device, args.dtype):
                return function(*inputs)

        return method

    pairs = {
        "get_region_features": (
            call(model.get_region_features, pixel_values, boxes),
            call(compiled_regions, pixel_values, boxes),
        ),
        "get_dense_features": (call(model.get_dense_features, pixel_values), call(compiled_dense, pixel_values)),
    }
    results, rows = measure_pairs(pairs, args, num_images)
    table = markdown_table(
        ["call", "eager ms", "compiled ms", "speed-up (min-max)", "compile s", "max abs diff", "spread"], rows
    )
    settings = {
        "model_preset": preset,
        "image_size": config.image_size,
        "images_per_call": num_images,
        "boxes_per_image": args.boxes,
        "backend": args.backend,
        "mode": args.mode,
    }
    notes = [
        f"{preset} geometry, random weights, {num_images} image(s) and {args.boxes} boxes per image per call; "
        f"torch.compile(backend={args.backend!r}, mode={args.mode!r}, fullgraph=True); median of {args.repeats} "
        "alternating rounds after the compile call and warm-up; speed-up = eager time / compiled time (median of "
        "the rounds' ratios, min-max in brackets); max abs diff: compiled against eager outputs."
    ]
    return finish(NAME, args, settings, results, table, [], notes)


def main(argv: list[str] | None = None) -> int:
    """The benchmark as a command; returns the exit code (a user's mistake: one line `error: ...`)."""
    return benchmark_main(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
