"""Outputs are written whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from plumbing.atomic_files import atomic_directory, save_model_atomically, write_bytes_atomic, write_text_atomic


def _listing(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_a_failure_leaves_the_previous_folder_as_it_was(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "weights").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_directory(target, overwrite=True) as staging:
            (staging / "weights").write_text("half")
            raise RuntimeError("boom")
    assert (target / "weights").read_text() == "old"
    assert _listing(tmp_path) == ["model"]  # no staging folder left behind


def test_overwrite_replaces_only_when_complete_and_is_required(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with atomic_directory(target) as staging:
        (staging / "weights").write_text("first")
    with pytest.raises(FileExistsError, match="overwrite"):
        with atomic_directory(target):
            pass
    with atomic_directory(target, overwrite=True) as staging:
        (staging / "weights").write_text("second")
        assert (target / "weights").read_text() == "first"  # still the old one while the new one is written
    assert (target / "weights").read_text() == "second" and _listing(tmp_path) == ["model"]


def test_text_files_are_replaced_in_one_rename(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "eval.json"
    write_text_atomic(path, "{}")
    write_text_atomic(path, '{"a": 1}')
    assert path.read_text() == '{"a": 1}' and _listing(path.parent) == ["eval.json"]


class DiskFull(OSError):
    """Stands in for the failure of a write half-way (disk full, killed process)."""


def test_a_file_write_failing_midway_leaves_the_old_file_intact(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "eval.json"
    write_text_atomic(path, '{"old": true}')
    real_fdopen = os.fdopen

    class FailingHalfway:
        """The file object of the temporary file: writes half the data, then fails."""

        def __init__(self, handle):
            self.file = real_fdopen(handle, "wb")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data: bytes) -> int:
            self.file.write(data[: len(data) // 2])
            self.file.flush()
            raise DiskFull("no space left on device")

    monkeypatch.setattr(os, "fdopen", lambda handle, mode: FailingHalfway(handle))
    with pytest.raises(DiskFull):
        write_bytes_atomic(path, b'{"new": "' + b"x" * 10_000 + b'"}')
    monkeypatch.undo()
    assert path.read_text() == '{"old": true}'
    assert _listing(tmp_path) == ["eval.json"]  # the half-written temporary file is gone


def test_a_model_save_failing_midway_leaves_the_old_folder_intact(tmp_path: Path, tiny_model, monkeypatch) -> None:
    folder = tmp_path / "model"
    save_model_atomically(tiny_model, None, folder)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    changed = type(tiny_model)(tiny_model.config)  # other weights
    real_save = type(changed).save_pretrained

    def save_then_fail(self, directory, *args, **kwargs):
        real_save(self, directory, *args, **kwargs)  # the new weights are fully in the staging folder...
        assert (Path(directory) / "model.safetensors").is_file()
        raise DiskFull("no space left on device")  # ...and then the save fails (e.g. writing the processor)

    monkeypatch.setattr(type(changed), "save_pretrained", save_then_fail)
    with pytest.raises(DiskFull):
        save_model_atomically(changed, None, folder)
    monkeypatch.undo()
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    assert _listing(tmp_path) == ["model"]  # no staging or backup folder left
    reloaded = type(tiny_model).from_pretrained(folder)
    for name, value in tiny_model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], value), name


def test_a_failed_rename_restores_the_previous_folder(tmp_path: Path, monkeypatch) -> None:
    """The last step fails: the old folder, already moved aside, is put back."""
    target = tmp_path / "model"
    target.mkdir()
    (target / "weights").write_text("old")
    real_rename = os.rename

    def rename(source, destination):
        if ".partial-" in str(source):
            raise DiskFull("rename failed")
        return real_rename(source, destination)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(DiskFull):
        with atomic_directory(target, overwrite=True) as staging:
            (staging / "weights").write_text("new")
    monkeypatch.undo()
    assert (target / "weights").read_text() == "old" and _listing(tmp_path) == ["model"]
