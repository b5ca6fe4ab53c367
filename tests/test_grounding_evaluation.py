"""`evaluation.evaluate --task grounding`: Flickr30k Entities and JSONL manifests (the synthetic split with its
held-out combinations) in their real formats, the phrases and boxes read as a hand reading of the files says, the
accuracies against grounding computed from the definitions (tests/region_reference.py) and against hand IoUs of the
pipeline's own answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import tiny_harmoclip_model, tiny_processor
from data_files import WEDDING, write_flickr
from evaluation.evaluate import main
from evaluation.grounding import (
    evaluate_grounding,
    read_flickr30k_entities,
    read_grounding_data,
    read_grounding_manifest,
)
from modeling_harmoclip.pipeline_harmoclip import PhraseGroundingPipeline
from region_reference import reference_phrases, reference_regions
from training_runs import tiny_model_folder


def flickr_split(tmp_path: Path) -> Path:
    (tmp_path / "flickr").mkdir()
    root = write_flickr(tmp_path / "flickr")
    (root / "test.txt").write_text("65567\n")
    return root / "test.txt"


def test_flickr30k_entities_phrases_and_boxes(tmp_path: Path) -> None:
    data = read_flickr30k_entities(flickr_split(tmp_path))
    (image,) = data.images
    assert image.path == tmp_path / "flickr" / "flickr30k-images" / "65567.jpg"
    # 1-based inclusive pixels -> continuous; the object without a box is left out.
    assert image.boxes == [[0, 0, 40, 80], [50, 10, 90, 80], [55, 40, 85, 80], [90, 0, 100, 20]]
    first, second = image.captions
    assert [first.text[a:b] for a, b in first.spans] == ["A bearded man", "a girl", "a red dress"]
    assert first.targets == [[0], [1], [2]]
    # "The couple" is both people's boxes (either is right); "a building" has no box, so it is not asked.
    assert [second.text[a:b] for a, b in second.spans] == ["The couple"] and second.targets == [[0, 1]]
    assert data.num_phrases == 4 and not data.has_held_out
    assert read_grounding_data(tmp_path / "flickr" / "test.txt").num_phrases == 4


def write_manifest(folder: Path) -> Path:
    """A COCO-style JSONL manifest with phrase-linked boxes and a held-out class, as the synthetic set writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), (120, 120, 120)).save(folder / "a.png")
    records = [
        {
            "image": "a.png",
            "caption": "a small red circle and a big blue square",
            "regions": [
                {"box": [2, 2, 20, 20], "phrase": "small red circle", "span": [2, 18], "label": "red circle"},
                {"box": [30, 10, 60, 44], "phrase": "big blue square", "span": [25, 40], "label": "blue square"},
                {"box": [0, 30, 10, 44], "phrase": None, "span": None, "label": "green ring"},
            ],
        },
        {"image": "a.png", "caption": ["two dogs", "some dogs"], "regions": [{"box": [1, 1, 9, 9], "phrase": "dogs"}]},
    ]
    (folder / "val.jsonl").write_text("\n".join(json.dumps(record) for record in records) + "\n")
    (folder / "held_out.json").write_text(json.dumps(["blue square"]))
    return folder / "val.jsonl"


def test_a_manifest_with_held_out_combinations(tmp_path: Path) -> None:
    data = read_grounding_manifest(write_manifest(tmp_path / "set"))
    first, second = data.images
    (caption,) = first.captions
    assert caption.spans == [(2, 18), (25, 40)] and caption.targets == [[0], [1]]
    assert caption.held_out == [False, True] and data.has_held_out
    assert [c.text for c in second.captions] == ["two dogs", "some dogs"]  # the phrase found in each caption
    assert [c.spans for c in second.captions] == [[(4, 8)], [(5, 9)]]
    (tmp_path / "set" / "held_out.json").write_text("[]")  # a set made with nothing held out: no groups
    assert not read_grounding_manifest(tmp_path / "set" / "val.jsonl").has_held_out
    with pytest.raises(ValueError, match=r"^`--data` '.*empty.jsonl' has no phrase linked to a box$"):
        (tmp_path / "empty.jsonl").write_text(json.dumps({"image": "a.png", "caption": "x", "regions": []}) + "\n")
        read_grounding_data(tmp_path / "empty.jsonl")


@pytest.mark.parametrize("mode", ["token", "alone"])
def test_accuracies_follow_the_definitions(tmp_path: Path, tiny_tokenizer, mode: str) -> None:
    model, processor = tiny_harmoclip_model(seed=21), tiny_processor(tiny_tokenizer, region_mode=True)
    path = write_manifest(tmp_path / "set")
    data = read_grounding_manifest(path)
    results = evaluate_grounding(model, processor, data, phrase_mode=mode)
    # Annotated boxes: each phrase's most similar box by the reference regions and phrases.
    hits = {"seen": 0, "held_out": 0}
    numbers = {"seen": 0, "held_out": 0}
    chance = {"seen": 0.0, "held_out": 0.0}
    pixels = processor(images=Image.open(tmp_path / "set" / "a.png"))["pixel_values"]
    grounder = PhraseGroundingPipeline(model=model, processor=processor)
    proposal_hits = {"seen": 0, "held_out": 0}
    for image in data.images:
        boxes = torch.tensor(image.boxes, dtype=torch.float64) / torch.tensor([64, 48, 64, 48])
        regions = reference_regions(model, pixels, boxes)
        for caption in image.captions:
            phrases = reference_phrases(model, tiny_tokenizer, caption.text, caption.spans, mode)
            best = (phrases @ regions.t()).argmax(dim=-1).tolist()
            answers = grounder(Image.open(image.path), caption=caption.text, phrase_spans=caption.spans)
            for index, (targets, held) in enumerate(zip(caption.targets, caption.held_out)):
                group = "held_out" if held else "seen"
                numbers[group] += 1
                hits[group] += best[index] in targets
                chance[group] += 1 / len(image.boxes)
                chosen = answers[index]["box"]
                proposal_hits[group] += any(
                    hand_iou([chosen["xmin"], chosen["ymin"], chosen["xmax"], chosen["ymax"]], image.boxes[t]) >= 0.5
                    for t in targets
                )
    for group in ("seen", "held_out"):
        assert results[group]["phrases"] == numbers[group]
        assert results[group]["accuracy_annotated"] == pytest.approx(100 * hits[group] / numbers[group])
        assert results[group]["chance_annotated"] == pytest.approx(100 * chance[group] / numbers[group])
        assert results[group]["accuracy_proposals_iou50"] == pytest.approx(100 * proposal_hits[group] / numbers[group])
    assert results["all"]["phrases"] == numbers["seen"] + numbers["held_out"] == 4


def hand_iou(first: list[float], second: list[float]) -> float:
    width = max(0.0, min(first[2], second[2]) - max(first[0], second[0]))
    height = max(0.0, min(first[3], second[3]) - max(first[1], second[1]))
    inter = width * height
    area = (first[2] - first[0]) * (first[3] - first[1]) + (second[2] - second[0]) * (second[3] - second[1])
    return inter / (area - inter)


def test_the_command_on_flickr30k_entities(tmp_path: Path, capsys) -> None:
    folder = tiny_model_folder(tmp_path / "model")
    out = tmp_path / "grounding.json"
    split = flickr_split(tmp_path)
    argv = ["--model", str(folder), "--task", "grounding", "--data", str(split), "--out", str(out)]
    assert main(argv + ["--device", "cpu", "--phrase-mode", "alone"]) == 0
    report = json.loads(out.read_text())
    assert report["task"] == "grounding" and report["settings"]["phrase_mode"] == "alone"
    results = report["results"]
    assert results["all"]["phrases"] == 4 and "held_out" not in results
    assert results["all"]["chance_annotated"] == pytest.approx(25.0)  # 4 candidate boxes for every phrase
    assert 0 <= results["all"]["accuracy_annotated"] <= 100
    assert "| all phrases | 4 |" in out.with_suffix(".md").read_text()
    assert len(WEDDING) == results["num_captions"]
    bad = tmp_path / "notes.txt"
    bad.write_text("65567\n")
    assert main(["--model", str(folder), "--task", "grounding", "--data", str(bad), "--out", str(out)]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: `--data` ")
