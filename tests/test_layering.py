"""The project's layers import one way only.

Allowed arrows (every import statement counts, also those inside functions):
tools (development tools) -> every layer but space, and nothing imports tools;
scripts -> every layer but space and tools;
benchmarks -> training, evaluation, conversion, modeling_harmoclip;
experiments -> training, evaluation, conversion, modeling_harmoclip (beside benchmarks, neither imports the other;
the deprecated `python -m benchmarks.harmony`, `benchmarks.harmony.decide` and `benchmarks.mutation` run the moved
commands by name, not by import);
training -> evaluation, conversion, modeling_harmoclip;
evaluation -> conversion, modeling_harmoclip; conversion -> modeling_harmoclip;
modeling_harmoclip -> torch, transformers and the standard library only (it is the Hub's remote code);
every layer but modeling_harmoclip and space -> plumbing (command line, atomic writes), which imports only the
standard library, torch and transformers;
space -> none of the project's packages (it loads published models).

No import cycle either: neither among the modules inside a package nor between packages (`import_graph`, `cycles`).
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
    "experiments",
    "scripts",
    "tools",
    "space",
}
ALLOWED = {
    "plumbing": {"plumbing"},
    "modeling_harmoclip": {"modeling_harmoclip"},
    "conversion": {"conversion", "modeling_harmoclip", "plumbing"},
    "evaluation": {"evaluation", "conversion", "modeling_harmoclip", "plumbing"},
    "training": {"training", "evaluation", "conversion", "modeling_harmoclip", "plumbing"},
    "benchmarks": {"benchmarks", "training", "evaluation", "conversion", "modeling_harmoclip", "plumbing"},
    "experiments": {"experiments", "training", "evaluation", "conversion", "modeling_harmoclip", "plumbing"},
    "scripts": PROJECT_PACKAGES - {"space", "tools"},
    "tools": PROJECT_PACKAGES - {"space"},
    "space": {"space"},
}
# Third-party packages the Hub remote code may import at top level wherever the model is loaded.
MODELING_THIRD_PARTY = {"torch", "transformers"}
# Pillow, for the one image reader (in image_processing_harmoclip.py) only, inside its functions: it is transformers' own vision dependency
# (its `load_image` and PIL-backed image processors need it), so it is there wherever images are processed, and
# loading the model alone never imports it.
MODELING_IMAGE_READER = {"image_processing_harmoclip.py": {"PIL"}}
# Optional imports of remote code, inside `try` only (transformers' remote-code check then does not require them):
# spaCy's noun chunks in the grounding pipeline.
MODELING_OPTIONAL = {"pipeline_harmoclip.py": {"spacy"}}


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


# ---------------------------------------------------------------------------------------------- import cycles


def _module_name(path: Path, root: Path) -> str:
    """`modeling_harmoclip/losses.py` -> "modeling_harmoclip.losses"; a package's `__init__.py` -> the package."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path, files: list[Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports. Every import statement counts, also one inside a function (it runs
    when called, and transformers' remote-code loader requires it); relative imports are resolved, `from package
    import submodule` counts as an import of the submodule, an import of a package as one of its `__init__.py`. A
    module's own enclosing packages are left out: Python has imported them before the module runs."""
    modules = {_module_name(path, root): path for path in files}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        enclosing = {".".join(name.split(".")[:depth]) for depth in range(1, name.count(".") + 1)}
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = [f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in modules]
                if len(targets) < len(node.names):  # names defined in `module` itself
                    targets.append(module)
            for target in targets:
                while target and target not in modules:  # `import a.b.c` of a name inside a.b: the module a.b
                    target = target.rpartition(".")[0]
                if target and target != name and target not in enclosing:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_inside_a_package() -> None:
    """No import cycle among the modules of any package (the model imports no pipeline or processor; a leaf module
    imports no sibling that imports it back)."""
    graph = import_graph(ROOT, _source_files())
    assert cycles(graph) == []


def test_no_import_cycle_between_packages() -> None:
    """The packages' own graph (an arrow wherever a module of one imports a module of another) has no cycle."""
    packages: dict[str, set[str]] = {}
    for module, targets in import_graph(ROOT, _source_files()).items():
        packages.setdefault(module.split(".")[0], set()).update(
            target.split(".")[0] for target in targets if target.split(".")[0] != module.split(".")[0]
        )
    assert cycles(packages) == []


def test_modeling_imports_no_pipeline_or_processor() -> None:
    """As transformers' CLIP and OWLv2: the model file imports neither its pipelines nor its processors."""
    graph = import_graph(ROOT, _source_files())
    reachable, pending = set(), ["modeling_harmoclip.modeling_harmoclip"]
    while pending:
        for target in graph[pending.pop()] - reachable:
            reachable.add(target)
            pending.append(target)
    assert not {module for module in reachable if "pipeline" in module or "processing" in module}, sorted(reachable)


def test_cycle_checker_sees_a_cycle(tmp_path: Path) -> None:
    """The checker resolves relative, package and in-function imports; a module's own package is not an arrow."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from .a import A\n")
    (package / "a.py").write_text("from .b import B\nA = 1\n")
    (package / "b.py").write_text("try:\n    from pkg import c\nexcept ImportError:\n    pass\nB = 2\n")
    (package / "c.py").write_text("from . import __doc__\n\ndef later():\n    from . import a\n")
    (package / "d.py").write_text("import pkg.a\n")
    files = sorted(package.glob("*.py"))
    graph = import_graph(tmp_path, files)
    assert graph["pkg.c"] == {"pkg.a"} and graph["pkg.d"] == {"pkg.a"} and graph["pkg"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    (package / "c.py").write_text("C = 3\n")
    assert cycles(import_graph(tmp_path, files)) == []
