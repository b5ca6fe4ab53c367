"""Checkpoints that are never half-written: saved into a temporary folder, then renamed into place.

A checkpoint is `checkpoints/step_00000100/`: Accelerate's state (model, optimiser, scheduler, RNG states of every
process) plus `trainer_state.json` (step, data position, counters), written last. Only folders with that file count
as checkpoints, so a run killed while saving resumes from the previous one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator

STATE_FILE = "trainer_state.json"
_PATTERN = re.compile(r"^step_(\d{8})$")


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = checkpoint_dir(output_dir)
    if not folder.is_dir():
        return []
    found = [path for path in folder.iterdir() if _PATTERN.match(path.name) and (path / STATE_FILE).is_file()]
    return sorted(found, key=lambda path: int(_PATTERN.match(path.name).group(1)))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def save_checkpoint(accelerator: Accelerator, output_dir: str | Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Saves the training state of every process; returns the final folder. Call on all processes."""
    root = checkpoint_dir(output_dir)
    final = root / f"step_{step:08d}"
    temporary = root / f".tmp-step_{step:08d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if temporary.exists():  # left over by a run killed while saving
            shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(temporary / STATE_FILE, "w") as handle:
            json.dump({"step": step, **state}, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        if final.exists():  # the same step saved before (e.g. a resumed run): replace it only now
            shutil.rmtree(final)
        os.replace(temporary, final)
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, folder: Path) -> dict[str, Any]:
    """Restores model, optimiser, scheduler and RNG states; returns the trainer state."""
    accelerator.load_state(str(folder))
    return json.loads((folder / STATE_FILE).read_text())
