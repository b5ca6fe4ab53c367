"""`python -m tools.mutation`: the project's table of core modules, and a real mutmut run on a toy project (one
small module, one test file) whose verdicts are known by hand. The run over the real core is slow and never part of
the suite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools.mutation import (
    ROOT,
    TABLE,
    ModuleResult,
    changed_lines,
    markdown_table,
    parse_results,
    read_settings,
    select_modules,
    set_aside_rule,
)

# Files the table may name before they exist (none now: the leaf modules box_ops and zero_shot are in place).
PLANNED: set[str] = set()


def test_the_projects_table_names_real_files_and_tests() -> None:
    settings = read_settings(ROOT / TABLE)
    modules = settings["modules"]
    for module in modules:
        assert (ROOT / module.file).is_file() or module.file in PLANNED, module
        test_files = [arg.split("::")[0] for arg in module.tests if arg.startswith("tests/")]
        assert test_files and all((ROOT / name).is_file() for name in test_files), module
        for arg in module.tests:  # a test named by node id still exists under that name
            if "::" in arg:
                name, function = arg.split("::", 1)
                assert f"def {function.split('[')[0]}(" in (ROOT / name).read_text(encoding="utf-8"), (module, arg)
    # The core: one row per file of the model package (after the merge into transformers' shape: RoIAlign, the dense
    # map and detection's heads in `modeling`; box operations, geometry and post-processing in `image_processing`;
    # zero-shot scoring in `pipelines`), plus training's config, checkpointing and atomic writes.
    core = {"losses", "modeling", "image_processing", "pipelines", "processing", "configuration"}
    core |= {"training_config", "checkpointing", "atomic_files"}
    assert core <= {module.name for module in modules}
    assert settings["timeout_multiplier"] > 0 and settings["timeout_constant"] >= 0
    tomllib = pytest.importorskip("tomllib")
    assert "harmoclip" not in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]  # one table, not two
    with pytest.raises(ValueError, match=r"`--only`: unknown module\(s\) \['nope'\]"):
        select_modules(modules, "losses,nope")
    assert [m.name for m in select_modules(modules, " modeling ,losses")] == ["modeling", "losses"]


def test_bad_tables_get_one_line_naming_the_problem(tmp_path: Path) -> None:
    table = tmp_path / "mutation_modules.toml"
    with pytest.raises(ValueError, match=r"mutation table not found: .*mutation_modules.toml"):
        read_settings(table)
    table.write_text("timeout_multiplier = 5.0\n")
    with pytest.raises(ValueError, match=r"\[\[modules\]\] lists no module"):
        read_settings(table)
    table.write_text('[[modules]]\nname = "a"\nfile = "a.py"\n')
    with pytest.raises(ValueError, match=r"mutation module 0 lacks \['tests'\]"):
        read_settings(table)
    table.write_text('[[modules]]\nname = "a"\nfile = "a.txt"\ntests = ["t"]\n')
    with pytest.raises(ValueError, match=r"`file` must be a .py file, got 'a.txt'"):
        read_settings(table)


def test_results_are_read_and_scored_by_hand() -> None:
    listing = (
        "    pkg.mod.x_f__mutmut_1: killed\n    pkg.mod.x_f__mutmut_2: survived\n    pkg.mod.x_g__mutmut_1: timeout\n"
    )
    assert parse_results(listing + "some other line\n") == {
        "pkg.mod.x_f__mutmut_1": "killed",
        "pkg.mod.x_f__mutmut_2": "survived",
        "pkg.mod.x_g__mutmut_1": "timeout",
    }
    result = ModuleResult("m", "pkg/mod.py", "done", {"killed": 3, "survived": 1, "timeout": 1, "no tests": 5})
    assert result.made == 10 and result.score == pytest.approx(4 / 5)  # untested mutants are not in the score
    assert ModuleResult("m", "pkg/mod.py", "done", {"no tests": 2}).score is None
    table = markdown_table([result, ModuleResult("gone", "pkg/gone.py", "skipped: file absent")])
    assert "| m | `pkg/mod.py` | 10 | 3 | 1 | 1 | 5 | 0 | 80.0 % |" in table
    assert "| gone | `pkg/gone.py` | skipped: file absent |" in table


TOY_MODULE = """
def clamp(value, low, high):
    if value < low:
        return low
    if value > high:
        return high
    return value


def span(low, high):
    return high - low + 1


def double(value):
    return value * 2
"""

TOY_TEST = """
from toy.arith import clamp, span


def test_clamp():
    assert clamp(5, 0, 10) == 5
    assert clamp(-3, 0, 10) == 0
    assert clamp(12, 0, 10) == 10
    assert span(2, 5) == 4
"""


def test_a_real_run_on_a_toy_project(tmp_path: Path) -> None:
    """mutmut on `toy/arith.py` against one test: `double` has no test (its mutants count as untested), `span`'s
    changed operators and constant are caught, and `value < low` -> `value <= low` survives (at value == low both
    return low: an equivalent mutant)."""
    pytest.importorskip("mutmut", reason="the mutation extra (pip install -e '.[mutation]') is not installed")
    project = tmp_path / "project"
    (project / "toy").mkdir(parents=True)
    (project / "tests").mkdir()
    (project / "toy" / "__init__.py").write_text("")
    (project / "toy" / "arith.py").write_text(TOY_MODULE)
    (project / "tests" / "test_arith.py").write_text(TOY_TEST)
    (project / "pyproject.toml").write_text('[project]\nname = "toy"\nversion = "0"\n')
    row = '[[modules]]\nname = "{}"\nfile = "{}"\ntests = ["tests/test_arith.py"]\n'
    (project / TABLE).parent.mkdir()
    (project / TABLE).write_text(
        "timeout_multiplier = 5.0\n" + row.format("arith", "toy/arith.py") + row.format("later", "toy/later.py")
    )
    out = tmp_path / "out"
    command = [sys.executable, "-m", "tools.mutation", "--project", str(project)]  # its table in the default place
    done = subprocess.run(
        [*command, "--output-dir", str(out), "--nice", "0"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = {row["name"]: row for row in json.loads((out / "mutation.json").read_text())["modules"]}
    assert summary["later"]["status"] == "skipped: file absent"
    arith = summary["arith"]
    counts = arith["counts"]
    assert arith["status"] == "done" and arith["made"] == sum(counts.values()) >= 6
    assert counts["no tests"] >= 1  # `double`'s mutants: no selected test calls it
    assert counts["killed"] >= 3 and counts["survived"] >= 2  # span's -, + and 1; clamp's two comparisons
    assert arith["score"] == pytest.approx(
        (counts["killed"] + counts["timeout"]) / (counts["killed"] + counts["survived"] + counts["timeout"])
    )
    survivors = (out / "arith" / "survivors.diff").read_text()
    assert "-    if value < low:\n+    if value <= low:" in survivors
    assert (project / "toy" / "arith.py").read_text() == TOY_MODULE  # the mutants lived in a copy
    assert "| arith | `toy/arith.py` |" in done.stdout and (out / "mutation.log").is_file()
    # --collect reads the same verdicts again without running anything.
    again = subprocess.run([*command, "--output-dir", str(out), "--collect"], cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    collected = {row["name"]: row for row in json.loads((out / "mutation.json").read_text())["modules"]}
    assert collected["arith"]["counts"] == counts and collected["arith"]["seconds"] == arith["seconds"]


def test_list_prints_the_table_without_running(tmp_path: Path) -> None:
    table = tmp_path / "elsewhere.toml"
    table.write_text('[[modules]]\nname = "a"\nfile = "pkg/a.py"\ntests = ["tests/test_a.py", "-k", "x"]\n')
    done = subprocess.run(
        [sys.executable, "-m", "tools.mutation", "--list", "--project", str(tmp_path), "--table", str(table)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and "a: pkg/a.py  (absent: skipped)\n    tests/test_a.py -k x" in done.stdout


def test_set_aside_rules_match_only_the_change_they_name() -> None:
    rules = read_settings(ROOT / TABLE)["set_aside"]
    device = "--- a.py\n+++ a.py\n@@ -1 +1 @@\n-    x = torch.arange(n, device=y.device) + 1\n+    x = torch.arange(n, ) + 1\n"
    assert set_aside_rule(device, rules)["name"] == "device placement"
    assert set_aside_rule(device.replace("+    x = torch.arange(n, )", "+    x = torch.arange(n, device=None)"), rules)
    infinity = '-    a = b.masked_fill(m, float("-inf"))\n+    a = b.masked_fill(m, float("-INF"))\n'
    assert set_aside_rule(infinity, rules)["name"] == "spelling of infinity"
    # A changed operator or constant beside a device argument is not set aside.
    assert (
        set_aside_rule(device.replace("+    x = torch.arange(n, ) + 1", "+    x = torch.arange(n, ) - 1"), rules)
        is None
    )
    assert set_aside_rule(infinity.replace('float("-INF")', 'float("+inf")'), rules) is None
    assert changed_lines(device) == ("    x = torch.arange(n, device=y.device) + 1", "    x = torch.arange(n, ) + 1")
