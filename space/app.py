"""HarmoCLIP demo: find objects by name, classify boxes of an image among free-text labels, rank the labels for the
whole image, see where a label matches in the dense features, and ground the phrases of a caption in the image.

The model comes from `HARMOCLIP_MODEL` (a Hub id or a local folder), loaded with `trust_remote_code=True`; without it,
from the folder the repository's tiny training run writes (`outputs/synthetic_tiny/model`) when this file sits in the
repository, else from the first model named in this Space's README metadata. Run locally with
`bash scripts/run_space.sh` from the repository root, or `python space/app.py`; `GRADIO_SERVER_NAME` and
`GRADIO_SERVER_PORT` choose the address.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
from grounding_demo import GROUNDING_BOX_SOURCES, GROUNDING_HEADERS, PROPOSED_BOXES, GroundingDemo
from huggingface_hub import metadata_load
from region_demo import BOX_SOURCES, FOUND_OBJECTS, GRID_BOXES, TABLE_HEADERS, TYPED_BOXES, DemoInputError, RegionDemo
from transformers import pipeline

logger = logging.getLogger("harmoclip.space")

SPACE_DIR = Path(__file__).resolve().parent
# What `python training/train.py --config configs/synthetic_tiny.yaml` writes, when the Space runs from the repository.
REPOSITORY_MODEL = SPACE_DIR.parent / "outputs" / "synthetic_tiny" / "model"
EXAMPLE_LABELS = "red square, white cross, green circle, white circle, blue triangle, yellow cross"
# One held-out image of the default model's shapes per mode (256 px copies of 64 px images), with its inputs:
# image, labels, typed boxes, box source, grid cells, heatmap label, labels per box.
EXAMPLES = [
    [
        str(SPACE_DIR / "examples" / "held_out_0.png"),
        EXAMPLE_LABELS,
        "",
        FOUND_OBJECTS,
        3,
        "",
        3,
    ],
    [
        str(SPACE_DIR / "examples" / "held_out_0.png"),
        EXAMPLE_LABELS,
        "24, 44, 76, 96\n8, 148, 60, 200\n148, 48, 216, 116",
        TYPED_BOXES,
        3,
        "red square",
        3,
    ],
    [
        str(SPACE_DIR / "examples" / "held_out_1.png"),
        "yellow square, yellow circle, red circle, blue circle, green cross",
        "",
        GRID_BOXES,
        2,
        "",
        3,
    ],
]

# The grounding mode's examples: image, caption, phrases (blank: the caption's noun chunks), typed boxes, box source.
GROUNDING_EXAMPLES = [
    [
        str(SPACE_DIR / "examples" / "held_out_0.png"),
        "a big red square, a small white cross, a big white circle and a big green circle",
        "red square, white cross, white circle, green circle",
        "",
        PROPOSED_BOXES,
    ],
    [
        str(SPACE_DIR / "examples" / "held_out_0.png"),
        "a big red square, a small white cross, a big white circle and a big green circle",
        "red square, white cross, white circle, green circle",
        "24, 44, 76, 96\n8, 148, 60, 200\n148, 48, 216, 116\n144, 184, 212, 252",
        TYPED_BOXES,
    ],
]
GROUNDING_INTRO = """
## Ground the phrases of a caption

Which region does each phrase name? Type a caption and, optionally, the phrases to ground (comma-separated, each
found in the caption; blank: the caption's noun chunks, when the Space has spaCy). Each phrase is embedded in the
caption's own token space (what HarmoCLIP's lexeme-region term trains) and given the box whose region embedding is
closest: among your typed boxes, or among the model's own proposals (drawn from each phrase's map).
"""

INTRO = """
# HarmoCLIP: regions and labels

Upload an image (or click an example below), give candidate labels, and choose boxes. Each box is classified among the labels from its
**region embedding** (one pass of the image encoder, RoIAlign over the dense patch features); the labels are also
ranked for the **whole image** (CLIP's zero-shot classification), and the **heatmap** shows, at every patch, the
probability of one label among your labels (bright: this label rather than another). The image is resized to a square without cropping, so the model sees all of it.

Boxes:
- **Typed boxes**: one per line, `x1, y1, x2, y2` in the image's pixels (origin at the top left).
- **Grid**: the image cut into N x N equal cells.
- **Find objects (labels only)**: no boxes needed: the model's `zero-shot-object-detection` pipeline proposes boxes
  from its own label maps (connected regions of each label's probability, plus windows), scores each by its region
  embedding, keeps the best per object (NMS) and those scoring 0.3 or more (at most 8); they are then classified.
"""


def default_model_source() -> str:
    """`HARMOCLIP_MODEL`, else the repository's trained tiny model if present, else the README's first model."""
    if os.environ.get("HARMOCLIP_MODEL"):
        return os.environ["HARMOCLIP_MODEL"]
    if REPOSITORY_MODEL.is_dir():
        return str(REPOSITORY_MODEL)
    models = metadata_load(SPACE_DIR / "README.md").get("models") or []
    if not models:
        raise RuntimeError("Set HARMOCLIP_MODEL to a Hub id or a local folder with a HarmoCLIP model")
    return models[0]


def load_demo(source: str) -> RegionDemo:
    """The model's `region-classification` and `zero-shot-object-detection` pipelines (its remote code; region
    preset: square resize, no crop) from a Hub id or a local folder."""
    return RegionDemo(
        pipeline("region-classification", model=source, trust_remote_code=True),
        pipeline("zero-shot-object-detection", model=source, trust_remote_code=True),
    )


def load_grounding_demo(source: str) -> GroundingDemo:
    """The model's `phrase-grounding` pipeline (its remote code) from a Hub id or a local folder."""
    return GroundingDemo(pipeline("phrase-grounding", model=source, trust_remote_code=True))


def grounding_outputs(
    grounding: GroundingDemo, image: Any, caption: str, phrases_text: str, boxes_text: str, box_source: str
) -> tuple[Any, ...]:
    """The grounding button's handler: (picture, table, status). Never raises, as `page_outputs`."""
    try:
        result = grounding.run(image, caption, phrases_text, boxes_text, box_source)
    except DemoInputError as error:
        return None, {"headers": GROUNDING_HEADERS, "data": []}, f"**Please check the input:** {error}"
    except Exception as error:  # the page shows a sentence, the log keeps the traceback
        logger.exception("the grounding demo failed")
        return (
            None,
            {"headers": GROUNDING_HEADERS, "data": []},
            f"**Something went wrong:** {type(error).__name__}: {error}",
        )
    status = f"Grounded {len(result.table)} phrase(s) in {box_source.lower()}."
    return result.grounded_image, {"headers": GROUNDING_HEADERS, "data": result.table}, status


def empty_outputs(message: str) -> tuple[Any, ...]:
    """Page outputs cleared, with `message` in the status line."""
    return None, {"headers": TABLE_HEADERS, "data": []}, None, None, message


def page_outputs(
    demo: RegionDemo,
    image: Any,
    labels_text: str,
    boxes_text: str,
    box_source: str,
    grid_cells: float,
    heatmap_label: str,
    top_k: float,
) -> tuple[Any, ...]:
    """The button's handler: (labelled image, table, ranking, heatmap, status). Never raises: problems with the
    input are shown as a message in the status line, anything else as a short error (details in the server log)."""
    try:
        result = demo.run(image, labels_text, boxes_text, box_source, int(grid_cells), heatmap_label, int(top_k))
    except DemoInputError as error:
        return empty_outputs(f"**Please check the input:** {error}")
    except Exception as error:  # the page shows a sentence, the log keeps the traceback
        logger.exception("the demo failed")
        return empty_outputs(f"**Something went wrong:** {type(error).__name__}: {error}")
    status = (
        f"Classified {len(result.boxes)} box(es) ({box_source.lower()}) among {len(result.ranking)} label(s). "
        f"Heatmap: probability of “{result.heatmap_label}” among the labels."
    )
    return (
        result.labelled_image,
        {"headers": TABLE_HEADERS, "data": result.table},
        result.ranking,
        result.heatmap,
        status,
    )


def build_app(demo: RegionDemo, model_source: str, grounding: GroundingDemo | None = None) -> gr.Blocks:
    """The page: inputs on the left, results on the right; the grounding mode below, when `grounding` is given."""
    with gr.Blocks(title="HarmoCLIP regions", analytics_enabled=False) as app:
        gr.Markdown(INTRO)
        gr.Markdown(f"Model: `{model_source}`")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", label="Image", elem_id="image-input")
                labels = gr.Textbox(
                    label="Candidate labels (one per line or comma-separated)", lines=3, elem_id="labels"
                )
                box_source = gr.Radio(list(BOX_SOURCES), value=TYPED_BOXES, label="Boxes", elem_id="box-source")
                boxes = gr.Textbox(
                    label="Typed boxes: x1, y1, x2, y2 per line (image pixels)",
                    info=f"Used when “{TYPED_BOXES}” is chosen.",
                    lines=4,
                    elem_id="boxes",
                )
                grid_cells = gr.Slider(1, 6, value=3, step=1, label=f"{GRID_BOXES}: cells per side")
                heatmap_label = gr.Textbox(
                    label="Heatmap label (blank: the best label for the whole image)", elem_id="heatmap-label"
                )
                top_k = gr.Slider(1, 5, value=3, step=1, label="Labels per box")
                run = gr.Button("Classify", variant="primary", elem_id="run")
            with gr.Column():
                status = gr.Markdown(elem_id="status")
                labelled = gr.Image(
                    type="pil", label="Boxes with their best label", elem_id="labelled-image", format="png"
                )
                table = gr.Dataframe(
                    headers=TABLE_HEADERS,
                    label="Top labels per box",
                    elem_id="results-table",
                    interactive=False,
                    wrap=True,
                    column_widths=["28%", "44%", "28%"],
                )
                ranking = gr.Label(label="Labels for the whole image", elem_id="ranking")
                heatmap = gr.Image(
                    type="pil", label="Heatmap: the label's probability at each patch", elem_id="heatmap", format="png"
                )
        connect_mode(
            run,
            lambda *values: page_outputs(demo, *values),
            inputs=[image, labels, boxes, box_source, grid_cells, heatmap_label, top_k],
            outputs=[labelled, table, ranking, heatmap, status],
            examples=EXAMPLES,
            examples_label="Examples: held-out images, one per mode (click to run)",
            examples_id="examples",
        )
        if grounding is not None:
            add_grounding_mode(grounding)
    return app


def add_grounding_mode(grounding: GroundingDemo) -> None:
    """The grounding section of the page (inside the `gr.Blocks` being built)."""
    gr.Markdown(GROUNDING_INTRO)
    with gr.Row():
        with gr.Column():
            image = gr.Image(type="pil", label="Image", elem_id="grounding-image-input")
            caption = gr.Textbox(label="Caption", lines=2, elem_id="grounding-caption")
            phrases = gr.Textbox(
                label="Phrases to ground (comma-separated; blank: the caption's noun chunks)",
                elem_id="grounding-phrases",
            )
            box_source = gr.Radio(
                list(GROUNDING_BOX_SOURCES),
                value=PROPOSED_BOXES,
                label="Candidate boxes",
                elem_id="grounding-box-source",
            )
            boxes = gr.Textbox(
                label="Typed boxes: x1, y1, x2, y2 per line (image pixels)",
                info=f"Used when “{TYPED_BOXES}” is chosen.",
                lines=4,
                elem_id="grounding-boxes",
            )
            run = gr.Button("Ground", variant="primary", elem_id="grounding-run")
        with gr.Column():
            status = gr.Markdown(elem_id="grounding-status")
            grounded = gr.Image(type="pil", label="Each phrase's box", elem_id="grounding-image", format="png")
            table = gr.Dataframe(
                headers=GROUNDING_HEADERS, label="Phrases", elem_id="grounding-table", interactive=False, wrap=True
            )
    connect_mode(
        run,
        lambda *values: grounding_outputs(grounding, *values),
        inputs=[image, caption, phrases, boxes, box_source],
        outputs=[grounded, table, status],
        examples=GROUNDING_EXAMPLES,
        examples_label="Grounding examples: a held-out image, proposals or typed boxes (click to run)",
        examples_id="grounding-examples",
    )


def connect_mode(
    run: Any,
    fn: Callable[..., Any],
    inputs: list[Any],
    outputs: list[Any],
    examples: list[list[Any]],
    examples_label: str,
    examples_id: str,
) -> None:
    """A mode's button and its clickable examples, both calling `fn(*inputs) -> outputs` (examples run on click and
    are not cached)."""
    run.click(fn, inputs=inputs, outputs=outputs)
    gr.Examples(
        examples=examples,
        inputs=inputs,
        outputs=outputs,
        fn=fn,
        run_on_click=True,
        cache_examples=False,
        label=examples_label,
        elem_id=examples_id,
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    source = default_model_source()
    logger.info("loading the model from %s", source)
    build_app(load_demo(source), source, load_grounding_demo(source)).queue().launch()


if __name__ == "__main__":
    main()
