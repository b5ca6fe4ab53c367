"""A synthetic region data set: coloured shapes on a grey background, captions describing them by their attributes,
boxes and phrase spans known exactly. Small enough to learn with a tiny CLIP in minutes on a CPU; the project's default
training data.

    python -m training.data.synthetic --out data/shapes --num-train 2000 --num-val 200 --seed 0 --image-size 64 --held-out 4

writes, atomically (a temporary folder renamed into place):

    DIR/settings.json          the settings it was made with (an existing DIR with the same settings is kept as is)
    DIR/classes.json           the box classes, "red circle", ... (colour x shape)
    DIR/held_out.json          the classes held out of the training split (never drawn there, so never in a caption)
    DIR/train.jsonl, val.jsonl manifests in `data_jsonl`'s format (and dev.jsonl with `num_dev`); each region also has its "label" (its class)
                               and its "mask" (the shape's pixels, COCO RLE: `object_mask_rle`)
    DIR/images/<split>/<n>.png

Every image shows `min_shapes` to `max_shapes` shapes of distinct classes that do not touch; its caption describes
them from left to right by size, colour and shape ("a small red circle and a big blue square"); each box's phrase is
its description ("small red circle"), its label the class ("red circle"), so the phrases are never the class names
box classification is asked for. Open vocabulary: `held_out` colour-shape combinations (each colour and each shape in
at most one of them, so every word stays seen in training) never appear in the training split; the validation split
draws half of its shapes from them, half from the seen ones. Captions are unique within a split (a sample whose
caption is taken is drawn again), so retrieval R@1 can reach 100. Sample `index` is a function of (seed, split, index,
attempt), `attempt` being the number of redraws. The words were chosen to be single tokens or a few in CLIP's
vocabulary, even one cut to its first 2,000 merges. Two vocabularies (`VOCABULARIES`, `--vocabulary`): "basic", the
default data set's 5 colours x 4 shapes, and "rich", 9 x 7 (adding orange, purple, pink, black; ring, diamond, star).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from plumbing.atomic_files import atomic_directory, write_text_atomic
from plumbing.command_line import CommandParser, run_command

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 40),
    "white": (250, 250, 250),
    # the richer vocabulary's colours, each far from the others and from the grey background
    "orange": (245, 140, 20),
    "purple": (140, 50, 200),
    "pink": (250, 140, 210),
    "black": (10, 10, 10),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "diamond", "star")
# Named vocabularies (colours, shapes): "basic" is the default data set's; "rich" has more of both, so that each
# held-out combination's colour and shape are seen in more others.
VOCABULARIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "basic": (tuple(COLOURS)[:5], SHAPES[:4]),
    "rich": (tuple(COLOURS), SHAPES),
}
# "dev": a validation split for choices (thresholds, calibration, interpolation weights) drawn as "val" is, from a
# stream of its own, so that what is chosen on it is measured on "val" without having seen it.
SPLITS = ("train", "val", "dev")
BACKGROUND_GREY = (70, 170)  # plain grey level range; noise stays within NOISE_LIMIT of it, far from every colour
NOISE_LIMIT = 20
SHAPE_SIZE = (0.2, 0.45)  # box side as a fraction of the image side
SIZE_WORDS = ("small", "big")  # below / above the middle of SHAPE_SIZE (single tokens in the cut vocabulary)
PLACEMENT_TRIES = 50
CAPTION_ATTEMPTS = 200  # redraws of a sample whose caption another sample of its split already has


@dataclass(frozen=True)
class SyntheticSettings:
    num_train: int = 2000
    num_val: int = 200
    seed: int = 0
    image_size: int = 64
    max_shapes: int = 4
    colours: tuple[str, ...] = VOCABULARIES["basic"][0]
    shapes: tuple[str, ...] = VOCABULARIES["basic"][1]
    min_shapes: int = 1
    held_out: int = 0  # colour-shape combinations never in the training split
    unique_captions: bool = True
    num_dev: int = 0  # images of the "dev" split (validation for choices); 0: none (and no dev.jsonl)

    def __post_init__(self):
        for name in ("num_train", "num_val", "num_dev"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")
        if not 1 <= self.max_shapes <= len(self.colours) * len(self.shapes):
            raise ValueError(f"max_shapes must be between 1 and the number of classes, got {self.max_shapes}")
        if not 1 <= self.min_shapes <= self.max_shapes:
            raise ValueError(f"min_shapes must be between 1 and max_shapes ({self.max_shapes}), got {self.min_shapes}")
        if not 0 <= self.held_out <= min(len(self.colours), len(self.shapes)) or (
            self.held_out and min(len(self.colours), len(self.shapes)) < 2
        ):
            raise ValueError(
                f"held_out must be between 0 and min(#colours, #shapes) = {min(len(self.colours), len(self.shapes))} "
                f"(and every colour and shape needs a seen combination), got {self.held_out}"
            )
        unknown = [c for c in self.colours if c not in COLOURS] + [s for s in self.shapes if s not in SHAPES]
        if unknown:
            raise ValueError(f"unknown colours/shapes {unknown}; known: {list(COLOURS)} and {list(SHAPES)}")

    def to_json(self) -> dict:
        values = {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}
        if not self.num_dev:  # folders made before the dev split existed keep their settings (and stay reusable)
            values.pop("num_dev")
        return values


def class_names(settings: SyntheticSettings) -> list[str]:
    """The box classes, "<colour> <shape>", in a fixed order."""
    return [f"{colour} {shape}" for colour in settings.colours for shape in settings.shapes]


def held_out_classes(settings: SyntheticSettings) -> list[str]:
    """The `held_out` classes kept out of the training split: colour i of a seeded permutation with shape i of another,
    so each colour and each shape loses at most one combination and stays seen in the others."""
    rng = np.random.default_rng([settings.seed, 7919])  # a stream of its own: the samples' streams are untouched
    colours = [settings.colours[i] for i in rng.permutation(len(settings.colours))]
    shapes = [settings.shapes[i] for i in rng.permutation(len(settings.shapes))]
    return sorted(
        f"{colour} {shape}" for colour, shape in zip(colours[: settings.held_out], shapes[: settings.held_out])
    )


def _class_weights(settings: SyntheticSettings, split: str) -> np.ndarray:
    """Sampling weight of each class of `class_names` in `split`: held-out classes 0 in training; in validation the
    held-out and the seen classes each get half of the mass (uniform within each group)."""
    names = class_names(settings)
    held = np.array([name in set(held_out_classes(settings)) for name in names])
    if not held.any():
        return np.full(len(names), 1.0 / len(names))
    if split == "train":
        weights = (~held).astype(float)
    else:
        weights = np.where(held, 0.5 / held.sum(), 0.5 / (~held).sum())
    return weights / weights.sum()


def size_word(side: int, image_size: int) -> str:
    """ "small" below the middle of the drawn side range, "big" from it."""
    middle = (SHAPE_SIZE[0] + SHAPE_SIZE[1]) / 2 * image_size
    return SIZE_WORDS[0] if side < middle else SIZE_WORDS[1]


def draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour: tuple[int, int, int]
) -> None:
    """Draws `shape` filling the pixels of `box` = [x1, y1, x2, y2) exactly to its edges (no anti-aliasing)."""
    x1, y1, x2, y2 = box
    right, bottom = x2 - 1, y2 - 1  # PIL's coordinates are inclusive
    if shape == "circle":
        draw.ellipse([x1, y1, right, bottom], fill=colour)
    elif shape == "square":
        draw.rectangle([x1, y1, right, bottom], fill=colour)
    elif shape == "triangle":
        draw.polygon([(x1, bottom), (right, bottom), ((x1 + right) / 2, y1)], fill=colour)
    elif shape == "cross":
        bar = max(1, (x2 - x1) // 3)
        draw.rectangle([x1, y1 + bar, right, bottom - bar], fill=colour)
        draw.rectangle([x1 + bar, y1, right - bar, bottom], fill=colour)
    elif shape == "ring":
        draw.ellipse([x1, y1, right, bottom], outline=colour, width=max(1, (x2 - x1) // 4))
    elif shape == "diamond":
        middle_x, middle_y = (x1 + right) / 2, (y1 + bottom) / 2
        draw.polygon([(middle_x, y1), (right, middle_y), (middle_x, bottom), (x1, middle_y)], fill=colour)
    elif shape == "star":  # five points, the inner radius 0.4 of the outer, stretched to fill the box
        unit = [
            (
                (1.0 if k % 2 == 0 else 0.4) * math.sin(math.pi * k / 5),
                -(1.0 if k % 2 == 0 else 0.4) * math.cos(math.pi * k / 5),
            )
            for k in range(10)
        ]
        (low_x, high_x), (low_y, high_y) = ((min(axis), max(axis)) for axis in zip(*unit))
        points = [
            (x1 + (x - low_x) / (high_x - low_x) * (right - x1), y1 + (y - low_y) / (high_y - low_y) * (bottom - y1))
            for x, y in unit
        ]
        draw.polygon(points, fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def object_mask_rle(shape: str, box: tuple[int, int, int, int] | list[int], image_size: int) -> dict:
    """The pixels `draw_shape` paints for one object, as COCO's run-length encoding (`pycocotools.mask.encode` of an
    `image_size` x `image_size` mask, `counts` as text so that it fits in JSON): `{"size": [h, w], "counts": str}`."""
    from pycocotools import mask as mask_utils

    canvas = Image.new("L", (image_size, image_size), 0)
    draw_shape(ImageDraw.Draw(canvas), shape, tuple(box), 255)
    rle = mask_utils.encode(np.asfortranarray(np.asarray(canvas) > 0))
    return {"size": [int(value) for value in rle["size"]], "counts": rle["counts"].decode("ascii")}


def add_missing_masks(folder: str | Path) -> int:
    """Gives every region of a data set made before masks were written its `object_mask_rle` (the same pixels, drawn
    again from its label's shape and its box); each manifest is replaced atomically. Returns the regions completed."""

    folder = Path(folder)
    size = int((read_settings(folder) or {}).get("image_size", SyntheticSettings.image_size))
    added = 0
    for split in SPLITS:
        path = folder / f"{split}.jsonl"
        if not path.is_file():
            continue
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        missing = [region for record in records for region in record["regions"] if "mask" not in region]
        for region in missing:
            region["mask"] = object_mask_rle(region["label"].split()[-1], region["box"], size)
        if missing:
            write_text_atomic(path, "".join(json.dumps(record) + "\n" for record in records))
            added += len(missing)
    return added


def render_sample(settings: SyntheticSettings, split: str, index: int, attempt: int = 0) -> tuple[Image.Image, dict]:
    """Image `index` of `split` (its `attempt`-th draw) and its manifest record (image path left to the caller)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = np.random.default_rng([settings.seed, SPLITS.index(split), index, attempt])
    size = settings.image_size
    grey = int(rng.integers(*BACKGROUND_GREY))
    pixels = np.full((size, size, 3), grey, dtype=np.int16)
    if rng.random() < 0.5:  # noisy background
        pixels += np.clip(rng.normal(0, NOISE_LIMIT / 2, (size, size, 1)), -NOISE_LIMIT, NOISE_LIMIT).astype(np.int16)
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)

    classes = [(colour, shape) for colour in settings.colours for shape in settings.shapes]
    weights = _class_weights(settings, split)
    count = min(int(rng.integers(settings.min_shapes, settings.max_shapes + 1)), int((weights > 0).sum()))
    chosen = [classes[i] for i in rng.choice(len(classes), size=count, replace=False, p=weights)]
    placed: list[tuple[tuple[int, int, int, int], str, str]] = []
    low, high = (max(4, int(round(fraction * size))) for fraction in SHAPE_SIZE)
    for colour, shape in chosen:
        for _ in range(PLACEMENT_TRIES):
            side = int(rng.integers(low, high + 1))
            x1, y1 = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            box = (x1, y1, x1 + side, y1 + side)
            # at least one pixel of background between shapes, so each box holds one shape
            if all(box[0] > b[2] or box[2] < b[0] or box[1] > b[3] or box[3] < b[1] for b, _, _ in placed):
                placed.append((box, colour, shape))
                break
    placed.sort(key=lambda item: (item[0][0], item[0][1]))

    phrases = [f"{size_word(box[2] - box[0], size)} {colour} {shape}" for box, colour, shape in placed]
    caption, spans = "", []
    for number, phrase in enumerate(phrases):
        caption += "a " if number == 0 else (" and a " if number == len(phrases) - 1 else ", a ")
        spans.append((len(caption), len(caption) + len(phrase)))
        caption += phrase
    regions = []
    for (box, colour, shape), phrase, span in zip(placed, phrases, spans):
        draw_shape(draw, shape, box, COLOURS[colour])
        regions.append(
            {
                "box": list(box),
                "phrase": phrase,
                "span": list(span),
                "label": f"{colour} {shape}",
                "mask": object_mask_rle(shape, box, size),
            }
        )
    return image, {"id": f"{split}/{index:06d}", "caption": caption, "regions": regions}


def read_settings(folder: str | Path) -> dict | None:
    path = Path(folder) / "settings.json"
    return json.loads(path.read_text()) if path.is_file() else None


def read_classes(folder: str | Path) -> list[str]:
    """The class names of a generated data set."""
    return json.loads((Path(folder) / "classes.json").read_text())


def read_held_out(folder: str | Path) -> list[str]:
    """The classes a generated data set held out of its training split (empty for a set made without)."""
    path = Path(folder) / "held_out.json"
    return json.loads(path.read_text()) if path.is_file() else []


def render_split(settings: SyntheticSettings, split: str, count: int) -> Iterator[tuple[Image.Image, dict]]:
    """The `count` samples of `split` in order; with `unique_captions` a sample whose caption an earlier one has is
    drawn again (its record's "attempt" says how often)."""
    captions: set[str] = set()
    for index in range(count):
        for attempt in range(CAPTION_ATTEMPTS):
            image, record = render_sample(settings, split, index, attempt)
            if not settings.unique_captions or record["caption"] not in captions:
                break
        else:
            raise ValueError(
                f"{split} sample {index}: no unique caption in {CAPTION_ATTEMPTS} draws; lower num_{split} "
                f"or raise min_shapes (now {settings.min_shapes})"
            )
        captions.add(record["caption"])
        yield image, {**record, "attempt": attempt}


def generate_synthetic_dataset(out: str | Path, settings: SyntheticSettings, overwrite: bool = False) -> Path:
    """Writes the data set to `out` (see the module docstring) and returns `out`.

    An existing `out` made with the same settings is kept and nothing is written; one made with other settings is an
    error unless `overwrite`, which replaces it only once the new one is complete.
    """
    out = Path(out)
    existing = read_settings(out) if out.exists() else None
    if out.exists():
        if existing == settings.to_json():
            return out
        if not overwrite:
            raise FileExistsError(
                f"{out} exists and was not made with these settings ({existing} != {settings.to_json()}); "
                "choose another folder or pass overwrite=True (--overwrite)"
            )
    with atomic_directory(out, overwrite=True) as staging:
        for split, count in (("train", settings.num_train), ("val", settings.num_val), ("dev", settings.num_dev)):
            if split == "dev" and not count:
                continue
            (staging / "images" / split).mkdir(parents=True)
            with open(staging / f"{split}.jsonl", "w", encoding="utf-8") as manifest:
                samples = render_split(settings, split, count)
                for index, (image, record) in enumerate(
                    tqdm(samples, total=count, desc=f"synthetic {split}", unit="image")
                ):
                    relative = f"images/{split}/{index:06d}.png"
                    image.save(staging / relative)
                    manifest.write(json.dumps({"image": relative, **record}) + "\n")
        (staging / "classes.json").write_text(json.dumps(class_names(settings), indent=1))
        (staging / "held_out.json").write_text(json.dumps(held_out_classes(settings), indent=1))
        (staging / "settings.json").write_text(json.dumps(settings.to_json(), indent=1))
    return out


def main(argv: list[str] | None = None) -> int:
    """The data set generator as a command; returns the exit code (a user's mistake: one line `error: ...`)."""

    def run() -> str:
        parser = CommandParser(
            description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
        )
        parser.add_argument("--out", required=True, type=Path, help="folder to create")
        parser.add_argument("--num-train", type=int, default=SyntheticSettings.num_train)
        parser.add_argument("--num-val", type=int, default=SyntheticSettings.num_val)
        parser.add_argument(
            "--num-dev",
            type=int,
            default=SyntheticSettings.num_dev,
            help="images of a dev split (validation for choices, drawn like val from a stream of its own)",
        )
        parser.add_argument("--seed", type=int, default=SyntheticSettings.seed)
        parser.add_argument("--image-size", type=int, default=SyntheticSettings.image_size)
        parser.add_argument("--max-shapes", type=int, default=SyntheticSettings.max_shapes)
        parser.add_argument("--min-shapes", type=int, default=SyntheticSettings.min_shapes)
        parser.add_argument(
            "--held-out",
            type=int,
            default=SyntheticSettings.held_out,
            help="colour-shape combinations kept out of the training split",
        )
        parser.add_argument(
            "--vocabulary",
            choices=tuple(VOCABULARIES),
            default="basic",
            help="colours and shapes: basic (5 x 4) or rich (9 x 7)",
        )
        parser.add_argument(
            "--overwrite", action="store_true", help="replace an existing folder made with other settings"
        )
        args = parser.parse_args(argv)
        settings = SyntheticSettings(
            args.num_train,
            args.num_val,
            args.seed,
            args.image_size,
            args.max_shapes,
            colours=VOCABULARIES[args.vocabulary][0],
            shapes=VOCABULARIES[args.vocabulary][1],
            min_shapes=args.min_shapes,
            held_out=args.held_out,
            num_dev=args.num_dev,
        )
        existed = read_settings(args.out) == settings.to_json()
        out = generate_synthetic_dataset(args.out, settings, overwrite=args.overwrite)
        state = "already there with these settings, kept" if existed else "written"
        return (
            f"synthetic data set {state}: {out} ({settings.num_train} train, {settings.num_val} val images, "
            f"{len(class_names(settings))} classes in {out / 'classes.json'})"
        )

    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
