"""The Hub remote code on the transformers releases users have: the last 4.x (4.57.6), the first 5.x (5.0.0) and the
newest 5.x, each in its own virtual environment without this project (`scripts/setup_transformers_envs.sh`, which the
test command runs first). A saved folder and the same files as a Hub id from an offline cache are loaded the way a
user loads them, and the model, the processor, every pipeline and the stock zero-shot-image-classification pipeline
must answer as the project's own code does in this process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, offline_hub_cache, save_tiny_folder

ENVS = ROOT / os.environ.get("HARMOCLIP_TRANSFORMERS_ENVS", ".venv-transformers")
PROBE = Path(__file__).resolve().parent / "remote_code_probe.py"
# The releases every run checks; the newest is whatever the set-up found on the index (the folder named 5.x, highest).
FIXED_RELEASES = ("4.57.6", "5.0.0")


def _release_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def _releases() -> list[str]:
    finished = sorted((path.parent.name for path in ENVS.glob("*/.complete")), key=_release_key)
    newest = [version for version in finished if version.startswith("5.") and version not in FIXED_RELEASES][-1:]
    return [*FIXED_RELEASES, *newest] if newest else [*FIXED_RELEASES, "newest"]


def _environment_python(version: str) -> Path:
    python = ENVS / version / "bin" / "python"
    if not (ENVS / version / ".complete").is_file():
        pytest.fail(f"no environment for transformers {version} in {ENVS}: run bash scripts/setup_transformers_envs.sh")
    return python


def _run_probe(python: Path | str, arguments: list[str], cwd: Path, env: dict[str, str]) -> dict:
    full_env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    full_env.update(env, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    full_env.update(HF_HUB_DISABLE_PROGRESS_BARS="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(
        [str(python), str(PROBE), *arguments], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("PROBE ")]
    if result.returncode != 0 or not lines:
        raise AssertionError(
            f"the probe failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return json.loads(lines[-1][len("PROBE ") :])


def _assert_same(answer, reference, where: str) -> None:
    """Equal structure, strings and ints; floats within 1e-5 (the arithmetic of one float32 pass)."""
    if isinstance(reference, dict):
        assert isinstance(answer, dict) and answer.keys() == reference.keys(), where
        for key in reference:
            _assert_same(answer[key], reference[key], f"{where}.{key}")
    elif isinstance(reference, list):
        assert isinstance(answer, list) and len(answer) == len(reference), where
        for index, (item, expected) in enumerate(zip(answer, reference)):
            _assert_same(item, expected, f"{where}[{index}]")
    elif isinstance(reference, float):
        assert answer == pytest.approx(reference, abs=1e-5), where
    else:
        assert answer == reference, where


@pytest.fixture(scope="module")
def saved(tiny_tokenizer, tmp_path_factory) -> tuple[Path, dict[str, str], dict]:
    """A tiny saved folder, its offline Hub cache, and what the project's own code answers for it in this process."""
    root = tmp_path_factory.mktemp("remote_code_versions")
    folder = root / "model"
    save_tiny_folder(folder, tiny_tokenizer, seed=21)
    env = offline_hub_cache(folder, root)
    sys.path.insert(0, str(PROBE.parent))
    try:
        import remote_code_probe
    finally:
        sys.path.remove(str(PROBE.parent))
    return folder, env, remote_code_probe.probe(str(folder))


@pytest.mark.slow
@pytest.mark.parametrize("version", _releases())
def test_remote_code_runs_on_the_release(saved, version, tmp_path) -> None:
    folder, env, reference = saved
    answers = _run_probe(_environment_python(version), [str(folder), "org/harmoclip-vitb16"], tmp_path, env)
    if version != "newest":
        assert answers["transformers"] == version
    assert reference["classes"] == ["HarmoCLIPConfig", "HarmoCLIPModel", "HarmoCLIPModel", "HarmoCLIPProcessor"]
    for where in ("folder", "hub"):
        _assert_same(answers[where], reference, f"transformers {answers['transformers']}, {where}")


@pytest.mark.slow
def test_below_the_range_loading_fails_in_one_line_naming_it(saved, tmp_path) -> None:
    """The check that runs when the config's file is imported, under a release older than the range (4.57.6's code,
    reporting itself as 4.56.2)."""
    folder, env, _ = saved
    code = (
        "import transformers\ntransformers.__version__ = '4.56.2'\nfrom transformers import AutoConfig\n"
        f"AutoConfig.from_pretrained({str(folder)!r}, trust_remote_code=True)\n"
    )
    full_env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | env | {"HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [str(_environment_python("4.57.6")), "-c", code], cwd=tmp_path, env=full_env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "ImportError: HarmoCLIP's remote code needs transformers >=4.57,<6, this environment has 4.56.2: "
        "pip install 'transformers>=4.57,<6'"
    )
