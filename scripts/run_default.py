"""The main job on the embedded default, end to end:

1. generate the synthetic shapes data set (train and held-out splits);
2. train a tiny HarmoCLIP on it from scratch on the CPU (`configs/synthetic_tiny.yaml`);
3. evaluate it on the held-out split (retrieval, box classification: dense regions vs crop-and-encode);
4. save the Hub-ready folder (weights, config, processor, remote code);
5. load it back as the `region-classification` pipeline with `trust_remote_code=True` (the code comes from the
   folder), classify the boxes of one held-out image, and draw them (PNG), with the heatmap of one label (its
   probability among the classes at each patch); score such heatmaps over the whole held-out split (pointing game);
6. find the objects of that image with no boxes given (the `zero-shot-object-detection` and `image-segmentation`
   pipelines, remote code too), draw them (`detections.png`, `segmentation.png`), and score detection on the whole
   held-out split with pycocotools (AP50, dense region scoring) and segmentation by mIoU;
7. ground the phrases of that image's caption in its boxes (the `phrase-grounding` pipeline, remote code), draw them
   (`grounding.png`), and score grounding on the whole held-out split (annotated boxes and the model's proposals).

    python -m scripts.run_default                       # the embedded default
    python -m scripts.run_default --max_steps 50        # any training option can be overridden
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch
from PIL import Image
from transformers import pipeline

from evaluation.detection import evaluate_detection, read_detection_data
from evaluation.eval_data import read_box_manifest
from evaluation.grounding import evaluate_grounding, read_grounding_manifest
from evaluation.pointing import pointing_game
from evaluation.segmentation import draw_segments, evaluate_segmentation
from evaluation.visualize import draw_boxes, draw_grounding, save_query_heatmap
from plumbing.command_line import run_command, setup_logging
from training.config import build_argument_parser, config_from_args
from training.data.synthetic import add_missing_masks, read_classes
from training.train import train

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthetic_tiny.yaml"
DISPLAY_SCALE = 6  # the 64 px shapes are drawn 6x larger so labels stay readable
SHOWN_DETECTIONS = 8  # at most this many objects drawn in detections.png, those scoring at least:
SHOWN_THRESHOLD = 0.3

logger = logging.getLogger("harmoclip.run_default")


def classify_held_out_image(model_dir: Path, data_dir: Path, output_dir: Path, index: int = 0) -> dict:
    """Loads the saved folder as the `region-classification` pipeline (remote code) and labels the boxes of held-out
    image `index`."""
    classifier = pipeline("region-classification", model=str(model_dir), trust_remote_code=True, device=-1)
    record = json.loads((data_dir / "val.jsonl").read_text().splitlines()[index])
    image = classifier.read_image(str(data_dir / record["image"]))  # the frame the pipeline reads it in
    boxes = [region["box"] for region in record["regions"]]
    classes = read_classes(data_dir)
    predictions = classifier(image, boxes=boxes, candidate_labels=classes, top_k=3)
    large = image.resize((image.width * DISPLAY_SCALE, image.height * DISPLAY_SCALE), Image.NEAREST)
    draw_boxes(
        large,
        [[value * DISPLAY_SCALE for value in box] for box in boxes],
        [prediction["label"] for prediction in predictions],
        [prediction["score"] for prediction in predictions],
        output_dir / "predictions.png",
    )
    query = record["regions"][0]["label"]
    with torch.no_grad():
        save_query_heatmap(
            classifier.model, classifier.processor, large, query, output_dir / "heatmap.png", candidate_labels=classes
        )
        held_out = read_box_manifest(data_dir / "val.jsonl", class_names=classes)
        pointing = pointing_game(classifier.model, classifier.processor, held_out)
    return {
        "image": str(data_dir / record["image"]),
        "caption": record["caption"],
        "boxes": [
            {"box": box, "truth": region["label"], "predicted": prediction["labels"], "scores": prediction["scores"]}
            for box, region, prediction in zip(boxes, record["regions"], predictions)
        ],
        "heatmap_query": query,
        "pointing_game": pointing,
    }


def find_held_out_objects(model_dir: Path, data_dir: Path, output_dir: Path, index: int = 0) -> dict:
    """Loads the saved folder as the `zero-shot-object-detection` and `image-segmentation` pipelines (remote code),
    finds and outlines the objects of held-out image `index` among all classes with no boxes given (PNGs), and scores
    detection (pycocotools AP, dense region scoring) and segmentation (mIoU) over the held-out split."""
    add_missing_masks(data_dir)  # a data set generated before masks were written gets them (atomically)
    detector = pipeline("zero-shot-object-detection", model=str(model_dir), trust_remote_code=True, device=-1)
    segmenter = pipeline("image-segmentation", model=str(model_dir), trust_remote_code=True, device=-1)
    record = json.loads((data_dir / "val.jsonl").read_text().splitlines()[index])
    image = Image.open(data_dir / record["image"]).convert("RGB")
    classes = read_classes(data_dir)
    found = detector(image, candidate_labels=classes, threshold=SHOWN_THRESHOLD, top_k=SHOWN_DETECTIONS)
    large = image.resize((image.width * DISPLAY_SCALE, image.height * DISPLAY_SCALE), Image.NEAREST)
    draw_boxes(
        large,
        [
            [found_object["box"][key] * DISPLAY_SCALE for key in ("xmin", "ymin", "xmax", "ymax")]
            for found_object in found
        ],
        [found_object["label"] for found_object in found],
        [found_object["score"] for found_object in found],
        output_dir / "detections.png",
    )
    segments = segmenter(image, candidate_labels=classes)
    draw_segments(large, segments, output_dir / "segmentation.png")
    with torch.no_grad():
        detection = evaluate_detection(
            detector.model, detector.processor, read_detection_data(data_dir / "val.jsonl"), scorers=("dense",)
        )
        segmentation = evaluate_segmentation(segmenter.model, segmenter.processor, data_dir / "val.jsonl")
    return {
        "image": str(data_dir / record["image"]),
        "truth": [{"box": region["box"], "label": region["label"]} for region in record["regions"]],
        "found": found,
        "segments": [{"label": segment["label"], "score": segment["score"]} for segment in segments],
        "detection": {key: detection["dense"][key] for key in ("mAP", "AP50", "AP75")}
        | {"num_images": detection["num_images"], "num_objects": detection["num_objects"]},
        "segmentation": {key: segmentation[key] for key in ("mIoU", "background_IoU", "pixel_accuracy", "num_images")},
    }


def ground_held_out_phrases(model_dir: Path, data_dir: Path, output_dir: Path, index: int = 0) -> dict:
    """Loads the saved folder as the `phrase-grounding` pipeline (remote code), grounds the phrases of held-out image
    `index`'s caption in its boxes (`grounding.png`), and scores grounding over the held-out split."""
    grounder = pipeline("phrase-grounding", model=str(model_dir), trust_remote_code=True, device=-1)
    record = json.loads((data_dir / "val.jsonl").read_text().splitlines()[index])
    image = grounder.read_image(str(data_dir / record["image"]))
    regions = [region for region in record["regions"] if region.get("span") is not None]
    grounded = grounder(
        image,
        caption=record["caption"],
        phrase_spans=[region["span"] for region in regions],
        boxes=[region["box"] for region in record["regions"]],
    )
    large = image.resize((image.width * DISPLAY_SCALE, image.height * DISPLAY_SCALE), Image.NEAREST)
    draw_grounding(large, record["caption"], grounded, output_dir / "grounding.png", scale=DISPLAY_SCALE)
    with torch.no_grad():
        figures = evaluate_grounding(
            grounder.model, grounder.processor, read_grounding_manifest(data_dir / "val.jsonl")
        )
    return {
        "image": str(data_dir / record["image"]),
        "caption": record["caption"],
        "grounded": grounded,
        "truth": [region["box"] for region in regions],
        "evaluation": figures,
    }


def grounding_lines(figures: dict) -> list[str]:
    """The main job's lines on grounding: per group of phrases (all; seen and held-out combinations when the data
    set holds some out), accuracy with the annotated boxes (and chance) and at IoU >= 0.5 with the model's proposals."""
    names = {"all": "all phrases", "seen": "seen combinations", "held_out": "held-out combinations"}
    return [
        f"held-out phrase grounding, {names[group]}: {row['accuracy_annotated']:.1f} with the annotated boxes as "
        f"candidates (chance {row['chance_annotated']:.1f}), {row['accuracy_proposals_iou50']:.1f} at IoU >= 0.5 with "
        f"the model's own proposals ({row['phrases']} phrases)"
        for group, row in ((group, figures[group]) for group in ("all", "seen", "held_out") if group in figures)
        if row["phrases"]
    ]


def run_main_job(argv: list[str] | None = None) -> dict:
    """Trains, evaluates, saves and demonstrates the model; returns the demo's predictions."""
    parser = build_argument_parser(__doc__.split("\n\n")[0])
    parser.set_defaults(config=str(DEFAULT_CONFIG))
    config = config_from_args(parser.parse_args(argv))
    model_dir = train(config)
    output_dir = Path(config.output_dir)
    demo = classify_held_out_image(model_dir, Path(config.synthetic_dir), output_dir)
    demo["objects"] = find_held_out_objects(model_dir, Path(config.synthetic_dir), output_dir)
    demo["grounding"] = ground_held_out_phrases(model_dir, Path(config.synthetic_dir), output_dir)
    (output_dir / "predictions.json").write_text(json.dumps(demo, indent=2))

    evaluation = (
        json.loads((output_dir / "eval.json").read_text())["tasks"] if (output_dir / "eval.json").is_file() else {}
    )
    lines = ["", "HarmoCLIP main job finished.", ""]
    if "retrieval" in evaluation:
        figures = evaluation["retrieval"]["results"]
        lines.append(
            f"held-out retrieval: image->text R@1 {figures['i2t_R@1']:.1f}, text->image R@1 {figures['t2i_R@1']:.1f} "
            f"({figures['num_images']} images)"
        )
    if "boxcls" in evaluation:
        figures = evaluation["boxcls"]["results"]
        lines.append(
            f"held-out box classification Top-1: dense regions {figures['dense']['top1']:.1f}, "
            f"crop-and-encode {figures['crop']['top1']:.1f} ({figures['num_boxes']} boxes)"
        )
    pointing = demo["pointing_game"]
    lines.append(
        f"held-out heatmaps peaking inside the labelled box (pointing game): {pointing['probability']:.1f} with the "
        f"label's probability among the classes, {pointing['cosine']:.1f} with raw cosine similarity "
        f"({pointing['num_boxes']} boxes)"
    )
    objects = demo["objects"]
    lines.append(
        f"held-out detection with no boxes given (pycocotools, all {len(read_classes(config.synthetic_dir))} classes): "
        f"AP50 {objects['detection']['AP50']:.1f}, mAP {objects['detection']['mAP']:.1f} "
        f"({objects['detection']['num_objects']} objects in {objects['detection']['num_images']} images); "
        f"segmentation mIoU {objects['segmentation']['mIoU']:.1f}"
    )
    lines += grounding_lines(demo["grounding"]["evaluation"])
    for item in demo["boxes"]:
        lines.append(
            f"  box {item['box']}: truth '{item['truth']}', predicted '{item['predicted'][0]}' ({item['scores'][0]:.2f})"
        )
    places = [
        ("synthetic data set", config.synthetic_dir),
        ("Hub-ready model (AutoModel/AutoProcessor, trust_remote_code=True)", model_dir),
        ("checkpoints", output_dir / "checkpoints"),
        ("training log", output_dir / "train.log"),
        ("metrics (JSONL) and TensorBoard logs", f"{output_dir / 'metrics.jsonl'}, {output_dir / 'harmoclip'}"),
        ("loss curves", output_dir / "loss_curves.png"),
        ("evaluation (JSON, markdown)", f"{output_dir / 'eval.json'}, {output_dir / 'eval.md'}"),
        ("labelled boxes of a held-out image", output_dir / "predictions.png"),
        (f"heatmap of '{demo['heatmap_query']}' (its probability among the classes)", output_dir / "heatmap.png"),
        ("objects of that image found with no boxes given", output_dir / "detections.png"),
        ("its label map (image-segmentation pipeline)", output_dir / "segmentation.png"),
        ("its caption's phrases grounded in its boxes (phrase-grounding pipeline)", output_dir / "grounding.png"),
    ]
    lines += ["", "Outputs:"] + [f"  {name}: {path}" for name, path in places]
    print("\n".join(lines))
    return demo


def main(argv: list[str] | None = None) -> int:
    """The main job as a command; returns the exit code (a user's mistake: one line `error: ...`)."""

    def run() -> None:
        setup_logging()
        run_main_job(argv)

    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
