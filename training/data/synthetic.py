"""A synthetic region data set: coloured shapes on a grey background, captions naming them, boxes and phrase spans
known exactly. Small enough to learn with a tiny CLIP in minutes on a CPU; the project's default training data.

    python -m training.data.synthetic --out data/shapes --num-train 2000 --num-val 200 --seed 0 --image-size 64

writes, atomically (a temporary folder renamed into place):

    DIR/settings.json          the settings it was made with (an existing DIR with the same settings is kept as is)
    DIR/classes.json           the box classes, "red circle", ... (colour x shape)
    DIR/train.jsonl, val.jsonl manifests in `data_jsonl`'s format; each region also has its "label"
    DIR/images/<split>/<n>.png

Every image shows 1 to `max_shapes` shapes of distinct classes that do not touch; its caption names them from left
to right ("a red circle and a blue square"), and each box's phrase ("red circle") is its class name. Everything is
a function of (seed, split, index): the validation split is drawn from its own stream, held out from training.
The words were chosen to be single tokens or a few in CLIP's vocabulary, even one cut to its first 2,000 merges.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from conversion.cli import CommandParser, run_command
from conversion.saving import atomic_directory

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 40),
    "white": (250, 250, 250),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
SPLITS = ("train", "val")
BACKGROUND_GREY = (70, 170)  # plain grey level range; noise stays within NOISE_LIMIT of it, far from every colour
NOISE_LIMIT = 20
SHAPE_SIZE = (0.2, 0.45)  # box side as a fraction of the image side
PLACEMENT_TRIES = 50


@dataclass(frozen=True)
class SyntheticSettings:
    num_train: int = 2000
    num_val: int = 200
    seed: int = 0
    image_size: int = 64
    max_shapes: int = 4
    colours: tuple[str, ...] = field(default_factory=lambda: tuple(COLOURS))
    shapes: tuple[str, ...] = SHAPES

    def __post_init__(self):
        for name in ("num_train", "num_val"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")
        if not 1 <= self.max_shapes <= len(self.colours) * len(self.shapes):
            raise ValueError(f"max_shapes must be between 1 and the number of classes, got {self.max_shapes}")
        unknown = [c for c in self.colours if c not in COLOURS] + [s for s in self.shapes if s not in SHAPES]
        if unknown:
            raise ValueError(f"unknown colours/shapes {unknown}; known: {list(COLOURS)} and {list(SHAPES)}")

    def to_json(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


def class_names(settings: SyntheticSettings) -> list[str]:
    """The box classes, "<colour> <shape>", in a fixed order."""
    return [f"{colour} {shape}" for colour in settings.colours for shape in settings.shapes]


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> None:
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
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render_sample(settings: SyntheticSettings, split: str, index: int) -> tuple[Image.Image, dict]:
    """Image `index` of `split` and its manifest record (image path left to the caller)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = np.random.default_rng([settings.seed, SPLITS.index(split), index])
    size = settings.image_size
    grey = int(rng.integers(*BACKGROUND_GREY))
    pixels = np.full((size, size, 3), grey, dtype=np.int16)
    if rng.random() < 0.5:  # noisy background
        pixels += np.clip(rng.normal(0, NOISE_LIMIT / 2, (size, size, 1)), -NOISE_LIMIT, NOISE_LIMIT).astype(np.int16)
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)

    classes = [(colour, shape) for colour in settings.colours for shape in settings.shapes]
    count = int(rng.integers(1, settings.max_shapes + 1))
    chosen = [classes[i] for i in rng.choice(len(classes), size=count, replace=False)]
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

    names = [f"{colour} {shape}" for _, colour, shape in placed]
    caption, spans = "", []
    for number, name in enumerate(names):
        caption += "a " if number == 0 else (" and a " if number == len(names) - 1 else ", a ")
        spans.append((len(caption), len(caption) + len(name)))
        caption += name
    regions = []
    for (box, colour, shape), name, span in zip(placed, names, spans):
        draw_shape(draw, shape, box, COLOURS[colour])
        regions.append({"box": list(box), "phrase": name, "span": list(span), "label": name})
    return image, {"id": f"{split}/{index:06d}", "caption": caption, "regions": regions}


def read_settings(folder: str | Path) -> dict | None:
    path = Path(folder) / "settings.json"
    return json.loads(path.read_text()) if path.is_file() else None


def read_classes(folder: str | Path) -> list[str]:
    """The class names of a generated data set."""
    return json.loads((Path(folder) / "classes.json").read_text())


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
        for split, count in (("train", settings.num_train), ("val", settings.num_val)):
            (staging / "images" / split).mkdir(parents=True)
            with open(staging / f"{split}.jsonl", "w", encoding="utf-8") as manifest:
                for index in tqdm(range(count), desc=f"synthetic {split}", unit="image"):
                    image, record = render_sample(settings, split, index)
                    relative = f"images/{split}/{index:06d}.png"
                    image.save(staging / relative)
                    manifest.write(json.dumps({"image": relative, **record}) + "\n")
        (staging / "classes.json").write_text(json.dumps(class_names(settings), indent=1))
        (staging / "settings.json").write_text(json.dumps(settings.to_json(), indent=1))
    return out


def main(argv: list[str] | None = None) -> int:
    """The data set generator as a command; returns the exit code (a user's mistake: one line `error: ...`)."""

    def run() -> str:
        parser = CommandParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--out", required=True, type=Path, help="folder to create")
        parser.add_argument("--num-train", type=int, default=SyntheticSettings.num_train)
        parser.add_argument("--num-val", type=int, default=SyntheticSettings.num_val)
        parser.add_argument("--seed", type=int, default=SyntheticSettings.seed)
        parser.add_argument("--image-size", type=int, default=SyntheticSettings.image_size)
        parser.add_argument("--max-shapes", type=int, default=SyntheticSettings.max_shapes)
        parser.add_argument("--overwrite", action="store_true", help="replace an existing folder made with other settings")
        args = parser.parse_args(argv)
        settings = SyntheticSettings(args.num_train, args.num_val, args.seed, args.image_size, args.max_shapes)
        existed = read_settings(args.out) == settings.to_json()
        out = generate_synthetic_dataset(args.out, settings, overwrite=args.overwrite)
        state = "already there with these settings, kept" if existed else "written"
        return (f"synthetic data set {state}: {out} ({settings.num_train} train, {settings.num_val} val images, "
                f"{len(class_names(settings))} classes in {out / 'classes.json'})")

    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
