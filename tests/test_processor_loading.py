"""Saving and loading HarmoCLIPProcessor (AutoProcessor, remote code), the zero-shot pipeline, region classification."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from conftest import run_isolated, tiny_harmoclip_model
from modeling_harmoclip.processing_harmoclip import HarmoCLIPProcessor, clip_image_processor

CAPTIONS = ["A brown DOG runs on the grass.", "two  cats, one mouse"]
BOXES = [[[5, 4, 40, 30], [30, 10, 60, 44]], [[0, 0, 20, 20]]]
SPANS = [[(0, 11), (24, 29)], [(0, 9)]]
LABELS = ["dog", "cat", "red car", "bicycle"]


def _images() -> list[Image.Image]:
    first = Image.new("RGB", (64, 48), (30, 120, 40))
    ImageDraw.Draw(first).rectangle([10, 8, 35, 28], fill=(200, 120, 40))
    second = Image.new("RGB", (37, 52), (20, 40, 160))
    ImageDraw.Draw(second).ellipse([4, 4, 18, 18], fill=(240, 240, 240))
    return [first, second]


# The same inputs, rebuilt in the isolated process (it cannot import this test module).
_ISOLATED_INPUTS = f"""
from PIL import Image, ImageDraw
first = Image.new("RGB", (64, 48), (30, 120, 40))
ImageDraw.Draw(first).rectangle([10, 8, 35, 28], fill=(200, 120, 40))
second = Image.new("RGB", (37, 52), (20, 40, 160))
ImageDraw.Draw(second).ellipse([4, 4, 18, 18], fill=(240, 240, 240))
images = [first, second]
CAPTIONS, BOXES, SPANS, LABELS = {CAPTIONS!r}, {BOXES!r}, {SPANS!r}, {LABELS!r}
"""


def _save_model_folder(folder: Path, tiny_tokenizer, region_mode: bool = False) -> tuple[torch.nn.Module, HarmoCLIPProcessor]:
    """A folder laid out like a Hub repository: model (weights, config, code) and processor side by side."""
    model = tiny_harmoclip_model(seed=3)
    processor = HarmoCLIPProcessor(clip_image_processor(32), tiny_tokenizer, region_mode=region_mode)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor


@pytest.mark.parametrize("region_mode", [False, True], ids=["crop", "region"])
def test_auto_processor_round_trip_in_fresh_process(tmp_path, tiny_tokenizer, region_mode):
    folder = tmp_path / "harmoclip"
    processor = HarmoCLIPProcessor(clip_image_processor(32), tiny_tokenizer, region_mode=region_mode)
    processor.save_pretrained(folder)
    saved = json.loads((folder / "processor_config.json").read_text())
    assert saved["auto_map"]["AutoProcessor"] == "processing_harmoclip.HarmoCLIPProcessor"
    assert saved["region_mode"] is region_mode
    assert (folder / "processing_harmoclip.py").is_file()

    expected = processor(images=_images(), text=CAPTIONS, boxes=BOXES, phrase_spans=SPANS)
    run_isolated(
        _ISOLATED_INPUTS
        + f"""
import json, torch
from transformers import AutoProcessor
processor = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
assert type(processor).__name__ == "HarmoCLIPProcessor", type(processor)
assert processor.__module__.startswith("transformers_modules"), processor.__module__
inputs = processor(images=images, text=CAPTIONS, boxes=BOXES, phrase_spans=SPANS)
torch.save(dict(inputs), {str(tmp_path / "outputs.pt")!r})
preset = dict(region_mode=processor.region_mode, image_processor=processor.image_processor.to_dict(),
              model_max_length=processor.tokenizer.model_max_length)
open({str(tmp_path / "preset.json")!r}, "w").write(json.dumps(preset, default=str))
""",
        cwd=tmp_path,
    )
    loaded = torch.load(tmp_path / "outputs.pt")
    assert sorted(loaded) == sorted(expected.keys())
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key
    preset = json.loads((tmp_path / "preset.json").read_text())
    assert preset["region_mode"] is region_mode
    assert preset["model_max_length"] == 77
    original = json.loads(json.dumps(processor.image_processor.to_dict(), default=str))
    for key in ("size", "crop_size", "do_center_crop", "do_resize", "image_mean", "image_std", "resample"):
        assert preset["image_processor"][key] == original[key], key


def test_zero_shot_pipeline_ranks_like_the_model(tmp_path, tiny_tokenizer):
    folder = tmp_path / "harmoclip"
    model, processor = _save_model_folder(folder, tiny_tokenizer)
    image_path = tmp_path / "image.png"
    _images()[0].save(image_path)
    result = run_isolated(
        f"""
import json
from transformers import pipeline
classifier = pipeline("zero-shot-image-classification", model={str(folder)!r}, trust_remote_code=True)
print(json.dumps(classifier({str(image_path)!r}, candidate_labels={LABELS!r})))
""",
        cwd=tmp_path,
    )
    ranked = json.loads(result.stdout.strip().splitlines()[-1])

    # The model's own logits on the same inputs (the pipeline's default template).
    prompts = [f"This is a photo of {label}." for label in LABELS]
    inputs = processor(images=Image.open(image_path), text=prompts)
    with torch.no_grad():
        probabilities = model(**inputs).logits_per_image[0].softmax(-1)
    expected_order = [LABELS[index] for index in probabilities.argsort(descending=True).tolist()]
    assert [entry["label"] for entry in ranked] == expected_order
    for entry in ranked:
        assert entry["score"] == pytest.approx(probabilities[LABELS.index(entry["label"])].item(), abs=1e-5)


def test_encode_labels_ensembles_templates(tiny_tokenizer):
    model = tiny_harmoclip_model(seed=4)
    processor = HarmoCLIPProcessor(clip_image_processor(32), tiny_tokenizer)
    templates = ["a photo of a {}.", "a blurry photo of the {}.", "{}"]
    embeds = processor.encode_labels(model, LABELS, templates)
    assert embeds.shape == (len(LABELS), 16) and embeds.dtype == torch.float32
    torch.testing.assert_close(embeds.norm(dim=-1), torch.ones(len(LABELS)))
    with torch.no_grad():
        for index, label in enumerate(LABELS):
            tokens = tiny_tokenizer([template.format(label) for template in templates], padding=True, return_tensors="pt")
            per_template = torch.nn.functional.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
            expected = torch.nn.functional.normalize(per_template.mean(0), dim=-1)
            torch.testing.assert_close(embeds[index], expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"`templates`\[0\] must contain '\{\}'"):
        processor.encode_labels(model, LABELS, ["a photo"])
    with pytest.raises(TypeError, match=r"`labels` must be a non-empty list of strings"):
        processor.encode_labels(model, "dog")


@pytest.mark.parametrize("region_mode", [False, True], ids=["crop", "region"])
def test_classify_regions_on_tiny_model(tiny_tokenizer, region_mode):
    """Boxes come back in the original pixels, labels sorted by score, scores from the model's embeddings."""
    model = tiny_harmoclip_model(seed=5)
    processor = HarmoCLIPProcessor(clip_image_processor(32), tiny_tokenizer, region_mode=region_mode)
    images = _images()
    # Boxes inside the centre crop of each image, so both geometries keep them whole.
    boxes = [[[14, 6, 40, 30], [24.5, 20, 48, 44.25]], [[3, 12, 30, 36]]]
    results = processor.classify_regions(model, images, boxes, LABELS, top_k=3)
    assert [len(image_results) for image_results in results] == [2, 1]
    inputs = processor(images=images, boxes=boxes)
    with torch.no_grad():
        region_embeds = model.get_region_features(inputs["pixel_values"], inputs["boxes"], inputs["box_mask"])
    label_embeds = processor.encode_labels(model, LABELS)
    probabilities = (model.logit_scale.exp() * region_embeds @ label_embeds.t()).softmax(-1)
    for image_index, image_results in enumerate(results):
        for box_index, region in enumerate(image_results):
            assert region["box"] == pytest.approx(boxes[image_index][box_index], abs=1e-3)
            assert len(region["labels"]) == len(region["scores"]) == 3
            assert region["scores"] == sorted(region["scores"], reverse=True)
            best = probabilities[image_index, box_index].argsort(descending=True)[:3].tolist()
            assert region["labels"] == [LABELS[index] for index in best]
            assert region["scores"] == pytest.approx(probabilities[image_index, box_index, best].tolist(), abs=1e-5)

    # Post-processing alone, with the model's forward output: a box cut by the crop comes back clipped, masked
    # boxes are left out.
    if not region_mode:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inputs = processor(images=images[:1], text=["a dog"], boxes=[[[0, 0, 30, 30], [0, 0, 4, 48]]])
        outputs = model(**inputs)
        (results,) = processor.post_process_region_classification(
            outputs.region_embeds, label_embeds, LABELS, inputs["boxes"], [(48, 64)], outputs.region_mask, top_k=None
        )
        # 64x48 -> 42x32, crop x from 5 to 37: the first box starts at x = 5 / (42 / 64) in original pixels.
        assert len(results) == 1
        assert results[0]["box"] == pytest.approx([5 * 64 / 42, 0, 30, 30], abs=1e-3)
        assert sorted(results[0]["labels"]) == sorted(LABELS)
        assert sum(results[0]["scores"]) == pytest.approx(1.0, abs=1e-5)
