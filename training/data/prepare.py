"""Turn JSONL, COCO or Flickr30k Entities annotations into shards for `data_format: hf` (Parquet or WebDataset tars),
with every region's phrase span in every caption computed here, once, so that no spaCy (nor phrase lookup) runs in the
training loop.

    python -m training.data.prepare --source jsonl --input data/shapes/train.jsonl --out shards/shapes
    python -m training.data.prepare --source coco --input annotations/captions_train2017.json \\
        --instances annotations/instances_train2017.json --image-root train2017 --out shards/coco --n-process 4
    python -m training.data.prepare --source flickr30k --input flickr30k_entities --split-file train.txt \\
        --out shards/flickr --format webdataset

(console entry point: `harmoclip-prepare-data`). Each image becomes one row (schema in `training/data/data_hf.py`):
its id, its image file's bytes as they are, all its captions, and all its boxes with `spans`, one [start, end] or
null per caption. COCO boxes are linked to spaCy noun phrases (`nlp.pipe` over all captions, `--n-process`
processes) as `CocoRegionDataset` links them; Flickr30k Entities phrases are linked exactly; JSONL phrases are
located in each caption. Box selection (`max_boxes`, `min_box_size`) is left to training. Records whose image is
missing or unreadable, or whose annotation is malformed, are skipped and listed (`--strict`: the first one is an
error). The folder is written atomically and holds the shards and `prepare.json` (counts, settings, throughput).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from modeling_harmoclip.image_processing_harmoclip import ImageReadError, check_image_bytes, read_image
from plumbing.atomic_files import atomic_directory
from plumbing.command_line import CommandParser, run_command

from .data_coco import CocoRegionDataset, link_boxes_to_phrases
from .data_common import DEFAULT_MIN_BOX_SIZE, SampleError, validate_box
from .data_flickr30k import Flickr30kEntitiesDataset, parse_entity_annotation, parse_entity_sentence
from .data_hf import IMAGE_EXTENSIONS, record_features
from .data_jsonl import index_lines, record_captions, record_regions, region_span
from .phrases import PhraseExtractor

SOURCES = ("jsonl", "coco", "flickr30k")
FORMATS = ("parquet", "webdataset")
ROW_GROUP = 256  # Parquet rows per row group: the unit a reader decompresses


@dataclass
class Record:
    """One image's row before its image is read: `regions` items have box, phrase, span, spans, label."""

    id: str
    image_path: Path
    captions: list[str]
    regions: list[dict[str, Any]]


@dataclass
class Skipped:
    """A record left out (`where`: file and record) and why."""

    where: str
    reason: str


@dataclass
class PrepareReport:
    written: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def samples_per_second(self) -> float:
        return self.written / max(self.seconds, 1e-9)


# ---- sources: each yields Record or Skipped, in a fixed order


def jsonl_records(manifest: Path, image_root: Path | None) -> Iterator[Record | Skipped]:
    """Rows of a JSONL manifest; each region's span is located in every caption (`data_jsonl.region_span`)."""
    root = image_root or manifest.parent
    with open(manifest, "rb") as file:
        for number, offset in enumerate(index_lines(manifest)):
            file.seek(int(offset))
            where = f"{manifest}:record {number}"
            try:
                record = json.loads(file.readline())
                if not isinstance(record, dict):
                    raise SampleError(f"a record must be a JSON object, got {type(record).__name__}")
                image = record.get("image")
                if not isinstance(image, str) or not image:
                    raise SampleError(f"'image' must be a non-empty path string, got {image!r}")
                captions, items, regions = record_captions(record), record_regions(record), []
                taken: list[set[int]] = [set() for _ in captions]
                for k, item in enumerate(items):
                    if not isinstance(item, dict):
                        raise SampleError(f"regions[{k}] must be an object, got {item!r}")
                    box = validate_box(item.get("box"), f"regions[{k}]")
                    spans = []
                    for c, caption in enumerate(captions):
                        span = region_span(item, caption, c, len(captions), taken[c], f"regions[{k}]")
                        if span is not None:
                            taken[c].add(span[0])
                        spans.append(list(span) if span is not None else None)
                    label = item.get("label")
                    regions.append(region_row(box, spans, label if isinstance(label, str) else None))
            except (SampleError, json.JSONDecodeError, UnicodeDecodeError) as error:
                yield Skipped(where, str(error))
                continue
            path = Path(image) if Path(image).is_absolute() else root / image
            yield Record(str(record.get("id", image)), path, captions, regions)


def coco_records(
    captions_file: Path, instances_file: Path, image_root: Path, n_process: int, min_box_size: float
) -> Iterator[Record | Skipped]:
    """COCO images with all their captions; spaCy parses every caption once (`n_process` processes), and each box is
    linked in each caption as `CocoRegionDataset` links it (boxes below `min_box_size` take no phrase)."""
    coco = CocoRegionDataset(captions_file, instances_file, image_root, min_box_size=min_box_size, max_boxes=None)
    extractor = PhraseExtractor(n_process=n_process)
    phrases = extractor.iter(coco.captions[j] for j in range(len(coco.captions)))
    for index in range(len(coco)):
        first, last = int(coco.caption_offsets[index]), int(coco.caption_offsets[index + 1])
        captions = [coco.captions[j] for j in range(first, last)]
        caption_phrases = [next(phrases) for _ in captions]
        begin, end = coco.box_offsets[index], coco.box_offsets[index + 1]
        boxes = coco.boxes[begin:end].tolist()
        categories = [coco.category_names[c] for c in coco.box_categories[begin:end]]
        areas = [(x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in boxes]
        linkable = [
            c if min(x2 - x1, y2 - y1) >= min_box_size else None for c, (x1, y1, x2, y2) in zip(categories, boxes)
        ]
        links = [link_boxes_to_phrases(found, linkable, areas, coco.matcher) for found in caption_phrases]
        regions = [
            region_row(box, [list(per[k]) if per[k] is not None else None for per in links], categories[k])
            for k, box in enumerate(boxes)
        ]
        yield Record(str(int(coco.image_ids[index])), image_root / coco.file_names[index], captions, regions)


def flickr30k_records(root: Path, split_file: Path | None, image_root: Path | None) -> Iterator[Record | Skipped]:
    """Flickr30k Entities images with all their captions; a box's span in a caption is its entity's first mention
    there, its label the type of its first mention in any caption."""
    flickr = Flickr30kEntitiesDataset(root, split_file=split_file, image_dir=image_root)
    for index in range(len(flickr)):
        image_id = str(flickr.image_ids[index])
        sentences = flickr.sentences_dir / f"{image_id}.txt"
        try:
            lines = [line for line in sentences.read_text(encoding="utf-8").splitlines() if line.strip()]
            if not lines:
                raise SampleError("no captions")
            parsed = []
            for number, line in enumerate(lines):
                try:
                    parsed.append(parse_entity_sentence(line))
                except ValueError as error:
                    raise SampleError(f"caption {number + 1}: {error}") from None
            annotation = flickr.annotations_dir / f"{image_id}.xml"
            try:
                entity_boxes = parse_entity_annotation(annotation)
            except (ElementTree.ParseError, ValueError) as error:
                raise SampleError(f"{annotation}: malformed annotation: {error}") from None
        except (SampleError, OSError) as error:
            yield Skipped(str(sentences), str(error))
            continue
        regions = []
        for entity_box in entity_boxes:
            mentions = [next((m for m in found if m.entity_id in entity_box.entity_ids), None) for _, found in parsed]
            label = next((m.types[0] for m in mentions if m is not None), None)
            regions.append(region_row(entity_box.box, [[m.start, m.end] if m else None for m in mentions], label))
        yield Record(
            image_id, flickr.image_dir / f"{image_id}{flickr.image_extension}", [c for c, _ in parsed], regions
        )


def region_row(box, spans: list[list[int] | None], label: str | None) -> dict[str, Any]:
    return {"box": [float(v) for v in box], "phrase": None, "span": None, "spans": spans, "label": label}


# ---- writers


def read_image_bytes(path: Path) -> bytes:
    """The file's bytes as they are (EXIF orientation kept: training reads them upright), after the cheap check that
    PIL identifies and verifies them without decoding (`check_image_bytes`); `SampleError` in one line otherwise."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SampleError(f"cannot read image {path}: {type(error).__name__}: {error.strerror or error}") from error
    try:
        check_image_bytes(data, str(path))
    except ImageReadError as error:
        raise SampleError(str(error)) from error
    return data


class ParquetShards:
    """Rows into `part-00000.parquet`, ... of at most `per_shard` rows each, with `datasets`' feature metadata."""

    def __init__(self, folder: Path, per_shard: int):
        self.folder, self.per_shard = folder, per_shard
        self.features = record_features()
        self.schema = self.features.arrow_schema
        self.writer: pq.ParquetWriter | None = None
        self.rows: list[dict] = []
        self.in_shard, self.shards = 0, []

    def add(self, record: Record, image: bytes) -> None:
        row = {
            "id": record.id,
            "image": {"bytes": image, "path": record.image_path.name},
            "caption": record.captions,
            "regions": record.regions,
        }
        if self.writer is None:
            name = f"part-{len(self.shards):05d}.parquet"
            self.shards.append(name)
            self.writer = pq.ParquetWriter(self.folder / name, self.schema)
        self.rows.append(self.features.encode_example(row))
        self.in_shard += 1
        if len(self.rows) >= ROW_GROUP or self.in_shard >= self.per_shard:
            self._flush()
        if self.in_shard >= self.per_shard:
            self.writer.close()
            self.writer, self.in_shard = None, 0

    def _flush(self) -> None:
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def close(self) -> None:
        if self.writer is not None:
            self._flush()
            self.writer.close()
            self.writer = None


class WebDatasetShards:
    """Samples into `shard-00000.tar`, ...: `<key>.<ext>` (the image) and `<key>.json` (id, caption, regions). Every
    image gets the first image's extension (others are re-encoded) so the shards have one image column."""

    def __init__(self, folder: Path, per_shard: int):
        self.folder, self.per_shard = folder, per_shard
        self.tar: tarfile.TarFile | None = None
        self.extension: str | None = None
        self.count, self.in_shard, self.shards = 0, 0, []

    def add(self, record: Record, image: bytes) -> None:
        extension = record.image_path.suffix.lower().lstrip(".")
        if self.extension is None:
            self.extension = extension if extension in IMAGE_EXTENSIONS else "png"
        if extension != self.extension:
            image = reencode(image, self.extension)
        if self.tar is None:
            name = f"shard-{len(self.shards):05d}.tar"
            self.shards.append(name)
            self.tar = tarfile.open(self.folder / name, "w")
        key = f"{self.count:09d}"  # no dots: WebDataset splits member names at the first dot
        meta = json.dumps({"id": record.id, "caption": record.captions, "regions": record.regions}).encode("utf-8")
        for name, data in ((f"{key}.{self.extension}", image), (f"{key}.json", meta)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            self.tar.addfile(info, io.BytesIO(data))
        self.count += 1
        self.in_shard += 1
        if self.in_shard >= self.per_shard:
            self.close()

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.tar, self.in_shard = None, 0


def reencode(data: bytes, extension: str) -> bytes:
    """The image re-encoded as `extension`, upright: the EXIF orientation is applied to the pixels (re-encoding drops
    the tag), so the boxes keep meaning the same pixels."""
    buffer = io.BytesIO()
    read_image(data).save(buffer, format={"jpg": "JPEG", "jpeg": "JPEG"}.get(extension, extension.upper()))
    return buffer.getvalue()


def write_shards(
    records: Iterator[Record | Skipped],
    out: Path,
    format: str = "parquet",
    samples_per_shard: int = 1000,
    strict: bool = False,
    overwrite: bool = False,
    settings: dict[str, Any] | None = None,
    show_progress: bool = True,
) -> PrepareReport:
    """Writes `records` as shards into `out` atomically (with `prepare.json`); returns counts and throughput."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    report = PrepareReport()
    start = time.perf_counter()
    with atomic_directory(out, overwrite=overwrite) as staging:
        writer = (ParquetShards if format == "parquet" else WebDatasetShards)(staging, samples_per_shard)
        for item in tqdm(records, desc=f"preparing {out.name}", unit="image", disable=not show_progress):
            if isinstance(item, Record):
                try:
                    writer.add(item, read_image_bytes(item.image_path))
                    report.written += 1
                    continue
                except SampleError as error:
                    item = Skipped(f"record {item.id}", str(error))
            if strict:
                raise SampleError(f"{item.where}: {item.reason}")
            report.skipped.append(item)
        writer.close()
        if report.written == 0:
            raise ValueError(f"no usable record to write to {out} ({len(report.skipped)} skipped)")
        report.shards, report.seconds = writer.shards, time.perf_counter() - start
        summary = {
            "format": format,
            "samples": report.written,
            "shards": report.shards,
            "skipped": len(report.skipped),
            "skipped_records": [vars(s) for s in report.skipped[:1000]],
            "seconds": round(report.seconds, 3),
            "samples_per_second": round(report.samples_per_second, 1),
            "settings": settings or {},
        }
        (staging / "prepare.json").write_text(json.dumps(summary, indent=1) + "\n")
    return report


def build_parser() -> CommandParser:
    parser = CommandParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, choices=SOURCES)
    parser.add_argument(
        "--input",
        required=True,
        type=Path,
        help="jsonl: the manifest; coco: captions_*.json; flickr30k: the dataset root (Sentences/, Annotations/)",
    )
    parser.add_argument("--instances", type=Path, help="coco: instances_*.json (default: beside the captions file)")
    parser.add_argument(
        "--image-root",
        type=Path,
        help="folder of the images (jsonl default: the manifest's folder; flickr30k default: <root>/flickr30k-images)",
    )
    parser.add_argument("--split-file", type=Path, help="flickr30k: the image ids to use (train.txt, ...)")
    parser.add_argument("--out", required=True, type=Path, help="folder to create")
    parser.add_argument("--format", default="parquet", choices=FORMATS)
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--n-process", type=int, default=1, help="coco: spaCy processes (nlp.pipe n_process)")
    parser.add_argument(
        "--min-box-size",
        type=float,
        default=DEFAULT_MIN_BOX_SIZE,
        help="coco: boxes with a shorter side below this (pixels) take no phrase (as in training)",
    )
    parser.add_argument("--strict", action="store_true", help="stop at the first unusable record")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    return parser


def prepare(args: argparse.Namespace) -> PrepareReport:
    """Runs the preparation the parsed command line describes; a bad option or input raises `ValueError` (or
    `FileNotFoundError` / `FileExistsError`) naming it."""
    if args.n_process < 1:
        raise ValueError(f"`--n-process` must be >= 1, got {args.n_process}")
    if not args.input.exists():
        raise FileNotFoundError(f"`--input`: not found: {args.input}")
    if args.source == "jsonl":
        records = jsonl_records(args.input, args.image_root)
    elif args.source == "coco":
        if args.image_root is None:
            raise ValueError("`--image-root` (the COCO image folder) is required with --source coco")
        instances = args.instances or args.input.with_name(args.input.name.replace("captions_", "instances_"))
        records = coco_records(args.input, instances, args.image_root, args.n_process, args.min_box_size)
    else:
        records = flickr30k_records(args.input, args.split_file, args.image_root)
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    return write_shards(records, args.out, args.format, args.samples_per_shard, args.strict, args.overwrite, settings)


def main(argv: list[str] | None = None) -> int:
    """The `harmoclip-prepare-data` command; returns the exit code (a user's mistake: one line `error: ...`)."""

    def run() -> str:
        args = build_parser().parse_args(argv)
        report = prepare(args)
        listed = f" (listed in {args.out / 'prepare.json'})" if report.skipped else ""
        return (
            f"wrote {report.written} samples in {len(report.shards)} {args.format} shard(s) to {args.out} in "
            f"{report.seconds:.1f} s ({report.samples_per_second:.1f} samples/s); skipped {len(report.skipped)}{listed}"
        )

    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
