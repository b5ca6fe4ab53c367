"""Phrase extraction: captions per second of spaCy's batched pipeline (`PhraseExtractor`, `nlp.pipe`) against one
`nlp(caption)` call per caption, with the same pipeline and the same noun-phrase reading.

    python -m benchmarks.phrase_extraction                # 1,000 COCO-like captions

spaCy runs on the CPU whatever `--device` says. Both methods must return the same phrases (checked).
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.common import (
    add_common_arguments,
    benchmark_main,
    finish,
    markdown_table,
    ratio_summary,
    resolve_common,
    sample_captions,
    summarize,
    time_side_by_side,
)
from plumbing.command_line import CommandParser
from training.data.phrases import PhraseExtractor

NAME = "phrase_extraction"


def build_parser() -> CommandParser:
    parser = CommandParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, cpu_repeats=3, cuda_repeats=3)
    parser.add_argument("--captions", type=int, default=None, help="captions per round (default 1000; --quick 50)")
    parser.add_argument("--batch-size", type=int, default=256, help="nlp.pipe batch size (PhraseExtractor's default)")
    return parser


def run(args: argparse.Namespace) -> dict:
    args = resolve_common(args)
    count = args.captions or (50 if args.quick else 1000)
    captions = sample_captions(count, args.seed)
    extractor = PhraseExtractor(batch_size=args.batch_size)
    nlp = extractor.nlp

    def batched():
        return extractor(captions)

    def one_by_one():
        return [PhraseExtractor._phrases(nlp(caption)) for caption in captions]

    if batched() != one_by_one():
        raise RuntimeError("batched and one-call-per-caption phrase extraction disagree")
    cpu = torch.device("cpu")
    times = time_side_by_side(
        {"batched": batched, "one_by_one": one_by_one}, cpu, args.repeats, args.warmup, progress=NAME
    )
    ours, theirs = summarize(times["batched"]), summarize(times["one_by_one"])
    speedup = ratio_summary(times["one_by_one"], times["batched"])
    results = [
        {"method": "nlp.pipe (PhraseExtractor)", **ours, "captions_per_s": count / ours["median_s"]},
        {"method": "nlp(caption) per caption", **theirs, "captions_per_s": count / theirs["median_s"]},
    ]
    rows = [
        [
            "nlp.pipe, batch " + str(args.batch_size),
            count / ours["median_s"],
            f"{ours['spread']:.0%}",
            f"{speedup['median']:.2f} ({speedup['min']:.2f}-{speedup['max']:.2f})",
        ],
        ["nlp(caption) one by one", count / theirs["median_s"], f"{theirs['spread']:.0%}", 1.0],
    ]
    table = markdown_table(["method", "captions/s", "spread", "speed-up (min-max)"], rows)
    pipeline = f"{nlp.meta.get('lang', '?')}_{nlp.meta.get('name', '?')} {nlp.meta.get('version', '')}".strip()
    settings = {
        "captions": count,
        "pipe_batch_size": args.batch_size,
        "pipeline": pipeline,
        "components": list(nlp.pipe_names),
        "phrases_per_caption": sum(len(p) for p in batched()) / count,
        "speedup": speedup,
    }
    notes = [
        f"spaCy pipeline {pipeline} ({', '.join(nlp.pipe_names)}), {count} generated COCO-like captions, CPU; "
        f"median of {args.repeats} alternating rounds; both methods give the same phrases."
    ]
    return finish(NAME, args, settings, results, table, [], notes)


def main(argv: list[str] | None = None) -> int:
    """The benchmark as a command; returns the exit code (a user's mistake: one line `error: ...`)."""
    return benchmark_main(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
