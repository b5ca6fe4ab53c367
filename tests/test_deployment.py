"""Deployment where users deploy: the published repository's `handler.py` run as Hugging Face Inference Endpoints'
toolkit runs a custom handler (loaded from the repository folder, called with JSON), and `harmoclip-export-onnx`'s
missing-package message (its existing empty output folder: `test_export_onnx.py`'s export writes into one)."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from conftest import run_isolated
from conversion import export_onnx
from conversion.publish import ENDPOINT_HANDLER_FILE, files_to_commit, publish
from modeling_harmoclip.pipeline_harmoclip import (
    DenseSegmentationPipeline,
    PhraseGroundingPipeline,
    RegionClassificationPipeline,
    ZeroShotRegionDetectionPipeline,
)
from modeling_harmoclip.processing_harmoclip import HarmoCLIPProcessor
from training_runs import tiny_model_folder

# What the endpoint toolkit does with a repository holding handler.py (huggingface-inference-toolkit's
# `check_and_register_custom_pipeline_from_directory`): the folder on the import path, the file imported as a module,
# `EndpointHandler(model_dir)`, then `handler(data)` per request with the JSON body as a dict.
TOOLKIT = """
import importlib.util, json, sys
model_dir = {folder!r}
spec = importlib.util.spec_from_file_location("handler", model_dir + "/handler.py")
sys.path.insert(0, model_dir)
module = importlib.util.module_from_spec(spec)
sys.modules["handler"] = module
spec.loader.exec_module(module)
handler = module.EndpointHandler(model_dir)
answers = []
for request in json.load(open({requests!r})):
    try:
        answers.append({{"ok": handler(request)}})
    except ValueError as error:
        answers.append({{"error": str(error)}})
print(json.dumps(answers))
"""


def _picture() -> Image.Image:
    image = Image.new("RGB", (96, 64), (120, 120, 120))
    ImageDraw.Draw(image).rectangle([10, 8, 40, 40], fill=(220, 30, 30))
    return image


def _base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("deploy")
    model_dir = tiny_model_folder(root / "model")
    out = root / "hub"
    committed = publish("org/harmoclip-tiny", model_dir, dry_run=True, output_dir=out)
    assert ENDPOINT_HANDLER_FILE in committed["org/harmoclip-tiny"] == files_to_commit(out)
    return out


def test_endpoint_handler_as_the_toolkit_calls_it(hub_folder: Path, tmp_path: Path) -> None:
    labels = ["red square", "blue circle"]
    encoded = _base64(_picture())
    requests = [
        {"inputs": encoded, "parameters": {"task": "detection", "candidate_labels": labels, "threshold": 0.0}},
        {"inputs": "data:image/png;base64," + encoded, "parameters": {"candidate_labels": "red square, blue circle"}},
        {"inputs": encoded, "parameters": {"task": "segmentation", "candidate_labels": labels}},
        {"inputs": encoded, "parameters": {"task": "segmentation", "threshold": 0.0}},  # no labels: COCO panoptic
        {"inputs": encoded, "parameters": {"candidate_labels": labels, "boxes": [[10, 8, 40, 40]]}},
        {"inputs": encoded, "parameters": {"task": "grounding", "caption": "a red square", "boxes": [[10, 8, 40, 40]]}},
        {"inputs": encoded, "parameters": {"task": "grounding", "caption": "a red square", "phrases": ["a blue dog"]}},
        {"inputs": encoded, "parameters": {"task": "teleport", "candidate_labels": labels}},
        {"inputs": "not an image", "parameters": {"candidate_labels": labels}},
        {"parameters": {}},
    ]
    (tmp_path / "requests.json").write_text(json.dumps(requests))
    result = run_isolated(TOOLKIT.format(folder=str(hub_folder), requests=str(tmp_path / "requests.json")), tmp_path)
    answers = json.loads(result.stdout.strip().splitlines()[-1])

    # The same answers as the pipelines give in this process (the toolkit's JSON round trip aside).
    processor = HarmoCLIPProcessor.from_pretrained(hub_folder)
    from modeling_harmoclip import HarmoCLIPModel

    model = HarmoCLIPModel.from_pretrained(hub_folder).eval()
    detector = ZeroShotRegionDetectionPipeline(model=model, processor=processor)
    segmenter = DenseSegmentationPipeline(model=model, processor=processor)
    classifier = RegionClassificationPipeline(model=model, processor=processor)
    assert answers[0]["ok"] == json.loads(json.dumps(detector(_picture(), candidate_labels=labels, threshold=0.0)))
    assert answers[1]["ok"] == json.loads(json.dumps(detector(_picture(), candidate_labels=labels)))
    segments = segmenter(_picture(), candidate_labels=labels)
    assert [item["label"] for item in answers[2]["ok"]] == [item["label"] for item in segments]
    for sent, local in zip(answers[2]["ok"], segments):
        mask = Image.open(io.BytesIO(base64.b64decode(sent["mask"])))
        assert mask.size == (96, 64) and mask.tobytes() == local["mask"].tobytes()
    assert answers[3]["ok"] and all(set(item) == {"score", "label", "mask"} for item in answers[3]["ok"])
    classified = classifier(_picture(), boxes=[[10, 8, 40, 40]], candidate_labels=labels)
    assert answers[4]["ok"] == json.loads(json.dumps(classified))
    grounder = PhraseGroundingPipeline(model=model, processor=processor)
    grounded = grounder(_picture(), caption="a red square", boxes=[[10, 8, 40, 40]])
    assert answers[5]["ok"] == json.loads(json.dumps(grounded))
    assert [(item["phrase"], item["span"], item["box"]) for item in answers[5]["ok"]] == [
        ("a red square", [0, 12], {"xmin": 10.0, "ymin": 8.0, "xmax": 40.0, "ymax": 40.0})
    ]
    assert "`phrases`[0] = 'a blue dog' is not in the caption" in answers[6]["error"]
    assert "`parameters.task` 'teleport' is not available in this model" in answers[7]["error"]
    assert "phrase-grounding" in answers[7]["error"]
    assert "`inputs` is neither an http(s) URL nor base64 image data" in answers[8]["error"]
    assert answers[9]["error"].startswith("the request must be a JSON object")


@pytest.mark.parametrize("missing", ["onnx", "onnxscript"])
def test_onnx_export_names_the_extra_when_a_package_is_missing(
    tmp_path: Path, tiny_model, monkeypatch, capsys, missing
):
    tiny_model.save_pretrained(tmp_path / "model")
    capsys.readouterr()  # the save's progress bar
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        export_onnx.importlib.util, "find_spec", lambda name, *a: None if name == missing else real_find_spec(name, *a)
    )
    assert export_onnx.main(["--model", str(tmp_path / "model"), "--output-dir", str(tmp_path / "onnx")]) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and f"needs {missing}" in error and "pip install 'harmoclip[onnx]'" in error
    assert not (tmp_path / "onnx").exists()
