"""The `phrase-grounding` pipeline against grounding computed from the definitions (regions by the slow RoIAlign of
tests/region_reference.py, lexemes from transformers' text tower by hand): in process, from a saved folder and from an
offline Hub cache in fresh processes that cannot import the project; phrases from the user or spaCy; boxes from the
user or the model's proposals; bad input named in one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from transformers import pipeline

from conftest import offline_hub_cache, run_isolated, save_tiny_folder, tiny_harmoclip_model, tiny_processor
from modeling_harmoclip import pipeline_harmoclip
from modeling_harmoclip.pipeline_harmoclip import GROUNDING_TASK, PhraseGroundingPipeline
from region_reference import reference_phrases, reference_regions

CAPTION = "A red circle and a blue square on grass."
SPANS = [(0, 12), (17, 30)]  # "A red circle", "a blue square"
IMAGE_SIZE = (64, 48)  # width, height
BOXES = [[5.0, 4.0, 40.0, 30.0], [30.5, 10.0, 60.0, 44.25], [0.0, 0.0, 64.0, 48.0]]


def _image() -> Image.Image:
    image = Image.new("RGB", IMAGE_SIZE, (30, 120, 40))
    ImageDraw.Draw(image).ellipse([10, 8, 35, 28], fill=(220, 30, 30))
    ImageDraw.Draw(image).rectangle([36, 12, 58, 40], fill=(20, 40, 200))
    return image


def expected_choice(model, tokenizer, image, pixel_boxes, spans, mode: str) -> tuple[list[int], list[float]]:
    """Per phrase: the index of the most similar box and its softmax probability over the boxes."""
    pixels = tiny_processor(tokenizer, region_mode=True)(images=image)["pixel_values"]
    width, height = image.size
    normalised = torch.tensor(pixel_boxes, dtype=torch.float64) / torch.tensor([width, height, width, height])
    regions = reference_regions(model, pixels, normalised)
    logits = (
        float(model.logit_scale.detach().exp())
        * reference_phrases(model, tokenizer, CAPTION, spans, mode)
        @ regions.t()
    )
    probabilities = logits.softmax(dim=-1)
    return probabilities.argmax(dim=-1).tolist(), probabilities.max(dim=-1).values.tolist()


def check(results, model, tokenizer, boxes, spans, mode: str = "token") -> None:
    best, scores = expected_choice(model, tokenizer, _image(), boxes, spans, mode)
    assert [result["span"] for result in results] == [list(span) for span in spans]
    assert [result["phrase"] for result in results] == [CAPTION[a:b] for a, b in spans]
    assert [result["box_index"] for result in results] == best
    assert [result["score"] for result in results] == pytest.approx(scores, abs=1e-5)
    for result, index in zip(results, best):
        assert result["box"] == pytest.approx(dict(zip(("xmin", "ymin", "xmax", "ymax"), boxes[index])), abs=1e-3)


@pytest.fixture(scope="module")
def grounder(tiny_tokenizer) -> PhraseGroundingPipeline:
    return pipeline(GROUNDING_TASK, model=tiny_harmoclip_model(seed=11), processor=tiny_processor(tiny_tokenizer))


def test_given_boxes_and_phrases_follow_the_definitions(grounder, tiny_tokenizer) -> None:
    assert isinstance(grounder, PhraseGroundingPipeline)
    by_spans = grounder(_image(), caption=CAPTION, phrase_spans=SPANS, boxes=BOXES)
    check(by_spans, grounder.model, tiny_tokenizer, BOXES, SPANS)
    by_text = grounder(_image(), caption=CAPTION, phrases=["A red circle", "a blue square"], boxes=BOXES)
    assert by_text == by_spans
    alone = grounder(_image(), caption=CAPTION, phrase_spans=SPANS, boxes=BOXES, phrase_mode="alone")
    check(alone, grounder.model, tiny_tokenizer, BOXES, SPANS, mode="alone")
    # Several images as items; COCO boxes.
    xywh = [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in BOXES]
    items = grounder(
        [{"image": _image(), "caption": CAPTION, "phrase_spans": SPANS, "boxes": xywh}] * 2, box_format="xywh"
    )
    assert items == [by_spans, by_spans]


def test_phrases_from_spacy_noun_chunks(grounder) -> None:
    pytest.importorskip("spacy")
    results = grounder(_image(), caption=CAPTION, boxes=BOXES)
    assert [result["phrase"] for result in results] == ["A red circle", "a blue square", "grass"]
    assert [result["span"] for result in results] == [[0, 12], [17, 30], [34, 39]]


def test_without_spacy_one_line_says_what_to_pass(grounder, monkeypatch) -> None:
    monkeypatch.setattr(pipeline_harmoclip, "_SPACY", {})
    monkeypatch.setitem(sys.modules, "spacy", None)  # import spacy -> ImportError
    with pytest.raises(ValueError, match=r"^no phrases to ground: pass `phrases=` .* or `phrase_spans=`") as error:
        grounder(_image(), caption=CAPTION, boxes=BOXES)
    assert "\n" not in str(error.value)


def test_proposals_are_the_detection_pipelines(grounder, tiny_tokenizer) -> None:
    results = grounder(_image(), caption=CAPTION, phrase_spans=SPANS)
    model, processor = grounder.model, grounder.processor
    pixels = processor(images=_image(), return_tensors="pt")["pixel_values"]
    phrases = pipeline_harmoclip.embed_phrases(model, processor, CAPTION, SPANS)
    background = pipeline_harmoclip.background_embedding(
        model, tiny_tokenizer, templates=pipeline_harmoclip.PHRASE_TEMPLATES
    )
    proposed = model.detect(pixels, phrases, background)
    candidates = proposed["pred_boxes"][0][proposed["box_mask"][0]]
    width, height = IMAGE_SIZE
    pixel_boxes = (candidates.double() * torch.tensor([width, height, width, height])).tolist()
    check(results, model, tiny_tokenizer, pixel_boxes, SPANS)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            dict(phrase_spans=[(0, 12), (30, 99)], boxes=BOXES),
            r"^`phrase_spans`\[1\] = \(30, 99\) is not a \(start, end\)",
        ),
        (dict(phrases=["A red circle", "a dog"], boxes=BOXES), r"^`phrases`\[1\] = 'a dog' is not in the caption"),
        (dict(phrase_spans=SPANS, boxes=[]), r"^`boxes` = \[\]: no box candidates"),
        (dict(phrase_spans=SPANS, boxes=[[70, 50, 90, 60]]), r"^`boxes` = \[\[70, 50, 90, 60\]\]: no box lies inside"),
        (dict(phrase_spans=SPANS, boxes=BOXES, phrase_mode="words"), r"^`phrase_mode` must be one of"),
        (dict(phrase_spans=SPANS, phrases=["grass"], boxes=BOXES), r"^give `phrases` or `phrase_spans`, not both"),
    ],
)
def test_bad_input_is_one_line_naming_the_argument(grounder, call, message) -> None:
    with pytest.warns(UserWarning) if call.get("boxes") == [[70, 50, 90, 60]] else _nothing():
        with pytest.raises(ValueError, match=message) as error:
            grounder(_image(), caption=CAPTION, **call)
    assert "\n" not in str(error.value)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_tokenizer) -> tuple[Path, torch.nn.Module]:
    folder = tmp_path_factory.mktemp("grounding_pipeline") / "model"
    return folder, save_tiny_folder(folder, tiny_tokenizer, seed=12)


ISOLATED_CALL = """
import json
from transformers import pipeline
from PIL import Image
grounder = pipeline("phrase-grounding", model={model!r}, trust_remote_code=True)
assert type(grounder).__module__.startswith("transformers_modules"), type(grounder).__module__
print(json.dumps(grounder(Image.open({image!r}), caption={caption!r}, phrase_spans={spans!r}, boxes={boxes!r})))
"""


@pytest.mark.parametrize("where", ["folder", "hub cache"])
def test_the_pipeline_ships_with_the_model(saved, tiny_tokenizer, tmp_path, where) -> None:
    folder, model = saved
    assert (folder / "pipeline_harmoclip.py").is_file()
    assert json.loads((folder / "config.json").read_text())["custom_pipelines"][GROUNDING_TASK] == {
        "impl": "pipeline_harmoclip.PhraseGroundingPipeline",
        "pt": ["AutoModel"],
        "type": "multimodal",
    }
    env = offline_hub_cache(folder, tmp_path) if where == "hub cache" else None
    name = "org/harmoclip-vitb16" if where == "hub cache" else str(folder)
    _image().save(tmp_path / "image.png")
    code = ISOLATED_CALL.format(
        model=name, image=str(tmp_path / "image.png"), caption=CAPTION, spans=SPANS, boxes=BOXES
    )
    result = run_isolated(code, cwd=tmp_path, env=env)
    check(json.loads(result.stdout.strip().splitlines()[-1]), model, tiny_tokenizer, BOXES, SPANS)


def test_post_process_grounding_by_hand(tiny_tokenizer) -> None:
    processor = tiny_processor(tiny_tokenizer, region_mode=True)  # square resize: normalised x times the width
    logits = torch.tensor([[[1.0, 3.0, 9.0], [2.0, 0.0, 1.0]]])  # 2 phrases x 3 boxes; box 2 masked out
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.25, 0.5, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]])
    mask = torch.tensor([[True, True, False]])
    caption = "a cat and a dog"
    (results,) = processor.post_process_grounding(logits, boxes, [(48, 64)], [caption], [[(2, 5), (12, 15)]], mask)
    assert [r["phrase"] for r in results] == ["cat", "dog"] and [r["span"] for r in results] == [[2, 5], [12, 15]]
    assert [r["box_index"] for r in results] == [1, 0]  # box 2 scores highest for "cat" but is not a candidate
    assert results[0]["box"] == pytest.approx({"xmin": 16.0, "ymin": 24.0, "xmax": 64.0, "ymax": 48.0})
    assert results[1]["box"] == pytest.approx({"xmin": 0.0, "ymin": 0.0, "xmax": 32.0, "ymax": 24.0})
    e = 2.718281828459045
    assert results[0]["score"] == pytest.approx(e**3 / (e**1 + e**3), rel=1e-6)
    assert results[1]["score"] == pytest.approx(e**2 / (e**2 + e**0), rel=1e-6)
    with pytest.raises(ValueError, match=r"^`phrase_spans`\[0\] holds 1 spans for 2 phrases$"):
        processor.post_process_grounding(logits, boxes, [(48, 64)], [caption], [[(2, 5)]], mask)
    with pytest.raises(ValueError, match=r"^`box_mask`\[0\]: the image has no box candidates"):
        processor.post_process_grounding(logits, boxes, [(48, 64)], [caption], [[(2, 5), (12, 15)]], mask & False)
