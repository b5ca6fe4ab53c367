"""Open-vocabulary detection: images per second of HarmoCLIP's detection against crop-and-encode scoring of the same
proposals, with the same weights.

    python -m benchmarks.detection_throughput                      # CPU, ViT-B/16 at 224 px, 20 labels, 64 proposals
    python -m benchmarks.detection_throughput --device cuda --max-proposals 400

Both start from the same original images (random pixels, 640x480 as a typical COCO image) and end with detections in
their pixels. HarmoCLIP (the processor's image preprocessing, `HarmoCLIPModel.detect`, `post_process_object_detection`):
one encoder pass per image gives the label maps, the proposals drawn from them and every proposal's region embedding;
then class-wise NMS. Crop-and-encode (`evaluation.crop_detection.crop_detections`, the evaluation's ``crop`` scorer):
the proposals HarmoCLIP made (given, not timed), each enlarged 1.5x about its centre, cut from the original image and
resized to the model's input size by the image processor (`cut_crops`, as CLIPSelf and FineCLIP cut their crops),
encoded by the global image encoder (`get_crop_features`), scored against the same label embeddings, then the same NMS.
Random weights make random label maps, so the proposal count is capped (`--max-proposals`), the same for both.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from benchmarks.harness import BenchmarkSpec, Measurement, autocast
from benchmarks.inputs import build_model
from benchmarks.tables import ratio_cell, spread_cell
from benchmarks.timing import ratio_summary, summarize, time_side_by_side
from evaluation.crop_detection import crop_detections

NAME = "detection_throughput"
# (width, height) of the original images: a typical COCO image.
ORIGINAL_SIZE = (640, 480)


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options of this benchmark; the harness adds the common ones."""
    parser.add_argument("--labels", type=int, default=20, help="candidate labels (default 20)")
    parser.add_argument("--max-proposals", type=int, default=None, help="proposals per image (default 64; --quick 8)")
    parser.add_argument("--images", type=int, default=1, help="images per call (default 1)")
    parser.add_argument("--crop-chunk", type=int, default=64, help="crops encoded per call by crop-and-encode")


def table_row(result: dict[str, Any], proposal_count: float, labels: int) -> list[Any]:
    """The table row of one measurement (`measure`'s result)."""
    ours, theirs = result["harmoclip"], result["crop_and_encode"]
    return [
        proposal_count,
        labels,
        result["harmoclip_images_per_s"],
        result["crop_images_per_s"],
        ours["median_s"] * 1e3,
        theirs["median_s"] * 1e3,
        ratio_cell(result["speedup"]),
        spread_cell(ours, theirs),
    ]


def measure(args: argparse.Namespace) -> Measurement:
    """HarmoCLIP's detection and crop-and-encode scoring of its proposals, side by side."""
    max_proposals = args.max_proposals or (8 if args.quick else 64)
    if min(args.labels, max_proposals, args.images, args.crop_chunk) < 1:
        raise ValueError("--labels, --max-proposals, --images and --crop-chunk must be >= 1")
    model, processor, config = build_model(args.preset, args.seed)
    model.to(args.device)
    processor = processor.as_region_mode()
    generator = torch.Generator().manual_seed(args.seed)
    size = config.image_size
    width, height = ORIGINAL_SIZE
    images = [
        Image.fromarray(torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8).numpy())
        for _ in range(args.images)
    ]
    target_sizes = [(height, width)] * args.images
    dim = model.config.projection_dim
    embeds = F.normalize(torch.randn(args.labels + 1, dim, generator=generator), dim=-1).to(args.device)
    label_embeds, background = embeds[:-1], embeds[-1]

    def pixel_values() -> torch.Tensor:
        return processor(images=images, return_tensors="pt")["pixel_values"].to(args.device)

    def harmoclip():
        with torch.no_grad(), autocast(args.device, args.dtype):
            outputs = model.detect(pixel_values(), label_embeds, background, max_proposals=max_proposals)
        return processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=target_sizes)

    with torch.no_grad():
        proposals = model.detect(pixel_values(), label_embeds, background, max_proposals=max_proposals)
    box_mask = proposals.box_mask

    def crops():
        with torch.no_grad(), autocast(args.device, args.dtype):
            outputs = crop_detections(
                model, processor, images, proposals, label_embeds, background, chunk_size=args.crop_chunk
            )
        return processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=target_sizes)

    methods = {"harmoclip": harmoclip, "crop_and_encode": crops}
    times = time_side_by_side(methods, args.device, args.repeats, warmup=args.warmup, progress=NAME)
    ours, theirs = summarize(times["harmoclip"]), summarize(times["crop_and_encode"])
    proposal_count = int(box_mask.sum()) / args.images
    result = {
        "images": args.images,
        "proposals_per_image": proposal_count,
        "labels": args.labels,
        "harmoclip": ours,
        "crop_and_encode": theirs,
        "harmoclip_images_per_s": args.images / ours["median_s"],
        "crop_images_per_s": args.images / theirs["median_s"],
        "speedup": ratio_summary(times["crop_and_encode"], times["harmoclip"]),
    }
    settings = {
        "model_preset": args.preset,
        "image_size": size,
        "original_image_size": list(ORIGINAL_SIZE),
        "patch_size": config.patch_size,
        "images_per_call": args.images,
        "labels": args.labels,
        "max_proposals": max_proposals,
        "crop_chunk": args.crop_chunk,
    }
    notes = [
        f"{args.preset} geometry ({size} px, patch {config.patch_size}), random weights, {args.images} image(s) per "
        f"call; median of {args.repeats} alternating rounds. Both start from {width}x{height} original images; "
        "HarmoCLIP's time includes preprocessing them and making the proposals; crop-and-encode is given the "
        "proposals and cuts their 1.5x crops from the original images (as CLIPSelf and FineCLIP). Speed-up = "
        "crop-and-encode time / HarmoCLIP time (median of the rounds' ratios, min-max in brackets); spread = "
        "(max - min) / median of the noisier method."
    ]
    columns = [
        "proposals/image",
        "labels",
        "HarmoCLIP images/s",
        "crop+encode images/s",
        "HarmoCLIP ms/call",
        "crop+encode ms/call",
        "speed-up (min-max)",
        "spread",
    ]
    return Measurement(columns, [table_row(result, proposal_count, args.labels)], [result], settings, notes)


SPEC = BenchmarkSpec(NAME, __doc__, measure, options=add_options, cpu_repeats=3, cuda_repeats=10, model_preset=True)
main = SPEC.main

if __name__ == "__main__":
    sys.exit(main())
