"""The training loop, run for real: as a script, under accelerate launch and torchrun, killed and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import ROOT

PYTHON = sys.executable
# Subprocesses import this checkout (not whichever copy of the project is installed).
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
BIN = Path(sys.executable).parent

# A few seconds per run on 2 cores: 32 px images, 16 training images, 4 per batch.
SMALL = [
    "--synthetic_num_train", "16", "--synthetic_num_val", "8", "--synthetic_image_size", "32", "--image_size", "32",
    "--batch_size", "4", "--log_every", "1", "--warmup_steps", "1", "--evaluate_at_end", "false",
    "--report_to_tensorboard", "false",
]


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> Path:
    from training.synthetic import SyntheticSettings, generate_synthetic_dataset

    folder = tmp_path_factory.mktemp("data") / "synthetic"
    return generate_synthetic_dataset(folder, SyntheticSettings(num_train=16, num_val=8, seed=0, image_size=32))


def run_training(launcher: list[str], output_dir: Path, synthetic_dir: Path, *extra: str, timeout: int = 300) -> subprocess.CompletedProcess:
    command = [*launcher, str(ROOT / "training" / "train.py"), "--config", str(ROOT / "configs" / "synthetic_tiny.yaml"),
               *SMALL, "--synthetic_dir", str(synthetic_dir), "--output_dir", str(output_dir), *extra]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def read_metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def test_script_run_saves_a_hub_ready_model(tmp_path: Path, synthetic_dir: Path) -> None:
    out = tmp_path / "run"
    run_training([PYTHON], out, synthetic_dir, "--max_steps", "3", "--checkpoint_every", "2")
    records = read_metrics(out)
    assert [record["step"] for record in records] == [1, 2, 3]
    assert all({"loss", "loss_gc", "loss_lrc", "loss_gr", "lr", "logit_scale", "samples_per_second"} <= set(r) for r in records)
    for record in records:  # the total is the weighted sum of the terms (all weights 1 in the shipped config)
        assert record["loss"] == pytest.approx(record["loss_gc"] + record["loss_lrc"] + record["loss_gr"], rel=1e-5)
    assert (out / "loss_curves.png").stat().st_size > 1000 and (out / "train.log").is_file()
    assert sorted(path.name for path in (out / "checkpoints").iterdir()) == ["step_00000002", "step_00000003"]
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(out / "model", trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(out / "model", trust_remote_code=True)
    assert type(model).__name__ == "HarmoCLIPModel" and processor.region_mode is True
    trained = load_file(out / "model" / "model.safetensors")
    last = load_file(out / "checkpoints" / "step_00000003" / "model.safetensors")
    assert all(torch.equal(trained[name], last[name]) for name in last)


def test_torchrun_two_processes_and_accelerate_launch(tmp_path: Path, synthetic_dir: Path) -> None:
    two = tmp_path / "torchrun"
    run_training([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "29561"], two, synthetic_dir, "--max_steps", "2")
    records = read_metrics(two)
    assert [record["step"] for record in records] == [1, 2]
    assert "processes: 2" in (two / "train.log").read_text()
    assert (two / "model" / "model.safetensors").is_file()
    one = tmp_path / "accelerate"
    run_training([str(BIN / "accelerate"), "launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
                  "--mixed_precision", "no", "--dynamo_backend", "no"], one, synthetic_dir, "--max_steps", "2")
    assert "processes: 1" in (one / "train.log").read_text() and (one / "model" / "config.json").is_file()


def test_two_processes_equal_one_with_the_whole_batch(tmp_path: Path) -> None:
    """Losses and gradients of 2 gloo processes with batch b each equal those of 1 process with batch 2b."""
    worker = ROOT / "tests" / "distributed_worker.py"
    env = ENV
    subprocess.run([PYTHON, str(worker), "--out", str(tmp_path / "one.pt")], cwd=ROOT, env=env, check=True, capture_output=True)
    subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "29562", str(worker), "--out",
                    str(tmp_path / "two.pt")], cwd=ROOT, env=env, check=True, capture_output=True)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert (one["processes"], two["processes"]) == (1, 2)
    assert set(one["losses"]) == {"loss", "loss_gc", "loss_lrc", "loss_gr"}
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
    command = [PYTHON, str(ROOT / "training" / "train.py"), "--config", str(ROOT / "configs" / "synthetic_tiny.yaml"), *SMALL,
               "--synthetic_dir", str(synthetic_dir), "--output_dir", str(killed), *steps]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=ENV)
    deadline = time.time() + 240
    while not (killed / "checkpoints" / "step_00000004" / "trainer_state.json").exists():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "model").exists()

    run_training([PYTHON], killed, synthetic_dir, *steps, "--resume", "true")
    log = (killed / "train.log").read_text()
    assert "resumed from" in log
    expected = load_file(reference / "model" / "model.safetensors")
    resumed = load_file(killed / "model" / "model.safetensors")
    assert set(expected) == set(resumed)
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name
    assert [r["step"] for r in read_metrics(killed)][-1] == 8


def test_shipped_configs_parse_and_validate() -> None:
    from training.config import load_config

    for path in sorted((ROOT / "configs").glob("*.yaml")):
        config = load_config(path)
        assert config.max_steps > 0, path
    finetune = load_config(ROOT / "configs" / "vitb16_finetune.yaml")
    assert (finetune.image_size, finetune.patch_size, finetune.learning_rate, finetune.weight_decay) == (224, 16, 1e-5, 0.1)
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
