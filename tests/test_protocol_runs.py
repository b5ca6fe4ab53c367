"""Whole runs of the reference protocols (`python -m evaluation.evaluate --protocol ...`) on tiny stand-in data in the
real formats, against predictions written out from the references' definitions; the retrieval protocol's recall, the
protocols' options and position-embedding rescaling, FineCLIP's caption lists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from conftest import tiny_harmoclip_model, tiny_processor
from data_files import PANOPTIC_CATEGORIES as CATEGORIES
from data_files import write_panoptic_standin
from evaluation.embeddings import compute_text_embeddings
from evaluation.evaluate import evaluate_command
from evaluation.panoptic import read_panoptic_boxes
from evaluation.prompts import vild_prompts
from evaluation.protocols import (
    get_protocol,
    load_class_embeddings,
    protocol_class_embeddings,
    run_box_protocol,
    save_class_embeddings,
)


@pytest.fixture
def panoptic(tmp_path) -> Path:
    return write_panoptic_standin(tmp_path)


@pytest.fixture(scope="module")
def processor(tiny_tokenizer):
    return tiny_processor(tiny_tokenizer)


@pytest.fixture
def saved_models(tmp_path, processor) -> tuple[Path, Path]:
    folders = []
    for seed in (3, 4):
        folder = tmp_path / f"tiny-{seed}"
        tiny_harmoclip_model(seed=seed).save_pretrained(folder)
        processor.save_pretrained(folder)
        folders.append(folder)
    return folders[0], folders[1]


def _reference_predictions(
    model, processor, panoptic: Path, image_size: int, resize: str, class_embeds: torch.Tensor
) -> tuple[list[int], list[int]]:
    """Slow reference: every image by hand (PIL resize, boxes scaled), one region call per image, argmax."""
    read = read_panoptic_boxes(panoptic, panoptic.parent.parent / "val2017").data
    mean = torch.tensor(processor.image_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(processor.image_processor.image_std).view(3, 1, 1)
    predicted, labels = [], []
    for image in read.images:
        photo = Image.open(image.path).convert("RGB")
        width, height = photo.size
        if resize == "square":
            canvas, sx, sy = (
                photo.resize((image_size, image_size), Image.Resampling.BILINEAR),
                image_size / width,
                image_size / height,
            )
        else:
            scale = image_size / max(width, height)
            canvas = Image.new("RGB", (image_size, image_size))
            canvas.paste(photo.resize((round(width * scale), round(height * scale)), Image.Resampling.BICUBIC), (0, 0))
            sx = sy = scale
        pixels = (torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255).permute(2, 0, 1) - mean) / std
        boxes = torch.tensor(image.boxes) * torch.tensor([sx, sy, sx, sy]) / image_size
        with torch.no_grad():
            regions = model.get_region_features(pixels[None], boxes[None], interpolate_pos_encoding=image_size != 32)[0]
        predicted += (regions @ class_embeds.t()).argmax(dim=1).tolist()
        labels += image.labels
    return predicted, labels


def test_fineclip_protocol_end_to_end(panoptic, saved_models, tmp_path, processor):
    model_dir, other_dir = saved_models
    out = tmp_path / "fineclip.json"
    embeds_path = tmp_path / "classes.npy"
    report = evaluate_command(
        [
            "--model",
            str(model_dir),
            "--task",
            "boxcls",
            "--protocol",
            "fineclip",
            "--image-size",
            "32",
            "--data",
            str(panoptic),
            "--image-root",
            str(panoptic.parent.parent / "val2017"),
            "--class-embeddings-from",
            str(other_dir),
            "--save-class-embeddings",
            str(embeds_path),
            "--batch-size",
            "2",
            "--num-workers",
            "0",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    saved = json.loads(out.read_text())
    assert saved["results"] == json.loads(json.dumps(report["results"]))
    assert saved["settings"]["protocol"]["name"] == "fineclip" and saved["settings"]["class_embeddings_from"] == str(
        other_dir
    )

    # The class embeddings are the other model's ViLD ensemble, computed by hand here.
    other = tiny_harmoclip_model(seed=4)
    names = [category["name"] for category in CATEGORIES]
    prompts = [prompt for name in names for prompt in vild_prompts(name)]
    expected = F.normalize(compute_text_embeddings(other, processor, prompts).reshape(4, 63, -1).mean(1), dim=-1)
    assert torch.allclose(load_class_embeddings(embeds_path, 4), expected, atol=1e-5)

    model = tiny_harmoclip_model(seed=3)
    predicted, labels = _reference_predictions(model, processor, panoptic, 32, "square", expected)
    per_class = [np.mean([p == c for p, truth in zip(predicted, labels) if truth == c]) for c in sorted(set(labels))]
    dense = saved["results"]["dense"]
    assert dense["num_samples"] == len(labels) == 6
    assert dense["top1"] == pytest.approx(100 * np.mean([p == truth for p, truth in zip(predicted, labels)]), abs=1e-4)
    assert dense["mean_class_top1"] == pytest.approx(100 * np.mean(per_class), abs=1e-4)
    assert saved["results"]["headline"] == {"method": "dense", "mean_class_top1": dense["mean_class_top1"]}
    assert "**Headline (dense)**: mean_class_top1" in out.with_suffix(".md").read_text()


def test_clipself_protocol_at_a_non_native_size(panoptic, saved_models, tmp_path, processor):
    model_dir, _ = saved_models
    model = tiny_harmoclip_model(seed=3)
    names = [category["name"] for category in CATEGORIES]
    class_embeds = protocol_class_embeddings(names, model, processor)
    embeds_path = save_class_embeddings(class_embeds, tmp_path / "own.npy")
    out = tmp_path / "clipself.json"
    evaluate_command(
        [
            "--model",
            str(model_dir),
            "--task",
            "boxcls",
            "--protocol",
            "clipself",
            "--image-size",
            "64",
            "--data",
            str(panoptic),
            "--image-root",
            str(panoptic.parent.parent / "val2017"),
            "--class-embeddings-from",
            str(embeds_path),
            "--methods",
            "dense",
            "crop",
            "--batch-size",
            "2",
            "--num-workers",
            "0",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    results = json.loads(out.read_text())["results"]
    predicted, labels = _reference_predictions(model, processor, panoptic, 64, "longest-pad", class_embeds)
    hits = {c: [p == c for p, truth in zip(predicted, labels) if truth == c] for c in set(labels)}
    thing = np.mean([np.mean(hits[c]) for c in (0, 1)])
    stuff = np.mean([np.mean(hits[c]) for c in (2, 3)])
    assert results["headline"]["thing_mean_class_top1"] == pytest.approx(100 * thing, abs=1e-4)
    assert results["headline"]["stuff_mean_class_top1"] == pytest.approx(100 * stuff, abs=1e-4)
    assert results["crop"]["num_samples"] == 6 and results["num_thing_classes"] == 2
    assert "thing mean-class Top-1" in out.with_suffix(".md").read_text()


def test_run_box_protocol_defaults_to_the_evaluated_models_embeddings(panoptic, processor):
    model = tiny_harmoclip_model(seed=3)
    protocol = get_protocol("fineclip", 32)
    own = run_box_protocol(model, processor, protocol, panoptic, panoptic.parent.parent / "val2017")
    embeds = protocol_class_embeddings([c["name"] for c in CATEGORIES], model, processor)
    given = run_box_protocol(
        model, processor, protocol, panoptic, panoptic.parent.parent / "val2017", class_embeds=embeds
    )
    assert own["dense"]["per_class_top1"] == given["dense"]["per_class_top1"]


def test_class_embeddings_file_of_the_wrong_shape_is_refused(tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((3, 16), dtype=np.float32))
    with pytest.raises(ValueError, match=r"shape \(3, 16\), expected \(4, D\)"):
        load_class_embeddings(tmp_path / "bad.npy", 4)
    with pytest.raises(ValueError, match="must end in .npy or .pt"):
        load_class_embeddings(tmp_path / "bad.txt", 4)


def fineclip_pixels(paths: list[Path], processor) -> torch.Tensor:
    """(n, 3, 32, 32) pixels as FineCLIP's test_flickr.py makes them: a square bilinear resize, then normalisation."""
    mean = torch.tensor(processor.image_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(processor.image_processor.image_std).view(3, 1, 1)
    images = [Image.open(path).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR) for path in paths]
    arrays = [torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1) for image in images]
    return torch.stack([(array - mean) / std for array in arrays])


def test_retrieval_protocol_follows_fineclips_recall_definitions(tmp_path, saved_models, processor):
    # Karpathy split file; 3 test images with 5 captions each, one train image left out.
    captions = [
        ["a red square", "red box", "a square of red", "something red", "red"],
        ["a blue circle", "blue disc", "a round blue shape", "blue", "a circle"],
        ["a green stripe", "green line", "a band of green", "green", "a stripe"],
        ["a yellow dot", "yellow", "a dot", "small yellow", "a spot"],
    ]
    entries = []
    for index, image_captions in enumerate(captions):
        image = Image.new("RGB", (40 + 10 * index, 30 + 7 * index), (200, 200, 200))
        ImageDraw.Draw(image).rectangle([5, 5, 20 + index, 25], fill=(50 * index, 200 - 40 * index, 90))
        image.save(tmp_path / f"{index}.jpg", quality=95)
        entries.append(
            {
                "filename": f"{index}.jpg",
                "split": "train" if index == 3 else "test",
                "sentences": [{"raw": caption} for caption in image_captions],
            }
        )
    karpathy = tmp_path / "dataset_flickr30k.json"
    karpathy.write_text(json.dumps({"images": entries, "dataset": "flickr30k"}))
    out = tmp_path / "flickr.json"
    evaluate_command(
        [
            "--model",
            str(saved_models[0]),
            "--task",
            "retrieval",
            "--protocol",
            "fineclip",
            "--data",
            str(karpathy),
            "--image-root",
            str(tmp_path),
            "--num-workers",
            "0",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    results = json.loads(out.read_text())["results"]

    # FineCLIP's test_flickr.py by hand: square bilinear resize, top-1 over the similarity matrix in both directions.
    model = tiny_harmoclip_model(seed=3)
    pixels = fineclip_pixels([tmp_path / f"{i}.jpg" for i in range(3)], processor)
    with torch.no_grad():
        image_features = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    texts = [caption for image_captions in captions[:3] for caption in image_captions]
    text_features = compute_text_embeddings(model, processor, texts)
    similarity = image_features @ text_features.t()
    text_to_image = [index // 5 for index in range(15)]
    t2i = [similarity[:, t].topk(3).indices.tolist() for t in range(15)]
    i2t = [similarity[i].topk(10).indices.tolist() for i in range(3)]
    for k in (1, 5, 10):
        assert results[f"t2i_R@{k}"] == pytest.approx(
            100 * np.mean([text_to_image[t] in t2i[t][:k] for t in range(15)]), abs=1e-4
        )
        assert results[f"i2t_R@{k}"] == pytest.approx(
            100 * np.mean([any(text_to_image[t] == i for t in i2t[i][:k]) for i in range(3)]), abs=1e-4
        )
    assert results["num_images"] == 3 and results["num_captions"] == 15


def test_protocol_options_are_checked_before_loading_anything(tmp_path, panoptic):
    instances = tmp_path / "instances_val2017.json"
    instances.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(
        ValueError,
        match=r"--protocol fineclip classifies the boxes of a COCO panoptic json, got --data .*instances_val2017.json \(coco-instances\)",
    ):
        evaluate_command(
            [
                "--model",
                "unused",
                "--task",
                "boxcls",
                "--protocol",
                "fineclip",
                "--data",
                str(instances),
                "--out",
                str(tmp_path / "r.json"),
            ]
        )
    with pytest.raises(
        ValueError,
        match=r"--image-size applies to `--task boxcls --protocol ...` only, got --task boxcls --protocol None",
    ):
        evaluate_command(
            [
                "--model",
                "unused",
                "--task",
                "boxcls",
                "--image-size",
                "64",
                "--data",
                str(panoptic),
                "--out",
                str(tmp_path / "r.json"),
            ]
        )


def test_interpolated_position_embeddings_follow_clipselfs_rescaling():
    # CLIPSelf's `rescale_positional_embedding`: the class position kept, the patch grid resized bicubically
    # (align_corners=False) to the new grid; written here from that description, on a 32 px model read at 64 x 48.
    model = tiny_harmoclip_model(seed=6)
    embeddings = model.vision_model.embeddings
    pixels = torch.randn(1, 3, 64, 48)
    positions = embeddings.position_embedding.weight  # (1 + 4 * 4, C)
    grid = positions[1:].T.reshape(1, -1, 4, 4)
    rescaled = F.interpolate(grid, (8, 6), mode="bicubic", align_corners=False).reshape(-1, 48).T
    with torch.no_grad():
        patches = embeddings.patch_embedding(pixels).flatten(2).transpose(1, 2)  # (1, 48, C)
        expected = torch.cat([(embeddings.class_embedding + positions[0])[None], patches[0] + rescaled])
        actual = embeddings(pixels, interpolate_pos_encoding=True)[0]
    assert torch.allclose(actual, expected, atol=1e-5)


def test_fineclips_caption_list_files_read_as_the_karpathy_split(tmp_path):
    from evaluation.eval_data import detect_format, read_karpathy, read_retrieval_data

    captions = [[f"image {index} caption {number}" for number in range(5)] for index in range(3)]
    karpathy = tmp_path / "dataset_flickr30k.json"
    karpathy.write_text(
        json.dumps(
            {
                "images": [
                    {"filename": f"{index}.jpg", "split": "test", "sentences": [{"raw": c} for c in caps]}
                    for index, caps in enumerate(captions)
                ]
            }
        )
    )
    listed = tmp_path / "flickr30k_test.json"  # FineCLIP's / BLIP's format
    listed.write_text(json.dumps([{"image": f"{index}.jpg", "caption": caps} for index, caps in enumerate(captions)]))
    assert detect_format(listed) == "caption-list"
    expected = read_karpathy(karpathy, tmp_path / "images")
    read = read_retrieval_data(listed, image_root=tmp_path / "images")
    assert (read.image_paths, read.captions, read.caption_image) == (
        expected.image_paths,
        expected.captions,
        expected.caption_image,
    )
    listed.write_text(json.dumps([{"image": "0.jpg", "caption": []}]))
    with pytest.raises(
        ValueError, match=r"flickr30k_test.json, item 0: 'caption' must be a string or a non-empty list"
    ):
        read_retrieval_data(listed)
