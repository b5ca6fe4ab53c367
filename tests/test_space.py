"""The Space's functions, called directly: input parsing, box proposals, pictures, the model calls (against
independent references through the model's CLIP forward and dense features), the page handler's messages for bad
input, and the Space folder's packaging (requirements, metadata, no import of the project)."""

from __future__ import annotations

import ast
import shutil
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from conftest import run_isolated
from modeling_harmoclip.pipeline_harmoclip import DEFAULT_TEMPLATES
from region_reference import reference_label_embeds, reference_probabilities, reference_regions, value_path_dense
from space_support import (
    BOXES,
    BOXES_TEXT,
    IMAGE_SIZE,
    LABELS,
    LABELS_TEXT,
    SPACE_DIR,
    save_tiny_model_folder,
    scene_image,
    space_module,
)

region_demo = space_module("region_demo")
box_proposals = space_module("box_proposals")
demo_drawing = space_module("demo_drawing")
DemoInputError = region_demo.DemoInputError
WIDTH, HEIGHT = IMAGE_SIZE


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer):
    return save_tiny_model_folder(tmp_path_factory.mktemp("space_model"), tiny_tokenizer)


@pytest.fixture(scope="module")
def demo(model_dir):
    from transformers import pipeline

    return region_demo.RegionDemo(
        pipeline("region-classification", model=str(model_dir), trust_remote_code=True),
        pipeline("zero-shot-object-detection", model=str(model_dir), trust_remote_code=True),
    )


def _reference_labels(demo, labels: list[str]) -> torch.Tensor:
    """(L, D) label embeddings from the CLIP forward's `text_embeds`, ensembled by hand over the default templates."""
    return reference_label_embeds(demo.model, demo.processor.tokenizer, labels, DEFAULT_TEMPLATES)


# ---------------------------------------------------------------------------------------------- parsing


def test_parse_boxes_reads_commas_spaces_brackets_and_skips_blank_lines():
    text = "  8, 8, 40, 40\n\n[50 20 90 60]\n(0.5,1.5, 2.5 ,3.5)\n   \n"
    assert region_demo.parse_boxes(text, WIDTH, HEIGHT) == [[8, 8, 40, 40], [50, 20, 90, 60], [0.5, 1.5, 2.5, 3.5]]
    assert region_demo.parse_boxes(f"0, 0, {WIDTH}, {HEIGHT}", WIDTH, HEIGHT) == [[0, 0, WIDTH, HEIGHT]]
    assert region_demo.parse_boxes("", WIDTH, HEIGHT) == [] and region_demo.parse_boxes(None, WIDTH, HEIGHT) == []


@pytest.mark.parametrize(
    "text, message",
    [
        ("8, 8, 40", "Box line 1 ('8, 8, 40'): expected four numbers `x1, y1, x2, y2`, got 3."),
        ("1, 2, x, 4", "Box line 1 ('1, 2, x, 4'): expected four numbers"),
        ("1, 2, 3, 4, 5", "got 5"),
        ("nan, 0, 4, 4", "Box line 1 ('nan, 0, 4, 4'): expected four numbers"),
        ("40, 8, 8, 40", "Box line 1 ('40, 8, 8, 40'): needs x1 < x2 and y1 < y2."),
        ("8, 8, 8, 40", "needs x1 < x2 and y1 < y2"),
        (
            "8, 8, 40, 40\n\n0, 0, 97, 10",
            "Box line 3 ('0, 0, 97, 10') reaches outside the image, which is 96 x 64 pixels",
        ),
        ("-1, 0, 10, 10", "reaches outside the image"),
        ("0, 0, 10, 65", "reaches outside the image"),
    ],
)
def test_parse_boxes_explains_bad_lines(text, message):
    with pytest.raises(DemoInputError) as error:
        region_demo.parse_boxes(text, WIDTH, HEIGHT)
    assert message in str(error.value)


def test_parse_boxes_limits_the_count():
    with pytest.raises(DemoInputError, match="Too many boxes: 65"):
        region_demo.parse_boxes("\n".join(["0, 0, 5, 5"] * 65), WIDTH, HEIGHT)


def test_parse_labels_splits_on_commas_and_lines_and_drops_repeats():
    assert region_demo.parse_labels(LABELS_TEXT + "\n red square ,, \n") == LABELS
    for empty in ("", " , \n ,", None):
        with pytest.raises(DemoInputError, match="Enter at least one candidate label"):
            region_demo.parse_labels(empty)
    with pytest.raises(DemoInputError, match="Too many labels: 101"):
        region_demo.parse_labels(",".join(f"label {index}" for index in range(101)))


# ---------------------------------------------------------------------------------------------- proposals


def test_grid_boxes_tile_the_image_row_by_row():
    assert box_proposals.grid_boxes(100, 60, 2) == [
        [0, 0, 50, 30],
        [50, 0, 100, 30],
        [0, 30, 50, 60],
        [50, 30, 100, 60],
    ]
    boxes = np.array(box_proposals.grid_boxes(97, 61, 3))
    assert len(boxes) == 9
    assert np.isclose(((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sum(), 97 * 61)
    with pytest.raises(ValueError, match="`cells` must be a positive int"):
        box_proposals.grid_boxes(10, 10, 0)


# ---------------------------------------------------------------------------------------------- pictures


def test_label_boxes_outlines_each_box_in_its_colour_on_a_copy():
    image = Image.new("RGB", (120, 90), (0, 0, 0))
    drawn = demo_drawing.label_boxes(image, [[10, 40, 60, 80], [70, 30, 110, 85]], ["dog 0.90", "cat 0.50"])
    assert drawn.size == image.size and image.getpixel((10, 60)) == (0, 0, 0)
    assert drawn.getpixel((10, 60)) == demo_drawing.PALETTE[0]  # left edge of box 0
    assert drawn.getpixel((110, 60)) == demo_drawing.PALETTE[1]  # right edge of box 1
    assert drawn.getpixel((35, 60)) == (0, 0, 0)  # inside box 0, below its tag
    tag = np.asarray(drawn)[40 - 8 : 40, 12:30]  # the tag strip just above box 0
    assert (tag == demo_drawing.PALETTE[0]).all(axis=-1).mean() > 0.5
    with pytest.raises(ValueError, match="one entry per box"):
        demo_drawing.label_boxes(image, [[0, 0, 5, 5]], [])


def test_overlay_heatmap_maps_extremes_to_the_colour_map_ends():
    image = Image.new("RGB", (40, 20), (255, 255, 255))
    similarity = np.array([[0.0, 1.0, 2.0, 3.0]])
    full = np.asarray(demo_drawing.overlay_heatmap(image, similarity, opacity=1.0))
    assert full.shape == (20, 40, 3)
    low, high = (np.round(np.array(colormaps["inferno"](value)[:3]) * 255) for value in (0.0, 1.0))
    np.testing.assert_allclose(full[10, 0], low, atol=1)
    np.testing.assert_allclose(full[10, 39], high, atol=1)
    assert (np.asarray(demo_drawing.overlay_heatmap(image, similarity, opacity=0.0)) == 255).all()
    flat = np.asarray(demo_drawing.overlay_heatmap(image, np.ones((2, 2)), opacity=1.0))
    np.testing.assert_allclose(flat[0, 0], low, atol=1)
    with pytest.raises(ValueError, match=r"\(h, w\) array"):
        demo_drawing.overlay_heatmap(image, np.ones(3))


# ---------------------------------------------------------------------------------------------- the model calls


def test_typed_boxes_are_classified_as_the_definition_says(demo):
    """Against region classification computed by hand: the dense map layer by layer, the loop-based RoIAlign, and
    label embeddings from the CLIP forward."""
    result = demo.run(scene_image(), LABELS_TEXT, BOXES_TEXT, region_demo.TYPED_BOXES, top_k=2)
    assert result.boxes == BOXES
    pixels = demo.processor(images=scene_image(), return_tensors="pt")["pixel_values"]  # the 32 x 32 square
    normalised = torch.tensor(BOXES, dtype=torch.float64) / torch.tensor([WIDTH, HEIGHT, WIDTH, HEIGHT])
    expected = reference_probabilities(
        demo.model, reference_regions(demo.model, pixels, normalised), _reference_labels(demo, LABELS)
    )
    for box, row in enumerate(result.table):
        best = expected[box].argsort(descending=True)[:2].tolist()
        assert row[1] == ", ".join(LABELS[index] for index in best)
        np.testing.assert_allclose(
            [float(score) for score in row[2].split(", ")], expected[box, best].numpy(), atol=1e-3
        )
    assert result.table[0][0] == "8, 8, 40, 40" and result.table[1][0] == "50, 20, 90, 60"
    assert result.labelled_image.size == result.heatmap.size == IMAGE_SIZE
    # Each box is outlined in its colour: the left edge of box 1 (x = 50) takes the palette's second colour.
    assert result.labelled_image.getpixel((50, 50)) == demo_drawing.PALETTE[1]


def test_global_ranking_matches_the_clip_forward(demo):
    result = demo.run(scene_image(), LABELS_TEXT, BOXES_TEXT)
    pixels = demo.processor(images=scene_image(), return_tensors="pt")["pixel_values"]
    tokens = demo.processor.tokenizer(
        [template.format(LABELS[0]) for template in DEFAULT_TEMPLATES], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        image_embed = demo.model(input_ids=tokens["input_ids"], pixel_values=pixels).image_embeds[0].double()
    probabilities = (
        float(demo.model.logit_scale.detach().exp()) * _reference_labels(demo, LABELS) @ image_embed
    ).softmax(dim=-1)
    assert list(result.ranking) == [LABELS[i] for i in probabilities.argsort(descending=True).tolist()]
    np.testing.assert_allclose([result.ranking[label] for label in LABELS], probabilities.numpy(), atol=1e-5)


def test_heatmap_is_the_chosen_labels_probability_among_the_labels(demo):
    image = scene_image()
    default = demo.run(image, LABELS_TEXT, BOXES_TEXT)
    assert default.heatmap_label == next(iter(default.ranking))  # blank: the best label for the whole image
    chosen = demo.run(image, LABELS_TEXT, BOXES_TEXT, heatmap_label="  green grass ")
    assert chosen.heatmap_label == "green grass"

    pixel_values = demo.processor(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        dense = torch.nn.functional.normalize(value_path_dense(demo.model, pixel_values)[0], dim=0).double()
    expected = torch.einsum("dhw,d->hw", dense, _reference_labels(demo, ["green grass"])[0]).numpy()
    assert expected.shape == (4, 4)
    np.testing.assert_allclose(demo.similarity_map(image, "green grass"), expected, atol=1e-5)
    # The heatmap: the label's probability among the typed labels at every patch (softmax at the model's scale).
    labels = region_demo.parse_labels(LABELS_TEXT)
    logits = demo.model.logit_scale.exp().item() * torch.einsum("dhw,ld->lhw", dense, _reference_labels(demo, labels))
    expected_probability = logits.softmax(0)[labels.index("green grass")].numpy()
    np.testing.assert_allclose(demo.probability_map(image, "green grass", labels), expected_probability, atol=1e-5)
    np.testing.assert_array_equal(
        np.asarray(chosen.heatmap),
        np.asarray(demo_drawing.overlay_heatmap(image, demo.probability_map(image, "green grass", labels))),
    )
    assert demo.probability_map(image, "a cat", labels).shape == (4, 4)  # a label outside the list is added


def test_automatic_boxes_come_from_the_grid_and_the_detection_pipeline(demo):
    image = scene_image()
    grid = demo.run(image, LABELS_TEXT, "ignored, not a box", region_demo.GRID_BOXES, grid_cells=2)
    assert grid.boxes == box_proposals.grid_boxes(WIDTH, HEIGHT, 2)
    assert len(grid.table) == 4 and all(row[1].split(", ")[0] in LABELS for row in grid.table)

    demo.find_threshold = 0.0  # the tiny random model scores nothing high: keep its best 8
    try:
        found = demo.run(np.asarray(image), LABELS_TEXT, "", region_demo.FOUND_OBJECTS)  # arrays are accepted too
    finally:
        demo.find_threshold = region_demo.FIND_THRESHOLD
    expected = demo.detector(image, candidate_labels=LABELS, threshold=0.0, top_k=8)
    assert found.boxes == [[item["box"][key] for key in ("xmin", "ymin", "xmax", "ymax")] for item in expected]
    assert len(found.boxes) == 8
    assert all(0 <= x1 < x2 <= WIDTH and 0 <= y1 < y2 <= HEIGHT for x1, y1, x2, y2 in found.boxes)
    with pytest.raises(DemoInputError, match="No object scores 1.0 or more among these labels"):
        demo.find_threshold = 1.0
        try:
            demo.run(image, LABELS_TEXT, "", region_demo.FOUND_OBJECTS)
        finally:
            demo.find_threshold = region_demo.FIND_THRESHOLD


def test_every_example_runs_in_one_click(app, demo):
    modes = [row[3] for row in app.EXAMPLES]
    assert set(modes) == set(region_demo.BOX_SOURCES)
    demo.find_threshold = 0.0
    try:
        for row in app.EXAMPLES:
            image = Image.open(row[0])
            labelled, table, ranking, heatmap, status = app.page_outputs(demo, image, *row[1:])
            assert status.startswith("Classified") and labelled.size == image.size and table["data"], status
    finally:
        demo.find_threshold = region_demo.FIND_THRESHOLD


@pytest.mark.parametrize(
    "image, labels, boxes, source, message",
    [
        (None, LABELS_TEXT, BOXES_TEXT, "Typed boxes", "Upload an image first."),
        ("scene", "  ", BOXES_TEXT, "Typed boxes", "Enter at least one candidate label"),
        ("scene", LABELS_TEXT, "8, 8, 40", "Typed boxes", "Box line 1 ('8, 8, 40'): expected four numbers"),
        ("scene", LABELS_TEXT, "0, 0, 100, 10", "Typed boxes", "reaches outside the image, which is 96 x 64 pixels"),
        ("scene", LABELS_TEXT, "\n", "Typed boxes", "Type at least one box"),
        ("scene", LABELS_TEXT, "", "Circles", "Unknown box source 'Circles'"),
    ],
)
def test_bad_input_raises_a_readable_demo_error(demo, image, labels, boxes, source, message):
    with pytest.raises(DemoInputError) as error:
        demo.run(scene_image() if image == "scene" else image, labels, boxes, source)
    assert message in str(error.value)


# ---------------------------------------------------------------------------------------------- the page


@pytest.fixture(scope="module")
def app():
    pytest.importorskip("gradio", reason="gradio is not installed (scripts/install_browser_test_deps.sh installs it)")
    return space_module("app")


def test_page_handler_shows_results_and_messages_instead_of_errors(app, demo):
    labelled, table, ranking, heatmap, status = app.page_outputs(
        demo, scene_image(), LABELS_TEXT, BOXES_TEXT, "Typed boxes", 3, "", 3
    )
    assert labelled.size == heatmap.size == IMAGE_SIZE
    assert table["headers"] == region_demo.TABLE_HEADERS and len(table["data"]) == 2
    assert sorted(ranking) == sorted(LABELS)
    assert status.startswith("Classified 2 box(es) (typed boxes) among 3 label(s).")

    for arguments, message in [
        ((None, LABELS_TEXT, BOXES_TEXT), "Upload an image first."),
        ((scene_image(), "", BOXES_TEXT), "Enter at least one candidate label"),
        ((scene_image(), LABELS_TEXT, "1, 2, 3"), "Box line 1 ('1, 2, 3')"),
        ((scene_image(), LABELS_TEXT, "0, 0, 10, 99"), "reaches outside the image"),
    ]:
        outputs = app.page_outputs(demo, *arguments, "Typed boxes", 3, "", 3)
        assert outputs[0] is None and outputs[2] is None and outputs[3] is None and outputs[1]["data"] == []
        assert outputs[4].startswith("**Please check the input:**") and message in outputs[4]


def test_page_handler_turns_unexpected_failures_into_one_line(app, demo, caplog):
    broken = region_demo.RegionDemo(SimpleNamespace(model=demo.model, processor=None))  # every model call fails
    outputs = app.page_outputs(broken, scene_image(), LABELS_TEXT, BOXES_TEXT, "Typed boxes", 3, "", 3)
    assert outputs[4].startswith("**Something went wrong:** TypeError:") and "\n" not in outputs[4]
    assert "Traceback" in caplog.text  # the details go to the server log


def test_model_source_and_loading(app, model_dir, tiny_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("HARMOCLIP_MODEL", str(model_dir))
    assert app.default_model_source() == str(model_dir)
    monkeypatch.delenv("HARMOCLIP_MODEL")
    monkeypatch.setattr(app, "REPOSITORY_MODEL", tmp_path / "absent")
    assert app.default_model_source() == "org/harmoclip-vitb16"  # the README's `models:`
    monkeypatch.setattr(app, "REPOSITORY_MODEL", model_dir)
    assert app.default_model_source() == str(model_dir)

    # A processor saved for CLIP's centre crop is loaded in region mode: the whole image is seen.
    from modeling_harmoclip.image_processing_harmoclip import clip_image_processor
    from modeling_harmoclip.processing_harmoclip import HarmoCLIPProcessor

    HarmoCLIPProcessor(clip_image_processor(32), tiny_tokenizer, region_mode=False).save_pretrained(tmp_path / "crop")
    shutil.copytree(
        model_dir, tmp_path / "crop", dirs_exist_ok=True, ignore=shutil.ignore_patterns("processor_config.json")
    )
    loaded = app.load_demo(str(tmp_path / "crop"))
    assert loaded.processor.region_mode is True and not loaded.processor.image_processor.do_center_crop
    assert type(loaded.model).__module__.startswith("transformers_modules")


# ---------------------------------------------------------------------------------------------- the Space folder

# Top-level import name -> the requirement that provides it.
DISTRIBUTIONS = {
    "PIL": "pillow",
    "numpy": "numpy",
    "torch": "torch",
    "transformers": "transformers",
    "gradio": "gradio",
    "matplotlib": "matplotlib",
    "huggingface_hub": "huggingface_hub",
}


def test_space_requirements_cover_its_imports_and_it_imports_nothing_of_the_project():
    requirements = {
        line.split("=")[0].split(">")[0].split("<")[0].strip().lower()
        for line in (SPACE_DIR / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    local = {path.stem for path in SPACE_DIR.glob("*.py")}
    for path in SPACE_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else ([node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            )
            for name in names:
                top = name.split(".")[0]
                if top in local or top in sys.stdlib_module_names:
                    continue
                assert top in DISTRIBUTIONS, (
                    f"{path.name} imports {top}, which is neither listed here nor a pip package"
                )
                assert DISTRIBUTIONS[top] in requirements, (
                    f"{path.name} imports {top}: add {DISTRIBUTIONS[top]} to requirements.txt"
                )


def test_space_readme_metadata():
    from huggingface_hub import metadata_load

    metadata = metadata_load(SPACE_DIR / "README.md")
    assert metadata["sdk"] == "gradio" and (SPACE_DIR / metadata["app_file"]).is_file()
    assert metadata["license"] == "apache-2.0" and metadata["models"] and metadata["title"] and metadata["emoji"]
    pins = [line for line in (SPACE_DIR / "requirements.txt").read_text().splitlines() if line.startswith("gradio")]
    assert pins == [f"gradio=={metadata['sdk_version']}"]
    gradio = pytest.importorskip("gradio")
    assert gradio.__version__.split(".")[0] == str(metadata["sdk_version"]).split(".")[0]


def test_space_runs_from_its_own_folder_without_the_project(app, model_dir, tmp_path):
    """As on the Hub: only the Space's files, pip packages, and the model folder with its remote code."""
    space_copy = shutil.copytree(SPACE_DIR, tmp_path / "space", ignore=shutil.ignore_patterns("__pycache__"))
    scene_image().save(tmp_path / "scene.png")
    result = run_isolated(
        f"""
import sys
sys.path.insert(0, {str(space_copy)!r})
from PIL import Image
import app
source = app.default_model_source()
assert source == {str(model_dir)!r}, source
demo = app.load_demo(source)
outputs = app.page_outputs(demo, Image.open({str(tmp_path / "scene.png")!r}), {LABELS_TEXT!r}, {BOXES_TEXT!r}, "Grid", 3, "", 3)
print(outputs[4])
grounding = app.load_grounding_demo(source)
print(app.grounding_outputs(grounding, Image.open({str(tmp_path / "scene.png")!r}), "a red square", "red square", "", app.PROPOSED_BOXES)[2])
""",
        cwd=tmp_path,
        env={"HARMOCLIP_MODEL": str(model_dir), "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    assert "Classified 9 box(es) (grid) among 3 label(s)" in result.stdout
    assert "Grounded 1 phrase(s) in the model's own proposals." in result.stdout


# ---------------------------------------------------------------------------------------------- grounding mode

grounding_demo = space_module("grounding_demo")
GROUNDING_CAPTION = "a red square and a blue circle on green grass"


@pytest.fixture(scope="module")
def grounding(model_dir):
    from transformers import pipeline

    return grounding_demo.GroundingDemo(pipeline("phrase-grounding", model=str(model_dir), trust_remote_code=True))


def test_grounding_typed_boxes_follow_the_definition(grounding):
    from region_reference import reference_phrases

    result = grounding.run(scene_image(), GROUNDING_CAPTION, "red square, blue circle", BOXES_TEXT, "Typed boxes")
    model, processor = grounding.grounder.model, grounding.grounder.processor
    pixels = processor(images=scene_image(), return_tensors="pt")["pixel_values"]
    regions = reference_regions(
        model, pixels, torch.tensor(BOXES, dtype=torch.float64) / torch.tensor([WIDTH, HEIGHT] * 2)
    )
    spans = [(2, 12), (19, 30)]
    phrases = reference_phrases(model, processor.tokenizer, GROUNDING_CAPTION, spans, "token")
    best = (phrases @ regions.t()).argmax(dim=-1).tolist()
    assert [row[0] for row in result.table] == ["red square", "blue circle"]
    assert [row[1] for row in result.table] == ["2-12", "19-30"]
    assert [row[2] for row in result.table] == [region_demo.format_box(BOXES[index]) for index in best]
    assert result.grounded_image.size == IMAGE_SIZE


def test_every_grounding_example_runs_in_one_click(app, grounding):
    sources = {row[4] for row in app.GROUNDING_EXAMPLES}
    assert sources == set(grounding_demo.GROUNDING_BOX_SOURCES)
    for row in app.GROUNDING_EXAMPLES:
        image = Image.open(row[0])
        picture, table, status = app.grounding_outputs(grounding, image, *row[1:])
        assert status.startswith("Grounded 4 phrase(s)"), status
        assert picture.size == image.size and [r[0] for r in table["data"]] == [
            "red square",
            "white cross",
            "white circle",
            "green circle",
        ]


@pytest.mark.parametrize(
    "image, caption, phrases, boxes, source, message",
    [
        (None, GROUNDING_CAPTION, "", "", "Typed boxes", "Upload an image first."),
        ("scene", "  ", "", "", "Typed boxes", "Type a caption"),
        ("scene", GROUNDING_CAPTION, "red square", "\n", "Typed boxes", "Type at least one box"),
        (
            "scene",
            GROUNDING_CAPTION,
            "a dog",
            BOXES_TEXT,
            "Typed boxes",
            "`phrases`[0] = 'a dog' is not in the caption",
        ),
        ("scene", GROUNDING_CAPTION, "", "", "Circles", "Unknown box source 'Circles'"),
    ],
)
def test_grounding_bad_input_is_a_readable_message(app, grounding, image, caption, phrases, boxes, source, message):
    picture, table, status = app.grounding_outputs(
        grounding, scene_image() if image == "scene" else image, caption, phrases, boxes, source
    )
    assert picture is None and table["data"] == []
    assert status.startswith("**Please check the input:**") and message in status


def test_the_page_has_the_grounding_mode(app, demo, grounding, model_dir):
    page = app.build_app(demo, str(model_dir), grounding)
    ids = {component.get("props", {}).get("elem_id") for component in page.config["components"]}
    assert {"grounding-run", "grounding-caption", "grounding-table", "grounding-examples"} <= ids
    plain = app.build_app(demo, str(model_dir))
    assert "grounding-run" not in {
        component.get("props", {}).get("elem_id") for component in plain.config["components"]
    }
