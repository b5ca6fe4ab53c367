"""Data loading, two measurements.

`--pipeline synthetic` (default): samples per second of the training DataLoader on the synthetic shapes set, against
what the training step consumes, both with the shipped default config (configs/synthetic_tiny.yaml: tiny model,
64 px, batch 64) with GC+GR under the frozen teacher (`LOSSES`, the `gc-gr` recipe: the teacher's crops are what
loading costs most, the same in the shipped `harmoclip` recipe, whose LRC adds only token masks; the main job itself
trains without GR). The loader is the one training/train.py builds (JSONL data set of
the generated set, `ShardedShuffleSampler`, `RegionCollator` with the processor, which also cuts the frozen teacher's
crops, `drop_last`); a round reads one whole epoch. The step is the training loop's (see benchmarks/train_step.py) on a batch of the same set.

`--pipeline jpeg224`: samples per second of the full input pipeline at the ViT-B/16 recipe's 224 px (JPEG decode,
resize, boxes, tokenising and phrase token masks with CLIP's full vocabulary, the frozen teacher's crops) per
DataLoader worker, from
  - JPEG files named by a JSONL manifest (the file-based sources),
  - COCO annotation files with spaCy run on each caption in the loader (what runs without preparation),
  - the same data prepared by `python -m training.data.prepare` as Parquet shards, read map-style and streamed;
so that one can tell how many workers a GPU that trains at a given rate needs. It also times the preparation.

    python -m benchmarks.data_loading                                   # loader with 0 and 2 workers vs the step
    python -m benchmarks.data_loading --pipeline jpeg224 --workers 0,1,2
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.harness import BenchmarkSpec, Measurement
from benchmarks.inputs import OPENAI_BPE, temporary_folder
from benchmarks.tables import spread_cell, target
from benchmarks.timing import summarize, time_side_by_side
from benchmarks.train_step import StepRunner
from training.config import PROJECT_ROOT

NAME = "data_loading"
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "synthetic_tiny.yaml"
# The losses of a fine-tuning run (every weight given): GR under the frozen teacher makes the loader cut crops.
LOSSES: dict[str, Any] = dict(
    loss_gc_weight=1.0, loss_lrc_weight=0.0, loss_rla_weight=0.0, loss_gr_weight=1.0, gr_teacher="frozen"
)


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options of this benchmark; the harness adds the common ones."""
    parser.add_argument(
        "--num-train", type=int, default=None, help="generated training images (default 512; --quick 32)"
    )
    parser.add_argument("--workers", default="0,2", help="DataLoader worker counts to measure, comma-separated")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's (64; --quick 8)")
    parser.add_argument("--steps-per-round", type=int, default=3, help="training steps timed per round")
    parser.add_argument("--pipeline", default="synthetic", choices=["synthetic", "jpeg224"])
    parser.add_argument(
        "--source-size", type=int, default=None, help="jpeg224: side of the JPEG images (default 480; --quick 64)"
    )


def loader_rates(
    times: dict[str, list[float]], workers: list[int], samples_per_epoch: int, step_rate: float
) -> tuple[list[dict[str, Any]], list[list[Any]], list[dict[str, Any]]]:
    """Per number of workers: the loader's rate against the training step's (`step_rate` samples/s) as JSON results,
    table rows and keep-up targets."""
    results, rows, targets = [], [], []
    for w in workers:
        summary = summarize(times[f"loader, {w} workers"])
        rate = samples_per_epoch / summary["median_s"]
        # With 0 workers the loop loads then steps, one after the other; with workers loading overlaps the step.
        loading_share = (1 / rate) / (1 / rate + 1 / step_rate) if w == 0 else None
        results.append(
            {
                "method": f"loader, {w} workers",
                "num_workers": w,
                **summary,
                "samples_per_s": rate,
                "ratio_to_step": rate / step_rate,
                "loading_share_of_loop": loading_share,
            }
        )
        rows.append(
            [
                f"DataLoader, {w} workers",
                rate,
                spread_cell(summary),
                rate / step_rate,
                f"{loading_share:.0%}" if loading_share is not None else "overlapped",
            ]
        )
        targets.append(
            target(f"loader ({w} workers) samples/s / step samples/s", ">= 1 (keeps up)", rate / step_rate, 1.0, True)
        )
    return results, rows, targets


def loader_config(args: argparse.Namespace, folder: Path, num_train: int) -> Any:
    """The training config whose loader and step are timed: `DEFAULT_CONFIG` on `num_train` generated images in
    `folder`, at the benchmark's seed, precision and batch size."""
    from training.config import load_config

    overrides = dict(
        synthetic_dir=str(folder / "synthetic"),
        synthetic_num_train=num_train,
        synthetic_num_val=0,
        seed=args.seed,
        evaluate_at_end=False,
        report_to="none",
        tokenizer_bpe=str(OPENAI_BPE),
        mixed_precision="no" if args.dtype_name == "fp32" else args.dtype_name,
        **LOSSES,
    )
    if args.batch_size or args.quick:
        overrides["batch_size"] = args.batch_size or 8
    return load_config(DEFAULT_CONFIG, overrides)


def measure(args: argparse.Namespace) -> Measurement:
    """The `--pipeline` measurement asked for: `synthetic` (the loader against the step) or `jpeg224`."""
    return measure_jpeg224(args) if args.pipeline == "jpeg224" else measure_synthetic(args)


def measure_synthetic(args: argparse.Namespace) -> Measurement:
    """The `--pipeline synthetic` measurement (see the module docstring)."""
    from torch.utils.data import DataLoader

    from training.builders import build_datasets, build_model_and_processor
    from training.data.samplers import ShardedShuffleSampler

    workers = [int(w) for w in args.workers.split(",")]
    num_train = args.num_train or (32 if args.quick else 512)
    with temporary_folder("harmoclip-bench-data-") as folder:
        config = loader_config(args, folder, num_train)
        _, processor = build_model_and_processor(config)
        train_set, _, collator = build_datasets(config, processor)  # generates the set
        sampler = ShardedShuffleSampler(len(train_set), config.batch_size, 1, 0, config.seed)
        samples_per_epoch = sampler.batches_per_epoch * config.batch_size

        def read_epoch(num_workers: int):
            def call():
                loader = DataLoader(
                    train_set,
                    batch_size=config.batch_size,
                    sampler=sampler,
                    collate_fn=collator,
                    num_workers=num_workers,
                    drop_last=True,
                )
                return sum(len(batch["image_ids"]) for batch in loader)

            return call

        runner = StepRunner({"default": config}, args.device)

        def train_steps():
            for _ in range(args.steps_per_round):
                runner.step("default")

        methods = {f"loader, {w} workers": read_epoch(w) for w in workers}
        methods["training step"] = train_steps
        times = time_side_by_side(methods, args.device, args.repeats, args.warmup, progress=NAME)

    step = summarize(times["training step"])
    step_rate = args.steps_per_round * config.batch_size / step["median_s"]
    results, rows, targets = loader_rates(times, workers, samples_per_epoch, step_rate)
    results.append(
        {"method": "training step", **step, "samples_per_s": step_rate, "loss_terms": runner.last_terms.get("default")}
    )
    rows.append(
        [
            f"training step ({config.model_preset}, batch {config.batch_size})",
            step_rate,
            spread_cell(step),
            1.0,
            "-",
        ]
    )
    settings = {
        "config": str(DEFAULT_CONFIG.relative_to(PROJECT_ROOT)),
        "num_train": num_train,
        "image_size": config.synthetic_image_size,
        "batch_size": config.batch_size,
        "workers": workers,
        "steps_per_round": args.steps_per_round,
        "gr_teacher": config.gr_teacher,
    }
    notes = [
        f"{config.synthetic_image_size} px generated shapes, {num_train} images, batch {config.batch_size}; a loader "
        f"round reads one epoch ({samples_per_epoch} samples, worker start-up included, as every epoch of training "
        f"pays it), a step round runs {args.steps_per_round} steps; median of {args.repeats} alternating rounds. "
        "With 0 workers loading and stepping alternate, so the loop's rate is 1 / (1/loader + 1/step)."
    ]
    columns = ["what", "samples/s", "spread", "/ step rate", "loading share of the loop"]
    return Measurement(columns, rows, results, settings, notes, targets)


def write_jpeg_sources(folder: Path, num_train: int, size: int, seed: int) -> tuple[Path, Path, Path]:
    """The synthetic shapes at `size` px as JPEG files (quality 90) with a JSONL manifest, and the same images as COCO
    annotation files (one category per shape class). Returns (manifest, captions json, instances json)."""
    import json

    from PIL import Image

    from training.data.synthetic import SyntheticSettings, class_names, generate_synthetic_dataset

    settings = SyntheticSettings(num_train=num_train, num_val=0, seed=seed, image_size=size)
    shapes = generate_synthetic_dataset(folder / "shapes", settings)
    records = [json.loads(line) for line in (shapes / "train.jsonl").read_text().splitlines()]
    (folder / "jpeg").mkdir()
    images, captions, boxes = [], [], []
    categories = {name: number + 1 for number, name in enumerate(class_names(settings))}
    for number, record in enumerate(records):
        name = f"{number:06d}.jpg"
        Image.open(shapes / record["image"]).convert("RGB").save(folder / "jpeg" / name, quality=90)
        record["image"] = f"jpeg/{name}"
        images.append({"id": number, "file_name": name, "width": size, "height": size})
        captions.append({"id": number, "image_id": number, "caption": record["caption"]})
        for region in record["regions"]:
            x1, y1, x2, y2 = region["box"]
            boxes.append(
                {
                    "id": len(boxes),
                    "image_id": number,
                    "category_id": categories[region["label"]],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "iscrowd": 0,
                    "area": (x2 - x1) * (y2 - y1),
                }
            )
    manifest = folder / "train.jsonl"
    manifest.write_text("".join(json.dumps(record) + "\n" for record in records))
    coco_categories = [{"id": i, "name": name} for name, i in categories.items()]
    (folder / "captions.json").write_text(json.dumps({"images": images, "annotations": captions}))
    (folder / "instances.json").write_text(
        json.dumps({"images": images, "annotations": boxes, "categories": coco_categories})
    )
    return manifest, folder / "captions.json", folder / "instances.json"


def jpeg224_rates(
    times: dict[str, list[float]], cpu_seconds: dict[str, list[float]], samples: int
) -> tuple[list[dict[str, Any]], list[list[Any]]]:
    """The JSON results and table rows of the `jpeg224` rounds: per "<source>, <w> workers" method its rate, its rate
    per worker and, read without workers, its samples per CPU second of the main process."""
    results, rows = [], []
    for method, seconds in times.items():
        summary = summarize(seconds)
        source, w = method.rsplit(", ", 1)[0], int(method.rsplit(", ", 1)[1].split()[0])
        rate = samples / summary["median_s"]
        per_worker = rate / max(w, 1)
        per_cpu_second = samples / statistics.median(cpu_seconds[source]) if w == 0 and source in cpu_seconds else None
        results.append(
            {
                "method": method,
                "num_workers": w,
                **summary,
                "samples_per_s": rate,
                "samples_per_s_per_worker": per_worker,
                "samples_per_cpu_second": per_cpu_second,
            }
        )
        rows.append(
            [
                source,
                w,
                rate,
                per_worker,
                per_cpu_second if per_cpu_second is not None else "-",
                spread_cell(summary),
            ]
        )
    return results, rows


def jpeg224_sources(
    folder: Path, manifest: Path, captions: Path, instances: Path, collator: Any, batch_size: int, seed: int
) -> dict[str, Any]:
    """The `--pipeline jpeg224` data sources, each a `make_loader(num_workers)`: JPEG files through a JSONL manifest,
    COCO files with spaCy in the loader, Parquet shards map-style and streamed."""
    from torch.utils.data import DataLoader

    from training.data.data_coco import CocoRegionDataset
    from training.data.data_hf import HFRegionDataset
    from training.data.data_jsonl import JsonlRegionDataset
    from training.data.samplers import ShardedShuffleSampler
    from training.data.streaming import RegionStream, StreamBatchSampler, StreamCollate, StreamRows

    options = dict(seed=seed, max_boxes=20, min_box_size=4.0)

    def map_style(make_dataset):
        def make_loader(num_workers: int):
            dataset = make_dataset()
            sampler = ShardedShuffleSampler(len(dataset), batch_size, 1, 0, seed)
            return DataLoader(
                dataset,
                batch_size=batch_size,
                sampler=sampler,
                collate_fn=collator,
                num_workers=num_workers,
                drop_last=True,
            )

        return make_loader

    def streamed(num_workers: int):
        stream = RegionStream.open(str(folder / "parquet"), **options)
        return DataLoader(
            StreamRows(stream.decoder),
            batch_sampler=StreamBatchSampler(stream.rows, batch_size, 1, 0),
            collate_fn=StreamCollate(collator),
            num_workers=num_workers,
        )

    jsonl = lambda: JsonlRegionDataset(manifest, **options)  # noqa: E731
    # A fresh COCO data set each round: its per-process memo of spaCy's phrases starts empty, as in every epoch
    # of a run whose loader workers are not persistent.
    coco = lambda: CocoRegionDataset(captions, instances, folder / "jpeg", **options)  # noqa: E731
    parquet = HFRegionDataset(folder / "parquet", cache_dir=str(folder / "cache"), **options)
    return {
        "JPEG files (JSONL)": map_style(jsonl),
        "COCO files, spaCy in the loader": map_style(coco),
        "Parquet shards, map-style": map_style(lambda: parquet),
        "Parquet shards, streamed": streamed,
    }


def jpeg224_notes(
    num_train: int, size: int, batch_size: int, samples: int, repeats: int, prepare_rate: float
) -> list[str]:
    """The notes printed under the `--pipeline jpeg224` table: what a round reads and what the columns mean."""
    return [
        f"{num_train} JPEG images of {size} x {size} px (1-4 boxes each), processed to 224 px (square resize, "
        f"region mode), CLIP's full vocabulary, batch {batch_size}; a round reads one epoch ({samples} samples, "
        f"worker start-up included); median of {repeats} alternating rounds. The collator also cuts each box's "
        "crop (enlarged 1.5 x) of the original image at 224 px for the frozen GR teacher. Samples per CPU second: the main process's CPU time for an epoch read without workers, "
        "what one worker on a free core delivers; a GPU step that consumes R samples/s needs about R / that "
        "many workers (and as many free cores).",
        f"Preparation (`training.data.prepare`, JSONL to Parquet): {prepare_rate:.0f} samples/s.",
    ]


def measure_jpeg224(args: argparse.Namespace) -> Measurement:
    """The `--pipeline jpeg224` measurement (see the module docstring)."""
    import time

    from transformers import CLIPTokenizer

    from conversion.clip_vocab import write_clip_tokenizer_files
    from modeling_harmoclip.image_processing_harmoclip import clip_image_processor
    from modeling_harmoclip.processing_harmoclip import HarmoCLIPProcessor
    from training.data.collate import RegionCollator
    from training.data.prepare import jsonl_records, write_shards

    workers = [int(w) for w in args.workers.split(",")]
    num_train = args.num_train or (16 if args.quick else 256)
    size = args.source_size or (64 if args.quick else 480)
    batch_size = args.batch_size or (4 if args.quick else 64)
    with temporary_folder("harmoclip-bench-jpeg-") as folder:
        manifest, captions, instances = write_jpeg_sources(folder, num_train, size, args.seed)
        start = time.perf_counter()
        report = write_shards(
            jsonl_records(manifest, None),
            folder / "parquet",
            samples_per_shard=max(1, num_train // 8),
            show_progress=False,
        )
        prepare_rate = report.written / (time.perf_counter() - start)
        write_clip_tokenizer_files(OPENAI_BPE, folder / "tokenizer")
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", model_max_length=77)
        processor = HarmoCLIPProcessor(clip_image_processor(224), tokenizer, region_mode=True)
        collator = RegionCollator(processor, return_crops=True, crop_scale=1.5)  # the frozen teacher's crops
        batches = num_train // batch_size

        # CPU seconds of the main process per round, where it does all the work (0 workers): the pipeline's cost per
        # sample on one core, whatever else the machine runs meanwhile.
        cpu_seconds: dict[str, list[float]] = {}

        def epoch(name: str, make_loader, num_workers: int):
            def call():
                start_cpu = time.process_time()
                count = sum(len(batch["image_ids"]) for batch in make_loader(num_workers))
                if num_workers == 0:
                    cpu_seconds.setdefault(name, []).append(time.process_time() - start_cpu)
                return count

            return call

        sources = jpeg224_sources(folder, manifest, captions, instances, collator, batch_size, args.seed)
        methods = {
            f"{source}, {w} workers": epoch(source, make_loader, w)
            for w in workers
            for source, make_loader in sources.items()
        }
        times = time_side_by_side(methods, args.device, args.repeats, args.warmup, progress=NAME)

    samples = batches * batch_size
    results, rows = jpeg224_rates(times, cpu_seconds, samples)
    settings = {
        "pipeline": "jpeg224",
        "num_train": num_train,
        "source_size": size,
        "input_size": 224,
        "teacher_crops": True,
        "batch_size": batch_size,
        "workers": workers,
        "prepare_samples_per_s": prepare_rate,
    }
    notes = jpeg224_notes(num_train, size, batch_size, samples, args.repeats, prepare_rate)
    columns = [
        "source",
        "workers",
        "samples/s",
        "samples/s per worker (0: the main process)",
        "samples per CPU second (one core)",
        "spread",
    ]
    return Measurement(columns, rows, results, settings, notes)


SPEC = BenchmarkSpec(NAME, __doc__, measure, options=add_options, cpu_repeats=3, cuda_repeats=5)
main = SPEC.main


if __name__ == "__main__":
    sys.exit(main())
