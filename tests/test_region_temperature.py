"""`region_logit_scale` is trainable only where a loss term reads it, so that data parallelism with
`find_unused_parameters=False` (Trainer's choice under gradient checkpointing) works with the model as it comes, while
every checkpoint, old or new, keeps loading."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_harmoclip_model
from model_batches import random_captions, random_images, training_batch
from modeling_harmoclip import HarmoCLIPModel
from training_runs import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _parameters_without_gradient(model: HarmoCLIPModel, **inputs) -> list[str]:
    model.zero_grad(set_to_none=True)
    model(**inputs, return_loss=True).loss.backward()
    return [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]


@pytest.mark.parametrize("with_boxes", [False, True])
def test_default_loss_reaches_every_trainable_parameter(with_boxes: bool) -> None:
    model = tiny_harmoclip_model().train()
    if with_boxes:
        inputs = training_batch(model)  # GC + GR (the default recipe), LRC's inputs given too
    else:
        ids, attention = random_captions(2)
        inputs = dict(input_ids=ids, attention_mask=attention, pixel_values=random_images(2))  # GC alone
    assert _parameters_without_gradient(model, **inputs) == []
    assert "region_logit_scale" in model.state_dict()  # still saved, under its name


@pytest.mark.parametrize(
    ("mode", "lrc_weight", "trained"),
    [("shared", 1.0, False), ("separate", 0.0, False), ("separate", 1.0, True), ("from_global", 1.0, True)],
)
def test_region_logit_scale_is_a_parameter_only_where_a_loss_reads_it(mode: str, lrc_weight: float, trained: bool):
    model = tiny_harmoclip_model(region_logit_scale_mode=mode, loss_lrc_weight=lrc_weight).train()
    names = dict(model.named_parameters())
    assert ("region_logit_scale" in names) is trained
    assert _parameters_without_gradient(model, **training_batch(model)) == []
    if trained:
        assert model.region_logit_scale.grad.abs() > 0


def test_checkpoints_load_across_modes(tmp_path: Path) -> None:
    """A checkpoint written where the scale was a parameter loads where it is a buffer, and back, value kept."""
    separate = tiny_harmoclip_model(region_logit_scale_mode="separate", loss_lrc_weight=1.0)
    with torch.no_grad():
        separate.region_logit_scale.fill_(2.25)
    separate.save_pretrained(tmp_path / "separate")
    shared = HarmoCLIPModel.from_pretrained(tmp_path / "separate", region_logit_scale_mode="shared")
    assert "region_logit_scale" not in dict(shared.named_parameters())
    assert float(shared.region_logit_scale) == pytest.approx(2.25)
    shared.save_pretrained(tmp_path / "shared")
    again = HarmoCLIPModel.from_pretrained(tmp_path / "shared", region_logit_scale_mode="separate", loss_lrc_weight=1.0)
    assert isinstance(again.region_logit_scale, torch.nn.Parameter)
    assert float(again.region_logit_scale.detach()) == pytest.approx(2.25)


@pytest.mark.distributed
def test_two_process_ddp_without_unused_parameter_search(tmp_path: Path) -> None:
    """Two gloo processes, `find_unused_parameters=False`, three steps: before the fix the second step raised
    "Expected to have finished reduction in the prior iteration"."""
    out = tmp_path / "params.pt"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
    command = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", free_port()]
    result = subprocess.run(
        [*command, str(ROOT / "tests" / "ddp_default_loss_worker.py"), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = torch.load(out)
    assert saved["world_size"] == 2 and saved["steps"] == 3
    start = dict(tiny_harmoclip_model().named_parameters())
    name = "visual_projection.weight"  # GR trains it (GC on one pair per process is a constant)
    assert not torch.equal(saved["state"][name], start[name].detach())
