"""Writing a model folder all at once: into a staging folder beside the target, then renamed into place.

A failure at any point leaves the target as it was (absent, or the previous version); an existing target is only
replaced with `overwrite=True`, and only after the new folder is complete.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def check_output_dir(target: str | Path, overwrite: bool) -> Path:
    """Raises `FileExistsError` if `target` exists and `overwrite` is False; returns it as a `Path`."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"output folder {target} exists and is not a folder")
    if target.exists() and not overwrite:
        raise FileExistsError(f"output folder {target} already exists; pass --overwrite (overwrite=True) to replace it")
    return target


@contextmanager
def atomic_output_dir(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
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


__all__ = ["atomic_output_dir", "check_output_dir"]
