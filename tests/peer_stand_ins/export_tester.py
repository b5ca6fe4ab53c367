"""Stands for `tests/exporters/test_export.py`'s `ExportTesterMixin` (the export tester `ModelTesterMixin` inherits):
its dynamo path, `torch.export` of each model class on the tester's inputs, the exported program's outputs against
eager ones. The ONNX path of the towers is `tests/test_export_onnx.py`'s."""

from __future__ import annotations

import copy

import torch
from transformers.testing_utils import torch_device
from transformers.utils import ModelOutput


def _tensors(output) -> dict[str, torch.Tensor]:
    """Top-level tensor fields of a `ModelOutput` (or tuple), by name."""
    if isinstance(output, ModelOutput):
        return {key: value for key, value in output.items() if isinstance(value, torch.Tensor)}
    return {str(index): value for index, value in enumerate(output) if isinstance(value, torch.Tensor)}


class ExportTesterMixin:
    test_torch_exportable = True

    def test_torch_export(self) -> None:
        if not self.test_torch_exportable:
            self.skipTest(reason="test_torch_exportable is set to False")
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(copy.deepcopy(config)).to(torch_device).eval()
            inputs = {
                key: value
                for key, value in self._prepare_for_class(inputs_dict, model_class).items()
                if key != "return_loss"
            }
            with torch.no_grad():
                eager = _tensors(model(**inputs))
                program = torch.export.export(model, args=(), kwargs=inputs, strict=False)
                exported = _tensors(program.module()(**inputs))
            self.assertTrue(eager, "the model returned no tensor")
            self.assertEqual(set(eager), set(exported))
            for key, value in eager.items():
                torch.testing.assert_close(
                    exported[key], value, rtol=1e-4, atol=1e-5, msg=f"{model_class.__name__}.{key}"
                )
