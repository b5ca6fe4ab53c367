"""Evaluate a HarmoCLIP (or CLIP) model: cross-modal retrieval and box classification.

Command:

    python -m evaluation.evaluate --model PATH --task retrieval --data dataset_flickr30k.json --image-root flickr30k-images
    python -m evaluation.evaluate --model PATH --task boxcls --data annotations/instances_val2017.json --image-root val2017
    python -m evaluation.evaluate --model PATH --task detection --data annotations/instances_val2017.json --image-root val2017
    python -m evaluation.evaluate --model PATH --task segmentation --data outputs/synthetic/val.jsonl

writes ``--out`` (JSON: every figure, the settings, the command line), a markdown table next to it (same name, `.md`,
also printed) and a log (`.log`). The functions below also take a model and processor in memory, so a training loop
can evaluate the model it holds.

Retrieval uses `get_image_features` / `get_text_features` (the global towers). Box classification classifies each
ground-truth box against class-name text embeddings (`modeling_harmoclip.pipeline_harmoclip.label_embeddings`, the
prompt ensemble the `region-classification` pipeline uses) with
- ``dense``: `get_region_features` (RoIAlign on the dense map, one image pass for all boxes), and
- ``crop``: the crop-and-encode baseline, `get_crop_features` of each box's crop of the original image (enlarged
  ``--crop-scale`` times about its centre, 1.5 as CLIPSelf's baseline, clipped to the image, resized to the model's
  input size by the processor in the loader's workers).

Detection (COCO mAP / AP50 by pycocotools, objects found with no boxes given) and segmentation (mIoU of the label maps)
are `evaluation.detection` and `evaluation.segmentation`; phrase grounding (`--task grounding`: Flickr30k Entities, JSONL
manifests, the synthetic split) is `evaluation.grounding`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from modeling_harmoclip.image_processing_harmoclip import DEFAULT_CROP_SCALE
from modeling_harmoclip.pipeline_harmoclip import (
    DEFAULT_TEMPLATES,
    PHRASE_MODE_ALIASES,
    PHRASE_MODES,
    label_embeddings,
    model_device,
)
from plumbing.atomic_files import write_text_atomic
from plumbing.command_line import CommandParser, log_to_file, run_command, setup_logging

from .detection import DENSE_TASKS, run_dense_task
from .embeddings import (
    BOX_METHODS,
    EvalMode,
    compute_box_embeddings,
    evaluate_retrieval,
    load_model_and_processor,
)
from .eval_data import (
    FORMATS,
    BoxClassificationData,
    detect_format,
    read_box_data,
    read_retrieval_data,
)
from .metrics import (
    DEFAULT_ACCURACY_KS,
    DEFAULT_RECALL_KS,
    classification_metrics,
    top_k_predictions,
)
from .reports import markdown_report, write_report  # re-exported: the report lives in evaluation/reports.py

logger = logging.getLogger("evaluation.evaluate")

# ---------------------------------------------------------------------------------------------------- evaluations


def readable_class_name(name: str) -> str:
    """COCO panoptic names such as 'wall-other-merged' or 'playingfield' -> prompt text 'wall' / 'playingfield'."""
    for suffix in ("-merged", "-other", "-stuff"):
        name = name.replace(suffix, "")
    return name.replace("-", " ").replace("_", " ").strip()


def evaluate_box_classification(
    model: torch.nn.Module,
    processor: Callable[..., Any],
    data: BoxClassificationData,
    methods: Sequence[str] = BOX_METHODS,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    batch_size: int = 16,
    num_workers: int = 0,
    ks: Sequence[int] = DEFAULT_ACCURACY_KS,
    show_progress: bool = False,
    crop_scale: float = DEFAULT_CROP_SCALE,
) -> dict[str, Any]:
    """Top-K accuracy of every ground-truth box against the class texts, for each method in `methods` (``crop``:
    crops enlarged `crop_scale` times).

    Returns ``{method: classification_metrics(...), "num_boxes": M, "boxes_dropped": ..., "prompt_names": [...]}``.
    """
    prompt_names = [readable_class_name(name) for name in data.class_names]
    # Images first: the loader's worker processes fork before the tokenizer has started its own threads.
    embeds, labels, dropped = compute_box_embeddings(
        model, processor, data, methods, batch_size, num_workers, show_progress, crop_scale
    )
    with EvalMode(model):
        class_embeds = label_embeddings(model, processor.tokenizer, prompt_names, templates).cpu()
    top = min(max(ks), len(data.class_names))
    results: dict[str, Any] = {}
    for method, method_embeds in embeds.items():
        predictions, _ = top_k_predictions(method_embeds, class_embeds, top)
        results[method] = classification_metrics(predictions, labels, len(data.class_names), ks, data.class_names)
    results["num_boxes"] = int(labels.numel())
    results["boxes_dropped"] = dropped
    results["prompt_names"] = prompt_names
    return results


# ---------------------------------------------------------------------------------------------------- reports


def run_evaluation(
    model: torch.nn.Module,
    processor: Callable[..., Any],
    task: str,
    data_path: str | Path,
    data_format: str = "auto",
    image_root: str | Path | None = None,
    split: str | None = "test",
    batch_size: int = 32,
    num_workers: int = 0,
    methods: Sequence[str] = BOX_METHODS,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    model_name: str = "",
    command: str = "",
    show_progress: bool = False,
    crop_scale: float = DEFAULT_CROP_SCALE,
) -> dict[str, Any]:
    """Reads the data, evaluates `task` ("retrieval" or "boxcls") and returns the full report (settings + results);
    `crop_scale`: the enlargement of the crop-and-encode baseline's crops."""
    settings: dict[str, Any] = {
        "model": str(model_name),
        "data": str(data_path),
        "format": data_format,
        "image_root": str(image_root) if image_root is not None else None,
        "batch_size": batch_size,
        "num_workers": num_workers,
        "device": str(model_device(model)),
        "model_class": type(model).__name__,
        "image_size": model.config.vision_config.image_size,
        "dense_mode": getattr(model.config, "dense_mode", None),
    }
    if task == "retrieval":
        data = read_retrieval_data(data_path, data_format, image_root, split)
        logger.info("retrieval: %d images, %d captions from %s", len(data.image_paths), len(data.captions), data_path)
        settings.update(split=split, ks=list(DEFAULT_RECALL_KS))
        results = evaluate_retrieval(model, processor, data, batch_size, num_workers, DEFAULT_RECALL_KS, show_progress)
    elif task == "boxcls":
        data = read_box_data(data_path, data_format, image_root, split)
        logger.info(
            "box classification: %d images, %d boxes, %d classes from %s",
            len(data.images),
            data.num_boxes,
            len(data.class_names),
            data_path,
        )
        settings.update(
            split=split,
            ks=list(DEFAULT_ACCURACY_KS),
            methods=list(methods),
            templates=list(templates),
            class_names=data.class_names,
            boxes_skipped_in_annotations=data.skipped,
            crop_scale=crop_scale if "crop" in methods else None,
        )
        results = evaluate_box_classification(
            model,
            processor,
            data,
            methods,
            templates,
            batch_size,
            num_workers,
            DEFAULT_ACCURACY_KS,
            show_progress,
            crop_scale,
        )
    else:
        raise ValueError(f"`task` must be 'retrieval' or 'boxcls', got {task!r}")
    return {
        "task": task,
        "settings": settings,
        "results": results,
        "command": command,
        "working_directory": os.getcwd(),
    }


def build_parser() -> CommandParser:
    parser = CommandParser(prog="python -m evaluation.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model folder or Hub id (loaded with trust_remote_code)")
    parser.add_argument("--task", required=True, choices=("retrieval", "boxcls", *DENSE_TASKS, "grounding"))
    parser.add_argument(
        "--data", required=True, help="Karpathy split json, JSONL manifest, COCO instances or panoptic json"
    )
    parser.add_argument("--format", default="auto", choices=("auto", *FORMATS), help="data format (default: detected)")
    parser.add_argument("--image-root", default=None, help="folder of the images (default: the data file's folder)")
    parser.add_argument(
        "--split", default=None, help="split to evaluate (Karpathy: default 'test'; manifests: lines with this 'split')"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1), help="image loading processes")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(BOX_METHODS),
        choices=BOX_METHODS,
        help="boxcls: region embeddings to compare",
    )
    parser.add_argument(
        "--crop-scale",
        type=float,
        default=DEFAULT_CROP_SCALE,
        help="boxcls: enlargement of each box's crop for the crop-and-encode baseline (CLIPSelf: 1.5)",
    )
    parser.add_argument(
        "--template",
        action="append",
        default=None,
        help="boxcls: a prompt template with '{}' (repeat; default: an ensemble)",
    )
    parser.add_argument(
        "--protocol",
        default=None,
        choices=("fineclip", "clipself"),
        help="a reference protocol (boxcls: COCO panoptic json with its PNGs, ViLD prompts; retrieval: square 224 px)",
    )
    parser.add_argument(
        "--image-size", type=int, default=None, help="with --protocol boxcls: input size (default: the protocol's)"
    )
    parser.add_argument(
        "--segm-root",
        default=None,
        help="with --protocol boxcls: folder of the panoptic PNGs (default: beside the json)",
    )
    parser.add_argument(
        "--class-embeddings-from",
        default=None,
        help="with --protocol boxcls: a model folder / Hub id whose text tower embeds the classes, or a .npy/.pt file (default: --model)",
    )
    parser.add_argument(
        "--save-class-embeddings", default=None, help="with --protocol boxcls: write the class embeddings here (.npy)"
    )
    parser.add_argument(
        "--baseline-model",
        default=None,
        help="detection: a second model (e.g. trained with GC only) whose own proposals and regions are scored too",
    )
    parser.add_argument(
        "--phrase-mode",
        default="token",
        choices=PHRASE_MODES + tuple(PHRASE_MODE_ALIASES),
        help="grounding: each phrase as its lexeme, the caption's token states over its span (LRC's), or encoded alone "
        "(RLA's); 'lexeme' is the older name of 'token'",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--out", default=None, help="results JSON (default: <task>_results.json); .md and .log beside it"
    )
    return parser


def check_protocol_arguments(args: argparse.Namespace) -> None:
    """The protocol options need `--protocol` (and box options `--task boxcls` on a COCO panoptic json)."""
    box_options = {
        "--image-size": args.image_size,
        "--segm-root": args.segm_root,
        "--class-embeddings-from": args.class_embeddings_from,
        "--save-class-embeddings": args.save_class_embeddings,
    }
    given = [name for name, value in box_options.items() if value is not None]
    if given and not (args.protocol and args.task == "boxcls"):
        raise ValueError(
            f"{given[0]} applies to `--task boxcls --protocol ...` only, got --task {args.task} --protocol {args.protocol}"
        )
    if args.protocol and args.task == "boxcls" and detect_format(args.data) != "coco-panoptic":
        raise ValueError(
            f"--protocol {args.protocol} classifies the boxes of a COCO panoptic json, got --data {args.data} ({detect_format(args.data)})"
        )


def run_protocol_evaluation(
    model: torch.nn.Module, processor: Any, args: argparse.Namespace, split: str | None, command: str
) -> dict[str, Any]:
    """`--protocol`: the report of `protocols.run_box_protocol` or `protocols.run_retrieval_protocol`."""
    from dataclasses import asdict

    from . import protocols
    from .panoptic import read_panoptic_categories

    protocol = (
        protocols.get_protocol(args.protocol, args.image_size)
        if args.task == "boxcls"
        else protocols.RETRIEVAL_PROTOCOL
    )
    settings: dict[str, Any] = {
        "model": str(args.model),
        "data": str(args.data),
        "image_root": args.image_root,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "device": str(model_device(model)),
        "model_class": type(model).__name__,
        "dense_mode": getattr(model.config, "dense_mode", None),
        "protocol": asdict(protocol),
    }
    if args.task == "boxcls":
        class_names, _ = read_panoptic_categories(args.data)
        class_embeds = protocols.protocol_class_embeddings(
            class_names, model, processor, args.class_embeddings_from, device=model_device(model)
        )
        if args.save_class_embeddings:
            protocols.save_class_embeddings(class_embeds, args.save_class_embeddings)
        settings.update(
            segm_root=args.segm_root,
            methods=list(args.methods),
            ks=list(DEFAULT_ACCURACY_KS),
            class_names=class_names,
            crop_scale=args.crop_scale if "crop" in args.methods else None,
            class_embeddings_from=str(args.class_embeddings_from or args.model),
            templates="ViLD ensemble (evaluation/prompts.py)",
        )
        results = protocols.run_box_protocol(
            model,
            processor,
            protocol,
            args.data,
            args.image_root,
            args.segm_root,
            class_embeds=class_embeds,
            methods=args.methods,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            show_progress=True,
            crop_scale=args.crop_scale,
        )
    else:
        settings.update(split=split, ks=list(DEFAULT_RECALL_KS), image_size=model.config.vision_config.image_size)
        results = protocols.run_retrieval_protocol(
            model,
            processor,
            args.data,
            args.image_root,
            args.format,
            split,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            show_progress=True,
        )
    return {
        "task": args.task,
        "settings": settings,
        "results": results,
        "command": command,
        "working_directory": os.getcwd(),
    }


def evaluate_command(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the evaluation the command line `argv` describes, writes its JSON, markdown and log; returns the report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise ValueError(f"`--batch-size` must be >= 1, got {args.batch_size}")
    if args.num_workers < 0:
        raise ValueError(f"`--num-workers` must be >= 0, got {args.num_workers}")
    if not Path(args.data).is_file():
        raise FileNotFoundError(f"`--data`: file not found: {args.data}")
    out = Path(args.out or f"{args.task}_results.json")
    with log_to_file(out.with_suffix(".log"), mode="w"):
        command = shlex.join(["python", "-m", "evaluation.evaluate", *argv])
        logger.info("command: %s", command)
        split = args.split if args.split is not None else ("test" if args.task == "retrieval" else None)
        check_protocol_arguments(args)
        model, processor = load_model_and_processor(args.model, args.device)
        if args.task == "grounding":
            from .grounding import run_grounding_task

            report, markdown = run_grounding_task(
                model, processor, args.data, args.image_root, args.split, args.phrase_mode, args.model, command
            )
            markdown += "\nCommand:\n\n```\n" + command + "\n```\n"
            write_text_atomic(out, json.dumps(report, indent=2) + "\n")
            write_text_atomic(out.with_suffix(".md"), markdown)
            print(markdown)
            return report
        if args.task in DENSE_TASKS:
            if args.protocol or args.baseline_model and args.task != "detection":
                raise ValueError(f"--task {args.task} takes no --protocol, and --baseline-model only with detection")
            baseline = load_model_and_processor(args.baseline_model, args.device) if args.baseline_model else None
            report, markdown = run_dense_task(
                model, processor, args.task, args.data, args.image_root, baseline, command
            )
            markdown += "\nCommand:\n\n```\n" + command + "\n```\n"
            write_text_atomic(out, json.dumps(report, indent=2) + "\n")
            write_text_atomic(out.with_suffix(".md"), markdown)
            print(markdown)
            return report
        if args.protocol:
            report = run_protocol_evaluation(model, processor, args, split, command)
        else:
            report = run_evaluation(
                model,
                processor,
                args.task,
                args.data,
                args.format,
                args.image_root,
                split,
                args.batch_size,
                args.num_workers,
                args.methods,
                tuple(args.template) if args.template else DEFAULT_TEMPLATES,
                args.model,
                command,
                show_progress=True,
                crop_scale=args.crop_scale,
            )
        print(write_report(report, out))
        logger.info("wrote %s and %s", out, out.with_suffix(".md"))
        return report


def main(argv: Sequence[str] | None = None) -> int:
    """The `harmoclip-evaluate` command; returns the exit code (a user's mistake: one line `error: ...`)."""

    def run() -> None:
        setup_logging()
        evaluate_command(argv)

    return run_command(run)


__all__ = [
    "DEFAULT_TEMPLATES",
    "BOX_METHODS",
    "evaluate_box_classification",
    "readable_class_name",
    "run_evaluation",
    "markdown_report",
    "write_report",
    "evaluate_command",
    "main",
]


if __name__ == "__main__":
    sys.exit(main())
