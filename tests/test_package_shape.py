"""The Hub package's shape: a handful of files, one concept each, that every supported transformers loader copies
whole, and one task call that crosses few of them (transformers' OWLv2 folder is the yardstick: its detection call runs
through the task file, the modeling file and the image processor)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from transformers.dynamic_module_utils import get_relative_import_files, get_relative_imports

from conftest import tiny_harmoclip_model, tiny_processor
from modeling_harmoclip.configuration_harmoclip import SUPPORTED_TRANSFORMERS, check_transformers_version
from modeling_harmoclip.modeling_harmoclip import HUB_CODE_FILES
from modeling_harmoclip.pipeline_harmoclip import (
    PhraseGroundingPipeline,
    ZeroShotRegionDetectionPipeline,
    clear_label_cache,
)

PACKAGE = Path(__file__).resolve().parents[1] / "modeling_harmoclip"
# The files transformers imports as entry points: AutoConfig, AutoModel, AutoImageProcessor, AutoProcessor, pipelines.
ENTRY_FILES = (
    "configuration_harmoclip.py",
    "modeling_harmoclip.py",
    "image_processing_harmoclip.py",
    "processing_harmoclip.py",
    "pipeline_harmoclip.py",
)


def _picture() -> Image.Image:
    image = Image.new("RGB", (64, 48), (30, 120, 40))
    ImageDraw.Draw(image).ellipse([10, 8, 35, 28], fill=(220, 30, 30))
    ImageDraw.Draw(image).rectangle([36, 12, 58, 40], fill=(20, 40, 200))
    return image


def test_the_saved_folder_carries_at_most_eight_code_files(tiny_tokenizer, tmp_path) -> None:
    model = tiny_harmoclip_model()
    model.save_pretrained(tmp_path)
    tiny_processor(tiny_tokenizer).save_pretrained(tmp_path)
    code = sorted(path.name for path in tmp_path.glob("*.py"))
    assert code == sorted(HUB_CODE_FILES) and len(code) <= 8
    assert sorted(path.name for path in PACKAGE.glob("*.py")) == sorted(
        [*HUB_CODE_FILES, "__init__.py", "endpoint_handler.py"]
    )


@pytest.mark.parametrize("entry", ENTRY_FILES)
def test_each_entry_file_imports_every_sibling_it_needs_itself(entry: str) -> None:
    """The loaders of transformers 4.57 and 5.0 copy, for a local folder, an entry file and its own relative imports
    only: whatever a sibling imports in turn must be imported by the entry file too."""
    path = PACKAGE / entry
    needed = {Path(file).stem for file in get_relative_import_files(path)}
    assert needed == set(get_relative_imports(path)), f"{entry} needs {needed} but imports {get_relative_imports(path)}"


def test_one_detection_call_crosses_few_files(tiny_tokenizer) -> None:
    """A `zero-shot-object-detection` call (labels not cached yet) enters at most 5 of the package's files, with at
    most 30 moves from a function of one file into a function of another (`sys.setprofile` over the package)."""
    detector = ZeroShotRegionDetectionPipeline(model=tiny_harmoclip_model(), processor=tiny_processor(tiny_tokenizer))
    clear_label_cache()
    entered: list[str] = []

    def record(frame, event, arg) -> None:
        if event == "call" and frame.f_code.co_filename.startswith(str(PACKAGE)):
            entered.append(Path(frame.f_code.co_filename).name)

    sys.setprofile(record)
    try:
        detector(_picture(), candidate_labels=["red circle", "blue square"])
    finally:
        sys.setprofile(None)
    moves = sum(1 for here, there in zip(entered, entered[1:]) if here != there)
    files = Counter(entered)
    assert len(files) <= 5, files
    assert moves <= 30, (moves, files)
    assert {"pipeline_harmoclip.py", "modeling_harmoclip.py", "image_processing_harmoclip.py"} <= set(files)


@pytest.mark.parametrize("boxes", [None, [[10, 8, 35, 28], [36, 12, 58, 40]]])
def test_grounding_encodes_the_image_once(tiny_tokenizer, boxes) -> None:
    """With the model's own proposals or the user's boxes, one pass of the vision encoder per image: the proposals'
    region embeddings come from the pass that drew them."""
    model = tiny_harmoclip_model(seed=4)
    grounder = PhraseGroundingPipeline(model=model, processor=tiny_processor(tiny_tokenizer))
    passes = [0]
    hook = model.vision_model.embeddings.register_forward_hook(lambda *_: passes.__setitem__(0, passes[0] + 1))
    try:
        results = grounder(_picture(), caption="a red circle and a blue square", boxes=boxes)
    finally:
        hook.remove()
    assert passes[0] == 1
    assert [result["phrase"] for result in results] == ["a red circle", "a blue square"]


@pytest.mark.parametrize("version", ["4.57.0", "4.57.6", "5.0.0", "5.25.0", "5.99.1.dev0"])
def test_supported_transformers_versions_pass(version: str) -> None:
    check_transformers_version(version)


@pytest.mark.parametrize("version", ["4.56.2", "4.9.0", "3.5.1", "6.0.0", "not a version"])
def test_other_transformers_versions_fail_in_one_line(version: str) -> None:
    with pytest.raises(ImportError) as error:
        check_transformers_version(version)
    assert str(error.value) == (
        f"HarmoCLIP's remote code needs transformers {SUPPORTED_TRANSFORMERS}, this environment has {version}: "
        f"pip install 'transformers{SUPPORTED_TRANSFORMERS}'"
    )


def test_the_vision_pass_counter_counts(tiny_tokenizer) -> None:
    """The hook the grounding test counts with sees every pass (two calls, two passes)."""
    model = tiny_harmoclip_model()
    passes = [0]
    hook = model.vision_model.embeddings.register_forward_hook(lambda *_: passes.__setitem__(0, passes[0] + 1))
    pixels = torch.zeros(1, 3, 32, 32)
    model.get_dense_features(pixels)
    model.get_dense_features(pixels)
    hook.remove()
    assert passes[0] == 2
