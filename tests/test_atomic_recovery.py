"""Recovery after a writer was killed mid-write (`plumbing.atomic_files`): whose staging and backup folders are left
alone (a live writer's, another machine's) and whose are cleaned up (a dead writer's of this host), each decided from
a real process id: this test's own (alive) and a child that has exited (gone)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from plumbing.atomic_files import _owner_tag, _writer_is_gone, recover_interrupted_write

HOST = socket.gethostname().replace("-", "_")


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def test_owner_tag_names_this_host_and_process() -> None:
    host, pid, random = _owner_tag().split("-")
    assert host == HOST and pid == str(os.getpid()) and len(random) == 8 and int(random, 16) >= 0
    assert _owner_tag() != _owner_tag()


def test_only_a_gone_writer_of_this_host_is_gone() -> None:
    dead = _dead_pid()
    assert _writer_is_gone(f"{HOST}-{dead}-0123abcd") is True
    assert _writer_is_gone(f"{HOST}-{os.getpid()}-0123abcd") is False  # alive
    assert _writer_is_gone(f"otherhost-{dead}-0123abcd") is False  # another machine's: cannot tell, leave it
    assert _writer_is_gone(f"{HOST}-notapid-0123abcd") is False
    assert _writer_is_gone(f"{HOST}-{dead}") is True  # the random part is not needed to decide


def test_recovery_restores_removes_and_keeps_by_writer(tmp_path: Path) -> None:
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
    recover_interrupted_write(target)
    # The dead writer's previous version is back in place; its staging folder is gone; the live writer's are kept.
    assert (target / "weights").read_text() == "previous" and not backup.exists()
    assert not staging_dead.exists() and staging_alive.is_dir() and backup_alive.is_dir()
    # With the target present, a dead writer's backup is stale: removed, the target left as it is.
    stale = tmp_path / f".model.previous-{HOST}-{dead}-eeee0000"
    stale.mkdir()
    recover_interrupted_write(target)
    assert not stale.exists() and (target / "weights").read_text() == "previous" and backup_alive.is_dir()
