"""What the conversion commands share: logging (to stderr, and to a file if asked) and error reporting."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

# Errors that mean "bad input or state", reported in one line; anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (FileExistsError, FileNotFoundError, ValueError, RuntimeError)


def setup_logging(log_file: Path | None = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True)


def run_command(action: Callable[[], str]) -> int:
    """Runs `action` (which returns the success line to print); prints a one-line error and returns 1 on failure."""
    try:
        message = action()
    except USER_ERRORS as error:
        logging.getLogger("conversion").error("%s", error)
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(message)
    return 0


__all__ = ["setup_logging", "run_command"]
