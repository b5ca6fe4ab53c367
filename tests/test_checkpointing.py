"""Checkpoints round-trip (`training.checkpointing`) with a real single-process Accelerator on the CPU: what is saved
comes back (weights, optimiser state, trainer and per-process state), folder names follow the step, and a state saved
by another number of processes is refused by name. The kill and disk-full cases are in test_fault_injection.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from training.checkpointing import (
    checkpoint_dir,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_process_state,
    save_checkpoint,
)


def _prepared(seed: int) -> tuple[Accelerator, torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model, optimizer


def test_a_checkpoint_restores_weights_optimiser_and_states(tmp_path: Path) -> None:
    accelerator, model, optimizer = _prepared(seed=0)
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()  # the optimiser now has moments to restore
    saved_weight = model.weight.detach().clone()
    saved_moment = optimizer.state_dict()["state"][0]["exp_avg"].clone()
    output = tmp_path / "runs" / "first"  # a new output folder: made with its parents
    folder = save_checkpoint(
        accelerator, output, 12, {"epoch": 1, "batch_in_epoch": 7}, keep=3, process_state={"position": 42}
    )
    assert folder == output / "checkpoints" / "step_00000012" and checkpoint_dir(output) == folder.parent
    assert json.loads((folder / "trainer_state.json").read_text()) == {"step": 12, "epoch": 1, "batch_in_epoch": 7}
    assert json.loads((folder / "process_00000.json").read_text()) == {"num_processes": 1, "position": 42}
    assert sorted(p.name for p in folder.parent.iterdir()) == ["step_00000012"]  # no temporary left

    fresh, fresh_model, fresh_optimizer = _prepared(seed=1)
    assert not torch.equal(fresh_model.weight, saved_weight)
    state = load_checkpoint(fresh, folder)
    assert state == {"step": 12, "epoch": 1, "batch_in_epoch": 7}
    assert torch.equal(fresh_model.weight, saved_weight)
    assert torch.equal(fresh_optimizer.state_dict()["state"][0]["exp_avg"], saved_moment)
    assert load_process_state(folder, 0, 1) == {"num_processes": 1, "position": 42}


def test_process_state_of_another_run_is_refused_by_name(tmp_path: Path) -> None:
    accelerator, _, _ = _prepared(seed=0)
    folder = save_checkpoint(accelerator, tmp_path, 3, {"epoch": 0}, keep=1, process_state={"position": 5})
    with pytest.raises(ValueError, match=r"saved by 1 processes, this run has 2: a streamed run resumes"):
        load_process_state(folder, 0, 2)
    with pytest.raises(FileNotFoundError, match=r"has no process_00001.json: it was saved by a run .* \(2\)"):
        load_process_state(folder, 1, 2)
    plain = save_checkpoint(accelerator, tmp_path, 4, {"epoch": 0}, keep=2)  # no process_state: no process file
    assert not (plain / "process_00000.json").exists() and (plain / "trainer_state.json").is_file()


def test_checkpoints_are_listed_by_step_and_only_when_complete(tmp_path: Path) -> None:
    assert list_checkpoints(tmp_path) == [] and latest_checkpoint(tmp_path) is None
    folder = tmp_path / "checkpoints"
    for name in ("step_00000010", "step_00000002", ".old-step_00000002", "step_00000005", "step_0000003"):
        (folder / name).mkdir(parents=True)
        (folder / name / "trainer_state.json").write_text("{}")
    (folder / "step_00000020").mkdir()  # incomplete: no trainer_state.json
    (folder / "notes.txt").write_text("")
    # By step, not by name; the live step_ folder wins over its set-aside twin; malformed names are not checkpoints.
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002", "step_00000005", "step_00000010"]
    assert latest_checkpoint(tmp_path) == folder / "step_00000010"


def test_saving_cleans_up_what_a_killed_save_left_and_replaces_a_step_again(tmp_path: Path, caplog) -> None:
    accelerator, model, _ = _prepared(seed=0)
    output = tmp_path / "run" / "nested"  # made with its parents
    leftover = output / "checkpoints" / ".tmp-step_00000005"
    leftover.mkdir(parents=True)
    (leftover / "junk").write_text("from a killed save")
    save_checkpoint(accelerator, output, 5, {"epoch": 0, "batch_in_epoch": 1}, keep=3)
    with torch.no_grad():
        model.weight.fill_(2.0)
    again = save_checkpoint(accelerator, output, 5, {"epoch": 0, "batch_in_epoch": 2}, keep=3)  # a resumed run
    assert sorted(p.name for p in again.parent.iterdir()) == ["step_00000005"]  # no temporary, no set-aside twin
    assert json.loads((again / "trainer_state.json").read_text())["batch_in_epoch"] == 2
    # Incomplete step folders are named in one line; other files and folders are not checkpoints at all.
    (again.parent / "step_00000009").mkdir()
    (again.parent / "tensorboard").mkdir()
    (again.parent / "step_notes.txt").write_text("")
    with caplog.at_level(logging.WARNING, logger="harmoclip.checkpointing"):
        assert latest_checkpoint(output) == again
    assert caplog.messages == [
        f"checkpoints in {again.parent} left incomplete by an interrupted save, passed over: ['step_00000009']"
    ]


def test_a_failing_save_leaves_no_temporary_and_keeps_the_earlier_checkpoints(tmp_path: Path, monkeypatch) -> None:
    accelerator, _, _ = _prepared(seed=0)
    first = save_checkpoint(accelerator, tmp_path, 1, {"epoch": 0}, keep=5)

    def fail_midway(folder: str) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "model.safetensors").write_text("half")
        raise OSError("No space left on device")

    monkeypatch.setattr(accelerator, "save_state", fail_midway)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(accelerator, tmp_path, 2, {"epoch": 0}, keep=5)
    assert sorted(p.name for p in first.parent.iterdir()) == ["step_00000001"] and list_checkpoints(tmp_path) == [first]
