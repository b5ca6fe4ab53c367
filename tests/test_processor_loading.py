"""Saving and loading HarmoCLIPProcessor (AutoProcessor, remote code), the zero-shot pipeline, region classification."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from conftest import run_isolated, tiny_harmoclip_model
from modeling_harmoclip.image_processing_harmoclip import clip_image_processor
from modeling_harmoclip.processing_harmoclip import HarmoCLIPProcessor

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


def _save_model_folder(
    folder: Path, tiny_tokenizer, region_mode: bool = False
) -> tuple[torch.nn.Module, HarmoCLIPProcessor]:
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


@pytest.mark.parametrize("region_mode", [False, True], ids=["crop", "region"])
def test_post_process_puts_labelled_boxes_back_in_pixels(tiny_tokenizer, region_mode):
    """Boxes come back in the original pixels (clipped where the crop cut them), labels sorted by probability, masked
    boxes left out: the processor only formats, the probabilities are given."""
    processor = HarmoCLIPProcessor(clip_image_processor(32), tiny_tokenizer, region_mode=region_mode)
    images = _images()
    boxes = [[[14, 6, 40, 30], [0, 0, 4, 48]], [[3, 12, 30, 36]]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the crop empties box (0, 1)
        inputs = processor(images=images, boxes=boxes)
    # (2 images, 2 box slots, 4 labels); slot (1, 1) is padding.
    probabilities = torch.tensor([[[0.1, 0.6, 0.2, 0.1], [0.25] * 4], [[0.4, 0.05, 0.05, 0.5], [0.25] * 4]])
    results = processor.post_process_region_classification(
        probabilities, LABELS, inputs["boxes"], [(48, 64), (52, 37)], inputs["box_mask"], top_k=3
    )
    if region_mode:
        assert [len(image_results) for image_results in results] == [2, 1]
        assert results[0][1]["box"] == pytest.approx({"xmin": 0, "ymin": 0, "xmax": 4, "ymax": 48}, abs=1e-3)
    else:  # 64x48 -> 42x32, crop x from 5 to 37: the thin box at x < 4 is empty, left out with the mask
        assert [len(image_results) for image_results in results] == [1, 1]
    first = results[0][0]
    assert first["box"] == pytest.approx({"xmin": 14, "ymin": 6, "xmax": 40, "ymax": 30}, abs=1e-3)
    assert (first["label"], first["labels"]) == ("cat", ["cat", "red car", "dog"])
    assert first["score"] == first["scores"][0] and first["scores"] == pytest.approx([0.6, 0.2, 0.1])
    assert results[1][0]["labels"][:2] == ["bicycle", "dog"]
    assert results[1][0]["box"] == pytest.approx({"xmin": 3, "ymin": 12, "xmax": 30, "ymax": 36}, abs=1e-3)

    if not region_mode:  # a box cut by the crop comes back clipped to the part the model saw
        inputs = processor(images=images[:1], boxes=[[[0, 0, 30, 30]]])
        (clipped,) = processor.post_process_region_classification(
            torch.full((1, 1, 4), 0.25), LABELS, inputs["boxes"], [(48, 64)], top_k=None
        )
        assert clipped[0]["box"] == pytest.approx({"xmin": 5 * 64 / 42, "ymin": 0, "xmax": 30, "ymax": 30}, abs=1e-3)
        assert sorted(clipped[0]["labels"]) == sorted(LABELS)
    with pytest.raises(ValueError, match="`probabilities` holds 4 labels per box but `labels` has 3"):
        processor.post_process_region_classification(
            probabilities, LABELS[:3], inputs["boxes"][:, :1].expand(2, 2, 4), [(1, 1)] * 2
        )
    with pytest.raises(ValueError, match="`top_k` must be a positive int or None, got 0"):
        processor.post_process_region_classification(
            probabilities, LABELS, torch.rand(2, 2, 4), [(48, 64), (52, 37)], top_k=0
        )


def test_folder_saved_with_a_plain_clip_image_processor_still_loads(tmp_path, tiny_tokenizer):
    """Folders written before the image processor of its own carry `CLIPImageProcessor`: they load into a
    HarmoCLIPImageProcessor with the same settings and the same outputs."""
    from modeling_harmoclip.image_processing_harmoclip import HarmoCLIPImageProcessor

    folder = tmp_path / "old"
    processor = HarmoCLIPProcessor(clip_image_processor(32), tiny_tokenizer, region_mode=False)
    processor.save_pretrained(folder)
    config = json.loads((folder / "processor_config.json").read_text())
    assert config["image_processor"]["image_processor_type"] == "HarmoCLIPImageProcessor"
    # Rewrite it as the older layout had it: CLIP's class, no code file of the image processor.
    config["image_processor"]["image_processor_type"] = "CLIPImageProcessor"
    config["image_processor"].pop("auto_map", None)
    (folder / "processor_config.json").write_text(json.dumps(config))
    (folder / "image_processing_harmoclip.py").unlink()
    loaded = HarmoCLIPProcessor.from_pretrained(folder)
    assert isinstance(loaded.image_processor, HarmoCLIPImageProcessor)
    expected = processor(images=_images(), text=CAPTIONS, boxes=BOXES, phrase_spans=SPANS)
    got = loaded(images=_images(), text=CAPTIONS, boxes=BOXES, phrase_spans=SPANS)
    for key in ("pixel_values", "boxes", "box_mask", "phrase_token_mask"):
        assert torch.equal(got[key], expected[key]), key
