"""The project's layers import one way only.

Allowed arrows (every import statement counts, also those inside functions):
benchmarks / scripts -> anything; training -> evaluation, conversion, modeling_harmoclip;
evaluation -> conversion, modeling_harmoclip; conversion -> modeling_harmoclip;
modeling_harmoclip -> torch, transformers and the standard library only (it is the Hub's remote code);
every layer but modeling_harmoclip and space -> plumbing (command line, atomic writes), which imports only the
standard library, torch and transformers;
space -> none of the project's packages (it loads published models).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = {
    "plumbing",
    "modeling_harmoclip",
    "conversion",
    "evaluation",
    "training",
    "benchmarks",
    "scripts",
    "space",
}
ALLOWED = {
    "plumbing": {"plumbing"},
    "modeling_harmoclip": {"modeling_harmoclip"},
    "conversion": {"conversion", "modeling_harmoclip", "plumbing"},
    "evaluation": {"evaluation", "conversion", "modeling_harmoclip", "plumbing"},
    "training": {"training", "evaluation", "conversion", "modeling_harmoclip", "plumbing"},
    "benchmarks": PROJECT_PACKAGES - {"space", "scripts"},
    "scripts": PROJECT_PACKAGES - {"space"},
    "space": {"space"},
}
# Third-party packages the Hub remote code may import at top level wherever the model is loaded.
MODELING_THIRD_PARTY = {"torch", "transformers"}
# Pillow, for the one image reader (image_io.py) only, inside its functions: it is transformers' own vision dependency
# (its `load_image` and PIL-backed image processors need it), so it is there wherever images are processed, and
# loading the model alone never imports it.
MODELING_IMAGE_READER = {"image_io.py": {"PIL"}}
# Optional imports of remote code, inside `try` only (transformers' remote-code check then does not require them):
# spaCy's noun chunks in the grounding pipeline.
MODELING_OPTIONAL = {"pipeline_grounding.py": {"spacy"}}


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute top-level package) for every import in the file, relative imports resolved."""
    package_parts = path.relative_to(ROOT).parent.parts
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - (node.level - 1)]
                found.append((node.lineno, base[0] if base else (node.module or "").split(".")[0]))
            elif node.module:
                found.append((node.lineno, node.module.split(".")[0]))
    return found


def _source_files() -> list[Path]:
    return sorted(p for package in ALLOWED for p in (ROOT / package).rglob("*.py") if ".venv" not in p.parts)


def test_every_layer_has_files() -> None:
    layers = {p.relative_to(ROOT).parts[0] for p in _source_files()}
    assert layers == set(ALLOWED), f"layers without Python files: {set(ALLOWED) - layers}"


@pytest.mark.parametrize("path", _source_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_layers(path: Path) -> None:
    layer = path.relative_to(ROOT).parts[0]
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for line, module in _imported_modules(path)
        if module in PROJECT_PACKAGES and module not in ALLOWED[layer]
    ]
    assert not bad, "imports against the layering: " + "; ".join(bad)


@pytest.mark.parametrize("path", sorted((ROOT / "modeling_harmoclip").glob("*.py")), ids=lambda p: p.name)
def test_remote_code_imports_only_torch_transformers_stdlib(path: Path) -> None:
    allowed = set(sys.stdlib_module_names) | MODELING_THIRD_PARTY | {"modeling_harmoclip", "__future__"}
    allowed |= MODELING_IMAGE_READER.get(path.name, set()) | MODELING_OPTIONAL.get(path.name, set())
    bad = [f"{path.name}:{line} imports {m}" for line, m in _imported_modules(path) if m not in allowed]
    assert not bad, "; ".join(bad)


def test_remote_code_imports_optional_packages_only_inside_try() -> None:
    from transformers.dynamic_module_utils import get_imports

    for name, modules in MODELING_OPTIONAL.items():
        assert not set(get_imports(ROOT / "modeling_harmoclip" / name)) & modules, name


def test_remote_code_imports_pillow_only_inside_functions() -> None:
    """The image reader's Pillow imports are in its functions: importing the module needs torch and transformers only."""
    for name, modules in MODELING_IMAGE_READER.items():
        tree = ast.parse((ROOT / "modeling_harmoclip" / name).read_text())
        top_level = [
            node.lineno
            for node in tree.body
            if isinstance(node, (ast.Import, ast.ImportFrom))
            and {
                (alias.name if isinstance(node, ast.Import) else node.module or "").split(".")[0]
                for alias in node.names
            }
            & modules
        ]
        assert not top_level, f"{name} imports {modules} at top level (lines {top_level})"


@pytest.mark.parametrize("path", sorted((ROOT / "plumbing").glob("*.py")), ids=lambda p: p.name)
def test_plumbing_imports_only_torch_transformers_stdlib(path: Path) -> None:
    allowed = set(sys.stdlib_module_names) | MODELING_THIRD_PARTY | {"plumbing", "__future__"}
    bad = [f"{path.name}:{line} imports {m}" for line, m in _imported_modules(path) if m not in allowed]
    assert not bad, "; ".join(bad)


def test_checker_sees_a_forbidden_arrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checker itself resolves relative and in-function imports (it would catch a regression)."""
    fake_root = tmp_path
    (fake_root / "conversion").mkdir()
    bad_file = fake_root / "conversion" / "bad.py"
    bad_file.write_text("def f():\n    from training.config import TrainConfig\n    from . import sibling\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake_root)
    modules = [m for _, m in _imported_modules(bad_file)]
    assert modules == ["training", "conversion"]


# `accelerate launch` and torchrun run the training script by path; everything else runs as a module or console script.
RUN_BY_PATH = {"training/train.py"}


def _touches_sys_path(path: Path) -> bool:
    """Whether the file changes `sys.path` (an `import`-path bootstrap)."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("insert", "append")
        ):
            target = node.func.value
            if isinstance(target, ast.Attribute) and target.attr == "path" and getattr(target.value, "id", "") == "sys":
                return True
    return False


def test_commands_run_as_modules_without_sys_path_bootstraps() -> None:
    bootstrapping = {
        str(path.relative_to(ROOT))
        for path in _source_files()
        if path.relative_to(ROOT).parts[0] != "space" and _touches_sys_path(path)
    }
    assert bootstrapping == RUN_BY_PATH


def test_test_modules_share_helpers_through_helper_modules() -> None:
    """A test module imports helpers from conftest.py or a helper module, never from another test module."""
    bad = [
        f"{path.name}:{line} imports {module}"
        for path in sorted((ROOT / "tests").glob("*.py"))
        for line, module in _imported_modules(path)
        if module.startswith("test_")
    ]
    assert not bad, "; ".join(bad)


def test_the_sys_path_check_sees_a_bootstrap(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text("import sys\nif True:\n    sys.path.insert(0, '..')\n")
    assert _touches_sys_path(script)
    script.write_text("import sys\nprint(sys.path)\n")
    assert not _touches_sys_path(script)
