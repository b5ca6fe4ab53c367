"""What a saved model folder carries besides the model's own code: the pipelines' `custom_pipelines` entries and the
code files (pipelines, processor) that make `pipeline(task, model=folder, trust_remote_code=True)` and
`AutoProcessor.from_pretrained(folder, trust_remote_code=True)` work where the project is not installed.

The pipeline and processor modules register themselves here when they are imported, beside their registration with
transformers' own registries; `HarmoCLIPModel.save_pretrained` reads this registry. So the model file imports no
pipeline or processor. A leaf module: the standard library and transformers only.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

from transformers import AutoModel
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.pipelines import PIPELINE_REGISTRY

# task -> the config's `custom_pipelines` entry ({"impl": "module.Class", "pt": [...], "type": ...}).
CUSTOM_PIPELINES: dict[str, dict[str, Any]] = {}
# Names of sibling modules (without ".py") copied beside every saved model, with everything they import relatively.
CODE_MODULES: set[str] = set()
HERE = Path(__file__).resolve().parent


def register_pipeline(
    task: str, pipeline_class: type, model_classes: tuple[str, ...] = ("AutoModel",), in_process: bool = False
) -> None:
    """Records `pipeline_class` (defined in a sibling module) as the saved model's pipeline for `task`. With
    `in_process`, a task of the project's own (not a stock task name) is also registered with transformers, so that
    `pipeline(task, model=model, processor=processor)` works with objects already loaded; once per process: a
    folder's copy of the module, imported later, is found through the config's `custom_pipelines` instead."""
    module = pipeline_class.__module__.split(".")[-1]
    CUSTOM_PIPELINES[task] = {
        "impl": f"{module}.{pipeline_class.__name__}",
        "pt": list(model_classes),
        "type": "multimodal",
    }
    CODE_MODULES.add(module)
    if in_process and task not in PIPELINE_REGISTRY.get_supported_tasks():
        PIPELINE_REGISTRY.register_pipeline(task, pipeline_class=pipeline_class, pt_model=AutoModel, type="multimodal")


def register_code_module(module_name: str) -> None:
    """Records a sibling module (its `__name__`) whose file is copied beside every saved model."""
    CODE_MODULES.add(module_name.split(".")[-1])


def custom_pipelines(existing: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The `custom_pipelines` entry to save: a loaded config's entries, updated with the registered ones."""
    return dict(existing or {}) | {task: dict(entry) for task, entry in CUSTOM_PIPELINES.items()}


def copy_code_files(save_directory: str | Path, pipelines: dict[str, dict[str, Any]]) -> list[Path]:
    """Copies the registered code modules and the modules of `pipelines`, with their relative imports, from this
    folder into `save_directory`; a module whose file is not here (a partial remote-code cache) is skipped with a
    warning. Returns the files written."""
    modules = set(CODE_MODULES) | {entry["impl"].rsplit(".", 1)[0] for entry in pipelines.values()}
    written = []
    for module in sorted(modules):
        source = HERE / f"{module}.py"
        if not source.is_file():
            warnings.warn(f"{source.name} is not beside the model's code; the saved folder lacks it", stacklevel=3)
            continue
        for file in [source, *map(Path, get_relative_import_files(source))]:
            target = Path(save_directory) / file.name
            if file.resolve() != target.resolve():
                shutil.copy(file, target)
                written.append(target)
    return written


__all__ = ["CUSTOM_PIPELINES", "CODE_MODULES", "register_pipeline", "register_code_module", "custom_pipelines"]
