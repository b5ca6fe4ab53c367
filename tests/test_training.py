"""The training loop, run for real: as a script, under accelerate launch and torchrun, killed and resumed."""

from __future__ import annotations

import json
import logging
import math
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

from conftest import ROOT
from training_runs import (
    BIN,
    ENV,
    PYTHON,
    free_port,
    kill_after_checkpoint,
    read_metrics,
    tiny_model_folder,
    training_command,
)

# Training runs for real (scripts, launchers, resumes): the slow tier; the multi-process ones are marked distributed too.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> Path:
    from training.data.synthetic import SyntheticSettings, generate_synthetic_dataset

    folder = tmp_path_factory.mktemp("data") / "synthetic"
    return generate_synthetic_dataset(folder, SyntheticSettings(num_train=16, num_val=8, seed=0, image_size=32))


def run_training(
    launcher: list[str], output_dir: Path, synthetic_dir: Path, *extra: str, timeout: int = 300
) -> subprocess.CompletedProcess:
    command = training_command(launcher, output_dir, synthetic_dir, *extra)
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


TERMS = ("gc", "lrc", "rla", "gr")


def test_script_run_saves_a_hub_ready_model(tmp_path: Path, synthetic_dir: Path) -> None:
    out = tmp_path / "run"
    run_training([PYTHON], out, synthetic_dir, "--max_steps", "3", "--checkpoint_every", "2")
    records = read_metrics(out)
    assert [record["step"] for record in records] == [1, 2, 3]
    weights = {term: json.loads((out / "config.json").read_text())[f"loss_{term}_weight"] for term in TERMS}
    logged = {f"loss_{term}" for term, weight in weights.items() if weight > 0}
    assert len(logged) >= 2 and all(
        {"loss", "lr", "logit_scale", "samples_per_second"} | logged <= set(r) for r in records
    )
    for record in records:  # the total is the weighted sum of the terms the shipped config turns on
        expected = sum(weights[term] * record[f"loss_{term}"] for term in TERMS if weights[term] > 0)
        assert record["loss"] == pytest.approx(expected, rel=1e-5)
    assert (out / "loss_curves.png").stat().st_size > 1000 and (out / "train.log").is_file()
    assert sorted(path.name for path in (out / "checkpoints").iterdir()) == ["step_00000002", "step_00000003"]
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(out / "model", trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(out / "model", trust_remote_code=True)
    assert type(model).__name__ == "HarmoCLIPModel" and processor.region_mode is True
    trained = load_file(out / "model" / "model.safetensors")
    last = load_file(out / "checkpoints" / "step_00000003" / "model.safetensors")
    assert all(torch.equal(trained[name], last[name]) for name in last)


def test_locking_accumulation_clamping_and_tensorboard(tmp_path: Path, synthetic_dir: Path) -> None:
    """Locked parts keep their starting weights, the rest moves; logit scales stay clamped; TensorBoard events."""
    from training.builders import build_model_and_processor
    from training.config import load_config

    out = tmp_path / "locked"
    run_training(
        [PYTHON],
        out,
        synthetic_dir,
        "--max_steps",
        "2",
        "--gradient_accumulation_steps",
        "2",
        "--lock_text",
        "true",
        "--lock_vision_layers",
        "2",
        "--learning_rate",
        "0.05",
        "--max_logit_scale",
        "10",
        "--report_to",
        "tensorboard",
    )
    config = load_config(ROOT / "configs" / "synthetic_tiny.yaml", {"image_size": 32})
    start = build_model_and_processor(config)[0].state_dict()  # the same seed: the starting weights
    trained = load_file(out / "model" / "model.safetensors")
    unchanged = [name for name in trained if torch.equal(trained[name], start[name])]
    assert {name for name in trained if name.startswith(("text_model.", "text_projection."))} <= set(unchanged)
    frozen_vision = (
        "vision_model.embeddings.",
        "vision_model.pre_layrnorm.",
        "vision_model.encoder.layers.0.",
        "vision_model.encoder.layers.1.",
    )
    assert {name for name in trained if name.startswith(frozen_vision)} <= set(unchanged)
    assert not torch.equal(
        trained["vision_model.encoder.layers.3.mlp.fc1.weight"], start["vision_model.encoder.layers.3.mlp.fc1.weight"]
    )
    # Both start at log(1 / 0.07) = 2.66 > log(10), and two steps of 0.05 cannot bring them below it: the clamp does.
    assert (
        float(trained["logit_scale"]) <= math.log(10) + 1e-6
        and float(trained["region_logit_scale"]) <= math.log(10) + 1e-6
    )
    records = read_metrics(out)
    assert [r["step"] for r in records] == [1, 2] and records[0]["samples_per_second"] > 0
    assert list((out / "harmoclip").rglob("events.out.tfevents.*")), "no TensorBoard event file"


@pytest.mark.distributed
def test_torchrun_two_processes_and_accelerate_launch(tmp_path: Path, synthetic_dir: Path) -> None:
    two = tmp_path / "torchrun"
    run_training(
        [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", free_port()],
        two,
        synthetic_dir,
        "--max_steps",
        "2",
    )
    records = read_metrics(two)
    assert [record["step"] for record in records] == [1, 2]
    assert "processes: 2" in (two / "train.log").read_text()
    assert (two / "model" / "model.safetensors").is_file()
    one = tmp_path / "accelerate"
    run_training(
        [
            str(BIN / "accelerate"),
            "launch",
            "--cpu",
            "--num_processes",
            "1",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
        ],
        one,
        synthetic_dir,
        "--max_steps",
        "2",
    )
    assert "processes: 1" in (one / "train.log").read_text() and (one / "model" / "config.json").is_file()


@pytest.mark.distributed
def test_two_processes_equal_one_with_the_whole_batch(tmp_path: Path) -> None:
    """Losses and gradients of 2 gloo processes with batch b each equal those of 1 process with batch 2b."""
    worker = ROOT / "tests" / "distributed_worker.py"
    env = ENV
    subprocess.run(
        [PYTHON, str(worker), "--out", str(tmp_path / "one.pt")],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    subprocess.run(
        [
            str(BIN / "torchrun"),
            "--nproc_per_node",
            "2",
            "--master_port",
            free_port(),
            str(worker),
            "--out",
            str(tmp_path / "two.pt"),
        ],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,  # a hung teardown fails here instead of holding the suite
    )
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert (one["processes"], two["processes"]) == (1, 2)
    assert set(one["losses"]) == {"loss", "loss_gc", "loss_lrc", "loss_gr", "loss_rla"}
    for name, value in one["losses"].items():
        assert abs(value - two["losses"][name]) <= 1e-5 * max(1.0, abs(value)), name
    assert set(one["grads"]) == set(two["grads"])
    for name, grad in one["grads"].items():
        scale = max(1.0, grad.abs().max().item())
        assert (grad - two["grads"][name]).abs().max().item() <= 1e-5 * scale, name


def test_killed_run_resumes_to_the_same_weights(tmp_path: Path, synthetic_dir: Path) -> None:
    steps = ["--max_steps", "8", "--checkpoint_every", "2", "--keep_checkpoints", "2"]
    reference = tmp_path / "reference"
    run_training([PYTHON], reference, synthetic_dir, *steps)

    killed = tmp_path / "killed"
    command = training_command([PYTHON], killed, synthetic_dir, *steps)
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    kill_after_checkpoint(process, killed / "checkpoints" / "step_00000004")
    assert not (killed / "model").exists()

    run_training([PYTHON], killed, synthetic_dir, *steps, "--resume", "true")
    log = (killed / "train.log").read_text()
    assert "resumed from" in log
    expected = load_file(reference / "model" / "model.safetensors")
    resumed = load_file(killed / "model" / "model.safetensors")
    assert set(expected) == set(resumed)
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name
    assert [r["step"] for r in read_metrics(killed)] == list(range(1, 9))  # steps after the checkpoint not repeated


def test_shipped_configs_parse_and_validate() -> None:
    from training.config import load_config

    for path in sorted((ROOT / "configs").glob("*.yaml")):
        config = load_config(path)
        assert config.max_steps > 0, path
    finetune = load_config(ROOT / "configs" / "vitb16_finetune.yaml")
    assert (finetune.image_size, finetune.patch_size, finetune.learning_rate, finetune.weight_decay) == (
        224,
        16,
        1e-5,
        0.1,
    )
    assert finetune.mixed_precision == "bf16" and not finetune.lock_text and finetune.max_boxes == 20


def test_config_errors_name_the_option(tmp_path: Path) -> None:
    from training.config import build_argument_parser, config_from_args, load_config

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"learning_rat": 0.1}))
    with pytest.raises(ValueError, match="learning_rat"):
        load_config(bad)
    with pytest.raises(ValueError, match="gr_teacher"):
        load_config(None, {"gr_teacher": "teacher"})
    with pytest.raises(ValueError, match="train_data"):
        load_config(None, {"data_format": "coco"})
    parser = build_argument_parser("test")
    with pytest.raises(ValueError, match="--batch_size"):
        config_from_args(parser.parse_args(["--batch-size", "many"]))
    config = config_from_args(parser.parse_args(["--batch-size", "3", "--lock_text", "yes", "--init_from", "none"]))
    assert config.batch_size == 3 and config.lock_text is True and config.init_from is None


def test_finetune_config_code_path_on_coco_files(tmp_path: Path) -> None:
    """configs/vitb16_finetune.yaml's path (COCO captions + instances, init_from a converted folder, bf16) on a tiny
    model; a missing image is skipped and reported with its path."""
    from data_files import write_coco

    captions, instances, images = write_coco(tmp_path)
    init = tiny_model_folder(tmp_path / "init")
    out = tmp_path / "finetune"
    command = [
        PYTHON,
        str(ROOT / "training" / "train.py"),
        "--config",
        str(ROOT / "configs" / "vitb16_finetune.yaml"),
        "--train_data",
        str(captions),
        "--coco_instances",
        str(instances),
        "--image_root",
        str(images),
        "--val_data",
        "none",
        "--init_from",
        str(init),
        "--image_size",
        "32",
        "--patch_size",
        "8",
        "--batch_size",
        "2",
        "--num_workers",
        "0",
        "--max_steps",
        "3",
        "--warmup_steps",
        "1",
        "--log_every",
        "1",
        "--output_dir",
        str(out),
        "--report_to",
        "none",
        "--min_box_size",
        "4",
        # The config's recipe is GC + GR; RLA on as well, so that COCO's boxes linked to caption phrases are trained on.
        "--loss_rla_weight",
        "0.5",
    ]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-5000:]
    log = (out / "train.log").read_text()
    assert "mixed precision: bf16" in log
    assert "skipped 1 unreadable sample(s)" in log and "000000000013.jpg" in log
    records = read_metrics(out)
    assert [r["step"] for r in records] == [1, 2, 3] and all(r["lr"] <= 1e-5 for r in records)
    assert all("loss_rla" in r and "loss_gr" in r for r in records)  # COCO boxes linked to phrases (RLA), and GR
    saved = json.loads((out / "model" / "config.json").read_text())
    assert saved["model_type"] == "harmoclip" and saved["gr_teacher"] == "frozen"
    assert json.loads((out / "model" / "processor_config.json").read_text())["region_mode"] is True

    strict = subprocess.run(
        command[:-4] + ["--output_dir", str(tmp_path / "strict"), "--strict", "true"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert strict.returncode != 0 and "000000000013.jpg" in strict.stderr


def test_cached_teacher_equals_the_frozen_teacher(tmp_path: Path, synthetic_dir: Path) -> None:
    from training.builders import build_datasets, build_model_and_processor
    from training.cache_teacher import build_teacher_cache_folder
    from training.config import load_config
    from training.teacher import TeacherCache

    overrides = {
        "synthetic_num_train": 16,
        "synthetic_num_val": 8,
        "synthetic_image_size": 32,
        "image_size": 32,
        "synthetic_dir": str(synthetic_dir),
        "output_dir": str(tmp_path / "run"),
        "loss_gr_weight": 1.0,  # the main job's config trains from scratch without GR
    }
    config = load_config(ROOT / "configs" / "synthetic_tiny.yaml", overrides)
    cache_dir = build_teacher_cache_folder(config, tmp_path / "cache", batch_size=5)
    with pytest.raises(FileExistsError, match="overwrite"):
        build_teacher_cache_folder(config, cache_dir)

    model, processor = build_model_and_processor(config)  # the starting weights: the frozen teacher
    train_set, _, collator = build_datasets(config, processor)
    batch = collator([train_set[i] for i in range(6)])
    cache = TeacherCache(cache_dir, expected_settings={"gr_crop_scale": 1.5, "region_mode": True})
    cached = cache.lookup(batch["image_ids"], batch["box_indices"])
    with torch.no_grad():
        frozen = model.eval().get_crop_features(batch["crop_pixel_values"], batch["crop_mask"])
    assert batch["box_mask"].sum() > 6
    assert (cached - frozen).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="gr_crop_scale"):
        TeacherCache(cache_dir, expected_settings={"gr_crop_scale": 2.0})

    out = tmp_path / "cached_run"
    run_training(
        [PYTHON],
        out,
        synthetic_dir,
        "--max_steps",
        "2",
        "--gr_teacher",
        "cached",
        "--teacher_cache",
        str(cache_dir),
        "--loss_gr_weight",
        "1",
    )
    assert all("loss_gr" in record for record in read_metrics(out))
    self_run = tmp_path / "self_run"
    run_training(
        [PYTHON],
        self_run,
        synthetic_dir,
        "--max_steps",
        "1",
        "--gr_teacher",
        "self_with_grad",
        "--loss_lrc_weight",
        "0",
        "--loss_gr_weight",
        "1",
    )
    record = read_metrics(self_run)[0]
    assert "loss_gr" in record and "loss_lrc" not in record


def test_self_teacher_with_and_without_gradient() -> None:
    """`self_with_grad` back-propagates GR into the crop branch (FineCLIP), `self_stop_grad` does not. Reference: the
    gradients of ``1 - cos(region, crop)`` written out with the crop embedding kept or detached."""
    from accelerate import Accelerator

    from conftest import tiny_harmoclip_model
    from distributed_worker import global_batch
    from training.config import TrainConfig
    from training.train import forward_objective

    batch = global_batch()
    accelerator = Accelerator(cpu=True)
    for mode in ("self_with_grad", "self_stop_grad"):
        config = TrainConfig(
            gr_teacher=mode, loss_gc_weight=0.0, loss_lrc_weight=0.0, loss_rla_weight=0.0, loss_gr_weight=1.0
        )
        model = tiny_harmoclip_model(seed=0).train()
        forward_objective(model, model, batch, config, accelerator).total.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

        model.zero_grad(set_to_none=True)
        mask = batch["box_mask"]
        regions = model.get_region_features(batch["pixel_values"], batch["boxes"], mask)[mask]
        crops = model.get_crop_features(batch["crop_pixel_values"], batch["crop_mask"] & mask)[mask]
        crops = crops if mode == "self_with_grad" else crops.detach()
        (1 - F.cosine_similarity(regions, crops, dim=-1)).mean().backward()
        expected = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}

        assert set(grads) == set(expected), mode
        for name, grad in grads.items():
            assert (grad - expected[name]).abs().max() <= 1e-5 * max(1.0, grad.abs().max().item()), (mode, name)
        # The dense (value-path) regions never use the last layer's queries: only the crop branch reaches them.
        query = "vision_model.encoder.layers.1.self_attn.q_proj.weight"
        assert (query in grads and grads[query].abs().sum() > 0) == (mode == "self_with_grad"), mode


def test_non_finite_losses_skip_steps_then_stop_keeping_the_last_checkpoint(
    tmp_path: Path, synthetic_dir: Path, monkeypatch
) -> None:
    """Fault injection at the loss: step 2's loss is NaN (skipped), then three in a row stop the run."""
    import training.step as step_module
    import training.train as train_module
    from training.config import load_config

    real = step_module.recipe_loss  # the loss of the one training step (training/step.py)
    calls = {"count": 0}

    def poisoned(*args, **kwargs):
        terms = real(*args, **kwargs)
        calls["count"] += 1
        if calls["count"] == 2 or calls["count"] >= 4:
            terms.total = terms.total * float("nan")
        return terms

    monkeypatch.setattr(step_module, "recipe_loss", poisoned)
    out = tmp_path / "nan"
    config = load_config(
        ROOT / "configs" / "synthetic_tiny.yaml",
        {
            "synthetic_num_train": 16,
            "synthetic_num_val": 8,
            "synthetic_image_size": 32,
            "image_size": 32,
            "batch_size": 4,
            "synthetic_dir": str(synthetic_dir),
            "output_dir": str(out),
            "max_steps": 10,
            "checkpoint_every": 1,
            "max_nonfinite_steps": 3,
            "report_to": "none",
            "evaluate_at_end": False,
            "log_every": 1,
        },
    )
    root_handlers = list(logging.getLogger().handlers)
    with pytest.raises(train_module.TrainingStopped, match="3 consecutive non-finite losses at step 3"):
        train_module.train(config)
    assert logging.getLogger().handlers == root_handlers  # the run wrote train.log without reconfiguring logging
    log = (out / "train.log").read_text()
    assert "non-finite loss at step 2: step skipped (1 in a row)" in log
    assert "the last good checkpoint is" in log and "step_00000002" in log
    assert [path.name for path in (out / "checkpoints").iterdir()] == ["step_00000001", "step_00000002"] or sorted(
        path.name for path in (out / "checkpoints").iterdir()
    ) == ["step_00000001", "step_00000002"]
    assert not (out / "model").exists()
    assert [record["step"] for record in read_metrics(out)] == [1, 2]
