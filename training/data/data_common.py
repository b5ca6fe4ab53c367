"""What every training data source shares: the sample types, box selection, lazy image loading, skipping.

Every source is a map-style `torch.utils.data.Dataset` whose `__getitem__` does the reading (the image file is
opened only there), so the data set is never held in memory; sharding across processes is the job of the
(Accelerate-prepared) DataLoader's sampler and across workers the DataLoader's, never of the data set. The one
exception, a streamed `data_format: hf` source (`streaming.py`), is split by its own batch sampler and decodes its
rows through a `RegionDataset` too (`load_or_skip` with the row as key).

A missing or corrupt image or a malformed record gives a `SkippedSample` instead of an exception (or, with
`strict=True`, a `SampleError`): the collator drops it and reports it in the batch, so the training loop in the main
process can count it (counts kept in the data set object would be lost in the DataLoader's worker processes).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from modeling_harmoclip.image_processing_harmoclip import ImageReadError, read_image

DEFAULT_MAX_BOXES = 20
DEFAULT_MIN_BOX_SIZE = 4.0  # pixels of the original image, on the box's shorter side


class SampleError(ValueError):
    """A record that cannot be used: missing or corrupt image, malformed annotation. `path`: the file at fault,
    where it is not the record's own file (an image named by the record)."""

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path


@dataclass
class Region:
    """One annotated box of an image, before selection.

    `box` is [x1, y1, x2, y2] in the original image's pixels; `span` the (start, end) characters of its phrase in the
    caption (None: unlinked, still used by GR); `index` the box's position in the image's annotation, independent of
    the caption (with the image id it keys cached teacher embeddings); `label` an optional class name; `category`
    what the box shows where the source knows it (a COCO category, a Flickr30k Entities type or chain, a label):
    LRC does not push apart regions and phrases of the same category.
    """

    box: tuple[float, float, float, float]
    span: tuple[int, int] | None
    index: int
    label: str | None = None
    category: str | None = None


@dataclass
class RegionSample:
    """One image with one caption and its boxes (at most `max_boxes`, aligned lists)."""

    image: Image.Image  # RGB
    caption: str
    boxes: list[list[float]]  # [x1, y1, x2, y2] in original pixels
    phrase_spans: list[tuple[int, int] | None]  # character spans into `caption`, None for an unlinked box
    phrases: list[str | None]  # caption[start:end] for each linked box
    image_id: str
    path: str
    box_indices: list[int] = field(default_factory=list)  # Region.index of each box
    labels: list[str | None] = field(default_factory=list)  # class name of each box where the source has one
    categories: list[str | None] = field(default_factory=list)  # Region.category of each box
    num_small_boxes_dropped: int = 0
    num_boxes_over_limit: int = 0


@dataclass
class SkippedSample:
    """A record that was skipped: `path` names the file (and line), `reason` says why."""

    path: str
    reason: str


def validate_box(box, where: str) -> tuple[float, float, float, float]:
    """`box` as 4 finite floats with x1 <= x2 and y1 <= y2, or a `SampleError` naming `where`."""
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise SampleError(f"{where}: a box must be [x1, y1, x2, y2], got {box!r}")
    try:
        x1, y1, x2, y2 = (float(value) for value in box)
    except (TypeError, ValueError):
        raise SampleError(f"{where}: box coordinates must be numbers, got {box!r}") from None
    if not all(math.isfinite(value) for value in (x1, y1, x2, y2)):
        raise SampleError(f"{where}: box has a non-finite coordinate: {box!r}")
    if x2 < x1 or y2 < y1:
        raise SampleError(f"{where}: box has x2 < x1 or y2 < y1: {box!r}")
    return x1, y1, x2, y2


def validate_span(span, caption: str, where: str) -> tuple[int, int]:
    if not isinstance(span, (list, tuple)) or len(span) != 2 or not all(isinstance(v, int) for v in span):
        raise SampleError(f"{where}: a span must be [start, end] integers, got {span!r}")
    start, end = span
    if not 0 <= start < end <= len(caption):
        raise SampleError(f"{where}: span {list(span)} is outside the caption of length {len(caption)} or empty")
    return start, end


def select_regions(
    regions: Sequence[Region], width: int, height: int, max_boxes: int | None, min_box_size: float
) -> tuple[list[Region], int, int]:
    """Clips boxes to the image, drops those whose shorter side is below `min_box_size`, and keeps at most
    `max_boxes`: linked boxes first, then the largest unlinked ones (order otherwise kept).

    Returns (kept regions, number dropped as too small, number dropped over the limit).
    """
    clipped = []
    for region in regions:
        x1, y1, x2, y2 = region.box
        box = (min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height))
        clipped.append(Region(box, region.span, region.index, region.label, region.category))
    big = [r for r in clipped if min(r.box[2] - r.box[0], r.box[3] - r.box[1]) >= min_box_size]
    num_small = len(clipped) - len(big)
    if max_boxes is None or len(big) <= max_boxes:
        return big, num_small, 0

    def area(region: Region) -> float:
        return (region.box[2] - region.box[0]) * (region.box[3] - region.box[1])

    ranked = sorted(range(len(big)), key=lambda i: (big[i].span is None, -area(big[i]), i))
    keep = sorted(ranked[:max_boxes])
    return [big[i] for i in keep], num_small, len(big) - max_boxes


class RegionDataset(Dataset, ABC):
    """Base of the data sources: caption sampling, box selection, skipping. Subclasses implement `__len__`,
    `describe(index)` (a path for error messages) and `load(index, rng)`.

    `rng` is a `numpy.random.Generator` seeded from (seed, epoch, index): which caption an image gets is reproducible
    and changes with the epoch (`set_epoch`, which Accelerate's prepared DataLoader calls on the data set; with
    `persistent_workers=True` call it before the workers start).
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        max_boxes: int | None = DEFAULT_MAX_BOXES,
        min_box_size: float = DEFAULT_MIN_BOX_SIZE,
        strict: bool = False,
    ):
        if max_boxes is not None and max_boxes < 0:
            raise ValueError(f"max_boxes must be >= 0 or None, got {max_boxes}")
        if not min_box_size >= 0:
            raise ValueError(f"min_box_size must be >= 0, got {min_box_size}")
        self.seed = int(seed)
        self.max_boxes = max_boxes
        self.min_box_size = float(min_box_size)
        self.strict = strict
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def describe(self, index: int) -> str:
        """The file (and line) that record `index` comes from, for skip reports."""

    @abstractmethod
    def load(self, index: int, rng: np.random.Generator) -> RegionSample:
        """Reads record `index`; raises `SampleError` or `OSError` when it cannot be used."""

    def __getitem__(self, index: int) -> RegionSample | SkippedSample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a data set of {len(self)} records")
        index = index % len(self)
        return self.load_or_skip(index, self.rng(index))

    def load_or_skip(self, key, rng: np.random.Generator) -> RegionSample | SkippedSample:
        """`load(key, rng)`, or the `SkippedSample` (with `strict`: the `SampleError`) of a record that cannot be used."""
        try:
            return self.load(key, rng)
        except (SampleError, OSError) as error:  # OSError: an annotation file missing or unreadable
            record = self.describe(key)
            path = getattr(error, "path", None) or record
            reason = str(error) if isinstance(error, SampleError) else f"{type(error).__name__}: {error}"
            if path != record:
                reason = f"{reason} (record {record})"
            if self.strict:
                raise SampleError(f"{path}: {reason}", path=path) from error
            return SkippedSample(path=path, reason=reason)

    def make_sample(
        self,
        image_path: Path | str,
        image_id: str,
        caption: str,
        regions: Sequence[Region],
        image_bytes: bytes | None = None,
    ) -> RegionSample:
        """Opens the image (from `image_bytes` where given, `image_path` then only names it) and applies the box
        selection: the common last step of `load`."""
        try:  # upright RGB, the frame of every entry point (`read_image` in modeling_harmoclip/image_processing_harmoclip.py)
            image = read_image(image_bytes if image_bytes is not None else image_path, name=str(image_path))
        except ImageReadError as error:
            raise SampleError(str(error), path=str(image_path)) from error
        kept, num_small, num_over = select_regions(
            regions, image.width, image.height, self.max_boxes, self.min_box_size
        )
        return RegionSample(
            image=image,
            caption=caption,
            boxes=[list(region.box) for region in kept],
            phrase_spans=[region.span for region in kept],
            phrases=[caption[r.span[0] : r.span[1]] if r.span is not None else None for r in kept],
            image_id=image_id,
            path=str(image_path),
            box_indices=[region.index for region in kept],
            labels=[region.label for region in kept],
            categories=[region.category for region in kept],
            num_small_boxes_dropped=num_small,
            num_boxes_over_limit=num_over,
        )


def choose_caption(captions: Sequence[str], rng: np.random.Generator) -> int:
    """Index of the caption used this epoch (uniform among several)."""
    return int(rng.integers(len(captions))) if len(captions) > 1 else 0


class PackedStrings:
    """Many strings in one byte buffer plus offsets: compact and, unlike a list of str, not copied page by page
    into every DataLoader worker by reference counting."""

    def __init__(self, strings: Sequence[str]):
        encoded = [s.encode("utf-8") for s in strings]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self.offsets[1:])
        self.buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> str:
        return self.buffer[self.offsets[index] : self.offsets[index + 1]].tobytes().decode("utf-8")
