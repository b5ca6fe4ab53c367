"""The main job on the embedded default, end to end:

1. generate the synthetic shapes data set (train and held-out splits);
2. train a tiny HarmoCLIP on it from scratch on the CPU (`configs/synthetic_tiny.yaml`);
3. evaluate it on the held-out split (retrieval, box classification: dense regions vs crop-and-encode);
4. save the Hub-ready folder (weights, config, processor, remote code);
5. load it back as the `region-classification` pipeline with `trust_remote_code=True` (the code comes from the
   folder), classify the boxes of one held-out image, and draw them (PNG), with the heatmap of one label (its
   probability among the classes at each patch); score such heatmaps over the whole held-out split (pointing game).

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

if __package__ in (None, ""):  # run as a script: make the project root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.eval_data import read_box_manifest  # noqa: E402
from evaluation.pointing import pointing_game  # noqa: E402
from evaluation.visualize import draw_boxes, save_query_heatmap  # noqa: E402
from plumbing.command_line import run_command, setup_logging  # noqa: E402
from training.config import build_argument_parser, config_from_args  # noqa: E402
from training.data.synthetic import read_classes  # noqa: E402
from training.train import train  # noqa: E402

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthetic_tiny.yaml"
DISPLAY_SCALE = 6  # the 64 px shapes are drawn 6x larger so labels stay readable

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


def run_main_job(argv: list[str] | None = None) -> dict:
    """Trains, evaluates, saves and demonstrates the model; returns the demo's predictions."""
    parser = build_argument_parser(__doc__.split("\n\n")[0])
    parser.set_defaults(config=str(DEFAULT_CONFIG))
    config = config_from_args(parser.parse_args(argv))
    model_dir = train(config)
    output_dir = Path(config.output_dir)
    demo = classify_held_out_image(model_dir, Path(config.synthetic_dir), output_dir)
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
