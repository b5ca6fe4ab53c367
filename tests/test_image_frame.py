"""One image frame everywhere: a JPEG whose EXIF orientation tag says "turn 90 degrees clockwise" is read upright (the
displayed frame) by every entry point, however it is handed over; unreadable and oversized images get one line naming
the file.

The test image is written here: stored as 320 x 200 pixels (four colour quadrants), tagged orientation 6, so it is
displayed 200 wide and 320 high. The reference upright pixels are the stored pixels turned by NumPy (`np.rot90`).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from PIL import Image
from transformers import pipeline

from conftest import run_isolated, tiny_harmoclip_model, tiny_processor
from evaluation.eval_data import ImageBoxDataset, load_image
from modeling_harmoclip.image_processing_harmoclip import ImageReadError, check_image_bytes, read_image
from modeling_harmoclip.pipeline_harmoclip import (
    REGION_CLASSIFICATION_TASK,
    DenseSegmentationPipeline,
    ZeroShotRegionDetectionPipeline,
)
from space_support import space_module
from training.data.data_common import SkippedSample
from training.data.data_hf import HFRegionDataset
from training.data.data_jsonl import JsonlRegionDataset
from training.data.prepare import build_parser, prepare

STORED_SIZE = (320, 200)  # width, height as stored
UPRIGHT_SIZE = (200, 320)  # as displayed: the EXIF rotation applied
ROTATE_CLOCKWISE = 6  # EXIF orientation: the stored picture is shown turned 90 degrees clockwise
# A box in the displayed frame (what a person drawing on the photo gives): the upper left part of the upright image.
BOX = [10.0, 20.0, 90.0, 150.0]
LABELS = ["red", "green", "blue", "yellow"]


def stored_pixels() -> np.ndarray:
    """(200, 320, 3) four flat quadrants, so JPEG's loss stays small away from the edges."""
    pixels = np.zeros((STORED_SIZE[1], STORED_SIZE[0], 3), np.uint8)
    pixels[:100, :160] = (220, 30, 30)
    pixels[:100, 160:] = (30, 200, 40)
    pixels[100:, :160] = (30, 40, 220)
    pixels[100:, 160:] = (230, 220, 30)
    return pixels


def upright_reference() -> np.ndarray:
    """(320, 200, 3) the stored pixels turned 90 degrees clockwise."""
    return np.ascontiguousarray(np.rot90(stored_pixels(), k=-1))


@pytest.fixture
def rotated_jpeg(tmp_path: Path) -> Path:
    exif = Image.Exif()
    exif[0x0112] = ROTATE_CLOCKWISE
    path = tmp_path / "photo.jpg"
    Image.fromarray(stored_pixels()).save(path, quality=95, exif=exif.tobytes())
    with Image.open(path) as raw:
        assert raw.size == STORED_SIZE and raw.getexif()[0x0112] == ROTATE_CLOCKWISE
    return path


def assert_upright(image: Image.Image) -> None:
    assert image.mode == "RGB" and image.size == UPRIGHT_SIZE
    difference = np.abs(np.asarray(image, np.int16) - upright_reference().astype(np.int16))
    assert np.median(difference) <= 3 and np.percentile(difference, 99) <= 40  # JPEG loss only, at the seams


def test_read_image_is_upright_from_a_path_bytes_a_file_or_an_opened_image(rotated_jpeg: Path) -> None:
    encoded = base64.b64encode(rotated_jpeg.read_bytes()).decode()
    for source in (rotated_jpeg, str(rotated_jpeg), rotated_jpeg.read_bytes(), Image.open(rotated_jpeg), encoded):
        assert_upright(read_image(source))
    plain = Image.fromarray(upright_reference())
    assert read_image(plain) is plain  # already upright RGB: passed through, not copied
    with open(rotated_jpeg, "rb") as handle:
        assert_upright(read_image(handle))
    once = read_image(rotated_jpeg)
    assert np.array_equal(np.asarray(read_image(once)), np.asarray(once))  # applying it twice: no second turn
    with pytest.raises(TypeError, match="image must be"):
        read_image(3.5)


def test_processor_boxes_and_teacher_crops_are_in_the_displayed_frame(rotated_jpeg: Path, tiny_tokenizer) -> None:
    processor = tiny_processor(tiny_tokenizer, region_mode=True)
    upright = Image.fromarray(upright_reference())
    from_file = processor(images=Image.open(rotated_jpeg), boxes=[BOX], return_crops=True, return_tensors="pt")
    reference = processor(images=upright, boxes=[BOX], return_crops=True, return_tensors="pt")
    assert torch.equal(from_file["boxes"], reference["boxes"])  # normalised by the upright 200 x 320
    assert torch.allclose(from_file["boxes"][0, 0], torch.tensor([10 / 200, 20 / 320, 90 / 200, 150 / 320]))
    for key in ("pixel_values", "crop_pixel_values"):
        assert (from_file[key] - reference[key]).abs().mean() < 0.02, key


def test_pipeline_reads_a_path_and_an_opened_image_alike_in_a_fresh_process(rotated_jpeg: Path, tiny_tokenizer):
    """The saved folder's own remote code (the image reader in image_processing_harmoclip.py copied beside it), unable to import the project."""
    folder = rotated_jpeg.parent / "model"
    tiny_harmoclip_model(seed=3).save_pretrained(folder)
    tiny_processor(tiny_tokenizer).save_pretrained(folder)
    assert (folder / "image_processing_harmoclip.py").is_file()
    Image.fromarray(upright_reference()).save(rotated_jpeg.parent / "upright.png")
    code = f"""
import json
from PIL import Image
from transformers import pipeline
classifier = pipeline("region-classification", model={str(folder)!r}, trust_remote_code=True)
out = {{}}
for name, image in (("path", {str(rotated_jpeg)!r}), ("opened", Image.open({str(rotated_jpeg)!r})),
                    ("upright", Image.open({str(rotated_jpeg.parent / "upright.png")!r}))):
    out[name] = classifier(image, boxes=[{BOX!r}], candidate_labels={LABELS!r}, top_k=None)
out["size"] = classifier.read_image({str(rotated_jpeg)!r}).size
for bad in ("truncated.jpg", "notes.jpg"):
    try:
        classifier({str(rotated_jpeg.parent)!r} + "/" + bad, boxes=[{BOX!r}], candidate_labels={LABELS!r})
    except ValueError as error:
        out[bad] = str(error)
print(json.dumps(out))
"""
    (rotated_jpeg.parent / "truncated.jpg").write_bytes(rotated_jpeg.read_bytes()[:2000])
    (rotated_jpeg.parent / "notes.jpg").write_text("not an image")
    result = json.loads(run_isolated(code, cwd=rotated_jpeg.parent).stdout.strip().splitlines()[-1])
    assert result["size"] == list(UPRIGHT_SIZE)
    for name in ("path", "opened"):
        assert result[name][0]["box"] == result["upright"][0]["box"]
        assert result[name][0]["labels"] == result["upright"][0]["labels"]
        assert result[name][0]["scores"] == pytest.approx(result["upright"][0]["scores"], abs=2e-3)
    for bad, reason in (("truncated.jpg", "truncated or corrupt"), ("notes.jpg", "not an image file")):
        message = result[bad]
        assert "\n" not in message and message.startswith("cannot read image") and bad in message and reason in message


def test_pipeline_in_process_and_the_space_frame(rotated_jpeg: Path, tiny_tokenizer) -> None:
    classifier = pipeline(
        REGION_CLASSIFICATION_TASK,
        model=tiny_harmoclip_model(seed=4),
        processor=tiny_processor(tiny_tokenizer),
        device=-1,
    )
    upright = Image.fromarray(upright_reference())
    results = [classifier(image, boxes=[BOX], candidate_labels=LABELS, top_k=None) for image in (rotated_jpeg, upright)]
    assert results[0][0]["labels"] == results[1][0]["labels"]
    assert results[0][0]["scores"] == pytest.approx(results[1][0]["scores"], abs=2e-3)
    # The Space reads its upload through the pipeline (tests/space_support.py puts space/ on the path).
    region_demo = space_module("region_demo")
    assert_upright(region_demo.RegionDemo(classifier).read_image(Image.open(rotated_jpeg)))


def test_training_sources_and_data_preparation_read_it_upright(rotated_jpeg: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "train.jsonl"
    manifest.write_text(
        json.dumps({"image": rotated_jpeg.name, "caption": "a photo", "regions": [{"box": BOX}]}) + "\n"
    )
    sample = JsonlRegionDataset(manifest)[0]
    assert_upright(sample.image)
    assert sample.boxes == [BOX]  # the box is checked against (kept inside) the upright 200 x 320 image
    for shard_format in ("parquet", "webdataset"):
        out = tmp_path / shard_format
        argv = ["--source", "jsonl", "--input", str(manifest), "--out", str(out), "--format", shard_format]
        prepare(build_parser().parse_args(argv))
        assert_upright(HFRegionDataset(out)[0].image)


def test_evaluation_reads_it_upright(rotated_jpeg: Path) -> None:
    assert_upright(load_image(rotated_jpeg))
    image, boxes = ImageBoxDataset([rotated_jpeg], [[BOX]])[0]
    assert_upright(image)
    assert boxes == [BOX]


def test_unreadable_images_get_one_line_naming_the_file(tmp_path: Path, rotated_jpeg: Path) -> None:
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(rotated_jpeg.read_bytes()[:2000])
    (tmp_path / "notes.jpg").write_text("a text file, not an image")
    cases = {"truncated.jpg": "truncated or corrupt", "notes.jpg": "not an image file", "absent.jpg": "no such file"}
    for name, reason in cases.items():
        for reader in (read_image, load_image):
            with pytest.raises(ValueError) as caught:
                reader(tmp_path / name)
            message = str(caught.value)
            assert "\n" not in message and str(tmp_path / name) in message and reason in message, message
    # Data preparation's cheap check (no decoding) names the file in the same words.
    with pytest.raises(ImageReadError, match="notes.jpg: not an image file"):
        check_image_bytes((tmp_path / "notes.jpg").read_bytes(), str(tmp_path / "notes.jpg"))
    check_image_bytes(rotated_jpeg.read_bytes(), str(rotated_jpeg))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"image": name, "caption": "x"}) + "\n" for name in cases))
    for index, (name, reason) in enumerate(cases.items()):
        skipped = JsonlRegionDataset(manifest)[index]
        assert isinstance(skipped, SkippedSample) and skipped.path == str(tmp_path / name) and reason in skipped.reason


def test_images_over_the_pixel_limit_are_refused_in_one_line(rotated_jpeg: Path, monkeypatch) -> None:
    """PIL's decompression-bomb limit is a hard limit here (PIL alone only warns below twice the limit)."""
    pixels = STORED_SIZE[0] * STORED_SIZE[1]
    for limit in (pixels - 1, pixels // 2 - 1):  # within PIL's warning band, then over its own error threshold
        monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", limit)
        with pytest.raises(ImageReadError, match=f"decompression-bomb limit of {limit} pixels") as caught:
            read_image(rotated_jpeg)
        assert "\n" not in str(caught.value) and str(rotated_jpeg) in str(caught.value)
        with pytest.raises(ImageReadError, match="decompression-bomb limit"):
            check_image_bytes(rotated_jpeg.read_bytes(), str(rotated_jpeg))
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", pixels)
    assert_upright(read_image(rotated_jpeg))


def test_detection_and_segmentation_pipelines_read_it_upright(rotated_jpeg: Path, tiny_tokenizer, tmp_path) -> None:
    model, processor = tiny_harmoclip_model(seed=4), tiny_processor(tiny_tokenizer)
    detector = ZeroShotRegionDetectionPipeline(model=model, processor=processor)
    segmenter = DenseSegmentationPipeline(model=model, processor=processor)
    upright = Image.fromarray(upright_reference())

    def found(image) -> list[tuple[str, dict]]:
        return detector(image, candidate_labels=LABELS, boxes=[BOX], threshold=0.0, nms_threshold=None)

    from_path, from_opened, from_upright = found(str(rotated_jpeg)), found(Image.open(rotated_jpeg)), found(upright)
    assert from_path == from_opened  # a path and an opened file: the same frame, the same pixels
    by_label = {item["label"]: item for item in from_upright}
    for item in from_path:  # and the frame of the upright reference (up to JPEG's loss)
        assert item["box"] == by_label[item["label"]]["box"]
        assert item["score"] == pytest.approx(by_label[item["label"]]["score"], abs=2e-3)
    sizes = [
        [item["mask"].size for item in segmenter(image, candidate_labels=LABELS)]
        for image in (str(rotated_jpeg), Image.open(rotated_jpeg))
    ]
    assert sizes[0] and sizes[0] == sizes[1] and all(size == UPRIGHT_SIZE for size in sizes[0])
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(ValueError, match="notes.jpg: not an image file"):
        detector(str(tmp_path / "notes.jpg"), candidate_labels=LABELS)
