"""Streamed `data_format: hf` training, run for real: two processes under torchrun (each reads its own rows, every row
once per epoch), killed and resumed (the same weights as an uninterrupted run), one process and two."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT
from training.data.prepare import build_parser, prepare
from training.data.synthetic import SyntheticSettings, generate_synthetic_dataset
from training_runs import BIN, ENV, PYTHON, SMALL, free_port, kill_after_checkpoint, read_metrics

# Streamed training runs for real: the slow tier; the multi-process ones are marked distributed too.
pytestmark = pytest.mark.slow


def prepare_main(argv: list[str]):
    return prepare(build_parser().parse_args(argv))


STREAM_ENV = {**ENV, "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, Path]:
    """The synthetic train split (16 images) as Parquet in 4 even shards and in 4 uneven ones (5, 5, 5, 1)."""
    root = tmp_path_factory.mktemp("stream")
    synthetic = generate_synthetic_dataset(
        root / "synthetic", SyntheticSettings(num_train=16, num_val=8, seed=0, image_size=32)
    )
    manifest = str(synthetic / "train.jsonl")
    for name, per_shard in (("even", "4"), ("uneven", "5")):
        prepare_main(
            ["--source", "jsonl", "--input", manifest, "--out", str(root / name), "--samples-per-shard", per_shard]
        )
    (root / "wds").mkdir()
    prepare_main(
        [
            "--source",
            "jsonl",
            "--input",
            manifest,
            "--out",
            str(root / "wds" / "train"),
            "--format",
            "webdataset",
            "--samples-per-shard",
            "4",
        ]
    )
    return {"even": root / "even", "uneven": root / "uneven", "webdataset": root / "wds" / "train"}


def run_stream_worker(data: Path, out: Path, *extra: str) -> dict:
    command = [
        str(BIN / "torchrun"),
        "--nproc_per_node",
        "2",
        "--master_port",
        free_port(),
        str(ROOT / "tests" / "stream_worker.py"),
        "--data",
        str(data),
        "--out",
        str(out),
        *extra,
    ]
    result = subprocess.run(command, cwd=ROOT, env=STREAM_ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-5000:]
    return json.loads(out.read_text())


@pytest.mark.distributed
def test_two_processes_read_every_row_once_per_epoch(tmp_path: Path, shards) -> None:
    even = run_stream_worker(shards["even"], tmp_path / "even.json", "--workers", "1")
    assert even["processes"] == 2
    first, second = ([i for batch in ids for i in batch] for ids in even["epoch0"])
    assert len(even["epoch0"][0]) == len(even["epoch0"][1]) == 4  # 8 rows each, batches of 2
    assert not set(first) & set(second)
    assert sorted(first + second) == [f"train/{i:06d}" for i in range(16)]
    assert even["epoch1_batches"] == [1, 1]
    assert even["process_group_left"] is False  # the teardown destroyed it (see `end_distributed_run`)
    # Shards of 5, 5, 5 and 1 rows: 10 rows for one process, 6 for the other. The epoch ends for both when the second
    # runs out (3 batches each), without a hang, and no row is read twice.
    uneven = run_stream_worker(shards["uneven"], tmp_path / "uneven.json")
    assert [len(ids) for ids in uneven["epoch0"]] == [3, 3] and uneven["epoch1_batches"] == [1, 1]
    assert uneven["process_group_left"] is False
    first, second = ([i for batch in ids for i in batch] for ids in uneven["epoch0"])
    assert len(set(first + second)) == 12


def stream_args(data: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        str(ROOT / "training" / "train.py"),
        "--config",
        str(ROOT / "configs" / "synthetic_tiny.yaml"),
        *SMALL,
        "--data_format",
        "hf",
        "--train_data",
        str(data),
        "--streaming",
        "true",
        "--output_dir",
        str(output_dir),
        *extra,
    ]


def run(command: list[str]) -> None:
    result = subprocess.run(command, cwd=ROOT, env=STREAM_ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stderr[-6000:]}"


def assert_same_weights(expected_dir: Path, resumed_dir: Path) -> None:
    expected = load_file(expected_dir / "model" / "model.safetensors")
    resumed = load_file(resumed_dir / "model" / "model.safetensors")
    assert set(expected) == set(resumed)
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name


def test_killed_streamed_run_resumes_to_the_same_weights(tmp_path: Path, shards) -> None:
    """WebDataset shards, 2 loader workers, 4 batches per epoch: the run is killed after step 4 (an epoch boundary
    behind it, mid-way through the stream's shards at step 6) and resumed."""
    steps = ["--max_steps", "10", "--checkpoint_every", "3", "--keep_checkpoints", "2", "--num_workers", "2"]
    reference = tmp_path / "reference"
    run([PYTHON, *stream_args(shards["webdataset"], reference, *steps)])
    assert [r["epoch"] for r in read_metrics(reference)] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [PYTHON, *stream_args(shards["webdataset"], killed, *steps)],
        cwd=ROOT,
        env=STREAM_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    kill_after_checkpoint(process, killed / "checkpoints" / "step_00000006")
    assert not (killed / "model").exists()
    saved = json.loads((killed / "checkpoints" / "step_00000006" / "process_00000.json").read_text())
    assert saved["num_processes"] == 1 and saved["stream_position"]["rows"] == 8  # epoch 1, 2 batches of 4 in

    run([PYTHON, *stream_args(shards["webdataset"], killed, *steps, "--resume", "true")])
    assert "resumed from" in (killed / "train.log").read_text()
    assert_same_weights(reference, killed)
    assert [r["step"] for r in read_metrics(killed)] == list(range(1, 11))


@pytest.mark.distributed
def test_two_process_streamed_run_resumes_to_the_same_weights(tmp_path: Path, shards) -> None:
    """torchrun, 2 processes on the 4 Parquet shards (8 rows each, 4 batches of 2 per epoch); the interrupted run is
    the reference's folder cut back to its step-2 checkpoint (each process's stream position in it), resumed."""
    steps = ["--max_steps", "6", "--checkpoint_every", "2", "--keep_checkpoints", "3", "--batch_size", "2"]
    reference = tmp_path / "reference"
    torchrun = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", free_port()]
    run([*torchrun, *stream_args(shards["even"], reference, *steps)])
    assert "processes: 2" in (reference / "train.log").read_text()
    checkpoint = reference / "checkpoints" / "step_00000002"
    positions = [
        json.loads((checkpoint / f"process_{rank:05d}.json").read_text())["stream_position"] for rank in range(2)
    ]
    assert [p["rows"] for p in positions] == [4, 4]  # 2 batches of 2 into each process's 8 rows

    interrupted = tmp_path / "interrupted"
    shutil.copytree(reference, interrupted)
    shutil.rmtree(interrupted / "model")
    for step in (4, 6):
        shutil.rmtree(interrupted / "checkpoints" / f"step_{step:08d}")
    torchrun = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", free_port()]
    run([*torchrun, *stream_args(shards["even"], interrupted, *steps, "--resume", "true")])
    assert "resumed from" in (interrupted / "train.log").read_text()
    assert_same_weights(reference, interrupted)
    # a streamed checkpoint belongs to its number of processes
    one = subprocess.run(
        [PYTHON, *stream_args(shards["even"], interrupted, *steps, "--resume", "true")],
        cwd=ROOT,
        env=STREAM_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode != 0 and "saved by 2 processes" in one.stderr
