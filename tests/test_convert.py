"""Conversion of CLIP checkpoints (OpenAI `.pt`, open_clip, transformers folders) into HarmoCLIP folders.

Source checkpoints are built locally from `ReferenceCLIP` (OpenAI's module layout); the converted model's embeddings
are compared with that reference's own forward pass.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, CLIPModel, CLIPTokenizer

from clip_reference import ReferenceCLIP
from conftest import BPE_PATH, TINY_VOCAB_SIZE, tiny_clip_config
from conversion.convert_clip import ConversionCheckError, convert_clip, main, read_open_clip_checkpoint
from conversion.processor_files import load_tokenizer_and_image_processor, make_image_processor, tokenizer_from_bpe
from modeling_harmoclip import HarmoCLIPModel

TEXTS = ["a photo of a cat", "a diagram", "two dogs playing in the snow on a sunny day"]
TOLERANCE = 1e-5


def reference_model(seed: int = 0, **kwargs) -> ReferenceCLIP:
    torch.manual_seed(seed)
    return ReferenceCLIP(**kwargs).eval()


def assert_matches_reference(folder: Path, reference: ReferenceCLIP, image_size: int = 32) -> None:
    """The converted folder's image and text embeddings equal the reference forward pass."""
    model = HarmoCLIPModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokens = tokenizer(TEXTS, padding=True, return_tensors="pt")
    pixel_values = torch.randn(3, 3, image_size, image_size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected_image = reference.encode_image(pixel_values)
        expected_text = reference.encode_text(tokens["input_ids"])
        image = model.get_image_features(pixel_values=pixel_values).pooler_output
        text = model.get_text_features(**tokens).pooler_output
    torch.testing.assert_close(image, expected_image, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(text, expected_text, atol=TOLERANCE, rtol=0)
    assert model.logit_scale.item() == pytest.approx(reference.logit_scale.item())


def test_full_bpe_vocabulary_reproduces_openai_token_ids():
    tokenizer = tokenizer_from_bpe(BPE_PATH, vocab_size=49408, context_length=77)
    assert tokenizer("a man in a red shirt").input_ids == [49406, 320, 786, 530, 320, 736, 2523, 49407]


def test_tokenizer_rejects_vocabulary_sizes_outside_the_bpe_file():
    with pytest.raises(ValueError, match="token embedding has 60000 rows"):
        tokenizer_from_bpe(BPE_PATH, vocab_size=60000, context_length=77)


def test_openai_state_dict_fp16_converts_with_settings(tmp_path):
    reference = reference_model()
    checkpoint = tmp_path / "ViT-tiny.pt"
    torch.save({key: value.half() for key, value in reference.state_dict().items()}, checkpoint)  # as OpenAI ships
    reference = reference.half().float()  # the same rounded weights, run in float32

    report = convert_clip(
        "openai",
        checkpoint,
        tmp_path / "out",
        bpe_path=BPE_PATH,
        dense_mode="full",
        gr_teacher="self",
        loss_gr_weight=0.5,
        region_logit_scale_mode="from_global",
    )

    assert report.diff.max <= 1e-4
    assert_matches_reference(tmp_path / "out", reference)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "harmoclip"
    assert (config["dense_mode"], config["gr_teacher"], config["loss_gr_weight"]) == ("full", "self_stop_grad", 0.5)
    # The region temperature starts from the source's trained global one, not from log(1/0.07).
    model = HarmoCLIPModel.from_pretrained(tmp_path / "out")
    assert model.region_logit_scale.item() == pytest.approx(
        reference.logit_scale.item()
    ) and reference.logit_scale.item() != pytest.approx(2.6592)
    assert config["text_config"]["hidden_act"] == config["vision_config"]["hidden_act"] == "quick_gelu"
    assert (config["vision_config"]["num_attention_heads"], config["text_config"]["num_attention_heads"]) == (2, 1)
    assert config["text_config"]["eos_token_id"] == TINY_VOCAB_SIZE - 1
    files = {path.name for path in (tmp_path / "out").iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "modeling_harmoclip.py",
        "configuration_harmoclip.py",
        "tokenizer.json",
    } <= files
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".out.")]  # no staging folder left


def test_openai_torchscript_archive_converts(tmp_path):
    reference = reference_model(seed=1)
    checkpoint = tmp_path / "ViT-tiny-jit.pt"
    torch.jit.script(reference).save(str(checkpoint))

    convert_clip("openai", checkpoint, tmp_path / "out", bpe_path=BPE_PATH)

    assert_matches_reference(tmp_path / "out", reference)


def open_clip_config(quick_gelu: bool) -> dict:
    return {
        "embed_dim": 24,
        "quick_gelu": quick_gelu,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 128, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": TINY_VOCAB_SIZE, "width": 64, "heads": 4, "layers": 2},
    }


@pytest.mark.parametrize(
    ("file_name", "quick_gelu", "hub_config"),
    [
        ("open_clip_pytorch_model.bin", False, True),
        ("epoch_3.pt", True, False),
        ("open_clip_model.safetensors", False, False),
    ],
)
def test_open_clip_checkpoints_convert(tmp_path, file_name, quick_gelu, hub_config):
    # Heads from the config (4 vision heads of width 32, 4 text heads of width 16), not OpenAI's width // 64 rule.
    reference = reference_model(seed=2, vision_heads=4, text_heads=4, quick_gelu=quick_gelu)
    state_dict = reference.state_dict()
    checkpoint = tmp_path / file_name
    if file_name.endswith(".safetensors"):
        save_file({key: value.contiguous() for key, value in state_dict.items()}, str(checkpoint))
    elif file_name.startswith("epoch"):  # a training checkpoint: wrapped, with DDP's `module.` prefix
        torch.save(
            {"epoch": 3, "state_dict": {f"module.{key}": value for key, value in state_dict.items()}}, checkpoint
        )
    else:
        torch.save(state_dict, checkpoint)
    config = open_clip_config(quick_gelu)
    if hub_config:  # the Hub's open_clip_config.json, with its own normalisation
        config = {"model_cfg": config, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}
    config_path = tmp_path / "model_config.json"
    config_path.write_text(json.dumps(config))

    convert_clip("open_clip", checkpoint, tmp_path / "out", bpe_path=BPE_PATH, open_clip_config=config_path)

    assert_matches_reference(tmp_path / "out", reference)
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["text_config"]["hidden_act"] == ("quick_gelu" if quick_gelu else "gelu")
    _, image_processor = load_tokenizer_and_image_processor(tmp_path / "out")
    assert list(image_processor.image_mean) == (
        [0.5] * 3 if hub_config else pytest.approx([0.48145466, 0.4578275, 0.40821073])
    )


def test_open_clip_unsupported_architecture_is_refused(tmp_path):
    reference = reference_model()
    state_dict = dict(reference.state_dict())
    checkpoint = tmp_path / "model.bin"
    config_path = tmp_path / "config.json"
    config = open_clip_config(True)
    config["vision_cfg"]["ls_init_value"] = 1e-5
    config_path.write_text(json.dumps(config))
    torch.save(state_dict, checkpoint)
    with pytest.raises(ValueError, match="vision_cfg.ls_init_value"):
        convert_clip("open_clip", checkpoint, tmp_path / "out", bpe_path=BPE_PATH, open_clip_config=config_path)

    # Layer scale weights without a config option: caught by the key check.
    state_dict["visual.transformer.resblocks.0.ls_1.gamma"] = torch.ones(128)
    torch.save(state_dict, checkpoint)
    config_path.write_text(json.dumps(open_clip_config(True)))
    with pytest.raises(ValueError, match="no CLIPModel equivalent: visual.transformer.resblocks.0.ls_1.gamma"):
        convert_clip("open_clip", checkpoint, tmp_path / "out", bpe_path=BPE_PATH, open_clip_config=config_path)

    config_path.write_text(json.dumps({**open_clip_config(True), "embed_dim": 32}))
    state_dict.pop("visual.transformer.resblocks.0.ls_1.gamma")
    torch.save(state_dict, checkpoint)
    with pytest.raises(ValueError, match="embed_dim gives 32, the weights 24"):
        convert_clip("open_clip", checkpoint, tmp_path / "out", bpe_path=BPE_PATH, open_clip_config=config_path)
    assert not (tmp_path / "out").exists()


def test_missing_bpe_path_and_wrong_folder_are_refused(tmp_path, tiny_model):
    checkpoint = tmp_path / "model.pt"
    torch.save(reference_model().state_dict(), checkpoint)
    with pytest.raises(ValueError, match="`bpe_path` is required"):
        convert_clip("openai", checkpoint, tmp_path / "out")
    with pytest.raises(ValueError, match="`source` must be one of"):
        convert_clip("jax", checkpoint, tmp_path / "out")
    tiny_model.save_pretrained(tmp_path / "harmo")
    with pytest.raises(ValueError, match="holds a .harmoclip. model, expected model_type .clip."):
        convert_clip("hf", tmp_path / "harmo", tmp_path / "out")


def save_tiny_hf_clip(folder: Path, tokenizer_dir: Path) -> CLIPModel:
    torch.manual_seed(3)
    clip = CLIPModel(tiny_clip_config()).eval()
    clip.save_pretrained(folder)
    CLIPTokenizer.from_pretrained(tokenizer_dir, model_max_length=77).save_pretrained(folder)
    make_image_processor(32).save_pretrained(folder)
    return clip


@pytest.mark.parametrize("weights_file", ["model.safetensors", "pytorch_model.bin"])
def test_hf_clip_folder_converts_with_its_processor(tmp_path, tiny_tokenizer_dir, weights_file):
    clip = save_tiny_hf_clip(tmp_path / "clip", tiny_tokenizer_dir)
    if weights_file == "pytorch_model.bin":  # older Hub folders: read with weights_only
        (tmp_path / "clip" / "model.safetensors").unlink()
        torch.save(clip.state_dict(), tmp_path / "clip" / weights_file)

    report = convert_clip("hf", tmp_path / "clip", tmp_path / "out", lexeme_mode="alone")

    assert report.diff.max <= 1e-6
    model = HarmoCLIPModel.from_pretrained(tmp_path / "out").eval()
    assert model.config.lexeme_mode == "alone"
    for name, value in clip.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, atol=0, rtol=0)
    tokenizer, image_processor = load_tokenizer_and_image_processor(tmp_path / "out")
    assert (
        tokenizer("a red shirt").input_ids == CLIPTokenizer.from_pretrained(tiny_tokenizer_dir)("a red shirt").input_ids
    )
    assert image_processor.crop_size["height"] == 32


def test_existing_output_is_kept_without_overwrite_and_after_a_failed_check(tmp_path):
    checkpoint = tmp_path / "model.pt"
    torch.save(reference_model().state_dict(), checkpoint)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier result")

    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_clip("openai", checkpoint, out, bpe_path=BPE_PATH)
    with pytest.raises(ConversionCheckError, match="differs from the source"):
        convert_clip("openai", checkpoint, out, bpe_path=BPE_PATH, overwrite=True, tolerance=-1.0)
    assert [path.name for path in out.iterdir()] == ["keep.txt"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.pt", "out"]  # no staging folder left

    convert_clip("openai", checkpoint, out, bpe_path=BPE_PATH, overwrite=True)
    assert (out / "model.safetensors").is_file() and not (out / "keep.txt").exists()


def test_command_line(tmp_path, capsys):
    reference = reference_model(seed=4)
    checkpoint = tmp_path / "model.pt"
    torch.save(reference.state_dict(), checkpoint)
    args = [
        "--source",
        "openai",
        "--checkpoint",
        str(checkpoint),
        "--bpe-path",
        str(BPE_PATH),
        "--output",
        str(tmp_path / "out"),
    ]

    assert (
        main(
            args
            + ["--dense-mode", "full", "--loss-lrc-weight", "2", "--log-file", str(tmp_path / "logs" / "convert.log")]
        )
        == 0
    )
    assert "max abs diff" in capsys.readouterr().out
    assert "conversion check (openai -> HarmoCLIP): max abs diff" in (tmp_path / "logs" / "convert.log").read_text()
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["dense_mode"], config["loss_lrc_weight"]) == ("full", 2.0)
    assert (config["region_pooling"], config["region_logit_scale_mode"]) == (
        "normalize_then_pool",
        "shared",
    )  # defaults
    assert_matches_reference(tmp_path / "out", reference)
    separate = tmp_path / "separate"
    assert (
        main(
            args[:-1]
            + [str(separate), "--region-pooling", "pool_then_normalize", "--region-logit-scale-mode", "separate"]
        )
        == 0
    )
    config = json.loads((separate / "config.json").read_text())
    assert (config["region_pooling"], config["region_logit_scale_mode"]) == ("pool_then_normalize", "separate")
    assert HarmoCLIPModel.from_pretrained(separate).region_logit_scale.item() == pytest.approx(2.6592)

    assert main(args) == 1
    assert "already exists" in capsys.readouterr().err


def test_hf_bin_weights_are_never_unpickled_beyond_tensors(tmp_path, tiny_tokenizer_dir):
    clip = save_tiny_hf_clip(tmp_path / "clip", tiny_tokenizer_dir)
    (tmp_path / "clip" / "model.safetensors").unlink()
    torch.save(
        {**clip.state_dict(), "extra": argparse.Namespace(code="arbitrary object")},
        tmp_path / "clip" / "pytorch_model.bin",
    )
    with pytest.raises(
        ValueError, match="is not a readable checkpoint .it holds Python objects besides tensors"
    ) as caught:
        convert_clip("hf", tmp_path / "clip", tmp_path / "out")
    assert "weights_only" not in str(caught.value)  # torch's advice to unpickle anyway is not passed on
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all\n", bytes(range(256)) * 4])
def test_unreadable_checkpoint_is_one_line_without_unsafe_advice(tmp_path, capsys, content):
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(content)
    args = [
        "--source",
        "openai",
        "--checkpoint",
        str(checkpoint),
        "--bpe-path",
        str(BPE_PATH),
        "--output",
        str(tmp_path / "out"),
    ]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"error: `--checkpoint`: {checkpoint} is not a readable checkpoint "
        "(not a PyTorch or safetensors file of tensors, or a corrupt one)"
    ]
    assert "Traceback" not in captured.err and not (tmp_path / "out").exists()


def test_truncated_checkpoints_are_not_readable(tmp_path):
    checkpoint = tmp_path / "model.pt"
    torch.save(reference_model(seed=1).state_dict(), checkpoint)
    checkpoint.write_bytes(checkpoint.read_bytes()[:5000])
    with pytest.raises(ValueError, match="is not a readable checkpoint") as caught:
        convert_clip("openai", checkpoint, tmp_path / "out", bpe_path=BPE_PATH)
    assert "weights_only" not in str(caught.value)
    weights = tmp_path / "open_clip_model.safetensors"
    save_file({"a": torch.zeros(64)}, weights)
    weights.write_bytes(weights.read_bytes()[:-16])
    with pytest.raises(ValueError, match="is not a readable checkpoint"):
        read_open_clip_checkpoint(weights)
