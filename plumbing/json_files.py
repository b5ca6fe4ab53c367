"""Reading a JSON file with an error that names it: the counterpart of `atomic_files` for annotation files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json(path: str | Path) -> Any:
    """The value in the JSON file at `path`; a file that is not valid JSON is a one-line `ValueError` naming it."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


__all__ = ["read_json"]
