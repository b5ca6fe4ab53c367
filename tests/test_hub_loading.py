"""Saving and loading like the Hub: code from the saved folder, in fresh processes that cannot import the project."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import CLIPModel
from transformers.dynamic_module_utils import get_imports

from conftest import offline_hub_cache, run_isolated, tiny_clip_config, tiny_harmoclip_model
from modeling_harmoclip import HarmoCLIPModel

# The remote code a saved folder carries: at most 8 files, one concept each (as transformers' model folders).
CODE_FILES = {
    "configuration_harmoclip.py",
    "modeling_harmoclip.py",
    "losses.py",
    "image_processing_harmoclip.py",
    "processing_harmoclip.py",
    "pipeline_harmoclip.py",
}


def _inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    vocab = tiny_clip_config().text_config.vocab_size
    ids = torch.randint(0, vocab - 2, (2, 9), generator=generator)
    ids[:, 0], ids[:, -1] = vocab - 2, vocab - 1
    return {
        "input_ids": ids,
        "pixel_values": torch.randn(2, 3, 32, 32, generator=generator),
        "boxes": torch.tensor([[[0.0, 0.0, 0.5, 0.75]], [[0.3, 0.1, 0.9, 0.6]]]),
    }


def _save_with_reference(model: HarmoCLIPModel, folder: Path, work: Path) -> None:
    """Saves the model and, beside it, inputs and the outputs the saved model must reproduce."""
    model.save_pretrained(folder)
    inputs = _inputs()
    with torch.no_grad():
        out = model(**inputs)
    torch.save({"inputs": inputs, "logits": out.logits_per_image, "regions": out.region_embeds}, work / "reference.pt")


CHECK_OUTPUTS = """
import torch
reference = torch.load({reference!r})
with torch.no_grad():
    out = model(**reference["inputs"])
assert (out.logits_per_image - reference["logits"]).abs().max() <= 1e-6, "logits differ"
assert (out.region_embeds - reference["regions"]).abs().max() <= 1e-6, "regions differ"
print("CLASS", type(model).__name__, type(model).__module__)
"""


def test_save_pretrained_writes_weights_config_and_code(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    tiny_harmoclip_model().save_pretrained(folder)
    files = {path.name for path in folder.iterdir()}
    assert {"model.safetensors", "config.json"} | CODE_FILES <= files
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "harmoclip"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_harmoclip.HarmoCLIPConfig",
        "AutoModel": "modeling_harmoclip.HarmoCLIPModel",
        "AutoModelForZeroShotImageClassification": "modeling_harmoclip.HarmoCLIPModel",
    }
    assert config["custom_pipelines"] == {
        "region-classification": {
            "impl": "pipeline_harmoclip.RegionClassificationPipeline",
            "pt": ["AutoModel"],
            "type": "multimodal",
        },
        "zero-shot-object-detection": {
            "impl": "pipeline_harmoclip.ZeroShotRegionDetectionPipeline",
            "pt": ["AutoModel"],
            "type": "multimodal",
        },
        "image-segmentation": {
            "impl": "pipeline_harmoclip.DenseSegmentationPipeline",
            "pt": ["AutoModel"],
            "type": "multimodal",
        },
        "phrase-grounding": {
            "impl": "pipeline_harmoclip.PhraseGroundingPipeline",
            "pt": ["AutoModel"],
            "type": "multimodal",
        },
    }
    assert "region_logit_scale" in load_file(folder / "model.safetensors")
    for name in CODE_FILES:  # remote code imports only torch, transformers, the standard library and siblings
        source = (folder / name).read_text()
        assert "from training" not in source and "from conversion" not in source
        # What transformers requires of remote code: spaCy only inside `try` (the grounding pipeline's noun chunks).
        assert "spacy" not in get_imports(folder / name), name


def test_auto_classes_load_from_the_folder_alone(tmp_path: Path) -> None:
    folder, work = tmp_path / "model", tmp_path / "work"
    work.mkdir()
    _save_with_reference(tiny_harmoclip_model(dense_mode="value", gr_teacher="self_with_grad"), folder, work)
    code = f"""
try:
    import modeling_harmoclip
    raise SystemExit("the project must not be importable here")
except ImportError:
    pass
from transformers import AutoConfig, AutoModel, AutoModelForZeroShotImageClassification
config = AutoConfig.from_pretrained({str(folder)!r}, trust_remote_code=True)
assert type(config).__name__ == "HarmoCLIPConfig" and config.gr_teacher == "self_with_grad", config
for auto in (AutoModel, AutoModelForZeroShotImageClassification):
    model = auto.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
""" + "\n".join("    " + line for line in CHECK_OUTPUTS.format(reference=str(work / "reference.pt")).splitlines())
    result = run_isolated(code, cwd=work)
    assert result.stdout.count("CLASS HarmoCLIPModel transformers_modules") == 2, result.stdout


def test_hub_id_from_an_offline_cache(tmp_path: Path) -> None:
    """`AutoModel.from_pretrained("org/harmoclip-vitb16")` from a cache laid out as huggingface_hub lays it out."""
    folder, work = tmp_path / "model", tmp_path / "work"
    work.mkdir()
    _save_with_reference(tiny_harmoclip_model(seed=5), folder, work)
    env = offline_hub_cache(folder, tmp_path)
    code = """
from transformers import AutoModel
model = AutoModel.from_pretrained("org/harmoclip-vitb16", trust_remote_code=True).eval()
""" + CHECK_OUTPUTS.format(reference=str(work / "reference.pt"))
    result = run_isolated(code, cwd=work, env=env)
    assert "CLASS HarmoCLIPModel" in result.stdout


def test_clip_model_loads_the_global_towers(tmp_path: Path) -> None:
    model = tiny_harmoclip_model(seed=2)
    model.save_pretrained(tmp_path)
    clip = CLIPModel.from_pretrained(tmp_path).eval()
    inputs = _inputs()
    with torch.no_grad():
        ours = model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"])
        theirs = clip(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"])
    assert (ours.image_embeds - theirs.image_embeds).abs().max() <= 1e-6
    assert (ours.text_embeds - theirs.text_embeds).abs().max() <= 1e-6


def test_harmoclip_loads_a_plain_clip_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(4)
    clip = CLIPModel(tiny_clip_config()).eval()
    clip.save_pretrained(tmp_path)
    model = HarmoCLIPModel.from_pretrained(tmp_path).eval()
    inputs = _inputs()
    with torch.no_grad():
        theirs = clip(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"])
        ours = model(**inputs)
    assert (ours.logits_per_image - theirs.logits_per_image).abs().max() <= 1e-6
    assert torch.allclose(model.region_logit_scale, torch.tensor(model.config.region_logit_scale_init_value))
    assert model.config.dense_mode == "value" and ours.region_embeds.shape == (2, 1, 16)
    assert torch.allclose(ours.region_embeds.norm(dim=-1), torch.ones(2, 1), atol=1e-5)
