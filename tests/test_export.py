"""Export of a HarmoCLIP folder to a plain transformers CLIPModel folder (no remote code)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, CLIPModel, CLIPProcessor, pipeline

from conversion.export_clip import export_clip, main
from conversion.processor_files import make_image_processor, save_processor


@pytest.fixture
def harmoclip_dir(tmp_path, tiny_model, tiny_tokenizer):
    folder = tmp_path / "harmoclip"
    with torch.no_grad():
        tiny_model.region_logit_scale.fill_(3.0)  # a HarmoCLIP-only parameter the export must drop
    tiny_model.save_pretrained(folder)
    save_processor(folder, tiny_tokenizer, make_image_processor(32))
    return folder


def test_export_is_a_plain_clip_with_identical_global_embeddings(harmoclip_dir, tmp_path, tiny_model, tiny_tokenizer):
    report = export_clip(harmoclip_dir, tmp_path / "clip")

    assert report.diff.max <= 1e-6
    out = tmp_path / "clip"
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "clip" and "auto_map" not in config
    assert "dense_mode" not in config and config["architectures"] == ["CLIPModel"]
    assert not list(out.glob("*.py"))
    assert not any("auto_map" in json.loads(path.read_text()) for path in out.glob("*.json"))

    clip = CLIPModel.from_pretrained(out).eval()
    assert "region_logit_scale" not in clip.state_dict()
    tokens = tiny_tokenizer(["a photo of a cat", "a dog"], padding=True, return_tensors="pt")
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for method, inputs in (
            ("get_image_features", {"pixel_values": pixel_values}),
            ("get_text_features", dict(tokens)),
        ):
            expected = getattr(tiny_model, method)(**inputs).pooler_output
            torch.testing.assert_close(getattr(clip, method)(**inputs).pooler_output, expected, atol=1e-6, rtol=0)
        expected_logits = tiny_model(pixel_values=pixel_values, **tokens).logits_per_image
        torch.testing.assert_close(
            clip(pixel_values=pixel_values, **tokens).logits_per_image, expected_logits, atol=1e-5, rtol=0
        )


def test_export_serves_the_zero_shot_pipeline_without_remote_code(harmoclip_dir, tmp_path):
    export_clip(harmoclip_dir, tmp_path / "clip")

    processor = AutoProcessor.from_pretrained(tmp_path / "clip")
    assert isinstance(processor, CLIPProcessor)
    classifier = pipeline("zero-shot-image-classification", model=str(tmp_path / "clip"))
    image = Image.new("RGB", (40, 48), (200, 30, 30))
    scores = classifier(image, candidate_labels=["a red square", "a blue circle"])
    assert sorted(item["label"] for item in scores) == ["a blue circle", "a red square"]
    assert sum(item["score"] for item in scores) == pytest.approx(1.0, abs=1e-5)


def test_export_refuses_existing_output_and_non_harmoclip_folders(harmoclip_dir, tmp_path, capsys):
    (tmp_path / "clip").mkdir()
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_clip(harmoclip_dir, tmp_path / "clip")
    assert main(["--model", str(harmoclip_dir), "--output", str(tmp_path / "clip"), "--overwrite"]) == 0
    assert (tmp_path / "clip" / "model.safetensors").is_file()
    with pytest.raises(ValueError, match="holds a 'clip' model, expected model_type 'harmoclip'"):
        export_clip(tmp_path / "clip", tmp_path / "again")
    assert main(["--model", str(tmp_path / "missing"), "--output", str(tmp_path / "x")]) == 1
    assert "no config.json" in capsys.readouterr().err
