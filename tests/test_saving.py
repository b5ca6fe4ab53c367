"""Outputs are written whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from conversion.saving import atomic_directory, write_text_atomic


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
