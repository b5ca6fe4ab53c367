"""Writing outputs whole or not at all: files and folders are written beside their target, then renamed into place.

A failure at any point leaves the target as it was (absent, or the previous version): a checkpoint, a converted
model, a data set or a cache is never half-written. That holds for an exception, a full disk (`OSError(ENOSPC)`) and
a killed process alike; what a killed process could not clean up (its staging folder, or the previous version moved
aside for the instant of the swap) is recognised by the next write of the same target, which removes or restores it
and says so in one log line.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def check_output_dir(target: str | Path, overwrite: bool) -> Path:
    """Raises `FileExistsError` if `target` exists and `overwrite` is False; returns it as a `Path`."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"output folder {target} exists and is not a folder")
    if target.exists() and not overwrite:
        raise FileExistsError(f"output folder {target} already exists; pass --overwrite (overwrite=True) to replace it")
    return target


logger = logging.getLogger("harmoclip.atomic_files")


def _owner_tag() -> str:
    """`<host>-<pid>-<random>`: who writes a staging or backup folder, so that a later write can tell whether its
    writer is gone."""
    return f"{socket.gethostname().replace('-', '_')}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _writer_is_gone(tag: str) -> bool:
    """True when `tag` (see `_owner_tag`) names a process of this host that no longer runs."""
    host, _, rest = tag.partition("-")
    pid = rest.partition("-")[0]
    if host != socket.gethostname().replace("-", "_") or not pid.isdigit():
        return False  # another machine's, or not ours: leave it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def recover_interrupted_write(target: Path) -> None:
    """Cleans up after a process killed while writing `target`: restores the previous version if it was moved aside
    and the target is missing, and removes staging folders of writers that are gone (one log line each)."""
    for backup in sorted(target.parent.glob(f".{target.name}.previous-*")):
        if _writer_is_gone(backup.name.rpartition(".previous-")[2]):
            if not target.exists():
                os.rename(backup, target)
                logger.warning("restored %s from %s, left by an interrupted write", target, backup.name)
            else:
                shutil.rmtree(backup, ignore_errors=True)
                logger.warning("removed %s, the previous version of %s left by an interrupted write", backup, target)
    for staging in sorted(target.parent.glob(f".{target.name}.partial-*")):
        if _writer_is_gone(staging.name.rpartition(".partial-")[2]):
            shutil.rmtree(staging, ignore_errors=True)
            logger.warning("removed %s, the incomplete output of an interrupted write of %s", staging, target)


def move_folder_into_place(complete: Path, target: Path, backup: Path) -> None:
    """Renames the folder `complete` to `target`. A previous `target` is first renamed to `backup` and deleted only once
    the new one is in place (renamed back if that fails): at every instant one complete version exists, under `target`
    or, for the instant of the swap, under `backup`."""
    previous = None
    if target.exists():
        shutil.rmtree(backup, ignore_errors=True)
        os.rename(target, backup)
        previous = backup
    try:
        os.rename(complete, target)
    except BaseException:
        if previous is not None:
            os.rename(previous, target)
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


@contextmanager
def atomic_directory(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yields an empty staging folder; when the block succeeds, the staging folder becomes `target`.

    The staging folder sits in the same parent (so the final rename is atomic on one filesystem) and is removed if
    the block raises. With `overwrite`, the previous `target` is moved aside, the new one renamed in, and only then
    is the old one deleted (restored if the rename fails).
    """
    target = Path(target).absolute()
    if target.parent.is_dir():
        recover_interrupted_write(target)
    target = check_output_dir(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = _owner_tag()
    staging = target.parent / f".{target.name}.partial-{tag}"
    staging.mkdir()  # plain mkdir: the folder gets the usual permissions (umask), unlike tempfile.mkdtemp
    try:
        yield staging
        check_output_dir(target, overwrite)  # another process may have created it meanwhile
        move_folder_into_place(staging, target, target.parent / f".{target.name}.previous-{tag}")
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Writes `data` to `path` through a temporary file in the same folder, synced, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """`write_bytes_atomic` of UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"))


def save_model_atomically(model: Any, processor: Any, folder: str | Path) -> Path:
    """`save_pretrained` of model and processor into `folder` (weights, config, processor files, remote code),
    replacing a previous version only once the new one is complete."""
    with atomic_directory(folder, overwrite=True) as staging:
        model.save_pretrained(staging)
        if processor is not None:
            processor.save_pretrained(staging)
    return Path(folder)


__all__ = [
    "atomic_directory",
    "check_output_dir",
    "move_folder_into_place",
    "write_bytes_atomic",
    "write_text_atomic",
    "save_model_atomically",
]
