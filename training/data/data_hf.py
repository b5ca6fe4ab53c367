"""Region data sets in the formats of Hugging Face `datasets` (`data_format: hf`): a `save_to_disk` folder, a folder or
glob of Parquet files, or a folder or glob of WebDataset tar shards, read whole (memory-mapped Arrow) or streamed.

Each row follows the JSONL manifest's schema (`training/data/data_jsonl.py`):

    image    an image: `datasets.Image` ({"bytes", "path"}), raw bytes, or a path (relative to `image_root`, default
             the data's folder)
    caption  a string or a list of strings
    regions  a list of {box [x1, y1, x2, y2] in pixels, phrase or null, span [start, end] or null, label or null,
             spans (one span or null per caption) or null}
    id       optional image id

In WebDataset tars a sample is `<key>.<jpg|jpeg|png|webp>` (the image) with `<key>.json` (the other fields), which is
what `python -m training.data.prepare --format webdataset` writes. Column names can be mapped (`columns`, e.g.
`{"image": "jpg", "caption": "text"}`).

Images are never decoded by `datasets` (the image column is read as bytes): decoding happens in `load`, so an
undecodable image is skipped and reported like any other bad record (or raises with `strict`).
"""

from __future__ import annotations

import glob
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from .data_common import RegionDataset, RegionSample, SampleError
from .data_jsonl import parse_annotation

FIELDS = ("image", "caption", "regions", "id")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
WEBDATASET_META = "json"


def record_features(image_column: str = "image") -> datasets.Features:
    """The typed schema of the prepared data sets (Parquet, `save_to_disk`, and the WebDataset's json + image)."""
    region = {
        "box": datasets.List(datasets.Value("float32")),
        "phrase": datasets.Value("string"),
        "span": datasets.List(datasets.Value("int32")),
        "spans": datasets.List(datasets.List(datasets.Value("int32"))),
        "label": datasets.Value("string"),
    }
    return datasets.Features(
        {
            "id": datasets.Value("string"),
            image_column: datasets.Image(),
            "caption": datasets.List(datasets.Value("string")),
            "regions": datasets.List(region),
        }
    )


def source_files(source: str | Path) -> tuple[str, list[str]]:
    """(layout, files) of a data source: "disk" (a `save_to_disk` folder, files empty), "parquet" or "webdataset"
    (sorted shard files of a folder or glob). A clear error names `source` otherwise."""
    path = Path(source)
    if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
        return "disk", []
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.suffix in (".parquet", ".tar"))
    else:
        files = sorted(glob.glob(str(source), recursive=True))
    kinds = {Path(f).suffix for f in files}
    if not files:
        raise FileNotFoundError(
            f"train_data/val_data {str(source)!r}: no save_to_disk folder, .parquet or .tar files found"
        )
    if len(kinds) > 1:
        raise ValueError(f"train_data/val_data {str(source)!r} mixes Parquet and tar files: {sorted(kinds)}")
    return ("parquet" if kinds == {".parquet"} else "webdataset"), files


def webdataset_image_column(files: list[str]) -> str:
    """The image extension of the first sample of the first tar shard."""
    with tarfile.open(files[0]) as tar:
        for member in tar:
            extension = member.name.rsplit(".", 1)[-1].lower()
            if member.isfile() and extension in IMAGE_EXTENSIONS:
                return extension
    raise ValueError(f"{files[0]}: no image ({'/'.join(IMAGE_EXTENSIONS)}) member in the first tar shard")


def load_records(
    source: str | Path, streaming: bool = False, columns: Mapping[str, str] | None = None, cache_dir: str | None = None
) -> tuple[datasets.Dataset | datasets.IterableDataset, dict[str, str]]:
    """The rows of `source` (see the module docstring) with images left undecoded, and the column map
    (schema field -> column; "json" for the WebDataset's metadata member). `streaming` gives an `IterableDataset`
    (one shard per file), else a map-style `Dataset` (Parquet and tars are converted into `cache_dir` first)."""
    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(FIELDS))
    if unknown:
        raise ValueError(f"hf_columns: unknown field(s) {unknown}; the fields are {list(FIELDS)}")
    layout, files = source_files(source)
    if layout == "disk":
        data = datasets.load_from_disk(str(source))
        if isinstance(data, datasets.DatasetDict):
            raise ValueError(
                f"train_data {str(source)!r} is a DatasetDict ({list(data)}): give the folder of one split"
            )
        if streaming:
            data = data.to_iterable_dataset(num_shards=max(1, len(data.cache_files)))
    else:
        features = None
        if layout == "webdataset":
            typed = not {"caption", "regions"} & set(
                columns
            )  # the prepared layout: typed, not inferred from a few rows
            columns.setdefault("image", webdataset_image_column(files))
            columns["meta"] = WEBDATASET_META
            if typed:
                prepared = record_features(columns["image"])
                features = datasets.Features(
                    {
                        columns["image"]: prepared[columns["image"]],
                        WEBDATASET_META: {k: v for k, v in prepared.items() if k != columns["image"]},
                        "__key__": datasets.Value("string"),
                        "__url__": datasets.Value("string"),
                    }
                )
        data = datasets.load_dataset(
            layout, data_files=files, split="train", streaming=streaming, cache_dir=cache_dir, features=features
        )
    image_column = columns.get("image", "image")
    if isinstance((data.features or {}).get(image_column), datasets.Image):
        data = data.cast_column(image_column, datasets.Image(decode=False))
    return data, columns


def image_root_of(source: str | Path, image_root: str | Path | None) -> Path:
    """Where relative image paths of `source` point: `image_root`, else the data's folder."""
    if image_root is not None:
        return Path(image_root)
    return Path(source) if Path(source).is_dir() else Path(source).parent


def normalise_row(row: Mapping[str, Any], columns: Mapping[str, str]) -> dict[str, Any]:
    """A row as a manifest record: the WebDataset's json member spread out, mapped columns renamed."""
    record = dict(row.get(columns["meta"]) or {}) if "meta" in columns else {}
    for name in FIELDS:
        column = columns.get(name, name)
        if column in row:
            record[name] = row[column]
    if "id" not in record and "__key__" in row:
        record["id"] = row["__key__"]
    return record


def image_source(value: Any, image_root: Path) -> tuple[str, bytes | None]:
    """(path naming the image, its bytes or None to read the path) from an image cell."""
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data is not None:
            return str(path or "<image bytes>"), bytes(data)
        value = path
    if isinstance(value, (bytes, bytearray)):
        return "<image bytes>", bytes(value)
    if not isinstance(value, str) or not value:
        raise SampleError(f"'image' must be an image, bytes or a non-empty path, got {type(value).__name__}")
    return str(Path(value) if Path(value).is_absolute() else image_root / value), None


class HFRecordDecoder(RegionDataset):
    """Rows (manifest records) -> `RegionSample`s: the part of reading shared by the map-style and the streamed data
    sets. `load(row, rng)` decodes one row; `row_name(row)` names it in skip reports."""

    def __init__(self, columns: Mapping[str, str], image_root: str | Path, source: str, **options):
        super().__init__(**options)
        self.columns, self.image_root, self.source = dict(columns), Path(image_root), source

    def __len__(self) -> int:
        raise TypeError("HFRecordDecoder decodes rows given to it; it has no length")

    def describe(self, row: Mapping[str, Any]) -> str:
        record = normalise_row(row, self.columns)
        return f"{self.source}:{record.get('id', '?')}"

    def load(self, row: Mapping[str, Any], rng: np.random.Generator) -> RegionSample:
        record = normalise_row(row, self.columns)
        caption, regions = parse_annotation(record, rng)
        path, data = image_source(record.get("image"), self.image_root)
        image_id = str(record["id"]) if record.get("id") is not None else path
        return self.make_sample(path, image_id, caption, regions, image_bytes=data)


class HFRegionDataset(RegionDataset):
    """A `save_to_disk` folder, Parquet or WebDataset files as a map-style data set (random access to memory-mapped
    Arrow): the training loop's sampler shards and shuffles it as it does the file-based sources."""

    def __init__(
        self,
        source: str | Path,
        columns: Mapping[str, str] | None = None,
        image_root: str | Path | None = None,
        cache_dir: str | None = None,
        **options,
    ):
        super().__init__(**options)
        self.source = str(source)
        self.rows, resolved = load_records(source, streaming=False, columns=columns, cache_dir=cache_dir)
        self.decoder = HFRecordDecoder(resolved, image_root_of(source, image_root), self.source, **options)

    def __len__(self) -> int:
        return len(self.rows)

    def describe(self, index: int) -> str:
        return f"{self.source}:row {index}"

    def load(self, index: int, rng: np.random.Generator) -> RegionSample:
        return self.decoder.load(self.rows[index], rng)
