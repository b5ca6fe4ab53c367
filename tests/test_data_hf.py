"""`data_format: hf` (save_to_disk, Parquet, WebDataset tars; whole or streamed) and the preparation command, on real
files written from the synthetic generator, COCO and Flickr30k Entities annotations. The reference is always the
file-based source the shards were made from, read with the same caption choice."""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from data_files import write_coco, write_flickr
from training.data.collate import RegionCollator, collect_samples
from training.data.data_coco import CocoRegionDataset
from training.data.data_common import RegionSample, SampleError, SkippedSample
from training.data.data_flickr30k import Flickr30kEntitiesDataset
from training.data.data_hf import HFRegionDataset, load_records, record_features
from training.data.data_jsonl import JsonlRegionDataset
from training.data.prepare import ParquetShards, Record, build_parser, prepare
from training.data.prepare import main as prepare_command
from training.data.streaming import RegionStream, StreamBatchSampler, StreamCollate, StreamRows
from training.data.synthetic import SyntheticSettings, generate_synthetic_dataset


def prepare_main(argv: list[str]):
    """The preparation as its command runs it, returning its report (errors raised)."""
    return prepare(build_parser().parse_args(argv))


class FixedChoice:
    """Stands in for the numpy generator a source draws its caption with: always caption `number`."""

    def __init__(self, number: int):
        self.number = number

    def integers(self, high: int) -> int:
        assert 0 <= self.number < high
        return self.number


def same_sample(a: RegionSample, b: RegionSample, labels: bool = True) -> None:
    assert isinstance(a, RegionSample) and isinstance(b, RegionSample), (a, b)
    assert (a.caption, a.image_id, a.boxes, a.phrase_spans, a.phrases, a.box_indices) == (
        b.caption,
        b.image_id,
        b.boxes,
        b.phrase_spans,
        b.phrases,
        b.box_indices,
    )
    assert (a.num_small_boxes_dropped, a.num_boxes_over_limit) == (b.num_small_boxes_dropped, b.num_boxes_over_limit)
    if labels:
        assert a.labels == b.labels
    assert a.image.size == b.image.size and a.image.tobytes() == b.image.tobytes()


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hf") / "shapes"
    return generate_synthetic_dataset(folder, SyntheticSettings(num_train=16, num_val=2, seed=3, image_size=32))


@pytest.fixture(scope="module")
def prepared(shapes, tmp_path_factory) -> dict[str, Path]:
    """The shapes' train split as Parquet (4 shards), WebDataset (4 tars) and a save_to_disk folder."""
    root = tmp_path_factory.mktemp("prepared")
    manifest = str(shapes / "train.jsonl")
    prepare_main(["--source", "jsonl", "--input", manifest, "--out", str(root / "parquet"), "--samples-per-shard", "4"])
    prepare_main(
        [
            "--source",
            "jsonl",
            "--input",
            manifest,
            "--out",
            str(root / "wds"),
            "--format",
            "webdataset",
            "--samples-per-shard",
            "4",
        ]
    )
    table = datasets.load_dataset(
        "parquet",
        data_files=sorted(str(p) for p in (root / "parquet").glob("*.parquet")),
        split="train",
        cache_dir=str(root / "cache"),
    )
    table.save_to_disk(str(root / "disk"), num_shards=2)
    return {"parquet": root / "parquet", "webdataset": root / "wds", "disk": root / "disk", "cache": root / "cache"}


@pytest.mark.parametrize("layout", ["parquet", "webdataset", "disk"])
def test_every_layout_reads_back_the_manifest_samples(layout, prepared, shapes):
    reference = JsonlRegionDataset(shapes / "train.jsonl", seed=5, max_boxes=2, min_box_size=4)
    hf = HFRegionDataset(prepared[layout], cache_dir=str(prepared["cache"]), seed=5, max_boxes=2, min_box_size=4)
    assert len(hf) == len(reference) == 16
    ids = [hf[i].image_id for i in range(16)]
    assert ids == [reference[i].image_id for i in range(16)]  # shards keep the manifest's order
    for epoch in (0, 1):
        hf.set_epoch(epoch), reference.set_epoch(epoch)
        for i in range(16):
            same_sample(hf[i], reference[i])
    assert any(hf[i].num_boxes_over_limit for i in range(16))  # selection applies at training time, as for JSONL


def test_glob_and_column_mapping(tmp_path, shapes):
    """A user's own Parquet file with other column names, images as paths relative to the data's folder."""
    records = [json.loads(line) for line in (shapes / "train.jsonl").read_text().splitlines()][:3]
    table = datasets.Dataset.from_list(
        [
            {"file": str(shapes / r["image"]), "text": r["caption"], "name": r["id"], "boxes": json.dumps(r["regions"])}
            for r in records
        ]
    )
    table = table.map(lambda row: {"boxes": json.loads(row["boxes"])})
    table.to_parquet(str(tmp_path / "mine-0.parquet"))
    columns = {"image": "file", "caption": "text", "regions": "boxes", "id": "name"}
    hf = HFRegionDataset(str(tmp_path / "mine-*.parquet"), columns=columns, cache_dir=str(tmp_path / "cache"))
    reference = JsonlRegionDataset(shapes / "train.jsonl")
    for i in range(3):
        same_sample(hf[i], reference[i])
    with pytest.raises(ValueError, match="unknown field"):
        load_records(tmp_path / "mine-0.parquet", columns={"picture": "file"})
    with pytest.raises(FileNotFoundError, match="no save_to_disk folder"):
        HFRegionDataset(tmp_path / "nothing-*.parquet")


def test_bad_records_are_skipped_and_counted_or_raise_when_strict(tmp_path, shapes):
    image = (shapes / "images" / "train" / "000000.png").read_bytes()
    good = Record(
        "good",
        Path("a.png"),
        ["a red circle"],
        [{"box": [1, 1, 9, 9], "phrase": None, "span": None, "spans": [[2, 12]], "label": None}],
    )
    corrupt = Record("corrupt", Path("b.png"), ["a cat"], [])
    malformed = Record(
        "malformed",
        Path("c.png"),
        ["a cat"],
        [{"box": [9, 9, 1, 1], "phrase": None, "span": None, "spans": None, "label": None}],
    )
    (tmp_path / "bad").mkdir()
    writer = ParquetShards(tmp_path / "bad", per_shard=10)
    writer.add(good, image)
    writer.add(corrupt, b"not an image")
    writer.add(malformed, image)
    writer.close()
    hf = HFRegionDataset(tmp_path / "bad", cache_dir=str(tmp_path / "cache"))
    first, second, third = hf[0], hf[1], hf[2]
    assert isinstance(first, RegionSample) and first.phrases == ["red circle"]
    assert isinstance(second, SkippedSample) and "cannot read image" in second.reason and "row 1" in second.reason
    assert isinstance(third, SkippedSample) and "x2 < x1" in third.reason
    assert [path for path, _ in collect_samples([first, second, third]).skipped] == [second.path, third.path]
    strict = HFRegionDataset(tmp_path / "bad", cache_dir=str(tmp_path / "cache"), strict=True)
    with pytest.raises(SampleError, match="cannot read image"):
        strict[1]
    # the same records streamed
    stream = RegionStream.open(str(tmp_path / "bad"))
    rows = StreamRows(stream.decoder)
    decoded = [rows[item][1] for batch in StreamBatchSampler(stream.rows, 3, 1, 0) for item in batch]
    assert [type(s).__name__ for s in decoded] == ["RegionSample", "SkippedSample", "SkippedSample"]


@pytest.mark.parametrize("layout", ["parquet", "webdataset", "disk"])
def test_stream_splits_rows_between_processes_exactly_once(layout, prepared):
    stream = RegionStream.open(str(prepared[layout]))
    seen = []
    for rank in range(2):
        sampler = StreamBatchSampler(stream.rows, 1, 2, rank)
        rows = StreamRows(stream.decoder)
        seen.append([rows[item][1].image_id for batch in sampler for item in batch])
    assert len(seen[0]) == len(seen[1]) == 8
    assert sorted(seen[0] + seen[1]) == sorted(f"train/{i:06d}" for i in range(16))
    three = [[item[3] for batch in StreamBatchSampler(stream.rows, 1, 3, rank) for item in batch] for rank in range(3)]
    assert sum(len(r) for r in three) == 16  # 4 shards on 3 processes: every n-th row instead of whole shards


def test_stream_position_resumes_the_same_batches(prepared):
    stream = RegionStream.open(str(prepared["parquet"]))
    whole = StreamBatchSampler(stream.rows, 3, 1, 0)
    whole.set_epoch(1)
    uninterrupted = [[(item[1], item[2], item[3]["id"]) for item in batch] for batch in whole]
    assert len(uninterrupted) == 5  # 16 rows: 5 batches of 3, the last row dropped

    first = StreamBatchSampler(RegionStream.open(str(prepared["parquet"])).rows, 3, 1, 0)
    first.set_epoch(1)
    iterator = iter(first)
    consumed = [next(iterator) for _ in range(2)]
    position = json.loads(json.dumps(first.position_after(1)))  # what a checkpoint keeps
    resumed = StreamBatchSampler(RegionStream.open(str(prepared["parquet"])).rows, 3, 1, 0)
    resumed.set_epoch(1, position)
    rest = [[(item[1], item[2], item[3]["id"]) for item in batch] for batch in resumed]
    assert [[(i[1], i[2], i[3]["id"]) for i in b] for b in consumed] == uninterrupted[:2]
    assert [[row for _, row, _ in batch] for batch in rest] == [[row for _, row, _ in b] for b in uninterrupted[2:]]
    assert [[i for _, _, i in batch] for batch in rest] == [[i for _, _, i in b] for b in uninterrupted[2:]]


def test_stream_batches_do_not_depend_on_workers(prepared, tiny_tokenizer):
    from conftest import tiny_processor

    collate = StreamCollate(RegionCollator(tiny_processor(tiny_tokenizer, region_mode=True)))
    results = {}
    for workers in (0, 2):
        stream = RegionStream.open(str(prepared["webdataset"]), seed=1)
        sampler = StreamBatchSampler(stream.rows, 4, 1, 0)
        loader = DataLoader(StreamRows(stream.decoder), batch_sampler=sampler, collate_fn=collate, num_workers=workers)
        batches = [
            (
                batch["stream_batch"],
                batch["image_ids"],
                batch["input_ids"].tolist(),
                sampler.position_after(batch["stream_batch"]),
            )
            for batch in loader
        ]
        results[workers] = batches
    assert [b[0] for b in results[0]] == [0, 1, 2, 3]
    assert results[0] == results[2]


def test_prepare_coco_links_every_caption_as_training_does(tmp_path):
    captions, instances, images = write_coco(
        tmp_path,
        captions_42=("A man and a woman walk two dogs past a red car.", "A dog sits in a car.", "People on a street."),
    )
    report = prepare_main(
        [
            "--source",
            "coco",
            "--input",
            str(captions),
            "--instances",
            str(instances),
            "--image-root",
            str(images),
            "--out",
            str(tmp_path / "coco"),
            "--n-process",
            "2",
        ]
    )
    assert report.written == 3 and [s.where for s in report.skipped] == ["record 13"]  # image 13's file is missing
    summary = json.loads((tmp_path / "coco" / "prepare.json").read_text())
    assert summary["samples"] == 3 and summary["samples_per_second"] > 0 and summary["skipped"] == 1
    reference = CocoRegionDataset(captions, instances, images, min_box_size=4, max_boxes=3)
    hf = HFRegionDataset(tmp_path / "coco", cache_dir=str(tmp_path / "cache"), min_box_size=4, max_boxes=3)
    rows = {hf.rows[i]["id"]: i for i in range(len(hf))}
    linked = 0
    for index in range(len(reference)):
        image_id = str(int(reference.image_ids[index]))
        if image_id not in rows:
            continue
        for k in range(int(reference.caption_offsets[index + 1] - reference.caption_offsets[index])):
            expected = reference.load(index, FixedChoice(k))
            same_sample(hf.load(rows[image_id], FixedChoice(k)), expected)
            linked += sum(span is not None for span in expected.phrase_spans)
    assert linked >= 5


def test_prepare_flickr30k_links_every_caption_as_training_does(tmp_path):
    root = write_flickr(tmp_path)
    report = prepare_main(
        ["--source", "flickr30k", "--input", str(root), "--out", str(tmp_path / "wds"), "--format", "webdataset"]
    )
    assert report.written == 1
    reference = Flickr30kEntitiesDataset(root, min_box_size=0)
    hf = HFRegionDataset(tmp_path / "wds", cache_dir=str(tmp_path / "cache"), min_box_size=0)
    for k in range(2):
        same_sample(hf.load(0, FixedChoice(k)), reference.load(0, FixedChoice(k)), labels=False)


def test_prepare_skips_or_stops_and_never_leaves_a_partial_folder(tmp_path, shapes):
    lines = (shapes / "train.jsonl").read_text().splitlines()[:3]
    broken = json.loads(lines[1])
    broken["regions"] = [{"box": [1, 2, 3]}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join([lines[0], json.dumps(broken), lines[2], "not json"]) + "\n")
    args = ["--source", "jsonl", "--input", str(manifest), "--image-root", str(shapes), "--out", str(tmp_path / "out")]
    with pytest.raises(SampleError, match="record 1"):
        prepare_main(args + ["--strict"])
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    report = prepare_main(args)
    assert report.written == 2 and len(report.skipped) == 2
    assert "regions[0]" in report.skipped[0].reason and "record 3" in report.skipped[1].where
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare_main(args)


def test_prepare_command_reports_in_one_line(tmp_path, shapes, capsys):
    out = tmp_path / "out"
    assert prepare_command(["--source", "jsonl", "--input", str(shapes / "train.jsonl"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed.startswith(f"wrote 16 samples in 1 parquet shard(s) to {out}") and "samples/s" in printed
    assert (
        prepare_command(["--source", "jsonl", "--input", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "x")])
        == 1
    )
    assert (
        capsys.readouterr().err.strip().splitlines()[-1] == f"error: `--input`: not found: {tmp_path / 'missing.jsonl'}"
    )
    assert (
        prepare_command(["--source", "coco", "--input", str(shapes / "train.jsonl"), "--out", str(tmp_path / "x")]) == 1
    )
    assert "`--image-root`" in capsys.readouterr().err
    assert prepare_command(["--source", "csv", "--input", "x", "--out", "y"]) == 2
    assert not (tmp_path / "x").exists()


def test_record_features_match_what_prepare_writes(prepared):
    files = sorted(str(p) for p in prepared["parquet"].glob("*.parquet"))
    loaded = datasets.load_dataset("parquet", data_files=files, split="train", streaming=True)
    assert loaded.features == record_features()
    with Image.open(
        io.BytesIO(next(iter(loaded.cast_column("image", datasets.Image(decode=False))))["image"]["bytes"])
    ) as image:
        assert image.size == (32, 32)


def test_config_options_of_the_hf_format():
    from training.config import load_config

    config = load_config(
        None,
        {
            "data_format": "hf",
            "train_data": "shards/",
            "streaming": True,
            "shuffle_buffer": 100,
            "hf_columns": {"image": "jpg"},
        },
    )
    assert config.streaming and config.hf_columns == {"image": "jpg"}
    with pytest.raises(ValueError, match="`streaming` needs data_format='hf'"):
        load_config(None, {"streaming": True})
    with pytest.raises(ValueError, match="hf_columns"):
        load_config(None, {"data_format": "hf", "train_data": "x", "hf_columns": ["jpg"]})
    with pytest.raises(ValueError, match="shuffle_buffer"):
        load_config(None, {"data_format": "hf", "train_data": "x", "shuffle_buffer": -1})
