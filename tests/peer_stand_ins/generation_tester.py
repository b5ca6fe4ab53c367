"""Stands for `tests/generation/test_utils.py`'s `GenerationTesterMixin`: `ModelTesterMixin` only checks that a tester
inherits it exactly when the model can `generate`. HarmoCLIP, like CLIP, cannot; no generation test runs."""


class GenerationTesterMixin:
    all_generative_model_classes = ()
