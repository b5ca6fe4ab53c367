"""Phrase extraction: captions per second of spaCy's batched pipeline (`PhraseExtractor`, `nlp.pipe`) against one
`nlp(caption)` call per caption, with the same pipeline and the same noun-phrase reading.

    python -m benchmarks.phrase_extraction                # 1,000 COCO-like captions

spaCy runs on the CPU whatever `--device` says. Both methods must return the same phrases (checked).
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.harness import BenchmarkSpec, Measurement
from benchmarks.inputs import sample_captions
from benchmarks.tables import ratio_cell, spread_cell
from benchmarks.timing import ratio_summary, summarize, time_side_by_side
from training.data.phrases import PhraseExtractor

NAME = "phrase_extraction"


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options of this benchmark; the harness adds the common ones."""
    parser.add_argument("--captions", type=int, default=None, help="captions per round (default 1000; --quick 50)")
    parser.add_argument("--batch-size", type=int, default=256, help="nlp.pipe batch size (PhraseExtractor's default)")


def measure(args: argparse.Namespace) -> Measurement:
    """Batched and one-call-per-caption phrase extraction, checked equal, then side by side."""
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
            spread_cell(ours),
            ratio_cell(speedup),
        ],
        ["nlp(caption) one by one", count / theirs["median_s"], spread_cell(theirs), 1.0],
    ]
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
    return Measurement(["method", "captions/s", "spread", "speed-up (min-max)"], rows, results, settings, notes)


# spaCy runs on the CPU whatever the device, so the GPU gets no more rounds than the CPU.
SPEC = BenchmarkSpec(NAME, __doc__, measure, options=add_options, cpu_repeats=3, cuda_repeats=3)
main = SPEC.main


if __name__ == "__main__":
    sys.exit(main())
