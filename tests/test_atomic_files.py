"""`plumbing.atomic_files` beyond the fault tests: recovery after a writer was killed mid-write (whose staging and
backup folders are left alone, a live writer's or another machine's, and whose are cleaned up, a dead writer's of this
host, each decided from a real process id: this test's own and a child that has exited), where the temporary of a file
write lives, and what a model folder holds."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_harmoclip_model, tiny_processor
from plumbing.atomic_files import (
    _owner_tag,
    _writer_is_gone,
    check_output_dir,
    move_folder_into_place,
    recover_interrupted_write,
    save_model_atomically,
    write_bytes_atomic,
    write_text_atomic,
)

HOST = socket.gethostname().replace("-", "_")


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def test_owner_tag_names_this_host_and_process() -> None:
    host, pid, random = _owner_tag().split("-")
    assert host == HOST and pid == str(os.getpid()) and len(random) == 8 and int(random, 16) >= 0
    assert _owner_tag() != _owner_tag()


def test_a_hyphenated_host_name_keeps_the_tag_in_three_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "node-7-a")
    host, pid, _ = _owner_tag().split("-")
    assert host == "node_7_a" and pid == str(os.getpid())
    assert _writer_is_gone(f"node_7_a-{_dead_pid()}-0123abcd") is True
    assert _writer_is_gone(f"node_7_a-{os.getpid()}-0123abcd") is False


def test_only_a_gone_writer_of_this_host_is_gone() -> None:
    dead = _dead_pid()
    assert _writer_is_gone(f"{HOST}-{dead}-0123abcd") is True
    assert _writer_is_gone(f"{HOST}-{os.getpid()}-0123abcd") is False  # alive
    assert _writer_is_gone(f"otherhost-{dead}-0123abcd") is False  # another machine's: cannot tell, leave it
    assert _writer_is_gone(f"{HOST}-notapid-0123abcd") is False
    assert _writer_is_gone(f"{HOST}-{dead}") is True  # the random part is not needed to decide


def test_recovery_restores_removes_and_keeps_by_writer(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dead, alive = _dead_pid(), os.getpid()
    target = tmp_path / "model"
    backup = tmp_path / f".model.previous-{HOST}-{dead}-aaaa0000"
    backup.mkdir()
    (backup / "weights").write_text("previous")
    staging_dead = tmp_path / f".model.partial-{HOST}-{dead}-bbbb0000"
    staging_alive = tmp_path / f".model.partial-{HOST}-{alive}-cccc0000"
    backup_alive = tmp_path / f".model.previous-{HOST}-{alive}-dddd0000"
    for folder in (staging_dead, staging_alive, backup_alive):
        folder.mkdir()
    with caplog.at_level(logging.WARNING, logger="harmoclip.atomic_files"):
        recover_interrupted_write(target)
    assert caplog.messages == [
        f"restored {target} from {backup.name}, left by an interrupted write",
        f"removed {staging_dead}, the incomplete output of an interrupted write of {target}",
    ]
    caplog.clear()
    # The dead writer's previous version is back in place; its staging folder is gone; the live writer's are kept.
    assert (target / "weights").read_text() == "previous" and not backup.exists()
    assert not staging_dead.exists() and staging_alive.is_dir() and backup_alive.is_dir()
    # With the target present, a dead writer's backup is stale: removed, the target left as it is.
    stale = tmp_path / f".model.previous-{HOST}-{dead}-eeee0000"
    stale.mkdir()
    with caplog.at_level(logging.WARNING, logger="harmoclip.atomic_files"):
        recover_interrupted_write(target)
    assert caplog.messages == [f"removed {stale}, the previous version of {target} left by an interrupted write"]
    assert not stale.exists() and (target / "weights").read_text() == "previous" and backup_alive.is_dir()


def test_a_file_is_written_through_a_temporary_beside_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The temporary sits in the target's folder (one filesystem: the rename is atomic), hidden and named after the
    target; missing parent folders are made; a failed rename leaves no temporary behind."""
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(
        os, "replace", lambda src, dst: (renames.append((Path(src), Path(dst))), real_replace(src, dst))
    )
    target = tmp_path / "a" / "b" / "notes.txt"
    write_text_atomic(target, "résumé")
    assert target.read_bytes() == "résumé".encode()
    [(temporary, destination)] = renames
    assert destination == target and temporary.parent == target.parent
    assert temporary.name.startswith(".notes.txt.") and temporary.name.endswith(".tmp") and not temporary.exists()

    def failing(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="disk full"):
        write_bytes_atomic(target, b"new")
    assert target.read_text() == "résumé" and sorted(p.name for p in target.parent.iterdir()) == ["notes.txt"]


def test_an_output_path_that_is_a_file_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "model"
    path.write_text("not a folder")
    with pytest.raises(FileExistsError, match=f"output folder {path} exists and is not a folder"):
        check_output_dir(path, overwrite=True)


def test_the_processor_is_saved_beside_the_model(tmp_path: Path, tiny_tokenizer) -> None:
    processor = tiny_processor(tiny_tokenizer)
    processor.save_pretrained(tmp_path / "processor_alone")
    folder = save_model_atomically(tiny_harmoclip_model(seed=0), processor, tmp_path / "model")
    saved = {path.name for path in folder.iterdir()}
    assert {path.name for path in (tmp_path / "processor_alone").iterdir()} <= saved
    assert "model.safetensors" in saved and "config.json" in saved


def test_a_live_writer_is_only_asked_whether_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Signal 0 asks without touching: a live child with the default hang-up action is still alive afterwards. A
    process of another user (PermissionError) is alive too."""
    code = "import signal, time; signal.signal(signal.SIGHUP, signal.SIG_DFL); print(flush=True); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        child.stdout.readline()  # its handler is set
        assert _writer_is_gone(f"{HOST}-{child.pid}-0123abcd") is False
        with pytest.raises(subprocess.TimeoutExpired):  # still running half a second later
            child.wait(timeout=0.5)
    finally:
        child.kill()
        child.wait()

    def foreign(pid: int, signal_number: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", foreign)
    assert _writer_is_gone(f"{HOST}-4242-0123abcd") is False


def test_recovery_reads_the_tag_after_the_last_marker(tmp_path: Path) -> None:
    """A target whose own name holds the markers: the writer's tag is what follows the last one."""
    dead = _dead_pid()
    target = tmp_path / "run.partial-x.previous-y"
    staging = tmp_path / f".{target.name}.partial-{HOST}-{dead}-aaaa0000"
    backup = tmp_path / f".{target.name}.previous-{HOST}-{dead}-bbbb0000"
    staging.mkdir()
    backup.mkdir()
    recover_interrupted_write(target)
    assert target.is_dir() and not backup.exists() and not staging.exists()


def test_a_swap_clears_a_stale_backup_and_reports_the_real_failure(tmp_path: Path) -> None:
    complete, target, backup = tmp_path / "new", tmp_path / "model", tmp_path / ".model.previous-x"
    for folder in (complete, target, backup):
        folder.mkdir()
    (complete / "v").write_text("2")
    (target / "v").write_text("1")
    (backup / "stale").write_text("left by a crash")
    move_folder_into_place(complete, target, backup)
    assert (target / "v").read_text() == "2" and not backup.exists() and not complete.exists()
    # Nothing to rename and no previous version: the rename's own error, naming the missing folder.
    with pytest.raises(FileNotFoundError) as caught:
        move_folder_into_place(tmp_path / "absent", tmp_path / "other", tmp_path / ".other.previous-x")
    assert caught.value.filename == str(tmp_path / "absent") and not (tmp_path / "other").exists()
