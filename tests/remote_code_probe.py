"""Run by tests/test_remote_code_versions.py with the Python of an environment that has some transformers release and
not this project: loads a saved HarmoCLIP folder (argv[1]) and the same files as a Hub id from an offline cache
(argv[2], when given) the way a user does, with `trust_remote_code=True`, and calls the model, the processor, every
pipeline the folder ships and the stock `zero-shot-image-classification` pipeline once. Prints one JSON line of what
each returned, so that the test compares the environments' answers with one another and with the project's own."""

from __future__ import annotations

import json
import sys

import torch
import transformers
from PIL import Image, ImageDraw
from transformers import AutoConfig, AutoModel, AutoModelForZeroShotImageClassification, AutoProcessor, pipeline

CAPTION = "a red circle on green grass"
LABELS = ["red circle", "green grass"]
BOX = [10, 8, 35, 28]


def picture() -> Image.Image:
    image = Image.new("RGB", (64, 48), (30, 120, 40))
    ImageDraw.Draw(image).ellipse(BOX, fill=(220, 30, 30))
    return image


def probe(name: str) -> dict:
    """Everything a user calls, loaded from `name` (a folder or a Hub id)."""
    image = picture()
    config = AutoConfig.from_pretrained(name, trust_remote_code=True)
    model = AutoModel.from_pretrained(name, trust_remote_code=True).eval()
    zero_shot_head = AutoModelForZeroShotImageClassification.from_pretrained(name, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(name, trust_remote_code=True)
    inputs = processor(images=[image], text=[CAPTION], boxes=[[BOX]], phrase_spans=[[(0, 12)]])
    with torch.no_grad():
        outputs = model(**inputs)
    found = {
        "classes": [
            type(config).__name__,
            type(model).__name__,
            type(zero_shot_head).__name__,
            type(processor).__name__,
        ],
        "logits_per_image": outputs.logits_per_image.tolist(),
        "region_embeds": outputs.region_embeds.tolist(),
        "lexeme_embeds": outputs.lexeme_embeds.tolist(),
    }
    calls = {
        "region-classification": dict(boxes=[BOX], candidate_labels=LABELS),
        "zero-shot-object-detection": dict(candidate_labels=LABELS, threshold=0.0),
        "image-segmentation": dict(candidate_labels=LABELS),
        "phrase-grounding": dict(caption=CAPTION, phrases=["a red circle", "green grass"]),
    }
    for task, arguments in calls.items():
        result = pipeline(task, model=name, trust_remote_code=True)(image, **arguments)
        if task == "image-segmentation":  # masks as the share of pixels they cover
            result = [{**item, "mask": sum(item["mask"].getdata()) / 255 / (64 * 48)} for item in result]
        found[task] = result
    stock = pipeline("zero-shot-image-classification", model=name, trust_remote_code=True)
    found["zero-shot-image-classification"] = stock(image, candidate_labels=LABELS)
    return found


if __name__ == "__main__":
    answers = {"transformers": transformers.__version__, "folder": probe(sys.argv[1])}
    if len(sys.argv) > 2:
        answers["hub"] = probe(sys.argv[2])
    print("PROBE " + json.dumps(answers))
