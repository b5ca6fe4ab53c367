"""Training step: time and peak memory per optimiser step for GC only against the shipped recipe `harmoclip` (GC + 0.5
LRC + GR, frozen and cached teacher), GC+GR (the `gc-gr` recipe, frozen and cached), GC+RLA, GC+LRC and GC+LRC+GR with
the cached teacher.

    python -m benchmarks.train_step --device cuda --dtype bf16   # ViT-B/16 at 224 px, batch 8, 8 boxes per image
    python -m benchmarks.train_step --device cpu                 # the same at batch 2 (--batch-size 8: ~20 minutes)

Each step is the training loop's own, `training.step.training_step`: `forward_objective` (teacher targets, forward
under the Accelerator's autocast, loss terms) + `accelerator.backward` + gradient clipping + AdamW step + logit-scale
clamps,
on a fixed batch from a JSONL manifest of generated images with `--boxes` boxes and phrases each, collated by the
training collator. The cached teacher is a real `TeacherCache` folder written by `training/cache_teacher.py` for
that manifest (`--variants` picks a subset; GC, the baseline, always runs). Times: the variants alternate in rounds on one model and optimiser. Peak memory: each variant runs
alone in a fresh process (the highest RSS sampled during a step on the CPU, `torch.cuda.max_memory_allocated` on CUDA), so no variant's
allocations count towards another's. Targets: the shipped recipe with the cached teacher at most 1.3 x the GC-only step
time and 1.25 x its peak memory.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import BenchmarkSpec, Measurement, write_profiles
from benchmarks.inputs import model_config_for, temporary_folder
from benchmarks.memory import RssSampler, current_rss_bytes, peak_rss_bytes
from benchmarks.tables import ratio_cell, spread_cell, target
from benchmarks.timing import ratio_summary, summarize, time_side_by_side
from modeling_harmoclip.configuration_harmoclip import recipe_fields
from training.config import PROJECT_ROOT

NAME = "train_step"
TIME_LIMIT = 1.3  # TARGET_VARIANT step time / GC-only step time
MEMORY_LIMIT = 1.25  # TARGET_VARIANT peak memory / GC-only peak memory
# Variant -> training-config overrides. All share the model, the batch and the optimiser settings.
# Every weight is given, so a variant means what its name says whatever TrainConfig's defaults are.
VARIANTS: dict[str, dict[str, Any]] = {
    "GC": dict(loss_gc_weight=1.0, loss_lrc_weight=0.0, loss_rla_weight=0.0, loss_gr_weight=0.0),
    "GC+RLA": dict(loss_gc_weight=1.0, loss_lrc_weight=0.0, loss_rla_weight=0.5, loss_gr_weight=0.0),
    # The `harmoclip` recipe (TrainConfig's defaults; tests/test_benchmarks.py checks that they agree).
    "harmoclip frozen": {**recipe_fields("harmoclip"), "gr_teacher": "frozen"},
    "harmoclip cached": {**recipe_fields("harmoclip"), "gr_teacher": "cached"},
    # The `gc-gr` recipe (the earlier default).
    "GC+GR frozen": dict(
        loss_gc_weight=1.0, loss_lrc_weight=0.0, loss_rla_weight=0.0, loss_gr_weight=1.0, gr_teacher="frozen"
    ),
    "GC+GR cached": dict(
        loss_gc_weight=1.0, loss_lrc_weight=0.0, loss_rla_weight=0.0, loss_gr_weight=1.0, gr_teacher="cached"
    ),
    "GC+LRC": dict(loss_gc_weight=1.0, loss_lrc_weight=1.0, loss_rla_weight=0.0, loss_gr_weight=0.0),
    "GC+LRC+GR cached": dict(
        loss_gc_weight=1.0, loss_lrc_weight=1.0, loss_rla_weight=0.0, loss_gr_weight=1.0, gr_teacher="cached"
    ),
}
# The variant the targets are set on: the shipped recipe with the cached teacher.
TARGET_VARIANT = "harmoclip cached"


def write_region_manifest(folder: Path, num_images: int, boxes_per_image: int, image_size: int, seed: int) -> Path:
    """A JSONL manifest (training/data/data_jsonl.py format) of generated images, each with `boxes_per_image` shapes of
    distinct classes on a grid, a caption naming them all and each box linked to its phrase. Returns its path."""
    import numpy as np
    from PIL import Image, ImageDraw

    from training.data.synthetic import COLOURS, SHAPES, draw_shape

    classes = [(colour, shape) for colour in COLOURS for shape in SHAPES]
    if boxes_per_image > len(classes):
        raise ValueError(f"boxes per image must be at most {len(classes)} (distinct classes), got {boxes_per_image}")
    columns = math.ceil(math.sqrt(boxes_per_image))
    rows = math.ceil(boxes_per_image / columns)
    cell_w, cell_h = image_size / columns, image_size / rows
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(num_images):
        image = Image.fromarray(rng.integers(60, 180, (image_size, image_size, 3), dtype=np.uint8), "RGB")
        draw = ImageDraw.Draw(image)
        chosen = [classes[i] for i in rng.choice(len(classes), size=boxes_per_image, replace=False)]
        caption, regions = "", []
        for number, (colour, shape) in enumerate(chosen):
            side = int(min(cell_w, cell_h) * rng.uniform(0.5, 0.9))
            x1 = int(number % columns * cell_w + rng.uniform(0, cell_w - side))
            y1 = int(number // columns * cell_h + rng.uniform(0, cell_h - side))
            box = (x1, y1, x1 + side, y1 + side)
            draw_shape(draw, shape, box, COLOURS[colour])
            name = f"{colour} {shape}"
            caption += "a " if number == 0 else (" and a " if number == boxes_per_image - 1 else ", a ")
            regions.append(
                {"box": list(box), "phrase": name, "span": [len(caption), len(caption) + len(name)], "label": name}
            )
            caption += name
        image.save(folder / "images" / f"{index:04d}.png")
        lines.append(
            json.dumps(
                {"id": f"bench/{index:04d}", "image": f"images/{index:04d}.png", "caption": caption, "regions": regions}
            )
        )
    manifest = folder / "train.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def variant_config(args: argparse.Namespace, variant: str, manifest: Path, cache_dir: Path):
    """The `TrainConfig` of one variant: the preset's geometry, the manifest, batch and boxes, the variant's losses."""
    return model_config_for(
        args.preset,
        seed=args.seed,
        data_format="jsonl",
        train_data=str(manifest),
        batch_size=args.batch_size,
        max_boxes=args.boxes,
        min_box_size=1.0,
        learning_rate=1e-5,
        weight_decay=0.1,
        max_grad_norm=1.0,
        mixed_precision="no" if args.dtype_name == "fp32" else args.dtype_name,
        num_workers=0,
        teacher_cache=str(cache_dir),
        **VARIANTS[variant],
    )


class StepRunner:
    """Model, optimiser, Accelerator and one collated batch, shared by several training configs that differ only in
    their losses and teacher; `step(name)` runs one optimiser step of config `name` as the training loop does."""

    def __init__(self, configs: dict[str, Any], device: torch.device):
        from accelerate import Accelerator

        from training.builders import build_dataset_for_split, build_model_and_processor, move_batch, region_collator
        from training.step import build_optimizer
        from training.teacher import build_teachers, teacher_needs_crops

        self.configs = configs
        base = next(iter(configs.values()))
        self.accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=base.mixed_precision)
        model, processor = build_model_and_processor(base)
        dataset = build_dataset_for_split(base, "train")
        # One batch for every variant: with the teacher's crops (cut by the collator, as in training) if one needs them.
        collator = region_collator(
            base, processor, with_crops=any(teacher_needs_crops(config) for config in configs.values())
        )
        batch = collator([dataset[index] for index in range(base.batch_size)])
        for key in ("skipped", "num_small_boxes_dropped", "num_boxes_over_limit"):  # what the loop pops before the step
            batch.pop(key, None)
        self.batch = move_batch(batch, self.accelerator.device)
        self.boxes_in_batch = int(self.batch["box_mask"].sum())
        self.model, self.optimizer = self.accelerator.prepare(model, build_optimizer(model, base))
        self.model.train()
        self.unwrapped = self.accelerator.unwrap_model(self.model)
        # The teachers the variants need, by the training loop's own rule (`build_teachers`).
        self.teacher, self.cache = build_teachers(
            list(configs.values()), self.unwrapped, processor, self.accelerator.device
        )
        self.last_terms: dict[str, dict[str, float]] = {}

    def step(self, variant: str, batch: dict[str, Any] | None = None) -> None:
        """One optimiser step of `variant` on `batch` (default: the runner's), as the body of training/train.py's loop
        (without the LR scheduler)."""
        from training.builders import harmoclip_settings
        from training.step import training_step

        config, accelerator = self.configs[variant], self.accelerator
        batch = self.batch if batch is None else batch
        # The model's own config decides what its forward computes (RLA's phrase pass): the variant's, as a model
        # built for that training config would hold.
        for name, value in harmoclip_settings(config).items():
            setattr(self.unwrapped.config, name, value)
        micro_terms = training_step(
            self.model,
            self.unwrapped,
            self.optimizer,
            itertools.repeat(batch),
            config,
            accelerator,
            self.teacher,
            self.cache,
        )
        if micro_terms is None:
            raise RuntimeError(f"{variant}: non-finite loss in the benchmark step")
        self.last_terms[variant] = micro_terms[-1]


def measure_memory_here(args: argparse.Namespace, manifest: Path, cache_dir: Path, variant: str) -> dict[str, Any]:
    """Peak memory of `variant`'s steps in this (fresh) process: after `warmup` steps (optimiser state allocated),
    one more step; CUDA: its `max_memory_allocated`, CPU: the highest RSS sampled during it. `static_bytes`: what
    was held before the step (weights, optimiser state, teacher)."""
    runner = StepRunner({variant: variant_config(args, variant, manifest, cache_dir)}, args.device)
    device = runner.accelerator.device
    for _ in range(max(args.warmup, 1)):
        runner.step(variant)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        static = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        runner.step(variant)
        torch.cuda.synchronize(device)
        return {
            "variant": variant,
            "peak_bytes": torch.cuda.max_memory_allocated(device),
            "static_bytes": static,
            "kind": "torch.cuda.max_memory_allocated",
        }
    static = current_rss_bytes()
    with RssSampler() as sampler:
        runner.step(variant)
    return {
        "variant": variant,
        "peak_bytes": sampler.peak,
        "static_bytes": static,
        "process_peak_bytes": peak_rss_bytes(),
        "kind": "peak RSS during the step",
    }


def measure_memory_in_fresh_process(
    args: argparse.Namespace, manifest: Path, cache_dir: Path, variant: str, folder: Path
) -> dict:
    """Peak memory of `variant`'s step (`measure_memory_here`) in a fresh process, so that no other variant's
    allocations count towards it: this command again, with the internal `--memory-of`."""
    out = folder / f"memory-{list(VARIANTS).index(variant)}.json"
    command = [
        sys.executable,
        "-m",
        "benchmarks.train_step",
        "--memory-of",
        variant,
        "--manifest",
        str(manifest),
        "--cache-dir",
        str(cache_dir),
        "--memory-out",
        str(out),
        "--device",
        str(args.device),
        "--dtype",
        args.dtype_name,
        "--batch-size",
        str(args.batch_size),
        "--boxes",
        str(args.boxes),
        "--model-preset",
        args.preset,
        "--warmup",
        str(args.warmup),
        "--seed",
        str(args.seed),
        "--threads",
        str(args.threads),
    ]
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"memory measurement of {variant} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return json.loads(out.read_text())


def add_step_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a training-step benchmark's batch (this one and peer_open_clip.py)."""
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per step (default 8 on CUDA; 2 on the CPU, where batch 8 "
        "of ViT-B/16 takes minutes per round; --quick 2)",
    )
    parser.add_argument("--boxes", type=int, default=8, help="boxes (each with a phrase) per image")


def resolve_step_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """`batch_size` from the options of `add_step_arguments`, checked with `boxes`."""
    args.batch_size = args.batch_size or (8 if args.device.type == "cuda" and not args.quick else 2)
    if args.batch_size < 1 or args.boxes < 1:
        raise ValueError(f"--batch-size and --boxes must be >= 1, got {args.batch_size} and {args.boxes}")
    return args


def write_step_inputs(args: argparse.Namespace, folder: Path) -> tuple[Path, Path]:
    """The benchmark batch's manifest and its teacher cache, written under `folder`; returns (manifest, cache folder)."""
    from training.cache_teacher import build_teacher_cache_folder

    image_size = model_config_for(args.preset).image_size
    manifest = write_region_manifest(folder / "data", args.batch_size, args.boxes, image_size, args.seed)
    cache_dir = folder / "teacher_cache"
    # The cache holds the starting weights' crop embeddings of the manifest's boxes (the same seed builds them).
    build_teacher_cache_folder(
        variant_config(args, TARGET_VARIANT, manifest, cache_dir), cache_dir, batch_size=args.batch_size
    )
    return manifest, cache_dir


def selected_variants(option: str | None) -> list[str]:
    """The variants `--variants` names, in `VARIANTS`' order, GC first."""
    if option is None:
        return list(VARIANTS)
    names = {name.strip() for name in option.split(",") if name.strip()}
    unknown = sorted(names - set(VARIANTS))
    if unknown:
        raise ValueError(f"--variants: unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    return [name for name in VARIANTS if name in names | {"GC"}]


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options of this benchmark; the harness adds the common ones."""
    add_step_arguments(parser)
    parser.add_argument("--skip-memory", action="store_true", help="time only (no fresh process per variant)")
    parser.add_argument(
        "--variants",
        default=None,
        help=f"comma-separated subset of {', '.join(VARIANTS)} (default all; GC always runs, as the baseline)",
    )
    # internal: the fresh process that measures one variant's memory
    parser.add_argument("--memory-of", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--manifest", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--memory-out", type=Path, help=argparse.SUPPRESS)


def measure_variants(
    args: argparse.Namespace, variants: list[str]
) -> tuple[dict[str, list[float]], dict[str, dict[str, float]], int, dict[str, dict[str, Any]]]:
    """Every variant's step timed side by side on the same inputs (profiled with `--profile`), then its peak memory in
    a fresh process; returns the step times, each variant's last loss terms, the boxes in a batch and the memory."""
    with temporary_folder("harmoclip-bench-") as folder:
        manifest, cache_dir = write_step_inputs(args, folder)
        runner = StepRunner({name: variant_config(args, name, manifest, cache_dir) for name in variants}, args.device)
        device = runner.accelerator.device
        times = time_side_by_side(
            {name: (lambda name=name: runner.step(name)) for name in variants},
            device,
            args.repeats,
            max(args.warmup, 1),
            progress=NAME,
        )
        write_profiles(args, {name: (lambda name=name: runner.step(name)) for name in variants}, device)
        terms = dict(runner.last_terms)
        boxes_in_batch = runner.boxes_in_batch
        runner = None  # frees the models before the memory is measured in fresh processes
        memory = (
            {}
            if args.skip_memory
            else {name: measure_memory_in_fresh_process(args, manifest, cache_dir, name, folder) for name in variants}
        )

    return times, terms, boxes_in_batch, memory


def variant_result(
    args: argparse.Namespace,
    name: str,
    times: dict[str, list[float]],
    terms: dict[str, dict[str, float]],
    memory: dict[str, dict[str, Any]],
) -> tuple[dict, list]:
    """One variant's JSON result (its step time and memory, each against GC-only's) and its table row."""
    summary = summarize(times[name])
    ratio = ratio_summary(times[name], times["GC"])
    peak = memory.get(name, {}).get("peak_bytes")
    memory_ratio = peak / memory["GC"]["peak_bytes"] if peak else None
    result = {
        "variant": name,
        "step": summary,
        "time_ratio_to_gc": ratio,
        "samples_per_s": args.batch_size / summary["median_s"],
        "memory": memory.get(name),
        "memory_ratio_to_gc": memory_ratio,
        "loss_terms": terms.get(name),
    }
    row = [
        name,
        summary["median_s"] * 1e3,
        spread_cell(summary),
        args.batch_size / summary["median_s"],
        ratio_cell(ratio),
        peak / 2**20 if peak else None,
        f"{memory_ratio:.2f}" if memory_ratio else None,
        ", ".join(sorted(k for k in terms.get(name, {}) if k != "loss")),
    ]
    return result, row


def step_targets(results: list[dict], memory: dict[str, dict[str, Any]]) -> list:
    """The targets on the cached-teacher variant's time (and, when measured, memory) against GC-only's."""
    cached = next((r for r in results if r["variant"] == TARGET_VARIANT), None)
    targets = (
        []
        if cached is None
        else [
            target(
                f"{TARGET_VARIANT} step time / GC-only",
                f"<= {TIME_LIMIT}",
                cached["time_ratio_to_gc"]["median"],
                TIME_LIMIT,
                False,
            )
        ]
    )
    if memory and cached is not None:
        targets.append(
            target(
                f"{TARGET_VARIANT} peak memory / GC-only",
                f"<= {MEMORY_LIMIT}",
                cached["memory_ratio_to_gc"],
                MEMORY_LIMIT,
                False,
            )
        )
    return targets


def measure(args: argparse.Namespace) -> Measurement | None:
    """Every variant's step side by side, then each one's peak memory in a fresh process (or, in that process,
    the one variant's memory)."""
    args = resolve_step_arguments(args)
    if args.memory_of:  # the fresh process of `measure_memory_in_fresh_process`: its result goes to --memory-out
        args.memory_out.write_text(json.dumps(measure_memory_here(args, args.manifest, args.cache_dir, args.memory_of)))
        return None

    variants = selected_variants(args.variants)
    times, terms, boxes_in_batch, memory = measure_variants(args, variants)
    baseline = summarize(times["GC"])
    results, rows = [], []
    for name in variants:
        result, row = variant_result(args, name, times, terms, memory)
        results.append(result)
        rows.append(row)
    targets = step_targets(results, memory)
    memory_kind = next(iter(memory.values()))["kind"] if memory else "not measured"
    settings = {
        "model_preset": args.preset,
        "batch_size": args.batch_size,
        "boxes_per_image": args.boxes,
        "boxes_in_batch": boxes_in_batch,
        "memory": memory_kind,
        "gc_step_median_s": baseline["median_s"],
    }
    notes = [
        f"{args.preset} geometry, random weights, batch {args.batch_size} with {args.boxes} linked boxes per image; "
        f"the training loop's step (forward_objective + backward + clipping + AdamW); median of {args.repeats} "
        f"alternating rounds after {max(args.warmup, 1)} warm-up step(s) each; peak memory: {memory_kind}, each variant "
        "in a fresh process after its warm-up step(s)."
    ]
    columns = [
        "variant",
        "ms/step",
        "spread",
        "samples/s",
        "time / GC (min-max)",
        "peak MiB",
        "memory / GC",
        "loss terms",
    ]
    return Measurement(columns, rows, results, settings, notes, targets)


SPEC = BenchmarkSpec(NAME, __doc__, measure, options=add_options, cpu_repeats=3, cuda_repeats=10, model_preset=True)
main = SPEC.main


if __name__ == "__main__":
    sys.exit(main())
