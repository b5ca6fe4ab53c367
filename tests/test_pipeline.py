"""The `region-classification` pipeline and the functions behind it, against region classification computed from the
definitions (tests/region_reference.py): from a saved folder and from an offline Hub cache in fresh processes that
cannot import the project, and in process."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from transformers import pipeline

from conftest import (
    offline_hub_cache,
    run_isolated,
    save_tiny_folder,
    text_tower_calls,
    tiny_harmoclip_model,
    tiny_processor,
)
from modeling_harmoclip.modeling_harmoclip import label_probabilities
from modeling_harmoclip.pipeline_harmoclip import (
    DEFAULT_TEMPLATES,
    REGION_CLASSIFICATION_TASK,
    RegionClassificationPipeline,
    dense_probabilities,
    dense_similarity,
    label_embeddings,
)
from region_reference import reference_label_embeds, reference_probabilities, reference_regions, value_path_dense

LABELS = ["dog", "red car", "bicycle", "tree"]
IMAGE_SIZE = (64, 48)  # width, height
BOXES = [[5.0, 4.0, 40.0, 30.0], [30.5, 10.0, 60.0, 44.25], [0.0, 0.0, 64.0, 48.0]]


def _image() -> Image.Image:
    image = Image.new("RGB", IMAGE_SIZE, (30, 120, 40))
    ImageDraw.Draw(image).rectangle([10, 8, 35, 28], fill=(200, 120, 40))
    ImageDraw.Draw(image).ellipse([36, 12, 58, 40], fill=(20, 40, 160))
    return image


def _expected(
    model, tokenizer, image: Image.Image, boxes: list[list[float]], labels: list[str], templates=DEFAULT_TEMPLATES
):
    """(N, L) reference probabilities: the region preset resizes the image to 32 x 32, so a box's normalised
    coordinates are its pixel coordinates over the image's size."""
    pixels = tiny_processor(tokenizer, region_mode=True)(images=image)["pixel_values"]
    width, height = image.size
    normalised = torch.tensor(boxes, dtype=torch.float64) / torch.tensor([width, height, width, height])
    regions = reference_regions(model, pixels, normalised)
    return reference_probabilities(model, regions, reference_label_embeds(model, tokenizer, labels, templates))


def _check(
    results: list[dict], expected: torch.Tensor, boxes: list[list[float]], labels: list[str], top_k: int
) -> None:
    assert len(results) == len(boxes)
    for row, (result, box) in enumerate(zip(results, boxes)):
        assert result["box"] == pytest.approx(dict(zip(("xmin", "ymin", "xmax", "ymax"), box)), abs=1e-3)
        best = expected[row].argsort(descending=True)[:top_k].tolist()
        assert result["labels"] == [labels[index] for index in best]
        assert result["scores"] == pytest.approx(expected[row, best].tolist(), abs=1e-5)
        assert (result["label"], result["score"]) == (result["labels"][0], result["scores"][0])


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_tokenizer) -> tuple[Path, torch.nn.Module]:
    """A folder as a Hub repository holds it: model (code, config with `custom_pipelines`) and a centre-crop
    processor (the pipeline switches to the region preset itself)."""
    folder = tmp_path_factory.mktemp("region_pipeline") / "model"
    return folder, save_tiny_folder(folder, tiny_tokenizer, seed=7)


ISOLATED_CALL = """
import json
from transformers import pipeline
from PIL import Image
classifier = pipeline("region-classification", model={model!r}, trust_remote_code=True)
assert type(classifier).__module__.startswith("transformers_modules"), type(classifier).__module__
results = classifier(Image.open({image!r}), boxes={boxes!r}, candidate_labels={labels!r}, top_k=2)
print(json.dumps(results))
"""


def test_pipeline_from_a_saved_folder_in_a_fresh_process(saved, tiny_tokenizer, tmp_path) -> None:
    folder, model = saved
    _image().save(tmp_path / "image.png")
    result = run_isolated(
        ISOLATED_CALL.format(model=str(folder), image=str(tmp_path / "image.png"), boxes=BOXES, labels=LABELS),
        cwd=tmp_path,
    )
    results = json.loads(result.stdout.strip().splitlines()[-1])
    _check(results, _expected(model, tiny_tokenizer, _image(), BOXES, LABELS), BOXES, LABELS, top_k=2)


def test_pipeline_from_an_offline_hub_cache_in_a_fresh_process(saved, tiny_tokenizer, tmp_path) -> None:
    folder, model = saved
    env = offline_hub_cache(folder, tmp_path)
    _image().save(tmp_path / "image.png")
    result = run_isolated(
        ISOLATED_CALL.format(
            model="org/harmoclip-vitb16", image=str(tmp_path / "image.png"), boxes=BOXES[:1], labels=LABELS
        ),
        cwd=tmp_path,
        env=env,
    )
    results = json.loads(result.stdout.strip().splitlines()[-1])
    _check(results, _expected(model, tiny_tokenizer, _image(), BOXES[:1], LABELS), BOXES[:1], LABELS, top_k=2)


def test_pipeline_in_process_batches_formats_and_options(tiny_tokenizer) -> None:
    model = tiny_harmoclip_model(seed=8)
    classifier = pipeline(REGION_CLASSIFICATION_TASK, model=model, processor=tiny_processor(tiny_tokenizer), device=-1)
    assert isinstance(classifier, RegionClassificationPipeline) and classifier.processor.region_mode
    other = Image.new("RGB", (40, 80), (200, 200, 30))
    templates = ("a photo of a {}.", "a sketch of the {}.")
    both = classifier(
        [{"image": _image(), "boxes": BOXES[:2]}, {"image": other, "boxes": [[0, 10, 40, 50]]}],
        candidate_labels=LABELS,
        templates=templates,
        top_k=None,
    )
    _check(
        both[0], _expected(model, tiny_tokenizer, _image(), BOXES[:2], LABELS, templates), BOXES[:2], LABELS, top_k=4
    )
    _check(
        both[1],
        _expected(model, tiny_tokenizer, other, [[0, 10, 40, 50]], LABELS, templates),
        [[0, 10, 40, 50]],
        LABELS,
        4,
    )
    # COCO boxes, the default top 5 of 4 labels, and a box outside the image dropped with a warning.
    xywh = [[5.0, 4.0, 35.0, 26.0]]
    with pytest.warns(UserWarning, match="boxes"):
        results = classifier(_image(), boxes=xywh + [[70, 50, 10, 10]], candidate_labels=LABELS, box_format="xywh")
    _check(results, _expected(model, tiny_tokenizer, _image(), BOXES[:1], LABELS), BOXES[:1], LABELS, top_k=4)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (dict(boxes=BOXES), ValueError, "needs `candidate_labels`"),
        (dict(boxes=[], candidate_labels=LABELS), ValueError, r"`boxes` must hold at least one \[x1, y1, x2, y2\] box"),
        (
            dict(boxes=BOXES, candidate_labels="dog"),
            TypeError,
            "`candidate_labels` must be a non-empty list of strings",
        ),
        (
            dict(boxes=BOXES, candidate_labels=LABELS, templates=["a photo"]),
            ValueError,
            r"`templates`\[0\] must contain",
        ),
        (dict(boxes=[[5, 4, 2, 30]], candidate_labels=LABELS), ValueError, r"boxes"),
        (
            dict(boxes=BOXES, candidate_labels=LABELS, top_k=0),
            ValueError,
            "`top_k` must be a positive int or None, got 0",
        ),
    ],
)
def test_pipeline_bad_input_names_the_argument(tiny_tokenizer, call, error, message) -> None:
    classifier = RegionClassificationPipeline(
        model=tiny_harmoclip_model(), processor=tiny_processor(tiny_tokenizer), device=-1
    )
    with warnings.catch_warnings(), pytest.raises(error, match=message):
        warnings.simplefilter("ignore")
        classifier(_image(), **call)


def test_label_embeddings_scoring_and_dense_similarity_follow_the_definitions(tiny_tokenizer) -> None:
    model = tiny_harmoclip_model(seed=9)
    processor = tiny_processor(tiny_tokenizer)
    embeds = label_embeddings(model, tiny_tokenizer, LABELS, batch_size=3)  # batches cut through a label's prompts
    reference = reference_label_embeds(model, tiny_tokenizer, LABELS, DEFAULT_TEMPLATES)
    assert embeds.shape == (4, 16) and embeds.dtype == torch.float32
    torch.testing.assert_close(embeds.double(), reference, atol=1e-5, rtol=0)

    regions = F.normalize(torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    probabilities = label_probabilities(regions, embeds, 20.0)
    manual = torch.exp(20.0 * regions @ embeds.t())
    torch.testing.assert_close(probabilities, manual / manual.sum(-1, keepdim=True))
    with pytest.raises(ValueError, match=r"`label_embeds` must have shape \(L, 16\)"):
        label_probabilities(regions, embeds[:, :8], 20.0)

    maps = dense_similarity(model, processor, _image(), ["dog", "tree"])
    with torch.no_grad():
        dense = F.normalize(
            value_path_dense(model, processor.as_region_mode()(images=_image())["pixel_values"])[0], dim=0
        )
    expected = torch.einsum("dhw,ld->lhw", dense.double(), reference[[0, 3]])
    assert maps.shape == (2, 4, 4)
    torch.testing.assert_close(maps.double(), expected, atol=1e-5, rtol=0)
    # Label embeddings computed once for many images give the same maps; a wrong shape is named.
    again = dense_similarity(model, processor, _image(), ["dog", "tree"], label_embeds=embeds[[0, 3]])
    torch.testing.assert_close(again, maps, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"`label_embeds` must have shape \(2, 16\)"):
        dense_similarity(model, processor, _image(), ["dog", "tree"], label_embeds=embeds)

    # Per-patch probabilities: the region scoring (softmax at the model's temperature over the labels) at each patch.
    probabilities = dense_probabilities(model, processor, _image(), ["dog", "tree"])
    scale = model.logit_scale.exp().item()
    manual = torch.exp(scale * expected)
    torch.testing.assert_close(probabilities.double(), manual / manual.sum(0, keepdim=True), atol=1e-5, rtol=0)
    torch.testing.assert_close(probabilities.sum(0), torch.ones(4, 4))


SEVEN_LABELS = ["dog", "red car", "bicycle", "tree", "house", "blue boat", "cat"]


def test_the_top_five_labels_by_default(tiny_tokenizer) -> None:
    model = tiny_harmoclip_model(seed=10)
    classifier = RegionClassificationPipeline(model=model, processor=tiny_processor(tiny_tokenizer), device=-1)
    results = classifier(_image(), boxes=BOXES[:2], candidate_labels=SEVEN_LABELS)
    assert [len(result["labels"]) for result in results] == [5, 5]
    _check(results, _expected(model, tiny_tokenizer, _image(), BOXES[:2], SEVEN_LABELS), BOXES[:2], SEVEN_LABELS, 5)


def test_given_label_embeddings_are_used_without_the_text_tower(tiny_tokenizer) -> None:
    model = tiny_harmoclip_model(seed=11)
    classifier = RegionClassificationPipeline(model=model, processor=tiny_processor(tiny_tokenizer), device=-1)
    with torch.no_grad():
        embeds = label_embeddings(model, tiny_tokenizer, SEVEN_LABELS)
    text_passes = text_tower_calls(model)
    results = classifier(_image(), boxes=BOXES[:2], candidate_labels=SEVEN_LABELS, label_embeds=embeds, top_k=None)
    assert text_passes[0] == 0
    _check(results, _expected(model, tiny_tokenizer, _image(), BOXES[:2], SEVEN_LABELS), BOXES[:2], SEVEN_LABELS, 7)
