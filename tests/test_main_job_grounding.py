"""The main job's grounding step: the saved folder loaded as the `phrase-grounding` pipeline (remote code), the
held-out image's phrases drawn in their boxes' colours with the caption (`grounding.png`), and grounding scored over
the held-out split, seen and held-out colour-shape combinations apart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from evaluation.visualize import BOX_COLOURS, draw_grounding
from scripts.run_default import DISPLAY_SCALE, ground_held_out_phrases, grounding_lines
from training.data.synthetic import SyntheticSettings, generate_synthetic_dataset
from training_runs import tiny_model_folder


def test_grounding_png_has_each_phrase_in_its_colour(tmp_path: Path) -> None:
    image = Image.new("RGB", (120, 90), (128, 128, 128))
    caption = "a small red circle and a big blue square"
    grounded = [
        {
            "phrase": "small red circle",
            "span": [2, 18],
            "score": 0.9,
            "box": {"xmin": 5, "ymin": 20, "xmax": 40, "ymax": 60},
        },
        {
            "phrase": "big blue square",
            "span": [25, 40],
            "score": 0.8,
            "box": {"xmin": 60, "ymin": 10, "xmax": 110, "ymax": 80},
        },
    ]
    picture = draw_grounding(image, caption, grounded, tmp_path / "grounding.png", scale=1.0)
    saved = np.asarray(Image.open(tmp_path / "grounding.png").convert("RGB"))
    assert saved.shape[0] > 90 and saved.shape[1] == 120 and picture.size == (120, saved.shape[0])
    for index, item in enumerate(grounded):  # each box's outline (its left edge, mid-height) in its colour
        box = item["box"]
        assert tuple(saved[(box["ymin"] + box["ymax"]) // 2, box["xmin"]]) == BOX_COLOURS[index]
    strip = saved[90:].reshape(-1, 3).astype(float)

    def nearest(colour) -> float:  # text is anti-aliased: the strip's pixel closest to `colour`
        return float(np.abs(strip - np.asarray(colour, dtype=float)).sum(axis=1).min())

    assert nearest(BOX_COLOURS[0]) < 30 and nearest(BOX_COLOURS[1]) < 30 and nearest((0, 0, 0)) < 30
    assert nearest(BOX_COLOURS[2]) > 60  # a third phrase's colour is not there


def test_the_main_jobs_grounding_step(tmp_path: Path) -> None:
    data_dir = generate_synthetic_dataset(
        tmp_path / "shapes", SyntheticSettings(num_train=4, num_val=6, seed=1, image_size=32, min_shapes=2, held_out=2)
    )
    model_dir = tiny_model_folder(tmp_path / "model")
    demo = ground_held_out_phrases(model_dir, data_dir, tmp_path)
    record = json.loads((data_dir / "val.jsonl").read_text().splitlines()[0])
    assert [item["phrase"] for item in demo["grounded"]] == [region["phrase"] for region in record["regions"]]
    assert all(0 <= item["box_index"] < len(record["regions"]) for item in demo["grounded"])
    with Image.open(tmp_path / "grounding.png") as picture:
        assert picture.width == 32 * DISPLAY_SCALE and picture.height > 32 * DISPLAY_SCALE
    # Every phrase of the held-out split is asked once; held-out combinations apart (held_out.json).
    held = set(json.loads((data_dir / "held_out.json").read_text()))
    records = [json.loads(line) for line in (data_dir / "val.jsonl").read_text().splitlines()]
    labels = [region["label"] for record in records for region in record["regions"]]
    figures = demo["evaluation"]
    assert figures["all"]["phrases"] == len(labels)
    assert figures["held_out"]["phrases"] == sum(label in held for label in labels)
    assert figures["seen"]["phrases"] == sum(label not in held for label in labels)
    lines = grounding_lines(figures)
    assert lines[0].startswith("held-out phrase grounding, all phrases: ")
    assert f"({len(labels)} phrases)" in lines[0]
