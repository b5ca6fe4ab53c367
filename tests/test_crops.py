"""Crops of the original image: the processor's `return_crops`, and that training (GR teacher), the teacher cache and
the evaluation's crop-and-encode baseline take exactly these crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, tiny_processor
from crop_reference import hand_crop, to_pixel_levels
from modeling_harmoclip.image_processing_harmoclip import clip_image_processor, enlarge_boxes
from modeling_harmoclip.modeling_harmoclip import roi_align
from modeling_harmoclip.processing_harmoclip import HarmoCLIPProcessor


def _random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# ---------------------------------------------------------------------------------------------------- processor


def test_a_one_pixel_pattern_survives_in_the_crop_of_the_original_image(tiny_tokenizer) -> None:
    """A 1-px checkerboard in a box of a 1600x1200 image: the crop of the original keeps every pixel of it; the same
    window cut from the 224-px `pixel_values` (what the teacher used to see) has lost it."""
    processor = HarmoCLIPProcessor(clip_image_processor(224), tiny_tokenizer, region_mode=True)
    levels = np.full((1200, 1600, 3), 128, dtype=np.uint8)
    # The box enlarged 1.5x about its centre is exactly the window [688, 912) x [488, 712): 224 x 224 pixels.
    half = 224 / 1.5 / 2
    box = [800 - half, 600 - half, 800 + half, 600 + half]
    rows, columns = np.mgrid[488:712, 688:912]
    pattern = np.where((rows + columns) % 2 == 0, 255, 0).astype(np.uint8)
    levels[488:712, 688:912] = pattern[..., None]
    inputs = processor(images=[Image.fromarray(levels)], boxes=[[box]], return_crops=True, crop_scale=1.5)

    assert inputs["crop_pixel_values"].shape == (1, 1, 3, 224, 224) and inputs["crop_mask"].tolist() == [[True]]
    crop = to_pixel_levels(inputs["crop_pixel_values"][0, 0])
    expected = torch.from_numpy(pattern).double()[None].expand(3, -1, -1)
    assert (crop - expected).abs().max() < 0.01  # every pixel of the pattern, at full resolution

    # The same window cut from the resized image and upsampled back: the pattern is averaged away to grey.
    window = enlarge_boxes(inputs["boxes"][0].double(), 1.5).float() * 224
    rois = torch.cat([torch.zeros(1, 1), window], dim=1)
    from_resized = roi_align(inputs["pixel_values"], rois, output_size=(224, 224), sampling_ratio=-1, aligned=True)[0]
    blurred = to_pixel_levels(from_resized)
    assert expected.std() > 127 and blurred.std() < 10
    assert (blurred - expected).abs().mean() > 100


@pytest.mark.filterwarnings("ignore:.*masked out")
@pytest.mark.parametrize("region_mode", [True, False])
def test_crops_equal_hand_cut_pil_crops(tiny_tokenizer, region_mode: bool) -> None:
    """Enlarged about the centre, clipped to the image, cut with PIL, resized to the input size, normalised: whatever
    the geometry of `pixel_values` (square resize or CLIP's resize and centre crop)."""
    processor = tiny_processor(tiny_tokenizer, region_mode=region_mode)
    images = [_random_image(97, 61, seed=1), _random_image(50, 80, seed=2)]
    boxes = [
        [[10.0, 12.0, 40.5, 30.0], [80.0, 40.0, 97.0, 61.0], [0.0, 0.0, 97.0, 61.0]],  # inside, at the corner, whole
        [[5.0, 30.0, 45.0, 50.0]],
    ]
    for scale in (1.0, 1.5, 2.0):
        inputs = processor(images=images, boxes=boxes, return_crops=True, crop_scale=scale)
        assert inputs["crop_pixel_values"].shape == (2, 3, 3, 32, 32)
        assert torch.equal(inputs["crop_mask"], inputs["box_mask"])
        for image_index, (image, image_boxes) in enumerate(zip(images, boxes)):
            for box_index, box in enumerate(image_boxes):
                if not inputs["crop_mask"][image_index, box_index]:
                    continue
                reference = hand_crop(image, box, scale, 32)
                assert torch.allclose(inputs["crop_pixel_values"][image_index, box_index], reference, atol=1e-4)
        assert inputs["crop_pixel_values"][1, 1:].abs().sum() == 0  # padding


def test_crops_of_arrays_and_tensors_equal_those_of_pil_images(tiny_tokenizer) -> None:
    processor = tiny_processor(tiny_tokenizer, region_mode=True)
    image = _random_image(70, 45, seed=3)
    boxes = [[[3.0, 4.0, 30.0, 40.0], [50.5, 10.2, 69.0, 20.7]]]
    boxes[0].append([33.2, 20.1, 33.4, 20.3])  # a one-pixel crop: too small to infer a layout from
    expected = processor(images=[image], boxes=boxes, return_crops=True)["crop_pixel_values"]
    levels = np.asarray(image)
    for same in (levels, torch.from_numpy(levels.copy()).permute(2, 0, 1)):
        crops = processor(images=[same], boxes=boxes, return_crops=True)["crop_pixel_values"]
        assert torch.allclose(crops, expected, atol=1e-6)


def test_a_box_cut_away_by_the_centre_crop_has_no_crop_and_a_sub_pixel_box_keeps_one(tiny_tokenizer) -> None:
    processor = tiny_processor(tiny_tokenizer, region_mode=False)  # 64x32 -> 64x32 resized, centre 32x32 kept
    image = _random_image(64, 32, seed=4)
    with pytest.warns(UserWarning, match="masked out"):
        inputs = processor(
            images=[image], boxes=[[[0.0, 0.0, 10.0, 10.0], [30.2, 10.2, 30.6, 10.5]]], return_crops=True
        )
    assert inputs["box_mask"].tolist() == [[False, True]] and inputs["crop_mask"].tolist() == [[False, True]]
    assert inputs["crop_pixel_values"][0, 0].abs().sum() == 0
    # The sub-pixel box rounds to one whole pixel of the original: a uniform crop of that pixel's colour.
    pixel = np.asarray(image)[10, 30].astype(np.float64)
    levels = to_pixel_levels(inputs["crop_pixel_values"][0, 1])
    assert torch.allclose(levels, torch.from_numpy(pixel)[:, None, None].expand(3, 32, 32), atol=0.01)


@pytest.mark.parametrize("bad", [0, -1.5, float("nan"), float("inf"), "1.5", True, None])
def test_bad_crop_scale_is_named(tiny_tokenizer, bad) -> None:
    processor = tiny_processor(tiny_tokenizer, region_mode=True)
    with pytest.raises(ValueError, match=r"`crop_scale` must be a finite number > 0, got"):
        processor(images=[_random_image(20, 20)], boxes=[[[1, 1, 5, 5]]], return_crops=True, crop_scale=bad)


def test_crop_options_need_boxes_and_a_bool(tiny_tokenizer) -> None:
    processor = tiny_processor(tiny_tokenizer, region_mode=True)
    with pytest.raises(ValueError, match=r"`return_crops=True` needs `boxes`"):
        processor(images=[_random_image(20, 20)], return_crops=True)
    with pytest.raises(TypeError, match=r"`return_crops` must be a bool, got str: 'yes'"):
        processor(images=[_random_image(20, 20)], boxes=[[[1, 1, 5, 5]]], return_crops="yes")
    plain = processor(images=[_random_image(20, 20)], boxes=[[[1, 1, 5, 5]]])
    assert "crop_pixel_values" not in plain and "crop_mask" not in plain


# ---------------------------------------------------------------------------------------------------- consumers


@pytest.fixture(scope="module")
def synthetic_config(tmp_path_factory):
    """The shipped tiny config on a small generated set whose 48-px images are larger than the 32-px model input."""
    from training.config import load_config

    folder = tmp_path_factory.mktemp("crops")
    overrides = {
        "synthetic_num_train": 8,
        "synthetic_num_val": 4,
        "synthetic_image_size": 48,
        "image_size": 32,
        "synthetic_dir": str(folder / "synthetic"),
        "output_dir": str(folder / "run"),
        "batch_size": 4,
        "loss_gr_weight": 1.0,  # the main job's config trains from scratch without GR
    }
    return load_config(ROOT / "configs" / "synthetic_tiny.yaml", overrides)


class SpyTeacher(torch.nn.Module):
    """Records what `get_crop_features` is given and answers with the wrapped model's embeddings."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def get_crop_features(self, crop_pixel_values: torch.Tensor, crop_mask: torch.Tensor) -> torch.Tensor:
        self.calls.append((crop_pixel_values.clone(), crop_mask.clone()))
        return self.model.get_crop_features(crop_pixel_values, crop_mask)


def _processor_crops(processor, samples, scale: float):
    return processor(
        images=[s.image for s in samples], boxes=[s.boxes for s in samples], return_crops=True, crop_scale=scale
    )


def test_training_gives_the_teacher_the_processors_crops(synthetic_config) -> None:
    """The DataLoader's worker cuts the crops; the GR teacher encodes exactly them, and GR compares with its output."""
    import contextlib
    import types

    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from training.builders import build_datasets, build_model_and_processor
    from training.teacher import frozen_copy
    from training.train import forward_objective

    config = synthetic_config
    model, processor = build_model_and_processor(config)
    train_set, _, collator = build_datasets(config, processor)
    batch = next(iter(DataLoader(train_set, batch_size=4, collate_fn=collator, num_workers=1)))
    expected = _processor_crops(processor, [train_set[index] for index in range(4)], config.gr_crop_scale)
    assert torch.equal(batch["crop_pixel_values"], expected["crop_pixel_values"])

    teacher = SpyTeacher(frozen_copy(model))
    accelerator = types.SimpleNamespace(autocast=contextlib.nullcontext, device=torch.device("cpu"))
    terms = forward_objective(model, model, dict(batch), config, accelerator, teacher=teacher)
    ((crops, mask),) = teacher.calls
    assert torch.equal(crops, expected["crop_pixel_values"]) and torch.equal(mask, expected["crop_mask"])
    # GR = 1 - cos(region, teacher's crop embedding) over the boxes, from the processor's crops.
    with torch.no_grad():
        regions = model.get_region_features(batch["pixel_values"], batch["boxes"], batch["box_mask"])
        targets = teacher.model.get_crop_features(expected["crop_pixel_values"], expected["crop_mask"])
    valid = batch["box_mask"]
    assert torch.allclose(terms.gr, (1 - F.cosine_similarity(regions[valid], targets[valid], dim=-1)).mean(), atol=1e-5)


def test_crops_are_cut_only_when_a_teacher_encodes_them(synthetic_config) -> None:
    from training.builders import build_model_and_processor, region_collator, teacher_needs_crops

    _, processor = build_model_and_processor(synthetic_config)
    for changes, wanted in [
        ({}, True),
        ({"gr_teacher": "self"}, True),
        ({"gr_teacher": "none"}, False),
        ({"loss_gr_weight": 0.0}, False),
        ({"gr_teacher": "cached", "teacher_cache": "x"}, False),
    ]:
        config = type(synthetic_config)(**{**synthetic_config.to_dict(), **changes})
        assert teacher_needs_crops(config) is wanted
        assert region_collator(config, processor).processor_kwargs.get("return_crops", False) is wanted


def test_teacher_cache_holds_the_crop_embeddings_of_the_processors_crops(synthetic_config, tmp_path: Path) -> None:
    from training.builders import build_dataset_for_split, build_model_and_processor
    from training.cache_teacher import build_teacher_cache_folder
    from training.teacher import TeacherCache

    cache_dir = build_teacher_cache_folder(synthetic_config, tmp_path / "cache", batch_size=3)
    model, processor = build_model_and_processor(synthetic_config)  # the starting weights, as the cache's
    samples = [build_dataset_for_split(synthetic_config, "train")[index] for index in range(5)]
    crops = _processor_crops(processor, samples, synthetic_config.gr_crop_scale)
    with torch.no_grad():
        expected = model.eval().get_crop_features(crops["crop_pixel_values"], crops["crop_mask"])
    cache = TeacherCache(cache_dir, expected_settings={"crops_from": "original image"})
    indices = torch.full(crops["crop_mask"].shape, -1)
    for row, sample in enumerate(samples):
        indices[row, : len(sample.box_indices)] = torch.tensor(sample.box_indices)
    cached = cache.lookup([sample.image_id for sample in samples], indices)
    valid = crops["crop_mask"]
    assert valid.sum() > 5 and (cached[valid] - expected[valid]).abs().max() <= 1e-5


def test_protocol_preprocessing_returns_the_processors_crops_of_the_original(tiny_tokenizer) -> None:
    """A reference protocol resizes `pixel_values` its own way (here 64 px, longest side, padded); its crop-and-encode
    baseline still gets the crops of the original image at the model's input size."""
    from evaluation.protocols import ProtocolProcessor

    processor = tiny_processor(tiny_tokenizer, region_mode=False)
    images = [_random_image(90, 50, seed=6), _random_image(40, 70, seed=7)]
    boxes = [[[10.0, 5.0, 60.0, 45.0], [70.0, 30.0, 90.0, 50.0]], [[3.0, 3.0, 30.0, 60.0]]]
    out = ProtocolProcessor(processor, 64, "longest-pad", "bicubic")(
        images=images, boxes=boxes, return_crops=True, crop_scale=1.5
    )
    assert out["pixel_values"].shape == (2, 3, 64, 64) and out["crop_pixel_values"].shape == (2, 2, 3, 32, 32)
    assert out["crop_mask"].tolist() == [[True, True], [True, False]] == out["box_mask"].tolist()
    for image_index, (image, image_boxes) in enumerate(zip(images, boxes)):
        for box_index, box in enumerate(image_boxes):
            reference = hand_crop(image, box, 1.5, 32)
            assert torch.allclose(out["crop_pixel_values"][image_index, box_index], reference, atol=1e-4)
