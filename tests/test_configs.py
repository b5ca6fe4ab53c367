"""Shipped configs: configs/vitb16_finetune.yaml states FineCLIP's recipe so that it scales (every row of its GPU
table keeps the global batch of 256, and max_steps is FineCLIP's 10 epochs of COCO train2017 at that batch); the
ViT-L/14-336 preset is FineCLIP's ViT-L recipe; Accelerate's launch configs for many GPUs and machines are read by
Accelerate's own loader and launcher."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT
from training_runs import ENV, PYTHON, tiny_model_folder

COCO_TRAIN2017_IMAGES = 118_287
GLOBAL_BATCH = 256  # FineCLIP: 8 GPUs x 32 (scripts/train_vitb16.sh)
EPOCHS = 10


def test_finetune_config_matches_fineclips_schedule_for_any_number_of_gpus():
    from training.config import load_config

    path = ROOT / "configs" / "vitb16_finetune.yaml"
    config = load_config(path)
    steps_per_epoch = COCO_TRAIN2017_IMAGES // GLOBAL_BATCH  # the last partial batch is dropped
    assert config.max_steps == EPOCHS * steps_per_epoch == 4620
    assert config.warmup_steps == 1000 and config.learning_rate == 1e-5 and config.weight_decay == 0.1
    # The shipped values are the 8-process row.
    assert config.batch_size * 8 * config.gradient_accumulation_steps == GLOBAL_BATCH
    rows = re.findall(
        r"^#\s+(\d+)\s+\|\s+(\d+)\s+\|\s+(\d+)\s+\|\s+(\d+)\s+\|\s+(\d+)", path.read_text(), flags=re.MULTILINE
    )
    assert {int(row[0]) for row in rows} == {1, 2, 8}
    for gpus, batch_size, accumulation, global_batch, contrastive in (tuple(map(int, row)) for row in rows):
        assert gpus * batch_size * accumulation == global_batch == GLOBAL_BATCH
        assert contrastive == gpus * batch_size


ACCELERATE_CONFIGS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))


def test_accelerate_configs_exist() -> None:
    assert {path.name for path in ACCELERATE_CONFIGS} == {"multi_gpu.yaml", "multi_node.yaml"}


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda path: path.name)
def test_accelerate_config_loads_with_accelerates_loader(path: Path) -> None:
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.utils import DistributedType

    config = load_config_from_file(str(path))
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type == DistributedType.MULTI_GPU and config.mixed_precision == "bf16"
    assert config.num_processes % config.num_machines == 0 and 0 <= config.machine_rank < config.num_machines
    assert not config.use_cpu


def _launch_arguments(path: Path, *options: str):
    """What `accelerate launch --config_file path *options training/train.py` hands torchrun (no process started)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(path), *options, "training/train.py"])
    _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    return args, env


def test_multi_gpu_config_launches_one_process_per_gpu() -> None:
    args, env = _launch_arguments(ROOT / "configs" / "accelerate" / "multi_gpu.yaml", "--main_process_port", "0")
    assert args.multi_gpu and args.num_machines == 1 and args.nproc_per_node == "8"
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    args, _ = _launch_arguments(
        ROOT / "configs" / "accelerate" / "multi_gpu.yaml", "--num_processes", "4", "--main_process_port", "0"
    )
    assert args.nproc_per_node == "4"  # the command line overrides the file


def test_multi_node_config_launches_each_machine_with_its_rank() -> None:
    # Rank 1 only: the launcher checks the port on machine 0 alone, and nothing is started here.
    args, env = _launch_arguments(ROOT / "configs" / "accelerate" / "multi_node.yaml", "--machine_rank", "1")
    assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("2", "8", 1)
    endpoint = getattr(args, "master_addr", None) or getattr(args, "rdzv_endpoint", "")
    assert "node-0" in endpoint and env["ACCELERATE_MIXED_PRECISION"] == "bf16"


def test_vitl14_336_preset_is_fineclips_vitl_recipe() -> None:
    from training.config import load_config

    config = load_config(ROOT / "configs" / "vitl14_336_finetune.yaml")
    assert (config.image_size, config.patch_size, config.image_size // config.patch_size) == (336, 14, 24)
    assert (config.batch_size, config.learning_rate, config.weight_decay, config.warmup_steps) == (10, 1e-5, 0.1, 1000)
    assert config.max_boxes == 5 and config.mixed_precision == "bf16" and config.gradient_checkpointing
    # 10 epochs of COCO train2017 at global batch 80 (8 processes x 10), as the sampler counts whole batches.
    assert config.max_steps == EPOCHS * (COCO_TRAIN2017_IMAGES // (8 * config.batch_size))
    assert config.init_from and config.data_format == "coco"


def test_vitl14_336_preset_refuses_a_model_of_another_geometry(tmp_path: Path) -> None:
    """The preset's 336 px / patch 14 against a converted 32 px / patch 8 model: one clear error, before any data."""
    init = tiny_model_folder(tmp_path / "init")
    command = [
        PYTHON,
        str(ROOT / "training" / "train.py"),
        "--config",
        str(ROOT / "configs" / "vitl14_336_finetune.yaml"),
        "--init_from",
        str(init),
        "--output_dir",
        str(tmp_path / "out"),
        "--report_to",
        "none",
    ]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "`image_size`/`patch_size` (336/14) differ from the model in `init_from`" in result.stderr
    assert "(32/8)" in result.stderr
