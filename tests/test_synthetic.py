"""The synthetic shapes data set: exact boxes and spans, determinism, atomic writing, tokenization, reading back."""

import json

import numpy as np
import pytest
from PIL import Image

from training.data.data_jsonl import JsonlRegionDataset
from training.data.synthetic import (
    COLOURS,
    SIZE_WORDS,
    VOCABULARIES,
    SyntheticSettings,
    class_names,
    generate_synthetic_dataset,
    held_out_classes,
    main,
    read_classes,
    read_held_out,
    render_sample,
    size_word,
)

# Expected share of its box a shape fills: square 1, disc pi/4, triangle 1/2, cross 5/9 (pixelised).
FILL_RANGES = {"square": (1.0, 1.0), "circle": (0.70, 0.86), "triangle": (0.42, 0.65), "cross": (0.45, 0.70)}
# The richer vocabulary's: ring (a disc less its inner half), diamond 1/2, star (stretched to its box) about 0.38.
RICH_FILL_RANGES = {**FILL_RANGES, "ring": (0.40, 0.65), "diamond": (0.42, 0.58), "star": (0.30, 0.46)}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    settings = SyntheticSettings(num_train=12, num_val=4, seed=3, image_size=48)
    return generate_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "shapes", settings), settings


@pytest.mark.parametrize("vocabulary", ["basic", "rich"])
def test_boxes_match_the_drawn_pixels(vocabulary):
    colours, shapes = VOCABULARIES[vocabulary]
    settings = SyntheticSettings(num_train=1, num_val=1, seed=7, image_size=64, colours=colours, shapes=shapes)
    fill_ranges = {shape: RICH_FILL_RANGES[shape] for shape in shapes}
    shapes_seen = set()
    for index in range(25 if vocabulary == "basic" else 60):
        image, record = render_sample(settings, "train", index)
        pixels = np.asarray(image).astype(int)
        assert 1 <= len(record["regions"]) <= settings.max_shapes
        in_some_box = np.zeros(pixels.shape[:2], dtype=bool)
        for region in record["regions"]:
            x1, y1, x2, y2 = region["box"]
            colour, shape = region["label"].split()
            assert region["phrase"] == f"{size_word(x2 - x1, 64)} {colour} {shape}"
            shapes_seen.add(shape)
            # a one-pixel margin around the box holds background only (shapes never touch)
            window = pixels[max(y1 - 1, 0) : y2 + 1, max(x1 - 1, 0) : x2 + 1]
            mask = (window == COLOURS[colour]).all(-1)
            ys, xs = np.nonzero(mask)
            top, left = max(y1 - 1, 0), max(x1 - 1, 0)
            assert [xs.min() + left, ys.min() + top, xs.max() + left + 1, ys.max() + top + 1] == [x1, y1, x2, y2]
            fill = mask.sum() / ((x2 - x1) * (y2 - y1))
            low, high = fill_ranges[shape]
            assert low <= fill <= high, (shape, fill)
            in_some_box[y1:y2, x1:x2] = True
        # no shape colour outside the boxes: the grey background never takes a shape's colour
        any_colour = np.zeros(pixels.shape[:2], dtype=bool)
        for value in COLOURS.values():
            any_colour |= (pixels == value).all(-1)
        assert not (any_colour & ~in_some_box).any()
    assert shapes_seen == set(fill_ranges)


def test_caption_spans_name_each_box():
    settings = SyntheticSettings(seed=1)
    for index in range(20):
        _, record = render_sample(settings, "val", index)
        caption, regions = record["caption"], record["regions"]
        labels = [region["label"] for region in regions]
        assert len(set(labels)) == len(labels)  # distinct classes in one image
        for region in regions:
            start, end = region["span"]
            assert caption[start:end] == region["phrase"]
            size, colour, shape = region["phrase"].split()  # described by its attributes; the label is the class
            assert size in SIZE_WORDS and region["label"] == f"{colour} {shape}" in class_names(settings)
        names = [region["phrase"] for region in regions]
        assert caption == "a " + ", a ".join(names[:-1]) + (" and a " if len(names) > 1 else "") + names[-1]
        assert [r["box"][0] for r in regions] == sorted(r["box"][0] for r in regions)  # named left to right


def test_deterministic_per_seed_and_split():
    settings = SyntheticSettings(seed=5)
    first, record = render_sample(settings, "train", 3)
    again, record_again = render_sample(settings, "train", 3)
    assert record == record_again and np.array_equal(np.asarray(first), np.asarray(again))
    other_seed = render_sample(SyntheticSettings(seed=6), "train", 3)[1]
    val = render_sample(settings, "val", 3)[1]
    assert other_seed != record and val != record


def test_vocabulary_tokenizes_to_few_tokens(tiny_tokenizer):
    colours, shapes = VOCABULARIES["rich"]
    assert VOCABULARIES["basic"] == (SyntheticSettings().colours, SyntheticSettings().shapes)  # the default data set
    assert set(VOCABULARIES["basic"][0]) < set(colours) and set(VOCABULARIES["basic"][1]) < set(shapes)
    basic = set(class_names(SyntheticSettings()))
    for name in class_names(SyntheticSettings(colours=colours, shapes=shapes)):
        for word in name.split():
            assert len(tiny_tokenizer.tokenize(word)) <= (3 if name in basic else 4), word  # "diamond": 4
    assert tiny_tokenizer.tokenize("a red circle and a blue square")[:2] == ["a</w>", "red</w>"]


def test_written_layout_and_manifest_reads_back(small_set):
    out, settings = small_set
    assert json.loads((out / "settings.json").read_text()) == settings.to_json()
    assert read_classes(out) == class_names(settings) and len(read_classes(out)) == 20
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    for split, count in (("train", 12), ("val", 4)):
        dataset = JsonlRegionDataset(out / f"{split}.jsonl", max_boxes=None, min_box_size=0)
        assert len(dataset) == count
        sample = dataset[count - 1]
        record = json.loads((out / f"{split}.jsonl").read_text().splitlines()[-1])
        _, drawn = render_sample(settings, split, count - 1, record["attempt"])
        assert drawn == {key: value for key, value in record.items() if key not in ("image", "attempt")}
        assert sample.caption == record["caption"]
        assert sample.boxes == [[float(v) for v in r["box"]] for r in record["regions"]]
        assert sample.phrases == [r["phrase"] for r in record["regions"]]
        assert sample.labels == [r["label"] for r in record["regions"]]
        assert sample.image.size == (48, 48) and sample.image_id == f"{split}/{count - 1:06d}"
        stored = np.asarray(Image.open(out / "images" / split / f"{count - 1:06d}.png").convert("RGB"))
        assert np.array_equal(stored, np.asarray(render_sample(settings, split, count - 1, record["attempt"])[0]))


@pytest.fixture(scope="module")
def held_out_set(tmp_path_factory):
    settings = SyntheticSettings(num_train=300, num_val=60, seed=4, image_size=48, min_shapes=2, held_out=4)
    return generate_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "open", settings), settings


def _records(folder, split):
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()]


def test_held_out_combinations_never_in_training(held_out_set):
    out, settings = held_out_set
    held = read_held_out(out)
    assert held == held_out_classes(settings) and len(held) == 4
    colours, shapes = zip(*(name.split() for name in held))
    assert len(set(colours)) == 4 and len(set(shapes)) == 4  # each colour and shape loses at most one combination
    train = _records(out, "train")
    for record in train:
        for colour, shape in zip(colours, shapes):  # not as a box, nor in the caption's words in any order of sizes
            assert not any(region["label"] == f"{colour} {shape}" for region in record["regions"])
            for size in SIZE_WORDS:
                assert f"{size} {colour} {shape}" not in record["caption"], record["caption"]
    seen_words = {word for record in train for word in record["caption"].replace(",", "").split()}
    assert set(colours) | set(shapes) <= seen_words  # every word of a held-out combination is seen elsewhere
    val_labels = [region["label"] for record in _records(out, "val") for region in record["regions"]]
    share = sum(label in held for label in val_labels) / len(val_labels)
    assert 0.3 < share < 0.7  # the held-out split draws about half of its shapes from the held-out combinations
    assert held_out_classes(SyntheticSettings(seed=4, held_out=4)) == held  # a function of the seed
    assert held_out_classes(SyntheticSettings(seed=5, held_out=4)) != held
    assert read_held_out(out.parent / "missing") == [] and held_out_classes(SyntheticSettings()) == []


def test_captions_unique_within_each_split(held_out_set):
    out, _ = held_out_set
    for split in ("train", "val"):
        records = _records(out, split)
        captions = [record["caption"] for record in records]
        assert len(set(captions)) == len(captions)
        assert all(2 <= len(record["regions"]) for record in records)
    # Without the rule, the same draws repeat captions (two shapes among 16 classes and 2 sizes repeat often).
    plain = SyntheticSettings(num_train=300, seed=4, image_size=48, min_shapes=2, max_shapes=2, held_out=4)
    captions = [render_sample(plain, "train", index)[1]["caption"] for index in range(300)]
    assert len(set(captions)) < len(captions)


def test_existing_folder_kept_refused_or_replaced(tmp_path):
    out = tmp_path / "shapes"
    settings = SyntheticSettings(num_train=3, num_val=2, seed=0, image_size=32)
    generate_synthetic_dataset(out, settings)
    marker = out / "images" / "train" / "000000.png"
    stamp = marker.stat().st_mtime_ns
    generate_synthetic_dataset(out, settings)  # same settings: nothing rewritten
    assert marker.stat().st_mtime_ns == stamp
    other = SyntheticSettings(num_train=4, num_val=2, seed=0, image_size=32)
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_synthetic_dataset(out, other)
    assert json.loads((out / "settings.json").read_text()) == settings.to_json()  # untouched
    generate_synthetic_dataset(out, other, overwrite=True)
    assert len((out / "train.jsonl").read_text().splitlines()) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]


def test_command_line(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["--out", str(out), "--num-train", "2", "--num-val", "1", "--seed", "4", "--image-size", "40"]) == 0
    assert "written" in capsys.readouterr().out
    assert json.loads((out / "settings.json").read_text())["image_size"] == 40
    assert main(["--out", str(out), "--num-train", "2", "--num-val", "1", "--seed", "4", "--image-size", "40"]) == 0
    assert "kept" in capsys.readouterr().out
    assert main(["--out", str(out), "--num-train", "3", "--num-val", "1", "--seed", "4", "--image-size", "40"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(out) in err and len(err.strip().splitlines()) == 1
    rich = tmp_path / "rich"
    assert (
        main(["--out", str(rich), "--num-train", "2", "--num-val", "1", "--vocabulary", "rich", "--held-out", "4"]) == 0
    )
    assert len(read_classes(rich)) == 9 * 7 and len(read_held_out(rich)) == 4


def test_training_config_names_the_vocabulary():
    from training.builders import synthetic_settings
    from training.config import TrainConfig

    rich = synthetic_settings(TrainConfig(synthetic_vocabulary="rich", synthetic_held_out=4))
    assert (rich.colours, rich.shapes) == VOCABULARIES["rich"] and rich.held_out == 4
    assert (synthetic_settings(TrainConfig()).colours, synthetic_settings(TrainConfig()).shapes) == VOCABULARIES[
        "basic"
    ]
    with pytest.raises(
        ValueError, match=r"config `synthetic_vocabulary` must be one of \('basic', 'rich'\), got 'huge'"
    ):
        TrainConfig(synthetic_vocabulary="huge")


def test_bad_settings():
    with pytest.raises(ValueError, match="num_train"):
        SyntheticSettings(num_train=-1)
    with pytest.raises(ValueError, match="unknown"):
        SyntheticSettings(colours=("red", "mauve"))
    with pytest.raises(ValueError, match="min_shapes"):
        SyntheticSettings(min_shapes=5)
    with pytest.raises(ValueError, match="held_out"):
        SyntheticSettings(held_out=5)
    with pytest.raises(ValueError, match="split"):
        render_sample(SyntheticSettings(), "test", 0)


def test_a_dev_split_leaves_train_and_val_as_they_were(tmp_path) -> None:
    """`num_dev` adds a "dev" split (validation for choices) from a stream of its own: train and val are the same
    images and records with or without it, folders made before it keep their settings, and dev draws val's classes."""
    import json

    from training.data.synthetic import SyntheticSettings, generate_synthetic_dataset, held_out_classes

    base = dict(num_train=4, num_val=6, held_out=2, min_shapes=2, seed=3)
    without = generate_synthetic_dataset(tmp_path / "without", SyntheticSettings(**base))
    with_dev = generate_synthetic_dataset(tmp_path / "with", SyntheticSettings(**base, num_dev=40))
    for split in ("train", "val"):
        assert (without / f"{split}.jsonl").read_text() == (with_dev / f"{split}.jsonl").read_text()
        for index in range(base[f"num_{split}"]):
            name = f"images/{split}/{index:06d}.png"
            assert (without / name).read_bytes() == (with_dev / name).read_bytes()
    assert not (without / "dev.jsonl").exists()
    assert "num_dev" not in json.loads((without / "settings.json").read_text())
    dev = [json.loads(line) for line in (with_dev / "dev.jsonl").read_text().splitlines()]
    val = [json.loads(line) for line in (with_dev / "val.jsonl").read_text().splitlines()]
    assert len(dev) == 40 and len({record["caption"] for record in dev}) == 40  # unique within the split
    held_out = set(held_out_classes(SyntheticSettings(**base)))
    labels = [region["label"] for record in dev for region in record["regions"]]
    assert held_out & set(labels) and set(labels) - held_out  # like val: held-out and seen classes both
    assert dev[0]["caption"] != val[0]["caption"]  # its own stream
