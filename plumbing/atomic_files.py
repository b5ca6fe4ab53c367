"""Writing outputs whole or not at all: files and folders are written beside their target, then renamed into place.

A failure at any point leaves the target as it was (absent, or the previous version): a checkpoint, a converted
model, a data set or a cache is never half-written.
"""

from __future__ import annotations

import os
import shutil
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


@contextmanager
def atomic_directory(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yields an empty staging folder; when the block succeeds, the staging folder becomes `target`.

    The staging folder sits in the same parent (so the final rename is atomic on one filesystem) and is removed if
    the block raises. With `overwrite`, the previous `target` is moved aside, the new one renamed in, and only then
    is the old one deleted (restored if the rename fails).
    """
    target = check_output_dir(target, overwrite).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    staging = target.parent / f".{target.name}.partial-{tag}"
    staging.mkdir()  # plain mkdir: the folder gets the usual permissions (umask), unlike tempfile.mkdtemp
    try:
        yield staging
        check_output_dir(target, overwrite)  # another process may have created it meanwhile
        backup = None
        if target.exists():
            backup = target.parent / f".{target.name}.previous-{tag}"
            os.rename(target, backup)
        try:
            os.rename(staging, target)
        except BaseException:
            if backup is not None:
                os.rename(backup, target)
            raise
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
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


__all__ = ["atomic_directory", "check_output_dir", "write_bytes_atomic", "write_text_atomic", "save_model_atomically"]
