"""A JSONL manifest, one image per line:

    {"image": "images/0001.png", "caption": "a red circle" or ["...", "..."],
     "regions": [{"box": [x1, y1, x2, y2], "phrase": "red circle" or null, "span": [start, end] or null}]}

Image paths may be relative to the manifest's folder. Boxes are in the original image's pixels. A region's `span`
(character offsets into the caption) is used when the record has one caption; otherwise, or when only `phrase` is
given, the phrase is looked up in the sampled caption (case-insensitive, whole words preferred); a phrase not found
leaves the box unlinked. Optional keys: `"id"` (image id; default: the image path), a region's `"label"`, and a
region's `"spans"`: one `[start, end]` or null per caption (what `training.data.prepare` writes), which takes
precedence over `span` and `phrase`.

The file is indexed by the byte offset of each line once; `__getitem__` seeks to its line and parses only it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from .data_common import Region, RegionDataset, RegionSample, SampleError, choose_caption, validate_box, validate_span


def index_lines(path: Path) -> np.ndarray:
    """Byte offsets of the non-blank lines of `path` (int64)."""
    offsets = []
    position = 0
    with open(path, "rb") as file:
        for line in file:
            if line.strip():
                offsets.append(position)
            position += len(line)
    return np.asarray(offsets, dtype=np.int64)


def find_phrase(caption: str, phrase: str, taken: set[int]) -> tuple[int, int] | None:
    """Span of `phrase` in `caption`, case-insensitive: the first whole-word occurrence whose start is not in
    `taken` (so two boxes named "a dog" get the two mentions), else the first occurrence at all; None if absent."""
    if not phrase.strip():
        return None
    pattern = re.escape(phrase)
    candidates = [m.span() for m in re.finditer(rf"(?<!\w){pattern}(?!\w)", caption, flags=re.IGNORECASE)]
    candidates = candidates or [m.span() for m in re.finditer(pattern, caption, flags=re.IGNORECASE)]
    if not candidates:
        return None
    for span in candidates:
        if span[0] not in taken:
            return span
    return candidates[0]


def fold(text: str) -> str:
    return " ".join(text.lower().split())


class JsonlRegionDataset(RegionDataset):
    """Regions and captions from a JSONL manifest (see the module docstring)."""

    def __init__(self, manifest: str | Path, image_root: str | Path | None = None, **options):
        super().__init__(**options)
        self.manifest = Path(manifest)
        if not self.manifest.is_file():
            raise FileNotFoundError(f"manifest not found: {self.manifest}")
        self.image_root = Path(image_root) if image_root is not None else self.manifest.parent
        self.offsets = index_lines(self.manifest)

    def __len__(self) -> int:
        return len(self.offsets)

    def describe(self, index: int) -> str:
        return f"{self.manifest}:record {index}"

    def read_record(self, index: int) -> dict:
        with open(self.manifest, "rb") as file:
            file.seek(int(self.offsets[index]))
            line = file.readline()
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise SampleError(f"not valid JSON: {error}") from None
        if not isinstance(record, dict):
            raise SampleError(f"a record must be a JSON object, got {type(record).__name__}")
        return record

    def load(self, index: int, rng: np.random.Generator) -> RegionSample:
        record = self.read_record(index)
        image = record.get("image")
        if not isinstance(image, str) or not image:
            raise SampleError(f"'image' must be a non-empty path string, got {image!r}")
        caption, regions = parse_annotation(record, rng)
        image_path = Path(image) if Path(image).is_absolute() else self.image_root / image
        image_id = str(record.get("id", image))
        return self.make_sample(image_path, image_id, caption, regions)


def parse_annotation(record: dict, rng: np.random.Generator) -> tuple[str, list[Region]]:
    """The caption drawn by `rng` and its regions from a manifest record (the module docstring's schema; also the
    records of `data_format: hf` data sets). Raises `SampleError` naming the field at fault."""
    captions = record_captions(record)
    number = choose_caption(captions, rng)
    caption = captions[number]
    regions_data = record_regions(record)

    regions = []
    taken: set[int] = set()
    for item_index, item in enumerate(regions_data):
        where = f"regions[{item_index}]"
        if not isinstance(item, dict):
            raise SampleError(f"{where} must be an object, got {item!r}")
        box = validate_box(item.get("box"), where)
        span = region_span(item, caption, number, len(captions), taken, where)
        if span is not None:
            taken.add(span[0])
        label = item.get("label")
        label = label if isinstance(label, str) else None
        regions.append(Region(box, span, item_index, label, label))  # a region's label is its category
    return caption, regions


def record_captions(record: dict) -> list[str]:
    """The record's captions as a list (`SampleError` unless a non-empty string or list of them)."""
    captions = record.get("caption")
    if isinstance(captions, str):
        captions = [captions]
    if not isinstance(captions, list) or not captions or not all(isinstance(c, str) and c for c in captions):
        raise SampleError(f"'caption' must be a non-empty string or list of strings, got {record.get('caption')!r}")
    return captions


def record_regions(record: dict) -> list:
    """The record's region items (none when absent or null; `SampleError` unless a list)."""
    regions = record.get("regions")
    regions = [] if regions is None else regions
    if not isinstance(regions, list):
        raise SampleError(f"'regions' must be a list, got {type(regions).__name__}")
    return regions


def region_span(
    item: dict, caption: str, number: int, num_captions: int, taken: set[int], where: str
) -> tuple[int, int] | None:
    """The span of region `item` in caption `number` (of `num_captions`): its `spans[number]` when it has one span per
    caption (what `training.data.prepare` writes), else its `span` (single caption) or its `phrase` looked up."""
    per_caption = item.get("spans")
    if per_caption is not None:
        if not isinstance(per_caption, list) or len(per_caption) != num_captions:
            raise SampleError(
                f"{where}: 'spans' must be a list with one entry per caption ({num_captions}), got {per_caption!r}"
            )
        return (
            None
            if per_caption[number] is None
            else validate_span(per_caption[number], caption, f"{where}.spans[{number}]")
        )
    phrase, span = item.get("phrase"), item.get("span")
    if phrase is not None and not isinstance(phrase, str):
        raise SampleError(f"{where}: 'phrase' must be a string or null, got {phrase!r}")
    if span is not None and num_captions == 1:
        start, end = validate_span(span, caption, where)
        if phrase is not None and fold(caption[start:end]) != fold(phrase):
            raise SampleError(f"{where}: span {[start, end]} is {caption[start:end]!r} in the caption, not {phrase!r}")
        return start, end
    if phrase is not None:
        return find_phrase(caption, phrase, taken)
    if span is not None:
        raise SampleError(f"{where}: a 'span' without 'phrase' needs a single caption (the record has {num_captions})")
    return None
