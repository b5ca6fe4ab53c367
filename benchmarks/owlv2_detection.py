"""Open-vocabulary detection side by side with the peer users would pick: images per second of HarmoCLIP's
`zero-shot-object-detection` pipeline against transformers' own pipeline on OWLv2 (`Owlv2ForObjectDetection`), same
images, same labels, one run.

    python -m benchmarks.owlv2_detection                 # CPU: ViT-B/16 widths, 4 images of 640x480, 10 labels
    python -m benchmarks.owlv2_detection --quick         # tiny widths and sizes: checks that everything runs

Both models have random weights (nothing can be downloaded here), so no accuracy is claimed: this is the cost of a call.
HarmoCLIP is a ViT-B/16 at its own input size (224 px) and at OWLv2's (the position embedding interpolated);
OWLv2 is `Owlv2Config()`'s ViT-B/16 geometry (patch 16, vision width 768, text width 512) at the input size of the
released google/owlv2-base-patch16 checkpoints, 960 px (`--owlv2-image-size`; `Owlv2Config()` itself says 768). Each pipeline is called as users call it, `detector(images, candidate_labels=labels, threshold=0.1)`, so the
times include reading the images, the text towers, post-processing and NMS (HarmoCLIP encodes a label set once and
reuses it; transformers' stock pipeline runs OWLv2's whole forward, image processing and image encoder included, once
per candidate label, so its time grows with the number of labels). Ratio = OWLv2 time / HarmoCLIP time per round.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from benchmarks.harness import BenchmarkSpec, Measurement
from benchmarks.inputs import OPENAI_BPE, build_model
from benchmarks.tables import ratio_cell, spread_cell
from benchmarks.timing import ratio_summary, summarize, time_side_by_side
from modeling_harmoclip.pipeline_harmoclip import ZeroShotRegionDetectionPipeline

NAME = "owlv2_detection"
LABELS = ("person", "dog", "cat", "bicycle", "car", "chair", "bottle", "cup", "laptop", "umbrella", "kite", "bench")


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options of this benchmark; the harness adds the common ones."""
    parser.add_argument("--images", type=int, default=None, help="images per call (default 4; --quick 2)")
    parser.add_argument("--labels", type=int, default=10, help=f"candidate labels, at most {len(LABELS)} (default 10)")
    parser.add_argument("--image-width", type=int, default=640, help="the images' width (height 3/4 of it)")
    parser.add_argument(
        "--owlv2-image-size", type=int, default=960, help="OWLv2's input side (default 960, google/owlv2-base-patch16)"
    )


def pictures(count: int, width: int, seed: int) -> list[Image.Image]:
    """`count` RGB pictures of `width` x 3/4 width: a few filled rectangles and ellipses on a plain background."""
    generator = torch.Generator().manual_seed(seed)
    height = width * 3 // 4
    images = []
    for _ in range(count):
        colour = tuple(int(v) for v in torch.randint(0, 256, (3,), generator=generator))
        image = Image.new("RGB", (width, height), colour)
        draw = ImageDraw.Draw(image)
        for shape in range(4):
            x, y = (int(v) for v in torch.randint(0, width // 2, (2,), generator=generator))
            w, h = (int(v) for v in torch.randint(width // 10, width // 3, (2,), generator=generator))
            fill = tuple(int(v) for v in torch.randint(0, 256, (3,), generator=generator))
            (draw.rectangle if shape % 2 else draw.ellipse)([x, y * 3 // 4, x + w, (y + h) * 3 // 4], fill=fill)
        images.append(image)
    return images


def owlv2_pipeline(quick: bool, seed: int, device: torch.device, image_size: int = 960):
    """transformers' zero-shot-object-detection pipeline on a random-weight OWLv2 (ViT-B/16 geometry, or tiny), with
    CLIP's BPE tokenizer (OWLv2's) written from the project's copy of OpenAI's vocabulary."""
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, pipeline
    from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil

    from conversion.clip_vocab import write_clip_tokenizer_files

    merges = 2000 if quick else None
    folder = Path(tempfile.mkdtemp(prefix="owlv2-tokenizer-"))
    write_clip_tokenizer_files(OPENAI_BPE, folder, num_merges=merges)
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=16)
    if quick:
        config = Owlv2Config(
            text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=16, bos_token_id=len(tokenizer) - 2,
                             eos_token_id=len(tokenizer) - 1, pad_token_id=len(tokenizer) - 1),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                               image_size=64, patch_size=8),
            projection_dim=32,  # OWLv2's class head needs the text width (as 512 = 512 in the full geometry)
        )  # fmt: skip
    else:
        config = Owlv2Config(text_config=dict(vocab_size=len(tokenizer)), vision_config=dict(image_size=image_size))
    torch.manual_seed(seed)
    model = Owlv2ForObjectDetection(config).eval().to(device)
    size = config.vision_config.image_size
    image_processor = Owlv2ImageProcessorPil(size={"height": size, "width": size})
    detector = pipeline(
        "zero-shot-object-detection", model=model, tokenizer=tokenizer, image_processor=image_processor, device=device
    )
    return detector, config


def measure(args: argparse.Namespace) -> Measurement:
    """HarmoCLIP's detection pipeline at two input sizes and OWLv2's, side by side."""
    images_count = args.images or (2 if args.quick else 4)
    if args.owlv2_image_size < 16 or args.owlv2_image_size % 16:
        raise ValueError(f"--owlv2-image-size must be a positive multiple of 16, got {args.owlv2_image_size}")
    if images_count < 1 or not 1 <= args.labels <= len(LABELS) or args.image_width < 16:
        raise ValueError(
            f"--images must be >= 1, --labels in [1, {len(LABELS)}] and --image-width >= 16, got {images_count}, "
            f"{args.labels} and {args.image_width}"
        )
    labels = list(LABELS[: args.labels])
    images = pictures(images_count, args.image_width, args.seed)
    preset = "tiny" if args.quick else "vit-b-16"
    model, processor, harmoclip_config = build_model(preset, args.seed)
    model.to(args.device)
    harmoclip = ZeroShotRegionDetectionPipeline(model=model, processor=processor, device=args.device)
    owlv2, owl_config = owlv2_pipeline(args.quick, args.seed, args.device, args.owlv2_image_size)
    own_size, owl_size = harmoclip_config.image_size, owl_config.vision_config.image_size
    same_size = owl_size - owl_size % harmoclip_config.patch_size  # a multiple of HarmoCLIP's patch

    def call(detector, **options):
        return lambda: detector(images, candidate_labels=labels, threshold=0.1, **options)

    methods = {
        "harmoclip_own_size": call(harmoclip),
        "harmoclip_owlv2_size": call(harmoclip, image_size=same_size),
        "owlv2": call(owlv2),
    }
    with torch.no_grad():
        times = time_side_by_side(methods, args.device, args.repeats, warmup=args.warmup, progress=NAME)
    owl = summarize(times["owlv2"])
    results = []
    for name, size in (("harmoclip_own_size", own_size), ("harmoclip_owlv2_size", same_size)):
        ours = summarize(times[name])
        results.append(
            {
                "method": name,
                "harmoclip_input_size": size,
                "owlv2_input_size": owl_size,
                "harmoclip": ours,
                "owlv2": owl,
                "harmoclip_images_per_s": images_count / ours["median_s"],
                "owlv2_images_per_s": images_count / owl["median_s"],
                "speedup": ratio_summary(times["owlv2"], times[name]),
            }
        )
    rows = [
        [
            f"{row['harmoclip_input_size']} px",
            f"{row['owlv2_input_size']} px",
            row["harmoclip_images_per_s"],
            row["owlv2_images_per_s"],
            ratio_cell(row["speedup"]),
            spread_cell(row["harmoclip"], row["owlv2"]),
        ]
        for row in results
    ]
    settings = {
        "model_preset": preset,
        "images": images_count,
        "image_size": [args.image_width, args.image_width * 3 // 4],
        "labels": labels,
        "harmoclip_patch_size": harmoclip_config.patch_size,
        "owlv2_patch_size": owl_config.vision_config.patch_size,
        "owlv2_vision_width": owl_config.vision_config.hidden_size,
        "owlv2_image_size": owl_size,
        "threshold": 0.1,
    }
    notes = [
        f"{images_count} images of {args.image_width}x{args.image_width * 3 // 4} per call, {len(labels)} labels, "
        f"random weights ({preset} geometry for HarmoCLIP, OWLv2 of vision width {owl_config.vision_config.hidden_size}"
        f"); median of {args.repeats} alternating rounds. Ratio > 1: HarmoCLIP is faster. No accuracy is compared. "
        "The stock pipeline runs OWLv2's whole forward once per label; HarmoCLIP encodes each image once."
    ]
    columns = [
        "HarmoCLIP input",
        "OWLv2 input",
        "HarmoCLIP images/s",
        "OWLv2 images/s",
        "OWLv2 / HarmoCLIP time (min-max)",
        "spread",
    ]
    return Measurement(columns, rows, results, settings, notes)


SPEC = BenchmarkSpec(NAME, __doc__, measure, options=add_options, cpu_repeats=3, cuda_repeats=10)
main = SPEC.main


if __name__ == "__main__":
    sys.exit(main())
