"""What the tests that run training as a command share: the interpreter and environment of the subprocesses, a
small version of the shipped config, and helpers to kill a run after a checkpoint, find a free port, read the
metrics and write a tiny converted model folder."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT

PYTHON = sys.executable
# Subprocesses import this checkout (not whichever copy of the project is installed).
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
BIN = Path(sys.executable).parent

# A few seconds per run on 2 cores: 32 px images, 16 training images, 4 per batch.
SMALL = [
    "--synthetic_num_train",
    "16",
    "--synthetic_num_val",
    "8",
    "--synthetic_image_size",
    "32",
    "--image_size",
    "32",
    "--batch_size",
    "4",
    "--log_every",
    "1",
    "--warmup_steps",
    "1",
    "--evaluate_at_end",
    "false",
    "--report_to",
    "none",
]


def training_command(launcher: list[str], output_dir: Path, synthetic_dir: Path, *extra: str) -> list[str]:
    """training/train.py on the shipped config, made small (`SMALL`), on `synthetic_dir`, writing to `output_dir`."""
    return [
        *launcher,
        str(ROOT / "training" / "train.py"),
        "--config",
        str(ROOT / "configs" / "synthetic_tiny.yaml"),
        *SMALL,
        "--synthetic_dir",
        str(synthetic_dir),
        "--output_dir",
        str(output_dir),
        *extra,
    ]


def kill_after_checkpoint(process: subprocess.Popen, checkpoint: Path, timeout: float = 240) -> None:
    """SIGKILLs the training `process` as soon as `checkpoint` is complete (its trainer_state.json written): a crash
    right after a checkpoint. Fails if the run ends first or no checkpoint comes within `timeout` seconds."""
    deadline = time.time() + timeout
    while not (checkpoint / "trainer_state.json").exists():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()


def free_port() -> str:
    """A free TCP port on 127.0.0.1 for torchrun's rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def read_metrics(output_dir: Path) -> list[dict]:
    """The records of a run's `metrics.jsonl`, one per logged step."""
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def tiny_model_folder(folder: Path) -> Path:
    """A tiny HarmoCLIP folder with CLIP's crop preprocessing, as the converter writes one."""
    from conftest import BPE_PATH, TINY_MERGES, tiny_harmoclip_model
    from conversion.processor_files import make_image_processor, save_harmoclip_processor, tokenizer_from_bpe

    model = tiny_harmoclip_model(seed=1)
    model.save_pretrained(folder)
    tokenizer = tokenizer_from_bpe(BPE_PATH, model.config.text_config.vocab_size, 77)
    assert len(tokenizer) == 512 + TINY_MERGES + 2
    save_harmoclip_processor(folder, tokenizer, make_image_processor(32))
    return folder
