"""The `run_pipeline_test` checks of transformers' `tests/pipelines/test_pipelines_zero_shot_object_detection.py` and
`tests/pipelines/test_pipelines_image_segmentation.py`, written here because the release's source distribution does
not ship `tests/pipelines/`: each test below says which check it stands for. They run on pipelines loaded from a saved
folder with `pipeline(task, model=folder, trust_remote_code=True)`, as a user gets them."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from transformers import pipeline

from training_runs import tiny_model_folder


class ANY:
    """Equal to any instance of the given types (transformers' `tests/pipelines/test_pipelines_common.ANY`)."""

    def __init__(self, *types: type):
        self.types = types

    def __eq__(self, other: object) -> bool:
        return isinstance(other, self.types)

    def __repr__(self) -> str:
        return f"ANY({', '.join(t.__name__ for t in self.types)})"


def _image(mode: str = "RGB", size: tuple[int, int] = (96, 64)) -> Image.Image:
    image = Image.new("RGB", size, (90, 140, 60))
    ImageDraw.Draw(image).ellipse([10, 8, 50, 40], fill=(200, 40, 40))
    return image.convert(mode)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tiny_model_folder(tmp_path_factory.mktemp("pipelines") / "model")


def test_zero_shot_object_detection_run_pipeline_test(folder: Path, tmp_path: Path) -> None:
    """Stands for `ZeroShotObjectDetectionPipelineTests.run_pipeline_test` (its examples: an item with the image and
    its `candidate_labels`), and the list-of-items call of its `test_small_model_pt`."""
    object_detector = pipeline("zero-shot-object-detection", model=str(folder), trust_remote_code=True)
    path = tmp_path / "image.png"
    _image().save(path)
    examples = [{"image": str(path), "candidate_labels": ["cat", "remote", "couch"]}]
    outputs = object_detector(examples[0], threshold=0.0)
    n = len(outputs)
    assert n > 0
    expected = {
        "score": ANY(float),
        "label": ANY(str),
        "box": {"xmin": ANY(int), "ymin": ANY(int), "xmax": ANY(int), "ymax": ANY(int)},
    }
    assert [expected] * n == outputs
    assert object_detector(examples, threshold=0.0) == [outputs]
    assert (
        object_detector(str(path), candidate_labels=["cat", "remote", "couch"], threshold=0.0, top_k=2) == outputs[:2]
    )


def test_image_segmentation_run_pipeline_test(folder: Path) -> None:
    """Stands for `ImageSegmentationPipelineTests.run_pipeline_test`: an image alone with the stock options, images
    in RGBA, LA and L modes, and a batch of them with `batch_size=2`."""
    image_segmenter = pipeline("image-segmentation", model=str(folder), trust_remote_code=True)
    options = dict(threshold=0.0, mask_threshold=0, overlap_mask_area_threshold=0)
    outputs = image_segmenter(_image(), **options)
    assert isinstance(outputs, list) and len(outputs) >= 1
    expected = {"score": ANY(float, type(None)), "label": ANY(str), "mask": ANY(Image.Image)}
    assert [expected] * len(outputs) == outputs  # ANY on the left, as transformers compares (PIL answers False)
    images = [_image("RGBA"), _image("LA"), _image("L"), _image()]
    batched = image_segmenter(images, batch_size=2, **options)
    assert len(batched) == len(images)
    for results, image in zip(batched, images):
        assert results and [expected] * len(results) == results
        assert all(item["mask"].size == image.size for item in results)
