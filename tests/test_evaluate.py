"""Evaluation on data files in their real formats, with a tiny model: readers, embeddings, reports and the command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from conftest import ROOT, tiny_harmoclip_model, tiny_processor
from crop_reference import hand_crop
from evaluation.embeddings import (
    compute_box_embeddings,
    compute_image_embeddings,
    compute_text_embeddings,
    crop_features,
    evaluate_retrieval,
)
from evaluation.eval_data import (
    detect_format,
    image_loader,
    read_box_manifest,
    read_coco_instances,
    read_coco_panoptic,
    read_karpathy,
    read_retrieval_manifest,
)
from evaluation.evaluate import (
    evaluate_box_classification,
    readable_class_name,
    run_evaluation,
    write_report,
)
from evaluation.metrics import retrieval_metrics

CAPTIONS = [
    ["a red square on a white wall", "a red box", "red on white", "a square", "something red"],
    ["a blue circle", "a round blue shape", "blue disc on grey", "a circle", "blue"],
    ["a green stripe", "green line across", "a stripe of green", "green", "a band"],
    ["a yellow dot", "small yellow spot", "a dot", "yellow", "a speck of yellow"],
]
COLOURS = [(220, 30, 30), (30, 30, 220), (30, 200, 30), (230, 220, 20)]
SIZES = [(48, 40), (64, 64), (40, 56), (50, 50)]


def _write_image(path: Path, index: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", SIZES[index % 4], (240, 240, 240) if index % 2 == 0 else (120, 120, 120))
    draw = ImageDraw.Draw(image)
    width, height = image.size
    draw.rectangle([width // 4, height // 4, 3 * width // 4, 3 * height // 4], fill=COLOURS[index % 4])
    draw.ellipse([index, index, index + 8, index + 8], fill=(10 * index, 255 - 20 * index, 60))  # every image unique
    image.save(path, format="PNG")


@pytest.fixture(scope="module")
def processor(tiny_tokenizer):
    # CLIP's crop geometry: box tasks switch to the processor's square variant themselves.
    return tiny_processor(tiny_tokenizer, region_mode=False)


@pytest.fixture(scope="module")
def model():
    return tiny_harmoclip_model(seed=3)


@pytest.fixture
def karpathy_coco(tmp_path) -> Path:
    """`dataset_coco.json`: 6 images over splits test/val/restval; COCO's `filepath` folders."""
    splits = ["test", "val", "test", "restval", "test", "test"]
    entries = []
    for index, split in enumerate(splits):
        folder = "val2014" if index % 2 == 0 else "train2014"
        filename = f"COCO_{folder}_{index:012d}.png"
        _write_image(tmp_path / "coco" / folder / filename, index)
        entries.append(
            {
                "filepath": folder,
                "filename": filename,
                "imgid": index,
                "split": split,
                "cocoid": 1000 + index,
                "sentids": list(range(5 * index, 5 * index + 5)),
                "sentences": [
                    {"tokens": caption.split(), "raw": caption + " ", "imgid": index, "sentid": 5 * index + number}
                    for number, caption in enumerate(CAPTIONS[index % 4])
                ],
            }
        )
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": entries, "dataset": "coco"}))
    return path


@pytest.fixture
def karpathy_flickr(tmp_path) -> Path:
    entries = []
    for index in range(4):
        filename = f"{1000092795 + index}.png"
        _write_image(tmp_path / "flickr30k-images" / filename, index)
        entries.append(
            {
                "filename": filename,
                "imgid": index,
                "split": "test" if index < 3 else "train",
                "sentences": [{"raw": caption, "tokens": caption.split()} for caption in CAPTIONS[index][:4]],
            }
        )
    path = tmp_path / "dataset_flickr30k.json"
    path.write_text(json.dumps({"images": entries, "dataset": "flickr30k"}))
    return path


@pytest.fixture
def manifest(tmp_path) -> Path:
    """JSONL manifest with captions (a string or a list) and labelled regions, images beside it."""
    lines = []
    for index in range(4):
        _write_image(tmp_path / "images" / f"{index}.png", index)
        width, height = SIZES[index]
        regions = [
            {
                "box": [width / 4, height / 4, 3 * width / 4, 3 * height / 4],
                "phrase": "a shape",
                "label": ["square", "circle"][index % 2],
            },
            {"box": [0, 0, width, height / 4], "phrase": "the background"},
        ]
        lines.append(
            {
                "image": f"images/{index}.png",
                "caption": CAPTIONS[index][0] if index == 0 else CAPTIONS[index][:2],
                "regions": regions,
                "split": "val" if index == 3 else "test",
            }
        )
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


COCO_CATEGORIES = [
    {"supercategory": "person", "id": 1, "name": "person"},
    {"supercategory": "vehicle", "id": 3, "name": "car"},
    {"supercategory": "animal", "id": 18, "name": "dog"},
    {"supercategory": "kitchen", "id": 44, "name": "bottle"},
]


@pytest.fixture
def coco_instances(tmp_path) -> Path:
    """`instances_val2017.json`: non-contiguous category ids, a crowd box, an empty box, an image without boxes."""
    images, annotations = [], []
    for index in range(4):
        file_name = f"{139 + index:012d}.png"
        _write_image(tmp_path / "val2017" / file_name, index)
        width, height = SIZES[index]
        images.append({"id": 139 + index, "file_name": file_name, "width": width, "height": height})
    boxes = [  # (image_id, category_id, xywh, iscrowd)
        (139, 1, [4, 5, 20, 18], 0),
        (139, 18, [10, 2, 30, 30], 0),
        (139, 1, [0, 0, 48, 40], 1),
        (140, 3, [16, 16, 32, 32], 0),
        (140, 1, [2, 2, 10.5, 20.25], 0),
        (140, 3, [5, 5, 0, 10], 0),
        (141, 18, [0, 0, 40, 56], 0),
    ]
    for number, (image_id, category, bbox, crowd) in enumerate(boxes):
        annotations.append(
            {
                "id": number + 1,
                "image_id": image_id,
                "category_id": category,
                "bbox": bbox,
                "iscrowd": crowd,
                "area": bbox[2] * bbox[3],
                "segmentation": [[0, 0, 1, 0, 1, 1]],
            }
        )
    path = tmp_path / "annotations" / "instances_val2017.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(
        json.dumps(
            {"info": {}, "licenses": [], "images": images, "annotations": annotations, "categories": COCO_CATEGORIES}
        )
    )
    return path


@pytest.fixture
def coco_panoptic(tmp_path) -> Path:
    """`panoptic_val2017.json` with thing and stuff classes."""
    categories = [
        {"supercategory": "person", "isthing": 1, "id": 1, "name": "person", "color": [220, 20, 60]},
        {"supercategory": "animal", "isthing": 1, "id": 18, "name": "dog", "color": [0, 0, 142]},
        {"supercategory": "wall", "isthing": 0, "id": 199, "name": "wall-other-merged", "color": [102, 102, 156]},
        {"supercategory": "ground", "isthing": 0, "id": 149, "name": "grass-merged", "color": [0, 153, 0]},
    ]
    images, annotations = [], []
    for index in range(3):
        file_name = f"{285 + index:012d}.png"
        _write_image(tmp_path / "val2017" / file_name, index)
        images.append({"id": 285 + index, "file_name": file_name, "width": SIZES[index][0], "height": SIZES[index][1]})
    segments = {
        285: [(1, [2, 3, 20, 20], 0), (199, [0, 0, 48, 10], 0), (149, [0, 30, 48, 10], 0)],
        286: [(18, [10, 10, 30, 30], 0), (1, [0, 0, 64, 64], 1)],
        287: [(199, [0, 0, 40, 56], 0)],
    }
    for image_id, image_segments in segments.items():
        annotations.append(
            {
                "image_id": image_id,
                "file_name": f"{image_id:012d}.png",
                "segments_info": [
                    {
                        "id": 1000 * image_id + n,
                        "category_id": c,
                        "iscrowd": crowd,
                        "bbox": bbox,
                        "area": bbox[2] * bbox[3],
                    }
                    for n, (c, bbox, crowd) in enumerate(image_segments)
                ],
            }
        )
    path = tmp_path / "annotations" / "panoptic_val2017.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(
        json.dumps({"info": {}, "licenses": [], "images": images, "annotations": annotations, "categories": categories})
    )
    return path


# ---------------------------------------------------------------------------------------------------- readers


def test_reads_karpathy_coco_test_split(karpathy_coco):
    data = read_karpathy(karpathy_coco, image_root=karpathy_coco.parent / "coco", split="test")
    assert [path.name for path in data.image_paths] == [f"COCO_val2014_{i:012d}.png" for i in (0, 2, 4)] + [
        "COCO_train2014_000000000005.png"
    ]
    assert data.image_paths[0] == karpathy_coco.parent / "coco" / "val2014" / "COCO_val2014_000000000000.png"
    assert len(data.captions) == 20 and data.caption_image == [i for i in range(4) for _ in range(5)]
    assert data.captions[5] == CAPTIONS[2][0]  # stripped of the trailing space
    assert detect_format(karpathy_coco) == "karpathy"


def test_reads_karpathy_flickr_without_filepath(karpathy_flickr):
    data = read_karpathy(karpathy_flickr, image_root=karpathy_flickr.parent / "flickr30k-images")
    assert [path.name for path in data.image_paths] == ["1000092795.png", "1000092796.png", "1000092797.png"]
    assert all(path.exists() for path in data.image_paths)
    assert data.caption_image == [0] * 4 + [1] * 4 + [2] * 4
    assert len(read_karpathy(karpathy_flickr, karpathy_flickr.parent, split=None).image_paths) == 4


def test_reads_retrieval_manifest(manifest):
    data = read_retrieval_manifest(manifest, split="test")
    assert data.image_paths == [manifest.parent / "images" / f"{i}.png" for i in range(3)]
    assert data.captions == [CAPTIONS[0][0], *CAPTIONS[1][:2], *CAPTIONS[2][:2]]
    assert data.caption_image == [0, 1, 1, 2, 2]
    assert len(read_retrieval_manifest(manifest).image_paths) == 4
    assert detect_format(manifest) == "jsonl"


def test_reads_labelled_regions_of_a_manifest(manifest):
    data = read_box_manifest(manifest)
    assert data.class_names == ["circle", "square"]
    assert [image.labels for image in data.images] == [[1], [0], [1], [0]]
    assert data.images[1].boxes == [[16.0, 16.0, 48.0, 48.0]]
    assert data.skipped["unlabelled"] == 4


def test_reads_coco_instances(coco_instances):
    data = read_coco_instances(coco_instances, image_root=coco_instances.parent.parent / "val2017")
    assert data.class_names == ["person", "car", "dog", "bottle"]
    assert [image.path.name for image in data.images] == ["000000000139.png", "000000000140.png", "000000000141.png"]
    assert data.images[0].boxes == [[4.0, 5.0, 24.0, 23.0], [10.0, 2.0, 40.0, 32.0]]
    assert [image.labels for image in data.images] == [[0, 2], [1, 0], [2]]
    assert data.images[1].boxes[1] == [2.0, 2.0, 12.5, 22.25]
    assert data.skipped == {"crowd": 1, "empty": 1}
    assert detect_format(coco_instances) == "coco-instances"


def test_reads_coco_panoptic_with_stuff(coco_panoptic):
    data = read_coco_panoptic(coco_panoptic, image_root=coco_panoptic.parent.parent / "val2017")
    assert data.class_names == ["person", "dog", "grass-merged", "wall-other-merged"]  # sorted by id
    assert [image.labels for image in data.images] == [[0, 3, 2], [1], [3]]
    assert data.images[0].path.name == "000000000285.png" and data.images[0].path.exists()
    assert data.images[0].boxes[1] == [0.0, 0.0, 48.0, 10.0]
    assert data.skipped == {"crowd": 1, "empty": 0}
    assert detect_format(coco_panoptic) == "coco-panoptic"
    assert [readable_class_name(name) for name in data.class_names] == ["person", "dog", "grass", "wall"]


def test_readers_reject_bad_files(tmp_path, coco_instances):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"image": "a.png", "caption": "ok"}) + "\n" + json.dumps({"image": "b.png", "caption": 3}) + "\n"
    )
    with pytest.raises(ValueError, match="line 2"):
        read_retrieval_manifest(bad)
    data = json.loads(coco_instances.read_text())
    data["annotations"][0]["category_id"] = 99
    broken = tmp_path / "instances_broken.json"
    broken.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="category_id 99"):
        read_coco_instances(broken)
    unknown = tmp_path / "other.json"
    unknown.write_text(json.dumps({"something": []}))
    with pytest.raises(ValueError, match="cannot tell the format"):
        detect_format(unknown)


def test_missing_image_is_named(tmp_path, processor):
    loader = image_loader([tmp_path / "nowhere.png"], processor)
    with pytest.raises(ValueError, match="nowhere.png"):
        next(iter(loader))


# ---------------------------------------------------------------------------------------------------- embeddings


def test_image_embeddings_match_the_model_image_by_image(karpathy_coco, model, processor):
    data = read_karpathy(karpathy_coco, karpathy_coco.parent / "coco", split=None)
    batched = compute_image_embeddings(model, processor, data.image_paths, batch_size=4, num_workers=2)
    with torch.no_grad():
        reference = torch.cat(
            [
                F.normalize(
                    model.get_image_features(
                        pixel_values=processor(images=[Image.open(path).convert("RGB")])["pixel_values"]
                    ).pooler_output,
                    dim=-1,
                )
                for path in data.image_paths
            ]
        )
    assert batched.shape == (6, 16)
    assert torch.allclose(batched, reference, atol=1e-5)


def test_retrieval_matches_metrics_on_model_embeddings(karpathy_flickr, model, processor):
    data = read_karpathy(karpathy_flickr, karpathy_flickr.parent / "flickr30k-images")
    results = evaluate_retrieval(model, processor, data, batch_size=2)
    images = compute_image_embeddings(model, processor, data.image_paths)
    texts = compute_text_embeddings(model, processor, data.captions, batch_size=5)
    with torch.no_grad():
        tokens = processor(text=data.captions[:2], padding=True, return_tensors="pt")
        direct = F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
    assert torch.allclose(texts[:2], direct, atol=1e-5)
    assert results == retrieval_metrics(images, texts, torch.tensor(data.caption_image))
    assert (results["num_images"], results["num_captions"]) == (3, 12)


def test_box_classification_ranks_with_the_pipelines_label_embeddings(coco_instances, model, processor):
    """The evaluation classifies with the same label embeddings and scores as the region-classification pipeline."""
    from modeling_harmoclip.pipeline_harmoclip import label_embeddings, label_probabilities

    data = read_coco_instances(coco_instances, coco_instances.parent.parent / "val2017")
    templates = ("a photo of a {}.", "a drawing of a {}.")
    results = evaluate_box_classification(model, processor, data, methods=("dense",), templates=templates, batch_size=2)
    embeds, labels, _ = compute_box_embeddings(model, processor, data, methods=("dense",))
    names = [readable_class_name(name) for name in data.class_names]
    with torch.no_grad():
        probabilities = label_probabilities(
            embeds["dense"], label_embeddings(model, processor.tokenizer, names, templates), model.logit_scale.exp()
        )
    ranked = probabilities.argsort(dim=-1, descending=True)
    per_box_top1 = (ranked[:, 0] == labels).float()
    assert results["dense"]["top1"] == pytest.approx(100 * per_box_top1.mean().item())
    assert results["dense"]["top5"] == pytest.approx(
        100 * (ranked[:, :5] == labels[:, None]).any(-1).float().mean().item()
    )


def test_box_embeddings_match_region_features_and_crop_baseline(coco_instances, model, processor):
    data = read_coco_instances(coco_instances, coco_instances.parent.parent / "val2017")
    embeds, labels, dropped = compute_box_embeddings(model, processor, data, batch_size=2)
    assert labels.tolist() == [0, 2, 1, 0, 2] and dropped == 0
    assert embeds["dense"].shape == embeds["crop"].shape == (5, 16)
    rows = []
    with torch.no_grad():
        for image in data.images:
            batch = processor.as_region_mode()(images=[Image.open(image.path).convert("RGB")], boxes=[image.boxes])
            rows.append(model.get_region_features(batch["pixel_values"], batch["boxes"])[0])
    assert torch.allclose(embeds["dense"], torch.cat(rows), atol=1e-5)
    # The crop baseline encodes each box's crop of the original image, enlarged 1.5x (cut by hand here).
    boxes = [(image, box) for image in data.images for box in image.boxes]
    with torch.no_grad():
        crops = torch.stack([hand_crop(Image.open(image.path), box, 1.5, 32) for image, box in boxes])
        expected = F.normalize(model.get_image_features(pixel_values=crops).pooler_output, dim=-1)
        batch = processor.as_region_mode()(
            images=[Image.open(data.images[0].path).convert("RGB")],
            boxes=[data.images[0].boxes],
            return_crops=True,
            crop_scale=1.5,
        )
        crop = crop_features(model, batch["crop_pixel_values"], batch["crop_mask"])[0]
    assert torch.allclose(embeds["crop"], expected, atol=1e-4)
    assert torch.allclose(crop, expected[: len(data.images[0].boxes)], atol=1e-4)
    # Another enlargement gives other crops: the scale reaches the processor.
    unenlarged, _, _ = compute_box_embeddings(model, processor, data, methods=("crop",), batch_size=2, crop_scale=1.0)
    with torch.no_grad():
        crops = torch.stack([hand_crop(Image.open(image.path), box, 1.0, 32) for image, box in boxes])
        expected = F.normalize(model.get_image_features(pixel_values=crops).pooler_output, dim=-1)
    assert torch.allclose(unenlarged["crop"], expected, atol=1e-4)
    assert not torch.allclose(embeds["crop"][0], embeds["crop"][1], atol=1e-3)


def test_box_classification_on_panoptic(coco_panoptic, model, processor):
    data = read_coco_panoptic(coco_panoptic, coco_panoptic.parent.parent / "val2017")
    model.train()
    results = evaluate_box_classification(model, processor, data, templates=("a photo of a {}.",), batch_size=2)
    assert model.training, "the caller's training mode is restored"
    model.eval()
    assert results["num_boxes"] == 5 and results["boxes_dropped"] == 0
    assert results["prompt_names"] == ["person", "dog", "grass", "wall"]
    # Reference, by hand: each box's region embedding (one image at a time) and its 1.5x crop's image embedding
    # against the class prompts encoded one by one; the rank of the true class gives Top-1.
    boxes = [(image, box, label) for image in data.images for box, label in zip(image.boxes, image.labels)]
    with torch.no_grad():
        classes = []
        for name in results["prompt_names"]:
            tokens = processor.tokenizer([f"a photo of a {name}."], return_tensors="pt")
            classes.append(F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)[0])
        classes = torch.stack(classes)
        dense = []
        for image in data.images:
            batch = processor.as_region_mode()(images=[Image.open(image.path).convert("RGB")], boxes=[image.boxes])
            dense.append(model.get_region_features(batch["pixel_values"], batch["boxes"])[0])
        crops = torch.stack([hand_crop(Image.open(image.path), box, 1.5, 32) for image, box, _ in boxes])
        crop = F.normalize(model.get_image_features(pixel_values=crops).pooler_output, dim=-1)
    labels = torch.tensor([label for _, _, label in boxes])
    for method, embeds in (("dense", torch.cat(dense)), ("crop", crop)):
        figures = results[method]
        assert figures["num_samples"] == 5 and figures["num_classes"] == 4
        assert figures["classes_without_samples"] == []
        true_scores = (embeds @ classes.t()).gather(1, labels[:, None])
        rank = ((embeds @ classes.t()) > true_scores).sum(-1)  # classes scored above the true one
        assert figures["top1"] == pytest.approx(100 * (rank == 0).float().mean().item()), method
        assert figures["top5"] == 100.0  # 4 classes: the true one is always among the first five


def test_boxcls_report_names_missing_classes(coco_instances, model, processor, tmp_path):
    report = run_evaluation(
        model,
        processor,
        "boxcls",
        coco_instances,
        image_root=coco_instances.parent.parent / "val2017",
        split=None,
        batch_size=3,
        templates=("a photo of a {}.",),
        model_name="tiny",
        command="python -m evaluation.evaluate ...",
    )
    assert report["results"]["dense"]["classes_without_samples"] == ["bottle"]
    assert report["settings"]["boxes_skipped_in_annotations"] == {"crowd": 1, "empty": 1}
    markdown = write_report(report, tmp_path / "out" / "boxcls.json")
    assert (tmp_path / "out" / "boxcls.md").read_text() == markdown
    assert "| dense | 5 | 3/4 |" in markdown and "| crop | 5 | 3/4 |" in markdown
    assert "bottle" in markdown
    saved = json.loads((tmp_path / "out" / "boxcls.json").read_text())
    assert saved["results"]["crop"]["top1"] == report["results"]["crop"]["top1"]


# ---------------------------------------------------------------------------------------------------- the command


@pytest.fixture
def saved_model_dir(tmp_path, processor) -> Path:
    folder = tmp_path / "tiny-harmoclip"
    tiny_harmoclip_model(seed=3).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_command_evaluates_retrieval_from_a_saved_model(karpathy_coco, saved_model_dir, model, processor, tmp_path):
    out = tmp_path / "results" / "flickr.json"
    command = [
        sys.executable,
        "-m",
        "evaluation.evaluate",
        "--model",
        str(saved_model_dir),
        "--task",
        "retrieval",
        "--data",
        str(karpathy_coco),
        "--image-root",
        str(karpathy_coco.parent / "coco"),
        "--batch-size",
        "3",
        "--num-workers",
        "0",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["command"].startswith("python -m evaluation.evaluate --model ")
    assert report["command"].endswith(f"--out {out}")
    assert report["settings"]["split"] == "test" and report["settings"]["batch_size"] == 3
    data = read_karpathy(karpathy_coco, karpathy_coco.parent / "coco", split="test")
    expected = evaluate_retrieval(model, processor, data)
    for key, value in expected.items():
        assert report["results"][key] == pytest.approx(value, abs=1e-4), key
    markdown = out.with_suffix(".md").read_text()
    assert "| images | captions | I2T R@1 |" in markdown and "| 4 | 20 |" in markdown
    assert markdown.strip() in result.stdout
    assert "command: python -m evaluation.evaluate" in out.with_suffix(".log").read_text()


def test_command_rejects_mistakes_in_one_line(tmp_path, capsys):
    from evaluation.evaluate import main

    assert main(["--model", "m", "--task", "captioning", "--data", "d"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument --task: invalid choice: 'captioning'") and len(err.strip().splitlines()) == 1
    assert main(["--model", "m", "--task", "retrieval", "--data", str(tmp_path / "missing.json")]) == 1
    err = capsys.readouterr().err
    assert err == f"error: `--data`: file not found: {tmp_path / 'missing.json'}\n"


def test_command_evaluates_box_classification_from_a_saved_model(coco_panoptic, saved_model_dir, tmp_path):
    # The model's own box-aware processor is saved beside it (AutoProcessor loads it back).
    from evaluation.evaluate import evaluate_command

    folder = saved_model_dir
    out = tmp_path / "panoptic.json"
    report = evaluate_command(
        [
            "--model",
            str(folder),
            "--task",
            "boxcls",
            "--data",
            str(coco_panoptic),
            "--image-root",
            str(coco_panoptic.parent.parent / "val2017"),
            "--batch-size",
            "2",
            "--num-workers",
            "0",
            "--device",
            "cpu",
            "--template",
            "a photo of a {}.",
            "--crop-scale",
            "1.25",
            "--out",
            str(out),
        ]
    )
    saved = json.loads(out.read_text())
    assert saved["results"]["dense"]["num_samples"] == 5 and saved["results"]["crop"]["num_samples"] == 5
    assert saved["settings"]["templates"] == ["a photo of a {}."] and saved["settings"]["crop_scale"] == 1.25
    assert saved["results"] == json.loads(json.dumps(report["results"]))
    assert "| dense | 5 | 4/4 |" in out.with_suffix(".md").read_text()
