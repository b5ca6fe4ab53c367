"""Mutation score of the core: for each core module, mutmut's mutants run against the tests that exercise it.

    pip install -e ".[mutation]"                            # mutmut
    python -m tools.mutation                                # every module of the table (about an hour, 2 cores)
    python -m tools.mutation --only losses,modeling         # some of them
    python -m tools.mutation --list                         # the table: module, file, tests

The table lives in its own file, tools/mutation_modules.toml (`--table`). Each `[[modules]]` row holds a name, the
file to mutate and the pytest arguments (files, `file::test`, `-k`) that select the tests which exercise it. A row
whose file does not exist (a module not yet created, or moved away) is skipped and reported as such, so the table can
name where code will be before it gets there. The file also holds the per-mutant time limit (`timeout_multiplier` and
`timeout_constant`: a mutant may run its tests for (their clean time + constant) x multiplier x 2 CPU seconds before
it counts as timed out), extra pytest options (`pytest_args`) and the `[[set_aside]]` rules.

Each module runs in its own copy of the project (`<output-dir>/<module>/`, the tracked and untracked-but-not-ignored
files), so the working tree is never mutated and an interrupted run leaves nothing behind in it. There mutmut writes
`mutants/` (the mutated copy), runs the selected tests once for their coverage and time, then each mutant against the
tests that reach the mutated function, one worker, each test run forked from a process that has already imported
torch and the tests. Results per module: mutants made, killed, survived, timed out, without tests (no selected test
reaches the code), and the score = (killed + timed out) / (killed + survived + timed out + suspicious); the diffs of
the survivors are written to `<output-dir>/<module>/survivors.diff`. Writes `<output-dir>/mutation.json`,
`<output-dir>/mutation.md` and logs to `<output-dir>/mutation.log`. Slow by nature: never part of CI.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from plumbing.atomic_files import write_text_atomic
from plumbing.command_line import CommandParser, run_command, setup_logging

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT_DIR = ROOT / "outputs" / "mutation"
# The table, relative to the project (`--project`).
TABLE = Path("tools") / "mutation_modules.toml"
LOGGER = logging.getLogger("harmoclip.mutation")
# mutmut's verdicts (`mutmut results --all true`) and the columns they are counted in.
VERDICTS = ("killed", "survived", "timeout", "suspicious", "no tests", "skipped", "not checked", "segfault")
PROGRESS = re.compile(r"(\d+)/(\d+)\s")


@dataclass(frozen=True)
class CoreModule:
    """One row of the table: `file` mutated, `tests` (pytest arguments) run against its mutants."""

    name: str
    file: str
    tests: tuple[str, ...]


@dataclass
class ModuleResult:
    name: str
    file: str
    status: str  # "done", "skipped: <why>" or "failed: <why>"
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    survivors: list[str] = field(default_factory=list)

    @property
    def made(self) -> int:
        return sum(self.counts.values())

    @property
    def score(self) -> float | None:
        """(killed + timed out) / every mutant a test ran against; None when no test ran against any."""
        caught = self.counts.get("killed", 0) + self.counts.get("timeout", 0)
        tested = caught + self.counts.get("survived", 0) + self.counts.get("suspicious", 0)
        return caught / tested if tested else None


# ---------------------------------------------------------------------------------------------- configuration


def read_settings(table: Path) -> dict[str, Any]:
    """The settings of the mutation table `table` (a TOML file), with its `modules` as `CoreModule` rows."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser as a package
        import tomli as tomllib
    if not table.is_file():
        raise ValueError(f"mutation table not found: {table}")
    settings = tomllib.loads(table.read_text(encoding="utf-8"))
    rows = settings.get("modules", [])
    if not rows:
        raise ValueError(f"{table}: [[modules]] lists no module")
    modules = []
    for index, row in enumerate(rows):
        missing = {"name", "file", "tests"} - set(row)
        if missing:
            raise ValueError(f"{table}: mutation module {index} lacks {sorted(missing)}")
        if not str(row["file"]).endswith(".py"):
            raise ValueError(
                f"{table}: mutation module {row['name']!r}: `file` must be a .py file, got {row['file']!r}"
            )
        modules.append(CoreModule(str(row["name"]), str(row["file"]), tuple(str(t) for t in row["tests"])))
    names = [module.name for module in modules]
    if len(set(names)) != len(names):
        raise ValueError(f"{table}: mutation module names repeat: {names}")
    return {**settings, "modules": modules}


def select_modules(modules: list[CoreModule], only: str | None) -> list[CoreModule]:
    if only is None:
        return modules
    wanted = [name.strip() for name in only.split(",") if name.strip()]
    unknown = sorted(set(wanted) - {module.name for module in modules})
    if unknown:
        raise ValueError(f"`--only`: unknown module(s) {unknown}; choose from {[m.name for m in modules]}")
    return [module for module in modules if module.name in wanted]


def mutmut_table(module: CoreModule, settings: dict[str, Any]) -> str:
    """The `[tool.mutmut]` table that makes mutmut mutate `module.file` alone and run `module.tests`."""
    package = Path(module.file).parent.as_posix()
    values = {
        "source_paths": [f"{package}/" if package != "." else module.file],
        "only_mutate": [module.file],
        "pytest_add_cli_args_test_selection": list(module.tests),
        "pytest_add_cli_args": ["-p", "no:cacheprovider", *settings.get("pytest_args", [])],
        "timeout_multiplier": float(settings.get("timeout_multiplier", 15.0)),
        "timeout_constant": float(settings.get("timeout_constant", 1.0)),
        # torch is not fork-safe once it has run: each mutant forks from a server that has only imported the tests.
        "process_isolation": "forkserver",
        "use_git_change_detection": False,
    }
    return "\n[tool.mutmut]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())


# ---------------------------------------------------------------------------------------------- one module


def project_files(root: Path) -> list[Path]:
    """The project's files relative to `root`: git's tracked and untracked-not-ignored ones (every file outside
    dot-folders, `outputs` and caches when `root` is not a git checkout)."""
    try:
        listing = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, capture_output=True, check=True
        ).stdout.decode()
        return [Path(name) for name in listing.split("\0") if name and (root / name).is_file()]
    except (OSError, subprocess.CalledProcessError):
        skip = {"outputs", "mutants", "__pycache__"}
        return [
            path.relative_to(root)
            for path in root.rglob("*")
            if path.is_file() and not any(part.startswith(".") or part in skip for part in path.relative_to(root).parts)
        ]


def copy_project(root: Path, target: Path) -> list[str]:
    """A fresh copy of the project's files (`project_files`) at `target`; returns its top-level folders."""
    if target.exists():
        shutil.rmtree(target)
    files = project_files(root)
    for relative in files:
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / relative, target / relative)
    return sorted({relative.parts[0] for relative in files if len(relative.parts) > 1})


def _mutmut(args: list[str], cwd: Path, env: dict[str, str], nice: int, **kwargs: Any) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mutmut", *args]
    if nice and shutil.which("nice"):
        command = ["nice", "-n", str(nice), *command]
    return subprocess.run(command, cwd=cwd, env=env, **kwargs)


def run_module(module: CoreModule, settings: dict[str, Any], root: Path, output_dir: Path, nice: int) -> ModuleResult:
    """Copies the project, mutates `module.file` there and runs its mutants; returns the verdict counts."""
    if not (root / module.file).is_file():
        return ModuleResult(module.name, module.file, "skipped: file absent")
    work = output_dir / module.name
    tops = copy_project(root, work)
    pyproject = work / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    table = mutmut_table(module, settings)
    package = Path(module.file).parts[0] if len(Path(module.file).parts) > 1 else None
    also_copy = [top for top in tops if top != package and top != "tests"]  # the project beside the mutated package
    pyproject.write_text(text + table + f"also_copy = {json.dumps(also_copy)}\n", encoding="utf-8")
    # mutants/ goes first on the path of the tests' subprocesses too; it must exist before Python starts, or the
    # import system remembers it as absent.
    (work / "mutants").mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(work / "mutants"), str(work)])}
    env["PYTHONPATH"] += os.pathsep + os.environ.get("PYTHONPATH", "") if os.environ.get("PYTHONPATH") else ""
    log_path = work / "mutmut.log"
    start = time.perf_counter()
    LOGGER.info("%s: mutating %s, tests %s", module.name, module.file, " ".join(module.tests))
    with log_path.open("w", encoding="utf-8") as log, tqdm(desc=module.name, unit="mutant", leave=True) as bar:
        process = subprocess.Popen(
            (["nice", "-n", str(nice)] if nice and shutil.which("nice") else [])
            + [sys.executable, "-m", "mutmut", "run", "--max-children", "1"],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: an interrupted run ends mutmut's workers too
        )
        try:
            _follow(process, log, bar)
        except BaseException:
            os.killpg(process.pid, signal.SIGTERM)
            raise
        code = process.wait()
    seconds = time.perf_counter() - start
    if code != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or ["no output"]
        return ModuleResult(module.name, module.file, f"failed: mutmut exit {code}: {tail[0][-200:]}", seconds=seconds)
    return collect_module(module, work, settings, seconds)


def _follow(process: subprocess.Popen, log: Any, bar: tqdm) -> None:
    """Copies mutmut's output to `log` and its "done/total" counter to `bar` until it exits."""
    buffer = ""
    assert process.stdout is not None
    while chunk := process.stdout.read1(4096):
        text = chunk.decode(errors="replace")
        log.write(text)
        buffer = (buffer + text)[-400:]
        found = PROGRESS.findall(buffer)
        if found:
            bar.n, bar.total = (int(value) for value in found[-1])
            bar.refresh()


def collect_module(module: CoreModule, work: Path, settings: dict[str, Any], seconds: float) -> ModuleResult:
    """The verdicts of the mutmut run in `work`: counts, the survivors' diffs (`survivors.diff`), and the survivors
    that a `[[set_aside]]` rule of `settings` names (`set_aside.txt`, with the reason); a rule
    with a `file` applies to that file's mutants only."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(work / "mutants"), str(work), os.environ.get("PYTHONPATH", "")]),
    }
    listing = _mutmut(["results", "--all", "true"], work, env, 0, capture_output=True, text=True, check=True).stdout
    verdicts = parse_results(listing)
    counts = {verdict: 0 for verdict in VERDICTS}
    for verdict in verdicts.values():
        counts[verdict] = counts.get(verdict, 0) + 1
    survivors = sorted(name for name, verdict in verdicts.items() if verdict in ("survived", "suspicious"))
    diffs = survivor_diffs(survivors, work, env)
    rules = [rule for rule in settings.get("set_aside", []) if rule.get("file", module.file) == module.file]
    aside = {name: rule for name in survivors if (rule := set_aside_rule(diffs[name], rules)) is not None}
    for name in aside:
        counts[verdicts[name]] -= 1
    counts["set aside"] = len(aside)
    write_text_atomic(
        work / "survivors.diff", "\n\n".join(diffs[name] for name in survivors if name not in aside) + "\n"
    )
    write_text_atomic(
        work / "set_aside.txt",
        "".join(f"{name}: {rule['name']}: {rule['reason']}\n{diffs[name]}\n\n" for name, rule in aside.items()),
    )
    kept = [name for name in survivors if name not in aside]
    unchecked = counts.get("not checked", 0)  # an interrupted run: counted as far as it went
    status = f"partial: {unchecked} of {len(verdicts)} not checked" if unchecked else "done"
    result = ModuleResult(module.name, module.file, status, counts, seconds, kept)
    LOGGER.info("%s: %d mutants, counts %s, score %s, %.0f s", module.name, result.made, counts, result.score, seconds)
    return result


# `mutmut show` for many mutants in one process (mutmut's own functions); one `mutmut show` each where they moved.
_SHOW_MANY = """
import json, sys
from mutmut.__main__ import find_mutant, status_by_exit_code
from mutmut.mutation.diff_apply import get_diff_for_mutant
diffs = {}
for name in sys.argv[1:]:
    found = find_mutant(name)
    verdict = status_by_exit_code[found.exit_code_by_key[name]]
    diffs[name] = f"# {name}: {verdict}\\n" + get_diff_for_mutant(name, path=found.path)
print(json.dumps(diffs))
"""


def survivor_diffs(names: list[str], work: Path, env: dict[str, str]) -> dict[str, str]:
    """{mutant: `mutmut show` text} of `names`, the mutmut run in `work`."""
    if not names:
        return {}
    shown = subprocess.run(
        [sys.executable, "-c", _SHOW_MANY, *names], cwd=work, env=env, capture_output=True, text=True
    )
    if shown.returncode == 0:
        return {name: text.strip() for name, text in json.loads(shown.stdout).items()}
    return {
        name: _mutmut(["show", name], work, env, 0, capture_output=True, text=True).stdout.strip() for name in names
    }


def changed_lines(diff: str) -> tuple[str, str]:
    """The removed and the added lines of a unified diff (headers left out), each joined."""
    lines = diff.splitlines()
    removed = [line[1:] for line in lines if line.startswith("-") and not line.startswith("---")]
    added = [line[1:] for line in lines if line.startswith("+") and not line.startswith("+++")]
    return "\n".join(removed), "\n".join(added)


def set_aside_rule(diff: str, rules: list[dict[str, str]]) -> dict[str, str] | None:
    """The first rule under which the mutant of `diff` changes nothing: the removed and the added lines are equal
    once every match of the rule's `strip` pattern, the spaces and the commas are taken out of both."""
    removed, added = changed_lines(diff)
    for rule in rules:
        pattern = re.compile(rule["strip"])

        def bare(text: str, pattern: re.Pattern = pattern) -> str:
            return re.sub(r"[\s,]", "", pattern.sub("", text))

        if removed != added and bare(removed) == bare(added):
            return rule
    return None


def parse_results(listing: str) -> dict[str, str]:
    """`mutmut results --all true` lines (`    module.x_function__mutmut_3: killed`) -> {mutant: verdict}."""
    verdicts = {}
    for line in listing.splitlines():
        name, separator, verdict = line.strip().rpartition(": ")
        if separator and "__mutmut_" in name:
            verdicts[name] = verdict.strip()
    return verdicts


# ---------------------------------------------------------------------------------------------- report


def markdown_table(results: list[ModuleResult]) -> str:
    rows = [
        "| module | file | mutants | killed | survived | timed out | no tests | set aside | score | time |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        if result.status != "done" and not result.status.startswith("partial"):
            rows.append(f"| {result.name} | `{result.file}` | {result.status} | | | | | | | |")
            continue
        c = result.counts
        score = "-" if result.score is None else f"{100 * result.score:.1f} %"
        name = result.name if result.status == "done" else f"{result.name} ({result.status})"
        rows.append(
            f"| {name} | `{result.file}` | {result.made} | {c.get('killed', 0)} | "
            f"{c.get('survived', 0) + c.get('suspicious', 0)} | {c.get('timeout', 0)} | {c.get('no tests', 0)} | {c.get('set aside', 0)} | "
            f"{score} | {result.seconds / 60:.1f} min |"
        )
    done = [r for r in results if r.status == "done"]  # partial runs are left out of the total
    caught = sum(r.counts.get("killed", 0) + r.counts.get("timeout", 0) for r in done)
    tested = caught + sum(r.counts.get("survived", 0) + r.counts.get("suspicious", 0) for r in done)
    if tested:
        rows.append(f"| **all** | | {sum(r.made for r in done)} | | | | | | **{100 * caught / tested:.1f} %** | |")
    return "\n".join(rows)


def _collect_earlier(module: CoreModule, settings: dict[str, Any], output_dir: Path) -> ModuleResult:
    """`collect_module` on the folder of an earlier run, its time read from that run's mutation.json."""
    work = output_dir / module.name
    if not (work / "mutants").is_dir():
        return ModuleResult(module.name, module.file, "not run")
    seconds = 0.0
    if (output_dir / "mutation.json").is_file():
        earlier = json.loads((output_dir / "mutation.json").read_text(encoding="utf-8"))["modules"]
        seconds = next((row["seconds"] for row in earlier if row["name"] == module.name), 0.0)
    return collect_module(module, work, settings, seconds)


def build_parser() -> CommandParser:
    parser = CommandParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=None, help="comma-separated module names of the table (default: all)")
    parser.add_argument("--list", action="store_true", help="print the table of modules and their tests, run nothing")
    parser.add_argument(
        "--project", type=Path, default=ROOT, help="the project whose modules are mutated (default: this checkout)"
    )
    parser.add_argument("--table", type=Path, default=None, help=f"the mutation table (default: <project>/{TABLE})")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR)
    parser.add_argument("--nice", type=int, default=10, help="niceness of the mutant runs (0: as this process)")
    parser.add_argument(
        "--collect",
        action="store_true",
        help="run nothing: read the verdicts of an earlier run in --output-dir again (after a change of set_aside)",
    )
    return parser


def run_mutation(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    root = args.project.resolve()
    settings = read_settings(args.table or root / TABLE)
    modules = select_modules(settings["modules"], args.only)
    if args.list:
        for module in modules:
            present = "" if (root / module.file).is_file() else "  (absent: skipped)"
            print(f"{module.name}: {module.file}{present}\n    {' '.join(module.tests)}")
        return {"modules": [asdict(module) for module in modules]}
    try:
        import mutmut  # noqa: F401
    except ImportError:
        raise ValueError('mutmut is not installed: pip install -e ".[mutation]"') from None
    args.output_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(args.output_dir / "mutation.log")
    results = []
    for module in tqdm(modules, desc="modules", unit="module"):
        if args.collect:
            results.append(_collect_earlier(module, settings, args.output_dir))
        else:
            results.append(run_module(module, settings, root, args.output_dir, args.nice))
        if results[-1].status != "done":
            LOGGER.info("%s: %s", module.name, results[-1].status)
    table = markdown_table(results)
    rows = {result.name: {**asdict(result), "made": result.made, "score": result.score} for result in results}
    # Modules of earlier runs into the same folder (`--only`) are kept, in the table's order.
    earlier_path = args.output_dir / "mutation.json"
    earlier = json.loads(earlier_path.read_text(encoding="utf-8"))["modules"] if earlier_path.is_file() else []
    for row in earlier:
        rows.setdefault(row["name"], row)
    order = [module.name for module in settings["modules"]]
    summary = {
        "command": " ".join(["python -m tools.mutation", *(argv if argv is not None else sys.argv[1:])]),
        "modules": sorted(
            rows.values(), key=lambda row: order.index(row["name"]) if row["name"] in order else len(order)
        ),
    }
    write_text_atomic(args.output_dir / "mutation.md", table + "\n")
    write_text_atomic(args.output_dir / "mutation.json", json.dumps(summary, indent=2) + "\n")
    print(table)
    print(json.dumps({r.name: {"made": r.made, "score": r.score, "status": r.status} for r in results}))
    return summary


def _interrupt(signum: int, frame: Any) -> None:
    """A `kill` (SIGTERM) ends the run as Ctrl-C does: mutmut's process group is ended with it (`run_module`)."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """The mutation run as a command; returns the exit code (a user's mistake: one line `error: ...`)."""
    signal.signal(signal.SIGTERM, _interrupt)
    return run_command(lambda: run_mutation(argv) and None)


if __name__ == "__main__":
    sys.exit(main())
