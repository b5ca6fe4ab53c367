"""Data loading: samples per second of the training DataLoader on the synthetic shapes set, against what the
training step consumes, both with the shipped default config (configs/synthetic_tiny.yaml: tiny model, 64 px,
batch 64, GC+LRC+GR with the frozen teacher).

    python benchmarks/data_loading.py                     # loader with 0 (the config's default) and 2 workers
    python benchmarks/data_loading.py --device cuda --dtype bf16

The loader is the one training/train.py builds (JSONL data set of the generated set, `ShardedShuffleSampler`,
`RegionCollator` with the processor, which also cuts the frozen teacher's crops, `drop_last`); a round reads one whole
epoch. The step is the training loop's (see benchmarks/train_step.py) on a batch of the same set.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    ROOT,
    add_common_arguments,
    finish,
    markdown_table,
    resolve_common,
    summarize,
    target,
    temporary_folder,
    time_side_by_side,
)
from benchmarks.train_step import StepRunner  # noqa: E402
from conversion.cli import CommandParser, run_command  # noqa: E402

NAME = "data_loading"
DEFAULT_CONFIG = ROOT / "configs" / "synthetic_tiny.yaml"


def build_parser() -> CommandParser:
    parser = CommandParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, cpu_repeats=3, cuda_repeats=5)
    parser.add_argument("--num-train", type=int, default=None, help="generated training images (default 512; --quick 32)")
    parser.add_argument("--workers", default="0,2", help="DataLoader worker counts to measure, comma-separated")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's (64; --quick 8)")
    parser.add_argument("--steps-per-round", type=int, default=3, help="training steps timed per round")
    return parser


def run(args: argparse.Namespace) -> dict:
    from torch.utils.data import DataLoader

    from training.builders import build_datasets, build_model_and_processor
    from training.config import load_config
    from training.train import ShardedShuffleSampler

    args = resolve_common(args)
    workers = [int(w) for w in args.workers.split(",")]
    num_train = args.num_train or (32 if args.quick else 512)
    with temporary_folder("harmoclip-bench-data-") as folder:
        overrides = dict(synthetic_dir=str(folder / "synthetic"), synthetic_num_train=num_train, synthetic_num_val=0,
                         seed=args.seed, evaluate_at_end=False, report_to="none",
                         tokenizer_bpe=str(ROOT / "assets" / "bpe_simple_vocab_16e6.txt.gz"),
                         mixed_precision="no" if args.dtype_name == "fp32" else args.dtype_name)
        if args.batch_size or args.quick:
            overrides["batch_size"] = args.batch_size or 8
        config = load_config(DEFAULT_CONFIG, overrides)
        _, processor = build_model_and_processor(config)
        train_set, _, collator = build_datasets(config, processor)  # generates the set
        sampler = ShardedShuffleSampler(len(train_set), config.batch_size, 1, 0, config.seed)
        samples_per_epoch = sampler.batches_per_epoch * config.batch_size

        def read_epoch(num_workers: int):
            def call():
                loader = DataLoader(train_set, batch_size=config.batch_size, sampler=sampler, collate_fn=collator,
                                    num_workers=num_workers, drop_last=True)
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
    results, rows, targets = [], [], []
    for w in workers:
        summary = summarize(times[f"loader, {w} workers"])
        rate = samples_per_epoch / summary["median_s"]
        # With 0 workers the loop loads then steps, one after the other; with workers loading overlaps the step.
        loading_share = (1 / rate) / (1 / rate + 1 / step_rate) if w == 0 else None
        results.append({"method": f"loader, {w} workers", "num_workers": w, **summary, "samples_per_s": rate,
                        "ratio_to_step": rate / step_rate, "loading_share_of_loop": loading_share})
        rows.append([f"DataLoader, {w} workers", rate, f"{summary['spread']:.0%}", rate / step_rate,
                     f"{loading_share:.0%}" if loading_share is not None else "overlapped"])
        targets.append(target(f"loader ({w} workers) samples/s / step samples/s", ">= 1 (keeps up)", rate / step_rate, 1.0, True))
    results.append({"method": "training step", **step, "samples_per_s": step_rate, "loss_terms": runner.last_terms.get("default")})
    rows.append([f"training step ({config.model_preset}, batch {config.batch_size})", step_rate, f"{step['spread']:.0%}", 1.0, "-"])
    table = markdown_table(["what", "samples/s", "spread", "/ step rate", "loading share of the loop"], rows)
    settings = {"config": str(DEFAULT_CONFIG.relative_to(ROOT)), "num_train": num_train, "image_size": config.synthetic_image_size,
                "batch_size": config.batch_size, "workers": workers, "steps_per_round": args.steps_per_round,
                "gr_teacher": config.gr_teacher}
    notes = [f"{config.synthetic_image_size} px generated shapes, {num_train} images, batch {config.batch_size}; a loader "
             f"round reads one epoch ({samples_per_epoch} samples, worker start-up included, as every epoch of training "
             f"pays it), a step round runs {args.steps_per_round} steps; median of {args.repeats} alternating rounds. "
             "With 0 workers loading and stepping alternate, so the loop's rate is 1 / (1/loader + 1/step)."]
    return finish(NAME, args, settings, results, table, targets, notes)


def main(argv: list[str] | None = None) -> int:
    """The benchmark as a command; returns the exit code (a user's mistake: one line `error: ...`)."""
    return run_command(lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
