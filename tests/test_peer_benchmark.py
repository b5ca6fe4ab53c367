"""benchmarks/peer_open_clip.py: its logic here (geometry mapping, caption padding, the missing-environment error),
and a tiny run in the peer environment (.venv-peer, made by scripts/setup_peer_env.sh) where it exists. The suite
itself never needs open_clip."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.peer_open_clip import open_clip_geometry, pad_captions
from conftest import ROOT, tiny_harmoclip_model
from model_batches import training_batch
from training_runs import ENV

# The peer benchmark run for real: the slow tier.
pytestmark = pytest.mark.slow

MODULE = "benchmarks.peer_open_clip"  # run as a module from the project root
PEER_PYTHON = ROOT / ".venv-peer" / "bin" / "python"


def test_vitb16_geometry_is_open_clips_vit_b_16_quickgelu() -> None:
    """Against open_clip's model_configs/ViT-B-16-quickgelu.json (written out here), with its default head width 64
    and MLP ratio 4."""
    from training.builders import scratch_model_config
    from training.config import TrainConfig

    config = scratch_model_config(TrainConfig(model_preset="vit-b-16", image_size=224, patch_size=16), vocab_size=49408)
    assert open_clip_geometry(config) == {
        "embed_dim": 512,
        "quick_gelu": True,
        "vision_cfg": {
            "image_size": 224,
            "layers": 12,
            "width": 768,
            "patch_size": 16,
            "head_width": 64,
            "mlp_ratio": 4.0,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 512,
            "heads": 8,
            "layers": 12,
            "mlp_ratio": 4.0,
        },
    }
    config.vision_config.hidden_act = "gelu"
    with pytest.raises(ValueError, match="vision tower: open_clip's CLIP needs quick_gelu"):
        open_clip_geometry(config)


def test_captions_padded_to_the_context_give_the_same_embeddings_and_loss() -> None:
    """What makes the 77-token rows the same computation as the training collator's, on open_clip's shapes."""
    model = tiny_harmoclip_model()
    batch = training_batch(model)
    padded = pad_captions(batch, 77, model.config.text_config.pad_token_id)
    assert (
        padded["input_ids"].shape[1] == padded["attention_mask"].shape[1] == padded["phrase_token_mask"].shape[2] == 77
    )
    assert torch.equal(padded["input_ids"][:, : batch["input_ids"].shape[1]], batch["input_ids"])
    with torch.no_grad():
        short, long = model(**batch, return_loss=True), model(**padded, return_loss=True)
    for name in ("text_embeds", "lexeme_embeds", "image_embeds", "loss"):
        assert torch.allclose(getattr(short, name), getattr(long, name), atol=1e-6), name
    with pytest.raises(ValueError, match="cannot be padded to 4"):
        pad_captions(batch, 4, 0)


@pytest.mark.skipif(
    importlib.util.find_spec("open_clip") is not None, reason="open_clip is installed in this environment"
)
def test_without_open_clip_it_says_how_to_get_the_environment() -> None:
    result = subprocess.run(
        [sys.executable, "-m", MODULE, "--quick"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "open_clip is not installed" in result.stderr and "scripts/setup_peer_env.sh" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(
    not PEER_PYTHON.exists(), reason="no peer environment (.venv-peer): `bash scripts/setup_peer_env.sh` makes it"
)
def test_tiny_run_in_the_peer_environment(tmp_path: Path) -> None:
    out = tmp_path / "peer.json"
    result = subprocess.run(
        [
            str(PEER_PYTHON),
            "-m",
            MODULE,
            "--quick",
            "--device",
            "cpu",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--json-out",
            str(out),
        ],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    payload = json.loads(out.read_text())
    methods = [row["method"] for row in payload["results"]]
    assert methods == ["open_clip", "GC, 77", "GC, longest", "GC+LRC+GR cached, 77", "GC+LRC+GR cached, longest"]
    settings = payload["settings"]
    assert settings["caption_tokens"]["77"] == 77 and settings["caption_tokens"]["longest"] < 77
    assert settings["parameters"] > 0 and settings["attention"]["harmoclip"] == "sdpa"
    assert math.isfinite(settings["last_losses"]["open_clip"]) and set(settings["last_losses"]["GC+LRC+GR cached"]) >= {
        "loss_gr",
        "loss_lrc",
    }
    assert [t["limit"] for t in payload["targets"]] == [1.05, 1.15]
    assert payload["results"][0]["time_ratio_to_open_clip"]["median"] == 1.0
    assert "| open_clip | 77 |" in payload["markdown"]
