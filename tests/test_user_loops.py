"""HarmoCLIP trained by the loops users already have: a plain PyTorch loop calling `model(**batch, return_loss=True)`
and transformers' `Trainer` (with gradient checkpointing; under torchrun with two gloo processes), on the project's
collator (`training.loop_batches.ModelBatchCollator`), with a GR teacher that works there: the model's own crops or a
cache of the starting weights' crop embeddings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from modeling_harmoclip import HarmoCLIPModel
from modeling_harmoclip.processing_harmoclip import HarmoCLIPProcessor
from training.builders import build_model_and_processor, build_teacher_cache, region_collator
from training.cache_teacher import build_teacher_cache_folder
from training.config import TrainConfig
from training.data.collate import RegionCollator
from training.data.data_jsonl import JsonlRegionDataset
from training.loop_batches import ModelBatchCollator, trainable_parameters_without_gradient
from training.teacher import frozen_copy
from training.train import forward_objective
from training_runs import free_port, tiny_model_folder

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    from training.data.synthetic import SyntheticSettings, generate_synthetic_dataset

    root = tmp_path_factory.mktemp("user_loops")
    data = generate_synthetic_dataset(root / "data", SyntheticSettings(num_train=8, num_val=4, seed=0, image_size=32))
    return {"root": root, "data": data, "model": tiny_model_folder(root / "model")}


def _config(world: dict[str, Path], **overrides) -> TrainConfig:
    return TrainConfig(
        synthetic_dir=str(world["data"]),
        synthetic_num_train=8,
        synthetic_num_val=4,
        synthetic_image_size=32,
        init_from=str(world["model"]),
        image_size=32,
        batch_size=4,
        **overrides,
    )


def _dataset(world: dict[str, Path]) -> JsonlRegionDataset:
    return JsonlRegionDataset(world["data"] / "train.jsonl", max_boxes=20, min_box_size=4.0, seed=0)


def _processor(world: dict[str, Path]) -> HarmoCLIPProcessor:
    return HarmoCLIPProcessor.from_pretrained(world["model"]).as_region_mode()


def test_plain_loop_with_cached_teacher_is_the_frozen_teacher_and_the_projects_loss(world) -> None:
    """The default recipe (GC + GR under a frozen teacher) in a plain loop: the cache's targets are the frozen
    starting weights' crop embeddings, the loss is the project's loop's, and every trainable parameter learns."""
    cache_dir = world["root"] / "teacher_cache"
    config = _config(world, gr_teacher="cached", teacher_cache=str(cache_dir))
    build_teacher_cache_folder(config, cache_dir, batch_size=4)
    model, processor = build_model_and_processor(config)
    model.train()
    collator = ModelBatchCollator(processor, model.config, teacher_cache=build_teacher_cache(config, processor))
    samples = [_dataset(world)[index] for index in range(4)]
    batch = collator(samples)
    assert "teacher_region_embeds" in batch and "image_ids" not in batch and "crop_pixel_values" not in batch

    # The cache holds what a frozen copy of the starting weights computes from the boxes' crops.
    crops = RegionCollator(processor, return_crops=True, crop_scale=config.gr_crop_scale)(samples)
    with torch.no_grad():
        frozen = frozen_copy(model).get_crop_features(
            crops["crop_pixel_values"], crops["crop_mask"] & crops["box_mask"]
        )
    assert (batch["teacher_region_embeds"] - frozen).abs().max() <= 1e-5

    # The project's own loop computes the same loss from its own batch.
    project = forward_objective(
        model, model, region_collator(config, processor)(samples), config, Accelerator(cpu=True), None,
        build_teacher_cache(config, processor),
    )  # fmt: skip
    out = model(**batch, return_loss=True)
    assert out.loss_gr is not None and torch.allclose(out.loss, project.total, atol=1e-5)

    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for batch in DataLoader(_dataset(world), batch_size=4, collate_fn=collator):
        optimizer.zero_grad(set_to_none=True)
        loss = model(**batch, return_loss=True).loss
        loss.backward()
        assert torch.isfinite(loss) and trainable_parameters_without_gradient(model) == []
        optimizer.step()
    assert not torch.equal(
        start["vision_model.encoder.layers.1.mlp.fc1.weight"], model.vision_model.encoder.layers[1].mlp.fc1.weight
    )


@pytest.mark.parametrize("teacher", ["self_stop_grad", "self_with_grad"])
def test_the_model_as_its_own_teacher_in_forward(world, teacher: str) -> None:
    """Crops in the batch: forward computes GR's targets with the model itself, as the project's loop does for a live
    teacher (with gradients only for "self_with_grad")."""
    model = HarmoCLIPModel.from_pretrained(world["model"], gr_teacher=teacher).train()
    batch = ModelBatchCollator(_processor(world), model.config)([_dataset(world)[index] for index in range(3)])
    assert "crop_pixel_values" in batch and "teacher_region_embeds" not in batch
    own = model(**batch, return_loss=True)
    crops = {key: batch[key] for key in ("crop_pixel_values", "crop_mask")}
    given = {key: value for key, value in batch.items() if key not in crops}
    with torch.set_grad_enabled(teacher == "self_with_grad"):
        targets = model.get_crop_features(crops["crop_pixel_values"], crops["crop_mask"] & batch["box_mask"])
    reference = model(**given, teacher_region_embeds=targets, return_loss=True)
    assert torch.allclose(own.loss, reference.loss, atol=1e-6) and own.loss_gr is not None
    own.loss.backward()
    own_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    reference.loss.backward()
    for name, parameter in model.named_parameters():
        if parameter.grad is not None:
            torch.testing.assert_close(own_grads[name], parameter.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_a_frozen_teacher_needs_its_cache(world) -> None:
    model = HarmoCLIPModel.from_pretrained(world["model"])  # the default recipe: a frozen teacher
    with pytest.raises(ValueError, match="`teacher_cache` is required with gr_teacher='frozen'"):
        ModelBatchCollator(_processor(world), model.config)
    crops = ModelBatchCollator(
        _processor(world), HarmoCLIPModel.from_pretrained(world["model"], gr_teacher="self_stop_grad").config
    )([_dataset(world)[0]])
    with pytest.raises(ValueError, match="needs `gr_teacher` 'self_with_grad' or 'self_stop_grad', got 'frozen'"):
        model(**crops, return_loss=True)


def _trainer(world, output: Path, launcher: list[str], *extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [*launcher, "-m", "training.trainer_example", "--model", str(world["model"])]
    command += ["--data", str(world["data"]), "--output_dir", str(output), "--gradient_checkpointing", *extra]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((output / "log_history.json").read_text())


def test_trainer_with_gradient_checkpointing(world, tmp_path: Path) -> None:
    history = _trainer(world, tmp_path / "trainer", [sys.executable], "--max_steps", "2")
    losses = [record["loss"] for record in history["log_history"] if "loss" in record]
    assert history["world_size"] == 1 and len(losses) == 2 and all(loss == loss for loss in losses)
    trained = load_file(tmp_path / "trainer" / "model" / "model.safetensors")
    start = load_file(world["model"] / "model.safetensors")
    assert not torch.equal(trained["visual_projection.weight"], start["visual_projection.weight"])
    HarmoCLIPModel.from_pretrained(tmp_path / "trainer" / "model")  # a model folder as any other


@pytest.mark.distributed
@pytest.mark.slow
def test_trainer_under_torchrun_with_two_processes(world, tmp_path: Path) -> None:
    """Trainer under DDP with gradient checkpointing, i.e. `find_unused_parameters=False`: every trainable parameter
    must get a gradient at every step."""
    launcher = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", free_port()]
    history = _trainer(world, tmp_path / "ddp", launcher, "--max_steps", "3", "--batch_size", "2")
    losses = [record["loss"] for record in history["log_history"] if "loss" in record]
    assert history["world_size"] == 2 and len(losses) == 3
