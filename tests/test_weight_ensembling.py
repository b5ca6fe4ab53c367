"""WiSE-FT's weight-space ensembles: every weight ``(1 - alpha) * start + alpha * fine-tuned``, written as a Hub-ready
folder of its own without touching either model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import save_tiny_folder, tiny_harmoclip_model
from modeling_harmoclip import HarmoCLIPModel
from training.weight_ensembling import interpolate_state_dicts, main, weight_ensemble, write_weight_ensemble


def test_the_ensemble_is_the_line_between_the_two_models() -> None:
    start, tuned = tiny_harmoclip_model(seed=1), tiny_harmoclip_model(seed=2)
    for alpha in (0.0, 0.3, 1.0):
        mixed = weight_ensemble(start, tuned, alpha).state_dict()
        for name, value in tuned.state_dict().items():
            if value.is_floating_point():
                expected = start.state_dict()[name].double() * (1 - alpha) + value.double() * alpha
                torch.testing.assert_close(mixed[name].double(), expected, atol=1e-6, rtol=0)
            else:
                assert torch.equal(mixed[name], value)
    assert torch.equal(weight_ensemble(start, tuned, 0.0).visual_projection.weight, start.visual_projection.weight)


def test_models_that_do_not_fit_are_one_line() -> None:
    start, heads = tiny_harmoclip_model(seed=1), tiny_harmoclip_model(seed=2, region_heads=True)
    with pytest.raises(
        ValueError, match=r"^the two models' parameters differ: 'lexeme_projection.weight' is in one only"
    ):
        weight_ensemble(start, heads, 0.5)
    state = start.state_dict()
    other = {**state, "visual_projection.weight": torch.zeros(3, 3)}
    with pytest.raises(ValueError, match=r"^parameter 'visual_projection.weight' has shape \(16, 32\) at the start"):
        interpolate_state_dicts(state, other, 0.5)
    counter = {"steps": torch.tensor([3])}  # an integer tensor: kept when equal, refused when not
    assert torch.equal(interpolate_state_dicts(counter, counter, 0.5)["steps"], torch.tensor([3]))
    with pytest.raises(ValueError, match=r"^non-float tensor 'steps' differs between the two models"):
        interpolate_state_dicts(counter, {"steps": torch.tensor([4])}, 0.5)
    for alpha in (-0.1, 1.5, float("nan"), True, "half"):
        with pytest.raises(ValueError, match=r"^`alpha` must be a number in \[0, 1\], got"):
            interpolate_state_dicts(state, state, alpha)


def test_the_command_writes_a_hub_folder_and_refuses_in_one_line(tiny_tokenizer, tmp_path: Path, capsys) -> None:
    save_tiny_folder(tmp_path / "start", tiny_tokenizer, seed=1)
    tuned = save_tiny_folder(tmp_path / "tuned", tiny_tokenizer, seed=2)
    before = (tmp_path / "tuned" / "model.safetensors").read_bytes()
    assert main(["--start", str(tmp_path / "start"), "--finetuned", str(tmp_path / "tuned"), "--alpha", "0.25",
                 "--out", str(tmp_path / "wise")]) == 0  # fmt: skip
    assert "weight ensemble at alpha 0.25 written to" in capsys.readouterr().out
    assert (tmp_path / "tuned" / "model.safetensors").read_bytes() == before  # the fine-tuned folder is left alone
    written = HarmoCLIPModel.from_pretrained(tmp_path / "wise")
    start = HarmoCLIPModel.from_pretrained(tmp_path / "start")
    expected = 0.75 * start.visual_projection.weight + 0.25 * tuned.visual_projection.weight
    torch.testing.assert_close(written.visual_projection.weight, expected)
    assert {"config.json", "processor_config.json", "modeling_harmoclip.py"} <= {
        p.name for p in (tmp_path / "wise").iterdir()
    }
    assert json.loads((tmp_path / "wise" / "config.json").read_text())["model_type"] == "harmoclip"
    # An existing --out is kept unless --overwrite; a bad alpha or a folder of another kind is one line.
    capsys.readouterr()
    for argv, message in (
        (["--alpha", "0.5"], "already exists; pass --overwrite"),
        (["--alpha", "2", "--overwrite"], "`alpha` must be a number in [0, 1], got 2.0"),
    ):
        code = main(["--start", str(tmp_path / "start"), "--finetuned", str(tmp_path / "tuned"), "--out",
                     str(tmp_path / "wise"), *argv])  # fmt: skip
        error = capsys.readouterr().err
        assert code == 1 and message in error and error.count("\n") == 1
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text(json.dumps({"model_type": "clip"}))
    code = main(["--start", str(tmp_path / "plain"), "--finetuned", str(tmp_path / "tuned"), "--alpha", "0.5",
                 "--out", str(tmp_path / "other")])  # fmt: skip
    assert code == 1 and "`start`:" in capsys.readouterr().err and not (tmp_path / "other").exists()


def test_a_failure_while_writing_keeps_the_previous_ensemble(tiny_tokenizer, tmp_path: Path, monkeypatch) -> None:
    save_tiny_folder(tmp_path / "start", tiny_tokenizer, seed=1)
    save_tiny_folder(tmp_path / "tuned", tiny_tokenizer, seed=2)
    out = write_weight_ensemble(tmp_path / "start", tmp_path / "tuned", 0.5, tmp_path / "wise")
    kept = load_file(out / "model.safetensors")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(HarmoCLIPModel, "save_pretrained", fail)
    with pytest.raises(OSError):
        write_weight_ensemble(tmp_path / "start", tmp_path / "tuned", 0.9, tmp_path / "wise", overwrite=True)
    again = load_file(out / "model.safetensors")
    assert kept.keys() == again.keys() and all(torch.equal(kept[name], again[name]) for name in kept)
