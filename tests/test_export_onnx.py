"""ONNX export of a HarmoCLIP folder: two graphs with dynamic batch and box count, run with onnxruntime."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import ROOT, tiny_harmoclip_model
from conversion.export_onnx import main
from conversion.processor_files import make_image_processor, save_harmoclip_processor

# ONNX export and onnxruntime checks: the slow tier.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_tokenizer):
    """A tiny HarmoCLIP folder and its ONNX export through the command line (exported once for the module)."""
    root = tmp_path_factory.mktemp("onnx")
    model = tiny_harmoclip_model(seed=3)
    model.save_pretrained(root / "model")
    save_harmoclip_processor(root / "model", tiny_tokenizer, make_image_processor(32))
    (root / "onnx").mkdir()  # an existing empty folder is written into, as a missing one is made
    assert main(["--model", str(root / "model"), "--output-dir", str(root / "onnx")]) == 0
    return model, root


def _session(path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("batch, num_boxes", [(1, 1), (4, 7)])
def test_region_graph_matches_pytorch_at_any_batch_and_box_count(exported, batch: int, num_boxes: int) -> None:
    model, root = exported
    generator = torch.Generator().manual_seed(batch * 10 + num_boxes)
    pixel_values = torch.randn(batch, 3, 32, 32, generator=generator)
    corner = torch.rand(batch, num_boxes, 2, generator=generator) * 0.7
    boxes = torch.cat([corner, corner + torch.rand(batch, num_boxes, 2, generator=generator) * 0.3 + 0.01], dim=-1)
    box_mask = torch.rand(batch, num_boxes, generator=generator) > 0.3
    box_mask[:, 0] = True
    region_embeds, dense = _session(root / "onnx" / "region.onnx").run(
        None, {"pixel_values": pixel_values.numpy(), "boxes": boxes.numpy(), "box_mask": box_mask.numpy()}
    )
    with torch.no_grad():
        expected_regions = model.get_region_features(pixel_values, boxes, box_mask)
        expected_dense = model.get_dense_features(pixel_values)
    assert region_embeds.shape == (batch, num_boxes, 16) and dense.shape == (batch, 16, 4, 4)
    assert np.abs(region_embeds - expected_regions.numpy()).max() <= 1e-4
    assert np.abs(dense - expected_dense.numpy()).max() <= 1e-4
    assert not region_embeds[~box_mask.numpy()].any()


def test_text_graph_matches_pytorch_at_any_batch_and_length(exported, tiny_tokenizer) -> None:
    model, root = exported
    session = _session(root / "onnx" / "text.onnx")
    for texts in (["a dog"], ["a photo of a cat", "two dogs playing in the snow", "red"]):
        tokens = tiny_tokenizer(texts, padding=True, return_tensors="np")
        (text_embeds,) = session.run(
            None, {"input_ids": tokens["input_ids"].astype(np.int64), "attention_mask": tokens["attention_mask"]}
        )
        with torch.no_grad():
            expected = model.get_text_features(
                input_ids=torch.from_numpy(tokens["input_ids"]),
                attention_mask=torch.from_numpy(tokens["attention_mask"]),
            ).pooler_output
        assert np.abs(text_embeds - F.normalize(expected, dim=-1).numpy()).max() <= 1e-4


def test_manifest_records_the_graphs_and_the_check(exported) -> None:
    model, root = exported
    manifest = json.loads((root / "onnx" / "onnx_export.json").read_text())
    assert manifest["region"] == {
        "file": "region.onnx",
        "inputs": ["pixel_values", "boxes", "box_mask"],
        "outputs": ["region_embeds", "dense_features"],
    }
    assert manifest["text"]["outputs"] == ["text_embeds"]
    assert manifest["logit_scale"] == pytest.approx(float(model.logit_scale.detach().exp()))
    assert max(manifest["check"].values()) <= 1e-4


def test_export_refuses_an_existing_output_and_a_folder_that_is_not_harmoclip(exported, tmp_path, capsys) -> None:
    _, root = exported
    before = sorted(path.name for path in (root / "onnx").iterdir())
    assert main(["--model", str(root / "model"), "--output-dir", str(root / "onnx")]) == 1
    assert "already exists" in capsys.readouterr().err
    assert sorted(path.name for path in (root / "onnx").iterdir()) == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"model_type": "clip"}')
    assert main(["--model", str(tmp_path / "other"), "--output-dir", str(tmp_path / "out")]) == 1
    assert "expected model_type 'harmoclip'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_documented_onnxruntime_example_runs_and_matches_pytorch(exported, tmp_path, monkeypatch, capsys) -> None:
    """docs/inference.md's onnxruntime example, run as written on the tiny export, gives the model's own scores."""
    model, root = exported
    page = (ROOT / "docs" / "inference.md").read_text()
    example = next(block for block in re.findall(r"```python\n(.*?)```", page, re.S) if "onnxruntime" in block)
    (tmp_path / "harmoclip-vitb16").symlink_to(root / "model")
    (tmp_path / "harmoclip-vitb16-onnx").symlink_to(root / "onnx")
    Image.new("RGB", (480, 360), (90, 140, 30)).save(tmp_path / "street.jpg")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(example, "docs/inference.md", "exec"), namespace)
    assert len(capsys.readouterr().out.strip().splitlines()) == 2  # one line per box

    from modeling_harmoclip.modeling_harmoclip import label_probabilities
    from modeling_harmoclip.pipeline_harmoclip import label_embeddings

    processor = namespace["processor"]
    inputs = processor(images=Image.open(Path("street.jpg")), boxes=[[10, 20, 200, 310], [220, 40, 400, 300]])
    with torch.no_grad():
        regions = model.get_region_features(inputs["pixel_values"], inputs["boxes"], inputs["box_mask"])
        labels = label_embeddings(model, processor.tokenizer, namespace["labels"], namespace["templates"])
        expected = label_probabilities(regions, labels, model.logit_scale.exp())[0]
    assert np.abs(namespace["probabilities"] - expected.numpy()).max() <= 1e-4
