"""Evaluation on data files in their real formats, with a tiny model: readers, embeddings and reports (the command:
test_evaluate_command.py)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

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
from evaluation_files import (  # noqa: F401  (fixtures, used by name as parameters)
    CAPTIONS,
    coco_instances,
    coco_panoptic,
    karpathy_coco,
    karpathy_flickr,
    manifest,
    model,
    processor,
    write_coco_instances,
    write_coco_panoptic,
    write_karpathy_coco,
    write_karpathy_flickr,
    write_manifest,
)

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
    from modeling_harmoclip.modeling_harmoclip import label_probabilities
    from modeling_harmoclip.pipeline_harmoclip import label_embeddings

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
