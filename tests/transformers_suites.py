"""transformers' own common test suites (`ModelTesterMixin`, `ConfigTester`, ...) of the installed release, imported from
the cache `scripts/fetch_transformers_tests.sh` fills from the release's source distribution (never from this
repository). Missing and unfetchable: a failure under CI (`CI` set), a skip with the reason elsewhere."""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import transformers

ROOT = Path(__file__).resolve().parents[1]
STAND_INS = Path(__file__).resolve().parent / "peer_stand_ins"
PACKAGE = "transformers_tests"
# module the common files import (relative to their package) -> the stand-in file
STAND_IN_MODULES = {
    "exporters.test_export": "export_tester.py",
    "generation.test_utils": "generation_tester.py",
    "utils.test_configuration_utils": "config_common_kwargs.py",
}


def cache_dir() -> Path:
    root = Path(os.environ.get("HARMOCLIP_CACHE", Path.home() / ".cache" / "harmoclip"))
    return root / "transformers-tests" / transformers.__version__


def _fetch() -> Path:
    """The cache folder holding `transformers_tests/`, fetched first if needed."""
    folder = cache_dir()
    if (folder / PACKAGE / ".complete").is_file():
        return folder
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "fetch_transformers_tests.sh")], env=env, capture_output=True, text=True
    )
    if result.returncode != 0 or not (folder / PACKAGE / ".complete").is_file():
        reason = (
            f"transformers {transformers.__version__}'s test suites could not be fetched from PyPI into {folder}: "
            + (result.stderr.strip().splitlines() or ["no output"])[-1]
        )
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason, allow_module_level=True)
    return folder


def _install_stand_ins() -> None:
    for dotted, file_name in STAND_IN_MODULES.items():
        parent = PACKAGE
        for part in dotted.split(".")[:-1]:  # empty namespace packages for the sub-folders
            parent = f"{parent}.{part}"
            if parent not in sys.modules:
                package = types.ModuleType(parent)
                package.__path__ = []
                sys.modules[parent] = package
        name = f"{PACKAGE}.{dotted}"
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, STAND_INS / file_name)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)


def load(module: str) -> types.ModuleType:
    """`transformers_tests.<module>` (e.g. "test_modeling_common") from the fetched release."""
    folder = str(_fetch())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    importlib.import_module(PACKAGE)
    _install_stand_ins()
    return importlib.import_module(f"{PACKAGE}.{module}")
