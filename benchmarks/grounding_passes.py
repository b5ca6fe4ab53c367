"""Phrase grounding with the model's own proposals: one pass of the image encoder (`ground_phrases` scores the phrases
against the region embeddings `detect` pooled) against the two it took before (`detect` for the proposals, then
`get_region_features` for the same boxes again), side by side, the same weights, image, phrases and boxes.

    python -m benchmarks.grounding_passes                 # CPU, ViT-B/16 at 224 px
    python -m benchmarks.grounding_passes --device cuda --dtype bf16

The two give the same logits (checked before timing); the table counts each one's vision-encoder passes with a
forward hook.
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.harness import BenchmarkSpec, Measurement, inference
from benchmarks.inputs import build_model, random_pixel_values
from benchmarks.tables import ratio_cell, spread_cell
from benchmarks.timing import ratio_summary, summarize, time_side_by_side
from modeling_harmoclip.pipeline_harmoclip import PHRASE_TEMPLATES, background_embedding, embed_phrases, ground_phrases

NAME = "grounding_passes"
CAPTION = "a small dog sits next to a red bicycle under a green tree"
PHRASES = ("a small dog", "a red bicycle", "a green tree")


def two_passes(model, pixel_values, phrase_embeds, background_embed):
    """Grounding as it ran before: `detect` proposes the boxes (one pass), then `get_region_features` encodes the image
    again for their regions (a second pass). Returns the (P, N) logits."""
    proposed = model.detect(pixel_values, phrase_embeds, background_embed)
    regions = model.get_region_features(pixel_values, proposed["pred_boxes"], proposed["box_mask"])[0]
    return model.logit_scale.exp().item() * phrase_embeds.float() @ regions.float().t()


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options of this benchmark; the harness adds the common ones."""
    parser.add_argument("--images", type=int, default=1, help="images grounded one after the other per round")


def measure(args: argparse.Namespace) -> Measurement:
    """The one-pass and the two-pass grounding of the same phrases in random images, checked equal, then side by side."""
    model, processor, config = build_model(args.preset, args.seed)
    model.to(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    images = [random_pixel_values(1, config.image_size, generator).to(args.device) for _ in range(args.images)]
    spans = [(CAPTION.index(phrase), CAPTION.index(phrase) + len(phrase)) for phrase in PHRASES]
    with torch.no_grad():
        phrases = embed_phrases(model, processor, CAPTION, spans)
        background = background_embedding(model, processor.tokenizer, templates=PHRASE_TEMPLATES)

    def one(pixel_values):
        return ground_phrases(model, pixel_values, phrases, background_embed=background)[0]

    def two(pixel_values):
        return two_passes(model, pixel_values, phrases, background)

    methods = {
        "one pass": inference(args, lambda: [one(pixel_values) for pixel_values in images]),
        "two passes": inference(args, lambda: [two(pixel_values) for pixel_values in images]),
    }
    passes = {}
    counter = [0]
    hook = model.vision_model.embeddings.register_forward_hook(lambda *_: counter.__setitem__(0, counter[0] + 1))
    try:
        outputs = {}
        for name, method in methods.items():
            counter[0] = 0
            outputs[name] = method()
            passes[name] = counter[0] / len(images)
    finally:
        hook.remove()
    difference = max(float((a.cpu() - b.cpu()).abs().max()) for a, b in zip(outputs["one pass"], outputs["two passes"]))
    allowed = 1e-4 if args.device.type == "cpu" and args.dtype == torch.float32 else 5e-2
    if difference > allowed:
        raise RuntimeError(f"one-pass and two-pass grounding disagree: max |logit difference| {difference:.2e}")
    times = time_side_by_side(methods, args.device, args.repeats, args.warmup, progress=NAME)
    summaries = {name: summarize(seconds) for name, seconds in times.items()}
    ratio = ratio_summary(times["two passes"], times["one pass"])
    results = [
        {
            "method": name,
            "images": args.images,
            "vision_passes_per_image": passes[name],
            "images_per_s": args.images / summaries[name]["median_s"],
            **summaries[name],
        }
        for name in methods
    ]
    results.append({"speedup": ratio})
    rows = [
        [name, passes[name], args.images / summaries[name]["median_s"], spread_cell(summaries[name])]
        for name in methods
    ]
    rows.append(["two passes / one pass, time", "", ratio_cell(ratio), spread_cell(*summaries.values())])
    settings = {
        "model_preset": args.preset,
        "image_size": config.image_size,
        "phrases": list(PHRASES),
        "max_logit_difference": difference,
    }
    notes = [
        f"{args.preset} geometry, random weights; {len(PHRASES)} phrases of one caption grounded among the model's own "
        f"proposals in {args.images} image(s) per round; the two give the same logits (max |difference| "
        f"{difference:.1e}). Median of {args.repeats} alternating rounds; the ratio is two-pass time over one-pass time "
        "per round (min-max in brackets)."
    ]
    return Measurement(["method", "vision passes / image", "images/s", "spread"], rows, results, settings, notes)


SPEC = BenchmarkSpec(
    NAME, __doc__, measure, options=add_options, cpu_repeats=7, cuda_repeats=30, quick_repeats=2, model_preset=True
)
main = SPEC.main

if __name__ == "__main__":
    sys.exit(main())
