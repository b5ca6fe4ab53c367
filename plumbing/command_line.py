"""What every command shares: argument parsing that reports mistakes, logging set-up, and one-line error reporting.

It lives in `plumbing/`, the floor that every layer (training, evaluation, conversion, benchmarks) may import.
Library functions raise exceptions; only a command's `main` turns them into `error: ...` and an exit code:

    def main(argv: list[str] | None = None) -> int:
        def run() -> str:
            args = build_parser().parse_args(argv)   # a CommandParser
            setup_logging(args.log_file)
            return do_the_work(args)                 # the line printed on success
        return run_command(run)
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The loggers of the project's packages (module loggers and the "harmoclip.*" names of the commands).
PROJECT_LOGGERS = ("harmoclip", "training", "evaluation", "conversion", "benchmarks", "modeling_harmoclip")

# Exit codes: 1 for bad input or state found while working, 2 for a command line the parser rejected (argparse's).
EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class UsageError(ValueError):
    """A command-line argument the parser rejected (unknown option, missing option, value of the wrong type)."""


# Errors that mean "bad input or state", reported in one line; anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, RuntimeError)


class CommandParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` that raises `UsageError` instead of printing the usage and exiting, so that
    `run_command` reports every mistake the same way (one line; `--help` still prints the help)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def one_line(error: BaseException) -> str:
    """The error's message on one line (a multi-line message is joined with '; ')."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines) or type(error).__name__


def _not_for_console(record: logging.LogRecord) -> bool:
    return getattr(record, "console", True)


def setup_logging(log_file: str | Path | None = None, level: int = logging.INFO) -> None:
    """Configures the root logger for a command: `level` to stderr, and everything to `log_file` if given.

    For entry points only (it replaces the root logger's handlers); library code logs to its own loggers.
    """
    console = logging.StreamHandler()
    console.addFilter(_not_for_console)
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    logging.basicConfig(level=level, format=LOG_FORMAT, handlers=handlers, force=True)


@contextmanager
def log_to_file(
    path: str | Path, mode: str = "a", loggers: Sequence[str] = PROJECT_LOGGERS
) -> Iterator[logging.Handler]:
    """Copies the project's INFO (and higher) records to `path` while the block runs: a run's own log file.

    The handler sits on the project's named loggers, not on the root logger, and is removed afterwards with the
    loggers' levels restored, so library code that writes its log file leaves the caller's logging as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode=mode, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(logging.INFO)
    saved = []
    for name in loggers:
        named = logging.getLogger(name)
        saved.append((named, named.level))
        if named.getEffectiveLevel() > logging.INFO:  # INFO records must reach the file
            named.setLevel(logging.INFO)
        named.addHandler(handler)
    try:
        yield handler
    finally:
        for named, level in saved:
            named.removeHandler(handler)
            named.setLevel(level)
        handler.close()


def report_error(message: str) -> None:
    """Prints `error: message` to stderr, and logs it to the log file if a command configured one."""
    if logging.getLogger().handlers:
        logging.getLogger("harmoclip").error("%s", message, extra={"console": False})
    print(f"error: {message}", file=sys.stderr)


def run_command(action: Callable[[], object]) -> int:
    """Runs a command's `action`; returns its exit code.

    A string returned by `action` is printed (the success line). A user's mistake (`USER_ERRORS`, `UsageError`) is
    printed as one line `error: ...` with exit code 1 (2 for a rejected command line); Ctrl-C exits with 130. Any
    other exception is a bug and propagates with its traceback.
    """
    try:
        result = action()
    except UsageError as error:
        report_error(one_line(error))
        return EXIT_USAGE
    except USER_ERRORS as error:
        report_error(one_line(error))
        return EXIT_ERROR
    except KeyboardInterrupt:
        report_error("interrupted")
        return EXIT_INTERRUPTED
    if isinstance(result, str):
        print(result)
    return 0


__all__ = [
    "CommandParser",
    "UsageError",
    "USER_ERRORS",
    "LOG_FORMAT",
    "PROJECT_LOGGERS",
    "one_line",
    "setup_logging",
    "log_to_file",
    "report_error",
    "run_command",
]
