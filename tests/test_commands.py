"""The commands as a user meets them: console entry points, one-line errors, and library code that leaves the
process (logging, environment, exit) to the entry points."""

from __future__ import annotations

import ast
import importlib
import inspect
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from plumbing.command_line import CommandParser, UsageError, log_to_file, run_command, setup_logging

# Every command run for real, end to end: the slow tier.
pytestmark = pytest.mark.slow

ENV = {
    **os.environ,
    "PYTHONPATH": str(ROOT),
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
LIBRARY_PACKAGES = (
    "modeling_harmoclip",
    "conversion",
    "evaluation",
    "training",
    "benchmarks",
    "experiments",
    "scripts",
    "tools",
)


@pytest.fixture(autouse=True)
def restore_root_logging():
    """The commands run here in-process configure the root logger (as entry points do); put it back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def console_scripts() -> dict[str, str]:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# ---------------------------------------------------------------------------------------------- entry points


def test_every_console_script_resolves_to_a_main_taking_argv() -> None:
    scripts = console_scripts()
    assert {
        "harmoclip-train",
        "harmoclip-evaluate",
        "harmoclip-convert",
        "harmoclip-export",
        "harmoclip-publish",
        "harmoclip-cache-teacher",
    } <= set(scripts)
    for name, target in scripts.items():
        module_name, _, function_name = target.partition(":")
        function = getattr(importlib.import_module(module_name), function_name)
        assert callable(function), name
        assert list(inspect.signature(function).parameters)[0] == "argv", name
        assert inspect.signature(function).return_annotation in ("int", int), (
            f"{name}: the exit code is what main returns"
        )


def test_an_entry_point_runs_as_the_installed_script_would(tmp_path: Path) -> None:
    # What pip's console-script wrapper does: sys.exit(main()) with the arguments in sys.argv.
    out = tmp_path / "shapes"
    wrapper = "import sys\nfrom training.data.synthetic import main\nsys.exit(main())\n"
    args = ["--out", str(out), "--num-train", "2", "--num-val", "1", "--image-size", "32"]
    done = subprocess.run(
        [sys.executable, "-c", wrapper, *args], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "synthetic data set written" in done.stdout and len((out / "train.jsonl").read_text().splitlines()) == 2
    failed = subprocess.run(
        [sys.executable, "-c", wrapper, *args[:-1], "big"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode == 2
    assert_one_line_error(failed.stderr, "argument --image-size: invalid int value: 'big'")


@pytest.mark.parametrize(
    "old, new",
    [
        ("benchmarks.harmony", "experiments.harmony"),
        ("benchmarks.harmony.decide", "experiments.harmony.decide"),
        ("benchmarks.mutation", "tools.mutation"),
    ],
)
def test_a_moved_command_still_runs_under_its_old_name_with_a_warning(old: str, new: str) -> None:
    """`python -m <old>` (deprecated for one release) says so in one line, then is the new command."""
    moved, current = (
        subprocess.run(
            [sys.executable, "-m", name, "--help"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120
        )
        for name in (old, new)
    )
    assert moved.returncode == current.returncode == 0, moved.stderr
    assert moved.stderr.splitlines() == [f"warning: `python -m {old}` is deprecated; use `python -m {new}`"]
    assert moved.stdout == current.stdout and moved.stdout.startswith("usage: ")


def test_train_script_answers_a_mistake_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "training" / "train.py"), "--train_data", "missing.jsonl"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert_one_line_error(done.stderr, "config `train_data` ('missing.jsonl') is not read with data_format='synthetic'")
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_train_command_line_mistakes(tmp_path: Path, capsys) -> None:
    from training.train import main

    cases = [
        (["--learning_rate", "-1"], 1, "config `learning_rate` must be > 0, got -1.0"),
        (["--learning_rate", "fast"], 1, "option `--learning_rate`: expected float, got 'fast'"),
        (["--batch_sise", "3"], 2, "unrecognized arguments: --batch_sise 3"),
        (["--config", str(tmp_path / "missing.yaml")], 1, f"config file not found: {tmp_path / 'missing.yaml'}"),
        (["--report_to", "tensorbord"], 1, "config `report_to` must name trackers"),
    ]
    for args, code, fragment in cases:
        assert main(args) == code, args
        assert_one_line_error(capsys.readouterr().err, fragment)


def test_train_names_a_missing_data_file(tmp_path: Path, capsys) -> None:
    from training.train import main

    assert (
        main(
            [
                "--data_format",
                "jsonl",
                "--train_data",
                str(tmp_path / "missing.jsonl"),
                "--model_preset",
                "micro",
                "--image_size",
                "32",
                "--report_to",
                "none",
                "--output_dir",
                str(tmp_path / "run"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.splitlines()  # progress lines logged before the error, then the error
    assert err[-1] == f"error: manifest not found: {tmp_path / 'missing.jsonl'}"
    assert not any(line.startswith(("Traceback", "error: ")) for line in err[:-1])


def test_every_command_answers_a_mistake_in_one_line(tmp_path: Path, capsys) -> None:
    from benchmarks import region_throughput, run_all
    from conversion import convert_clip, export_clip, publish
    from evaluation import evaluate
    from experiments import harmony
    from training import cache_teacher

    missing = str(tmp_path / "missing")
    cases = [
        (
            cache_teacher.main,
            ["--cache-dir", missing, "--cache-batch-size", "0"],
            1,
            "`--cache-batch-size` must be > 0, got 0",
        ),
        (cache_teacher.main, ["--max_steps", "x"], 2, "the following arguments are required: --cache-dir"),
        (
            evaluate.main,
            ["--model", missing, "--task", "boxcls", "--data", missing],
            1,
            f"`--data`: file not found: {missing}",
        ),
        (
            evaluate.main,
            ["--model", missing, "--task", "boxcls", "--data", missing, "--batch-size", "0"],
            1,
            "`--batch-size` must be >= 1, got 0",
        ),
        (
            convert_clip.main,
            ["--source", "openai", "--checkpoint", missing, "--output", str(tmp_path / "o")],
            1,
            f"file not found: {missing}",
        ),
        (
            convert_clip.main,
            ["--source", "tf", "--checkpoint", missing, "--output", missing],
            2,
            "argument --source: invalid choice: 'tf'",
        ),
        (
            export_clip.main,
            ["--model", missing, "--output", str(tmp_path / "o")],
            1,
            f"`model_dir`: {missing} is not a transformers model folder",
        ),
        (
            publish.main,
            ["--repo-id", "no-namespace", "--model", missing, "--dry-run"],
            1,
            "`--repo-id` must be 'namespace/name', got 'no-namespace'",
        ),
        (harmony.main, ["--config", missing], 1, f"`--config`: file not found: {missing}"),
        (run_all.main, ["--only", "speed"], 1, "`--only`: unknown benchmark(s) ['speed']"),
        (region_throughput.main, ["--repeats", "0", "--device", "cpu", "--quick"], 1, "--repeats must be >= 1"),
    ]
    for main, args, code, fragment in cases:
        assert main(args) == code, (main.__module__, args)
        assert_one_line_error(capsys.readouterr().err, fragment)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- the shared helpers


def test_run_command_reports_user_errors_and_keeps_bugs() -> None:
    def bad_value() -> str:
        raise ValueError("`--size` must be > 0,\n  got -1")

    def bug() -> str:
        raise KeyError("bug")

    assert run_command(lambda: "done") == 0
    assert run_command(bad_value) == 1
    with pytest.raises(KeyError):  # a bug keeps its traceback
        run_command(bug)
    parser = CommandParser(prog="tool")
    parser.add_argument("--size", type=int, required=True)
    with pytest.raises(UsageError, match="argument --size: invalid int value: 'big'"):
        parser.parse_args(["--size", "big"])
    assert run_command(lambda: parser.parse_args([])) == 2


def test_run_command_output(capsys) -> None:
    run_command(lambda: (_ for _ in ()).throw(FileNotFoundError("`--data`: file not found: x.json")))
    assert capsys.readouterr() == ("", "error: `--data`: file not found: x.json\n")
    run_command(lambda: (_ for _ in ()).throw(ValueError("two\nlines")))
    assert capsys.readouterr().err == "error: two; lines\n"
    run_command(lambda: "the success line")
    assert capsys.readouterr() == ("the success line\n", "")


def test_a_run_log_leaves_the_callers_logging_alone(tmp_path: Path) -> None:
    root = logging.getLogger()
    before = (list(root.handlers), root.level, logging.getLogger("harmoclip").level)
    with log_to_file(tmp_path / "run.log"):
        logging.getLogger("harmoclip.train").info("kept in the run's log")
        logging.getLogger("somebody.else").warning("not the project's")
    assert (list(root.handlers), root.level, logging.getLogger("harmoclip").level) == before
    text = (tmp_path / "run.log").read_text()
    assert "INFO harmoclip.train: kept in the run's log" in text and "somebody.else" not in text


def test_setup_logging_writes_the_error_to_the_log_file_once_on_the_console(tmp_path: Path, capsys) -> None:
    code = (
        "import sys\nfrom plumbing.command_line import run_command, setup_logging\n"
        f"setup_logging({str(tmp_path / 'cmd.log')!r})\n"
        "def fail():\n    raise ValueError('`--x`: bad value 3')\n"
        "sys.exit(run_command(fail))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr == "error: `--x`: bad value 3\n"
    assert "ERROR harmoclip: `--x`: bad value 3" in (tmp_path / "cmd.log").read_text()
    assert callable(setup_logging)


# ---------------------------------------------------------------------------------------------- library hygiene


def _library_files() -> list[Path]:
    return sorted(p for package in LIBRARY_PACKAGES for p in (ROOT / package).rglob("*.py"))


def _is_main_guard(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
    )


def _process_wide_calls(tree: ast.Module) -> list[tuple[int, str, str | None]]:
    """(line, what, top-level function or None) for each call that changes the process: logging.basicConfig,
    SystemExit / sys.exit, os.environ changes. Those under `if __name__ == "__main__":` are left out."""
    found = []

    def visit(node: ast.AST, top: str | None) -> None:
        if _is_main_guard(node):
            return
        text = ast.unparse(node) if isinstance(node, (ast.Call, ast.Raise, ast.Assign)) else ""
        if isinstance(node, ast.Call) and text.startswith("logging.basicConfig("):
            found.append((node.lineno, "logging.basicConfig", top))
        if isinstance(node, ast.Call) and text.startswith(
            ("sys.exit(", "exit(", "os.environ.setdefault(", "os.environ.update(", "os.environ.pop(", "os.putenv(")
        ):
            found.append((node.lineno, text.split("(")[0], top))
        if isinstance(node, ast.Raise) and "SystemExit" in text:
            found.append((node.lineno, "SystemExit", top))
        if isinstance(node, ast.Assign) and any(ast.unparse(t).startswith("os.environ[") for t in node.targets):
            found.append((node.lineno, "os.environ[...] =", top))
        for child in ast.iter_child_nodes(node):
            name = child.name if top is None and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else top
            visit(child, name)

    visit(tree, None)
    return found


@pytest.mark.parametrize("path", _library_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_only_entry_points_touch_the_process(path: Path) -> None:
    """Logging set-up, environment variables and exiting belong to a command's `main` (or its `__main__` block);
    the one helper that configures logging is plumbing.command_line.setup_logging."""
    for line, what, top in _process_wide_calls(ast.parse(path.read_text())):
        allowed = top == "main" or (path == ROOT / "plumbing" / "command_line.py" and top == "setup_logging")
        assert allowed and what != "SystemExit" and what != "sys.exit", (
            f"{path.relative_to(ROOT)}:{line}: {what} in {top or 'module level'}"
        )


def test_the_hygiene_check_finds_what_it_forbids() -> None:
    source = (
        "import os, sys, logging\nos.environ.setdefault('A', '1')\n"
        "def train():\n    logging.basicConfig(force=True)\n    raise SystemExit('stop')\n"
        "def main():\n    os.environ['B'] = '1'\n"
        "if __name__ == '__main__':\n    sys.exit(main())\n"
    )
    found = {(what, top) for _, what, top in _process_wide_calls(ast.parse(source))}
    assert found == {
        ("os.environ.setdefault", None),
        ("logging.basicConfig", "train"),
        ("SystemExit", "train"),
        ("os.environ[...] =", "main"),
    }
