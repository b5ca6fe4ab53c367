"""The toy CLIP's recipe: object-centric views cut from the boxes of any region source (hand-computed windows and
pixels), and configs/toy_clip_pretrain.yaml trained on a JSONL manifest that is not the synthetic generator's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import ROOT
from training.config import TrainConfig, load_config
from training.data.data_common import RegionSample
from training.data.datasets import JsonlRegionDataset
from training.data.object_views import ObjectViewMix, object_view

# Toy CLIPs trained for real: the slow tier.
pytestmark = pytest.mark.slow

RECIPE = ROOT / "configs" / "toy_clip_pretrain.yaml"


def scene() -> RegionSample:
    pixels = np.arange(10 * 20 * 3, dtype=np.uint8).reshape(10, 20, 3)  # 20 wide, 10 high, every pixel distinct
    return RegionSample(
        image=Image.fromarray(pixels, "RGB"),
        caption="a red dot and a blue bar",
        boxes=[[4.0, 2.0, 8.0, 6.0], [14.0, 0.0, 20.0, 10.0]],
        phrase_spans=[(2, 9), (16, 24)],
        phrases=["red dot", "blue bar"],
        image_id="scene",
        path="scene.png",
        box_indices=[0, 3],
        labels=["dot", "bar"],
        categories=["dot", "bar"],
    )


def test_a_view_is_the_enlarged_crop_captioned_with_its_phrase() -> None:
    sample = scene()
    view = object_view(sample, 0, 1.5)
    # Box 0 (4..8, 2..6) enlarged 1.5 times about its centre (6, 4): 3..9 x 1..7, inside the image.
    assert view.image.size == (6, 6)
    assert np.array_equal(np.asarray(view.image), np.asarray(sample.image)[1:7, 3:9])
    assert view.boxes == [[1.0, 1.0, 5.0, 5.0]] and view.caption == "red dot" and view.phrases == ["red dot"]
    assert view.phrase_spans == [(0, 7)] and view.labels == ["dot"] and view.box_indices == [0]
    assert view.image_id == "scene#view0"
    # Box 1 (14..20 x 0..10) enlarged to 12.5..21.5 x -2.5..12.5: clipped to the image's right and bottom edges.
    edge = object_view(sample, 1, 1.5)
    assert edge.image.size == (8, 10)  # 12.5 rounds to 12 (PIL's rounding), clipped at 20 and 10
    assert edge.boxes == [[2.0, 0.0, 8.0, 10.0]] and edge.caption == "blue bar" and edge.box_indices == [3]
    unlinked = scene()
    unlinked.phrases[0] = None
    with pytest.raises(ValueError, match="box_number"):
        object_view(unlinked, 0, 1.5)


class Scenes:
    """A stand-in source of `count` copies of `scene()`, the second box unlinked in odd ones."""

    def __init__(self, count: int):
        self.count, self.epochs = count, []

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> RegionSample:
        sample = scene()
        if index % 2:
            sample.phrases[1], sample.phrase_spans[1] = None, None
        return sample

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


def test_the_mix_replaces_the_fraction_asked_reproducibly() -> None:
    base = Scenes(400)
    assert all(ObjectViewMix(base, 0.0)[i].caption == "a red dot and a blue bar" for i in range(20))
    every = ObjectViewMix(base, 1.0, seed=3)
    views = [every[i] for i in range(400)]
    assert all(view.caption in ("red dot", "blue bar") for view in views)
    # Odd samples have one linked box only: their view is always of it.
    assert all(views[i].caption == "red dot" for i in range(1, 400, 2))
    half = ObjectViewMix(base, 0.5, seed=3)
    captions = [half[i].caption for i in range(400)]
    assert 150 < sum(caption != "a red dot and a blue bar" for caption in captions) < 250
    assert captions == [ObjectViewMix(base, 0.5, seed=3)[i].caption for i in range(400)]
    half.set_epoch(1)
    assert base.epochs == [1] and [half[i].caption for i in range(400)] != captions
    for bad, match in ((1.5, "object_views"), (-0.1, "object_views")):
        with pytest.raises(ValueError, match=match):
            ObjectViewMix(base, bad)
    with pytest.raises(ValueError, match="object_view_scale"):
        ObjectViewMix(base, 0.5, scale=0.5)


def test_config_checks_object_views() -> None:
    with pytest.raises(ValueError, match="object_views"):
        TrainConfig(object_views=2.0)
    with pytest.raises(ValueError, match="object_views.*streaming"):
        TrainConfig(data_format="hf", train_data="x", streaming=True, object_views=0.5)
    with pytest.raises(ValueError, match="object_views.*cached"):
        TrainConfig(object_views=0.5, gr_teacher="cached", teacher_cache="x", loss_gr_weight=1.0)


def test_recipe_trains_on_a_jsonl_manifest(tmp_path: Path) -> None:
    from training.data.synthetic import SyntheticSettings, generate_synthetic_dataset
    from training.train import main

    # A manifest of another origin: the generator's images, re-described with other words and no labels.
    data = generate_synthetic_dataset(tmp_path / "shapes", SyntheticSettings(num_train=8, num_val=4, image_size=32))
    manifest = tmp_path / "mine" / "train.jsonl"
    manifest.parent.mkdir()
    lines = []
    for line in (data / "train.jsonl").read_text().splitlines():
        record = json.loads(line)
        phrases = [f"thing {number}" for number in range(len(record["regions"]))]
        lines.append(
            json.dumps(
                {
                    "image": str(data / record["image"]),
                    "caption": " and ".join(phrases),
                    "regions": [{"box": r["box"], "phrase": p} for r, p in zip(record["regions"], phrases)],
                }
            )
        )
    manifest.write_text("\n".join(lines) + "\n")
    recipe = yaml.safe_load(RECIPE.read_text())
    assert recipe["loss_lrc_weight"] == recipe["loss_rla_weight"] == recipe["loss_gr_weight"] == 0  # GC only
    out = tmp_path / "run"
    argv = ["--config", str(RECIPE), "--data_format", "jsonl", "--train_data", str(manifest)]
    argv += ["--model_preset", "micro", "--image_size", "32", "--batch_size", "4", "--max_steps", "2"]
    argv += ["--warmup_steps", "1", "--evaluate_at_end", "false", "--report_to", "none"]
    assert main([*argv, "--output_dir", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert (out / "model" / "model.safetensors").is_file()
    assert saved["data_format"] == "jsonl" and saved["max_steps"] == 2 and saved["loss_gc_weight"] == 1.0
    # With object-centric views on: they come from the manifest's own boxes and phrases.
    assert main([*argv, "--object_views", "1", "--output_dir", str(tmp_path / "views")]) == 0
    assert json.loads((tmp_path / "views" / "config.json").read_text())["object_views"] == 1.0
    config = load_config(RECIPE, {"data_format": "jsonl", "train_data": str(manifest), "object_views": 1.0})
    mix = ObjectViewMix(JsonlRegionDataset(manifest), config.object_views, config.object_view_scale, seed=0)
    assert all(mix[i].caption.startswith("thing ") and len(mix[i].boxes) == 1 for i in range(len(mix)))
