"""Writing output folders whole or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_directory(target: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yields a temporary folder beside `target`; when the block succeeds it replaces `target` in one rename.

    On failure the temporary folder is removed and `target` (if it existed) is left exactly as it was. With
    `overwrite=False` an existing `target` is an error before anything is written.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists (pass overwrite to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    previous = None
    if target.exists():
        previous = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, previous)
    os.replace(temporary, target)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def save_model_atomically(model: Any, processor: Any, folder: str | Path) -> Path:
    """`save_pretrained` of model and processor into `folder` (weights, config, processor files, remote code)."""
    with atomic_directory(folder) as temporary:
        model.save_pretrained(temporary)
        if processor is not None:
            processor.save_pretrained(temporary)
    return Path(folder)
