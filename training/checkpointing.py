"""Checkpoints that are never half-written: saved into a temporary folder, then renamed into place.

A checkpoint is `checkpoints/step_00000100/`: Accelerate's state (model, optimiser, scheduler, RNG states of every
process) plus `trainer_state.json` (step, data position, counters), written last. Only folders with that file count
as checkpoints, so a run killed while saving resumes from the previous one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from plumbing.atomic_files import move_folder_into_place, write_text_atomic

STATE_FILE = "trainer_state.json"
PROCESS_FILE = "process_{:05d}.json"
_PATTERN = re.compile(r"^step_(\d{8})$")
logger = logging.getLogger("harmoclip.checkpointing")


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first. A step's previous checkpoint set aside while it was being replaced
    (`.old-step_...`, see `move_folder_into_place`) counts where the run was killed before the new one took its place."""
    folder = checkpoint_dir(output_dir)
    if not folder.is_dir():
        return []
    found: dict[int, Path] = {}
    for path in sorted(folder.iterdir(), key=lambda path: path.name.startswith(".old-")):  # step_ before .old-step_
        match = _PATTERN.match(path.name.removeprefix(".old-"))
        if match and (path / STATE_FILE).is_file():
            found.setdefault(int(match.group(1)), path)
    return [found[step] for step in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint; the incomplete ones a killed run left (no `trainer_state.json`) are named in one
    log line and passed over."""
    found = list_checkpoints(output_dir)
    folder = checkpoint_dir(output_dir)
    if folder.is_dir():
        incomplete = sorted(
            path.name for path in folder.iterdir() if path.is_dir() and path not in found and "step_" in path.name
        )
        if incomplete:
            logger.warning(
                "checkpoints in %s left incomplete by an interrupted save, passed over: %s", folder, incomplete
            )
    return found[-1] if found else None


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | Path,
    step: int,
    state: dict[str, Any],
    keep: int,
    process_state: dict[str, Any] | None = None,
) -> Path:
    """Saves the training state of every process; returns the final folder. Call on all processes.

    `state` (JSON) is the main process's; `process_state` (JSON), where given, each process's own (e.g. its position
    in its data stream), written as `process_<index>.json` before the checkpoint counts as complete."""
    root = checkpoint_dir(output_dir)
    final = root / f"step_{step:08d}"
    temporary = root / f".tmp-step_{step:08d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if temporary.exists():  # left over by a run killed while saving
            shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(temporary))
        accelerator.wait_for_everyone()
        if process_state is not None:
            payload = {"num_processes": accelerator.num_processes, **process_state}
            write_text_atomic(temporary / PROCESS_FILE.format(accelerator.process_index), json.dumps(payload, indent=2))
            accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            with open(temporary / STATE_FILE, "w") as handle:
                json.dump({"step": step, **state}, handle, indent=2)
                handle.flush()
                os.fsync(handle.fileno())
            # A step saved before (a resumed run) is set aside, not deleted, until the new one is in place.
            move_folder_into_place(temporary, final, final.with_name(f".old-{final.name}"))
    except BaseException:  # a full disk, an error: the incomplete folder goes, the previous checkpoints stay
        if accelerator.is_main_process:
            shutil.rmtree(temporary, ignore_errors=True)
        raise
    if accelerator.is_main_process:
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, folder: Path) -> dict[str, Any]:
    """Restores model, optimiser, scheduler and RNG states; returns the trainer state."""
    accelerator.load_state(str(folder))
    return json.loads((folder / STATE_FILE).read_text())


def load_process_state(folder: Path, process_index: int, num_processes: int) -> dict[str, Any]:
    """The `process_state` process `process_index` saved in checkpoint `folder`; the run must have as many processes
    as the one that saved it (each process's state belongs to its own part of the data)."""
    path = Path(folder) / PROCESS_FILE.format(process_index)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {folder} has no {path.name}: it was saved by a run with another data "
            f"source or fewer processes than this one ({num_processes})"
        )
    state = json.loads(path.read_text())
    if state["num_processes"] != num_processes:
        raise ValueError(
            f"checkpoint {folder} was saved by {state['num_processes']} processes, this run has "
            f"{num_processes}: a streamed run resumes with the same number of processes"
        )
    return state
