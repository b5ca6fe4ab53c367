"""The custom handler Hugging Face Inference Endpoints load for a HarmoCLIP repository (published as `handler.py`
beside the weights by `harmoclip-publish`): JSON in, JSON out, in the formats of the model's pipelines.

Request (`data`):
    {"inputs": <image: base64 string (optionally a data URL), http(s) URL, or a PIL image as the toolkit decodes
                binary requests>,
     "parameters": {"task": "detection" | "segmentation" | "region-classification" | "grounding" (or the pipeline
                    task names), "candidate_labels": [...] or "a,b", "boxes": [[x1, y1, x2, y2], ...], and any other
                    option of that pipeline (threshold, top_k, ...)}}
    Without "task": region classification when boxes are given, detection otherwise.
Response: the pipeline's result; segmentation masks as base64 PNG strings (as the hosted image-segmentation task
returns them).

Only transformers, torch and the standard library are needed: the model, its processor and its pipelines load from the
repository's own files (`trust_remote_code`), one model shared by every task.
"""

import base64
import io
from typing import Any

from transformers import AutoConfig, AutoModel, AutoProcessor
from transformers.dynamic_module_utils import get_class_from_dynamic_module
from transformers.image_utils import load_image

# Short names a request may use for each pipeline task.
TASK_ALIASES = {
    "detection": "zero-shot-object-detection",
    "object-detection": "zero-shot-object-detection",
    "segmentation": "image-segmentation",
    "classification": "region-classification",
    "region_classification": "region-classification",
    "grounding": "phrase-grounding",
}


def _json_safe(value: Any) -> Any:
    """Pipeline output -> JSON types: PIL images as base64 PNG, tensors and arrays as lists."""
    if hasattr(value, "save") and hasattr(value, "mode"):  # a PIL image
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode("ascii")
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _read_image(inputs: Any) -> Any:
    """A PIL image from the request's "inputs": a PIL image, an http(s) URL, or base64 (plain or a data URL)."""
    if hasattr(inputs, "mode") and hasattr(inputs, "size"):
        return inputs
    if isinstance(inputs, (bytes, bytearray)):
        inputs = base64.b64encode(bytes(inputs)).decode("ascii")
    if not isinstance(inputs, str) or not inputs:
        raise ValueError(f"`inputs` must be an image as base64 or an http(s) URL, got {type(inputs).__name__}")
    if inputs.startswith("data:"):
        inputs = inputs.split(",", 1)[-1]
    if not inputs.startswith(("http://", "https://")):
        try:
            base64.b64decode(inputs, validate=True)
        except ValueError:
            raise ValueError(f"`inputs` is neither an http(s) URL nor base64 image data: {inputs[:40]!r}") from None
    try:
        return load_image(inputs)
    except Exception as error:
        raise ValueError(f"`inputs` could not be read as an image: {error}") from None


class EndpointHandler:
    """`EndpointHandler(path)` loads the model once; `handler(data)` answers one request (see the module docstring)."""

    def __init__(self, path: str = ""):
        self.path = path or "."
        self.config = AutoConfig.from_pretrained(self.path, trust_remote_code=True)
        self.tasks: dict[str, str] = {
            task: entry["impl"] for task, entry in (getattr(self.config, "custom_pipelines", None) or {}).items()
        }
        self.model = AutoModel.from_pretrained(self.path, trust_remote_code=True).eval()
        self.processor = AutoProcessor.from_pretrained(self.path, trust_remote_code=True)
        self._pipelines: dict[str, Any] = {}

    def pipeline(self, task: str) -> Any:
        """The repository's pipeline for `task`, built once, on the one loaded model."""
        if task not in self._pipelines:
            pipeline_class = get_class_from_dynamic_module(self.tasks[task], self.path)
            self._pipelines[task] = pipeline_class(model=self.model, processor=self.processor)
        return self._pipelines[task]

    def _task(self, parameters: dict[str, Any]) -> str:
        requested = parameters.pop("task", None)
        if requested is None:
            requested = "region-classification" if parameters.get("boxes") is not None else "zero-shot-object-detection"
        if not isinstance(requested, str):
            raise ValueError(f"`parameters.task` must be a string, got {requested!r}")
        task = TASK_ALIASES.get(requested, requested)
        if task not in self.tasks:
            raise ValueError(
                f"`parameters.task` {requested!r} is not available in this model; its tasks: {sorted(self.tasks)}"
            )
        return task

    def __call__(self, data: dict[str, Any]) -> list | dict:
        if not isinstance(data, dict) or "inputs" not in data:
            raise ValueError('the request must be a JSON object {"inputs": <image>, "parameters": {...}}')
        parameters = data.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise ValueError(f"`parameters` must be an object, got {type(parameters).__name__}")
        parameters = dict(parameters)
        task = self._task(parameters)
        image = _read_image(data["inputs"])
        return _json_safe(self.pipeline(task)(image, **parameters))


__all__ = ["EndpointHandler", "TASK_ALIASES"]
