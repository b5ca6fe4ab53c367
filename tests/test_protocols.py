"""The reference protocols: ViLD prompts as FineCLIP's script writes them, COCO panoptic boxes as the references read
them (json boxes for things, PNG masks for stuff), the protocols' pre-processing, mean per-class accuracy, and
whole runs of `python -m evaluation.evaluate --protocol ...` on tiny stand-in data in the real formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from transformers import CLIPVisionModel

from conftest import tiny_harmoclip_model, tiny_processor
from data_files import PANOPTIC_CATEGORIES as CATEGORIES
from data_files import write_panoptic_standin
from evaluation.embeddings import compute_text_embeddings
from evaluation.evaluate import evaluate_command
from evaluation.metrics import classification_metrics
from evaluation.panoptic import mask_box, read_panoptic_boxes
from evaluation.prompts import VILD_TEMPLATES, article, processed_name, vild_prompts
from evaluation.protocols import (
    PROTOCOLS,
    ProtocolProcessor,
    get_protocol,
    load_class_embeddings,
    protocol_class_embeddings,
    run_box_protocol,
    save_class_embeddings,
)

# ---------------------------------------------------------------------------------------------------- prompts

# FineCLIP's tools/generate_text_embeddings.py for the category "airplane", written out by hand.
AIRPLANE = [
    "There is an airplane in the scene.",
    "There is the airplane in the scene.",
    "This is a photo of an airplane in the scene.",
    "This is a photo of the airplane in the scene.",
    "This is a photo of one airplane in the scene.",
    "itap of an airplane.",
    "itap of my airplane.",
    "itap of the airplane.",
    "This is a photo of an airplane.",
    "This is a photo of my airplane.",
    "This is a photo of the airplane.",
    "This is a photo of one airplane.",
    "This is a photo of many airplane.",
    "This is a good photo of an airplane.",
    "This is a good photo of the airplane.",
    "This is a bad photo of an airplane.",
    "This is a bad photo of the airplane.",
    "This is a photo of a nice airplane.",
    "This is a photo of the nice airplane.",
    "This is a photo of a cool airplane.",
    "This is a photo of the cool airplane.",
    "This is a photo of a weird airplane.",
    "This is a photo of the weird airplane.",
    "This is a photo of a small airplane.",
    "This is a photo of the small airplane.",
    "This is a photo of a large airplane.",
    "This is a photo of the large airplane.",
    "This is a photo of a clean airplane.",
    "This is a photo of the clean airplane.",
    "This is a photo of a dirty airplane.",
    "This is a photo of the dirty airplane.",
    "This is a bright photo of an airplane.",
    "This is a bright photo of the airplane.",
    "This is a dark photo of an airplane.",
    "This is a dark photo of the airplane.",
    "This is a photo of a hard to see airplane.",
    "This is a photo of the hard to see airplane.",
    "This is a low resolution photo of an airplane.",
    "This is a low resolution photo of the airplane.",
    "This is a cropped photo of an airplane.",
    "This is a cropped photo of the airplane.",
    "This is a close-up photo of an airplane.",
    "This is a close-up photo of the airplane.",
    "This is a jpeg corrupted photo of an airplane.",
    "This is a jpeg corrupted photo of the airplane.",
    "This is a blurry photo of an airplane.",
    "This is a blurry photo of the airplane.",
    "This is a pixelated photo of an airplane.",
    "This is a pixelated photo of the airplane.",
    "This is a black and white photo of the airplane.",
    "This is a black and white photo of an airplane.",
    "This is a plastic airplane.",
    "This is the plastic airplane.",
    "This is a toy airplane.",
    "This is the toy airplane.",
    "This is a plushie airplane.",
    "This is the plushie airplane.",
    "This is a cartoon airplane.",
    "This is the cartoon airplane.",
    "This is an embroidered airplane.",
    "This is the embroidered airplane.",
    "This is a painting of the airplane.",
    "This is a painting of a airplane.",
]


def test_vild_prompts_equal_the_reference_script_output():
    assert len(VILD_TEMPLATES) == 63
    assert vild_prompts("airplane") == AIRPLANE
    person = vild_prompts("person")
    assert person[:3] == [
        "There is a person in the scene.",
        "There is the person in the scene.",
        "This is a photo of a person in the scene.",
    ]
    assert person[5] == "itap of a person." and person[59] == "This is an embroidered person."
    # COCO panoptic stuff names are used as written; '_' and '/' as the script turns them.
    wall = vild_prompts("wall-other-merged")
    assert (
        wall[0] == "There is a wall-other-merged in the scene." and wall[8] == "This is a photo of a wall-other-merged."
    )
    assert vild_prompts("hair_drier/Fan.")[0] == "There is a hair drier or fan in the scene."
    # The article looks at the raw name: upper-case vowels take "a", as in the script.
    assert article("umbrella") == "an" and article("Umbrella") == "a" and processed_name("Umbrella") == "umbrella"
    with pytest.raises(ValueError, match="`name`"):
        vild_prompts("")


# ---------------------------------------------------------------------------------------------------- metrics


def test_mean_per_class_on_a_hand_built_confusion():
    # Class 0: 2 of 3 right; class 1: 2 of 2; class 2: 0 of 1; class 3: no box (left out of the mean).
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    top1 = torch.tensor([0, 1, 0, 1, 1, 0])
    second = torch.tensor([1, 0, 2, 0, 0, 2])
    predictions = torch.stack([top1, second, torch.full_like(top1, 3)], dim=1)
    figures = classification_metrics(predictions, labels, 4, ks=(1, 2))
    assert figures["top1"] == pytest.approx(100 * 4 / 6)
    assert figures["mean_class_top1"] == pytest.approx(100 * (2 / 3 + 1 + 0) / 3)
    assert figures["top2"] == pytest.approx(100.0)
    assert figures["mean_class_top2"] == pytest.approx(100.0)
    assert figures["per_class_top1"] == [pytest.approx(200 / 3), 100.0, 0.0, None]


# ---------------------------------------------------------------------------------------------------- stand-in data


@pytest.fixture
def panoptic(tmp_path) -> Path:
    return write_panoptic_standin(tmp_path)


def test_mask_box_uses_inclusive_extremes():
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:9] = True
    assert mask_box(mask) == [3.0, 2.0, 8.0, 4.0]
    assert mask_box(np.zeros((3, 3), dtype=bool)) is None


def test_reads_panoptic_boxes_as_the_references(panoptic):
    read = read_panoptic_boxes(panoptic, panoptic.parent.parent / "val2017")
    data = read.data
    assert data.class_names == ["person", "airplane", "sky-other-merged", "wall-other-merged"]
    assert read.class_is_thing == [True, True, False, False]
    by_name = {image.path.name: image for image in data.images}
    assert sorted(by_name) == ["000000037777.jpg", "000000397133.jpg"]  # 252219's only box is too small
    first = by_name["000000397133.jpg"]
    # sky and wall from the PNG (max - min), person and the crowd airplane from the json; the 5 x 5 person left out.
    assert first.boxes == [[0, 0, 79, 19], [0, 20, 39, 59], [45, 25, 65, 55], [66, 22, 80, 41]]
    assert first.labels == [2, 3, 0, 1]
    second = by_name["000000037777.jpg"]
    assert second.boxes == [[0, 0, 52, 95], [30.5, 10, 60, 50]] and second.labels == [3, 1]
    assert data.skipped == {"small": 2, "large": 0, "beyond_max_segments": 0, "empty": 0}
    limited = read_panoptic_boxes(panoptic, panoptic.parent.parent / "val2017", max_segments=2).data
    assert limited.skipped["beyond_max_segments"] == 3 and sum(len(image.boxes) for image in limited.images) == 4


def test_a_missing_png_is_named(panoptic):
    (panoptic.parent / "panoptic_val2017" / "000000037777.png").unlink()
    with pytest.raises(ValueError, match="000000037777.png"):
        read_panoptic_boxes(panoptic)


# ---------------------------------------------------------------------------------------------------- pre-processing


@pytest.fixture(scope="module")
def processor(tiny_tokenizer):
    return tiny_processor(tiny_tokenizer)


def test_square_resize_maps_boxes_per_axis(processor):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 100, 3), dtype=np.uint8))
    pre = ProtocolProcessor(processor, 40, "square", "bilinear")
    batch = pre(images=[image], boxes=[[[10, 5, 60, 45]]])
    expected = np.asarray(image.resize((40, 40), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    mean, std = np.array(processor.image_processor.image_mean), np.array(processor.image_processor.image_std)
    assert torch.allclose(
        batch["pixel_values"][0], torch.from_numpy((expected - mean) / std).permute(2, 0, 1).float(), atol=1e-5
    )
    assert torch.allclose(batch["boxes"], torch.tensor([[[0.1, 0.1, 0.6, 0.9]]]))
    assert batch["box_mask"].tolist() == [[True]]


def test_longest_side_resize_pads_and_keeps_the_aspect_ratio(processor):
    image = Image.new("RGB", (100, 50), (255, 255, 255))
    pre = ProtocolProcessor(processor, 40, "longest-pad", "bicubic")
    batch = pre(images=[image, image], boxes=[[[10, 5, 60, 45], [0, 0, 100, 50]], []])
    pixels = batch["pixel_values"][0]
    mean, std = torch.tensor(processor.image_processor.image_mean), torch.tensor(processor.image_processor.image_std)
    assert torch.allclose(
        pixels[:, :20, :], ((1 - mean) / std)[:, None, None].expand(3, 20, 40), atol=1e-5
    )  # the image
    assert torch.allclose(pixels[:, 20:, :], (-mean / std)[:, None, None].expand(3, 20, 40), atol=1e-5)  # black padding
    # one scale (0.4) for both axes, normalised by the padded square's 40 pixels
    assert torch.allclose(batch["boxes"][0], torch.tensor([[0.1, 0.05, 0.6, 0.45], [0.0, 0.0, 1.0, 0.5]]))
    assert batch["box_mask"].tolist() == [[True, True], [False, False]]


def test_protocol_presets_and_bad_sizes():
    assert (PROTOCOLS["fineclip"].image_size, PROTOCOLS["fineclip"].resize) == (224, "square")
    assert (PROTOCOLS["clipself"].image_size, PROTOCOLS["clipself"].resize) == (1024, "longest-pad")
    assert get_protocol("clipself", 448).image_size == 448
    with pytest.raises(ValueError, match="`image_size` must be a positive int, got 0"):
        get_protocol("fineclip", 0)
    with pytest.raises(ValueError, match="`protocol` must be one of"):
        get_protocol("vild")


def test_dense_features_at_another_size_follow_clip_with_interpolated_positions():
    # With the ordinary last layer the dense map is CLIP's last hidden state, normed and projected, per patch:
    # transformers' own CLIPVisionModel with interpolate_pos_encoding is the reference (the model is 32 px).
    model = tiny_harmoclip_model(seed=5, dense_mode="full")
    vision = CLIPVisionModel(model.config.vision_config).eval()
    vision.load_state_dict(model.vision_model.state_dict())
    pixels = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        dense = model.get_dense_features(pixels, interpolate_pos_encoding=True)
        hidden = vision(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state[:, 1:]
        expected = F.normalize(model.visual_projection(model.vision_model.post_layernorm(hidden)), dim=-1)
    assert dense.shape == (2, 16, 8, 6)
    assert torch.allclose(dense.flatten(2).transpose(1, 2), expected, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- whole runs


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
    mean = torch.tensor(processor.image_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(processor.image_processor.image_std).view(3, 1, 1)
    pixels = torch.stack(
        [
            (
                torch.from_numpy(
                    np.asarray(
                        Image.open(tmp_path / f"{i}.jpg").convert("RGB").resize((32, 32), Image.Resampling.BILINEAR),
                        dtype=np.float32,
                    )
                    / 255
                ).permute(2, 0, 1)
                - mean
            )
            / std
            for i in range(3)
        ]
    )
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
