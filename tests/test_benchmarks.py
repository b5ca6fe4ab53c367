"""The benchmark scripts run end to end with tiny sizes and write results that hold together: every median, spread,
ratio, rate and target is recomputed here from the raw per-round times the JSON records, and the printed table is
checked against the JSON (speed itself is never asserted)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT

# Every benchmark run for real (quick settings): the slow tier.
pytestmark = pytest.mark.slow

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
TINY = ["--quick", "--device", "cpu", "--threads", "1", "--repeats", "1", "--warmup", "0"]


def check_summary(summary: dict, rounds: int) -> list[float]:
    """The summary's figures are those of its raw per-round times; returns the times."""
    seconds = summary["seconds"]
    assert len(seconds) == summary["rounds"] == rounds and all(isinstance(value, float) for value in seconds)
    assert summary["median_s"] == statistics.median(seconds)
    assert (summary["min_s"], summary["max_s"]) == (min(seconds), max(seconds))
    assert summary["spread"] == pytest.approx((max(seconds) - min(seconds)) / statistics.median(seconds), rel=1e-12)
    return seconds


def check_ratio(ratio: dict, numerator: list[float], denominator: list[float]) -> None:
    """A ratio is the median (min, max) of the per-round ratios of the two methods' raw times."""
    per_round = [a / b for a, b in zip(numerator, denominator, strict=True)]
    assert ratio["median"] == pytest.approx(statistics.median(per_round), rel=1e-12)
    assert (ratio["min"], ratio["max"]) == pytest.approx((min(per_round), max(per_round)), rel=1e-12)


def cell(value: float, digits: int = 3) -> str:
    """A number as the benchmark tables print it."""
    from benchmarks.tables import format_number

    return format_number(value, digits)


def run_script(name: str, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / f"{name}.json"
    command = [sys.executable, "-m", f"benchmarks.{name}", *TINY, "--json-out", str(out), *extra]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == name
    assert payload["markdown"].strip() in result.stdout  # the table printed is the one saved
    machine = payload["machine"]
    assert {"cpu", "cpu_cores", "torch", "transformers", "gpu", "device", "dtype", "torch_threads"} <= set(machine)
    assert (
        machine["device"] == "cpu"
        and machine["dtype"] == "fp32"
        and machine["gpu"] is None
        and machine["torch_threads"] == 1
    )
    repeats = int(extra[extra.index("--repeats") + 1]) if "--repeats" in extra else 1  # the last --repeats wins
    assert payload["settings"]["repeats"] == repeats
    assert payload["settings"]["quick"] is True
    for item in payload["targets"]:
        assert set(item) == {"name", "target", "value", "limit", "met"}
        assert item["met"] == (
            item["value"] >= item["limit"] if item["target"].startswith(">=") else item["value"] <= item["limit"]
        )
    return payload


def table_rows(markdown: str, header_start: str) -> list[list[str]]:
    """The body rows of the markdown table whose header begins with `header_start`."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header_start}"))
    assert set(lines[start + 1].replace("|", "")) == {"-"}
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_region_throughput(tmp_path: Path) -> None:
    payload = run_script(
        "region_throughput", tmp_path, "--boxes", "1,3", "--images", "2", "--profile", "--repeats", "3"
    )
    for method in ("harmoclip", "crop_and_encode"):  # --profile: operator tables of the largest box count
        assert "aten::" in (tmp_path / f"region_throughput.profile.{method}-3boxes.txt").read_text()
    assert [row["boxes_per_image"] for row in payload["results"]] == [1, 3]
    table = table_rows(payload["markdown"], "boxes/image")
    for row, target_item, printed in zip(payload["results"], payload["targets"], table, strict=True):
        ours, theirs = check_summary(row["harmoclip"], 3), check_summary(row["crop_and_encode"], 3)
        check_ratio(row["speedup"], theirs, ours)  # speed-up = crop-and-encode time / HarmoCLIP time, round by round
        boxes = 2 * row["boxes_per_image"]
        assert row["images"] == 2
        assert row["harmoclip_boxes_per_s"] == pytest.approx(boxes / statistics.median(ours), rel=1e-12)
        assert row["crop_boxes_per_s"] == pytest.approx(boxes / statistics.median(theirs), rel=1e-12)
        assert target_item["value"] == row["speedup"]["median"] and target_item["limit"] == pytest.approx(
            0.9 * row["boxes_per_image"]
        )
        assert printed[:3] == [
            str(row["boxes_per_image"]),
            cell(row["harmoclip_boxes_per_s"]),
            cell(row["crop_boxes_per_s"]),
        ]
        assert printed[5].startswith(f"{row['speedup']['median']:.2f} (") and printed[7] == cell(target_item["met"])


def test_detection_throughput(tmp_path: Path) -> None:
    payload = run_script("detection_throughput", tmp_path, "--labels", "3", "--images", "2", "--repeats", "2")
    (row,) = payload["results"]
    ours, theirs = check_summary(row["harmoclip"], 2), check_summary(row["crop_and_encode"], 2)
    check_ratio(row["speedup"], theirs, ours)
    assert row["images"] == 2 and row["labels"] == 3 and 1 <= row["proposals_per_image"] <= 8
    assert row["harmoclip_images_per_s"] == pytest.approx(2 / statistics.median(ours), rel=1e-12)
    assert row["crop_images_per_s"] == pytest.approx(2 / statistics.median(theirs), rel=1e-12)
    (printed,) = table_rows(payload["markdown"], "proposals/image")
    assert printed[:4] == [
        cell(row["proposals_per_image"]),
        "3",
        cell(row["harmoclip_images_per_s"]),
        cell(row["crop_images_per_s"]),
    ]
    assert printed[6].startswith(f"{row['speedup']['median']:.2f} (")


def test_pipeline_throughput(tmp_path: Path) -> None:
    payload = run_script("pipeline_throughput", tmp_path, "--images", "3", "--batch-sizes", "1,2", "--repeats", "2")
    methods = [row["method"] for row in payload["results"]]
    assert methods == ["per image", "per image, labels encoded each call", "batch_size=1", "batch_size=2"]
    assert payload["settings"]["images"] == 3 and len(payload["settings"]["boxes_per_image"]) == 3
    per_image = check_summary(payload["results"][0]["time"], 2)
    table = table_rows(payload["markdown"], "geometry")
    for row, printed in zip(payload["results"], table, strict=True):
        seconds = check_summary(row["time"], 2)
        check_ratio(row["speedup_over_per_image"], per_image, seconds)
        assert row["images_per_s"] == pytest.approx(3 / statistics.median(seconds), rel=1e-12)
        assert printed[:3] == ["tiny", row["method"], cell(row["images_per_s"])]


def test_compile_speed(tmp_path: Path) -> None:
    payload = run_script("compile_speed", tmp_path, "--backend", "aot_eager", "--boxes", "3", "--repeats", "2")
    assert [row["method"] for row in payload["results"]] == ["get_region_features", "get_dense_features"]
    assert payload["settings"]["backend"] == "aot_eager" and payload["settings"]["images_per_call"] == 1
    table = table_rows(payload["markdown"], "call")
    for row, printed in zip(payload["results"], table, strict=True):
        eager, compiled = check_summary(row["eager"], 2), check_summary(row["compiled"], 2)
        check_ratio(row["speedup"], eager, compiled)
        assert row["max_abs_diff"] <= 1e-5 and row["compile_s"] > 0
        assert row["images_per_s_compiled"] == pytest.approx(1 / statistics.median(compiled), rel=1e-12)
        assert printed[:3] == [
            row["method"],
            cell(row["eager"]["median_s"] * 1e3),
            cell(row["compiled"]["median_s"] * 1e3),
        ]


def test_crop_and_encode_of_the_whole_image_is_the_image_embedding(tiny_model) -> None:
    from benchmarks.region_throughput import crop_and_encode

    pixel_values = torch.randn(2, 3, 32, 32)
    boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0], [0.25, 0.25, 0.75, 1.0]]]).repeat(2, 1, 1)
    with torch.no_grad():
        embeds = crop_and_encode(tiny_model, pixel_values, boxes, chunk_size=3)
        whole = F.normalize(tiny_model.get_image_features(pixel_values=pixel_values).pooler_output, dim=-1)
    assert embeds.shape == (2, 2, tiny_model.config.projection_dim)
    torch.testing.assert_close(
        embeds[:, 0], whole, atol=1e-5, rtol=1e-5
    )  # aligned RoIAlign of the full frame is the identity
    assert not torch.allclose(embeds[:, 1], whole, atol=1e-3)


def test_global_overhead(tmp_path: Path) -> None:
    payload = run_script("global_overhead", tmp_path, "--images", "2", "--captions", "4", "--repeats", "2")
    assert [row["tower"] for row in payload["results"]] == ["image", "text"]
    assert all(row["max_abs_difference"] == 0 for row in payload["results"])
    table = table_rows(payload["markdown"], "method")
    assert [row[0] for row in table] == ["get_image_features", "get_text_features"]
    for row, target_item, printed in zip(payload["results"], payload["targets"], table, strict=True):
        ours, theirs = check_summary(row["harmoclip"], 2), check_summary(row["clip"], 2)
        check_ratio(row["time_ratio"], ours, theirs)
        assert row["harmoclip_per_s"] == pytest.approx(row["batch"] / statistics.median(ours), rel=1e-12)
        assert row["clip_per_s"] == pytest.approx(row["batch"] / statistics.median(theirs), rel=1e-12)
        assert (target_item["value"], target_item["limit"]) == (row["time_ratio"]["median"], 1.02)
        assert target_item["met"] == (row["time_ratio"]["median"] <= 1.02)
        assert printed[2:4] == [cell(row["harmoclip_per_s"]), cell(row["clip_per_s"])]


def test_grounding_passes(tmp_path: Path) -> None:
    """Grounding with the model's proposals: one vision pass against the two of before, the same logits, and every
    figure of the table recomputed from the recorded rounds."""
    payload = run_script("grounding_passes", tmp_path, "--repeats", "2")
    one, two, speedup = payload["results"]
    assert (one["method"], one["vision_passes_per_image"]) == ("one pass", 1)
    assert (two["method"], two["vision_passes_per_image"]) == ("two passes", 2)
    assert payload["settings"]["max_logit_difference"] <= 1e-4
    ours, theirs = check_summary(one, 2), check_summary(two, 2)
    check_ratio(speedup["speedup"], theirs, ours)
    for row in (one, two):
        assert row["images_per_s"] == pytest.approx(row["images"] / row["median_s"], rel=1e-12)
    table = table_rows(payload["markdown"], "method")
    assert [row[:3] for row in table[:2]] == [
        ["one pass", "1", cell(one["images_per_s"])],
        ["two passes", "2", cell(two["images_per_s"])],
    ]


def test_train_step(tmp_path: Path) -> None:
    payload = run_script("train_step", tmp_path, "--batch-size", "2", "--boxes", "3")
    results = {row["variant"]: row for row in payload["results"]}
    assert list(results) == [
        "GC",
        "GC+RLA",
        "harmoclip frozen",
        "harmoclip cached",
        "GC+GR frozen",
        "GC+GR cached",
        "GC+LRC",
        "GC+LRC+GR cached",
    ]
    terms = {name: set(row["loss_terms"]) - {"loss"} for name, row in results.items()}
    assert terms == {
        "GC": {"loss_gc"},
        "GC+RLA": {"loss_gc", "loss_rla"},
        "harmoclip frozen": {"loss_gc", "loss_lrc", "loss_gr"},
        "harmoclip cached": {"loss_gc", "loss_lrc", "loss_gr"},
        "GC+GR frozen": {"loss_gc", "loss_gr"},
        "GC+GR cached": {"loss_gc", "loss_gr"},
        "GC+LRC": {"loss_gc", "loss_lrc"},
        "GC+LRC+GR cached": {"loss_gc", "loss_lrc", "loss_gr"},
    }
    assert payload["settings"]["boxes_in_batch"] == 6
    gc_seconds = check_summary(results["GC"]["step"], 1)
    assert payload["settings"]["gc_step_median_s"] == statistics.median(gc_seconds)
    for row in results.values():
        seconds = check_summary(row["step"], 1)
        check_ratio(row["time_ratio_to_gc"], seconds, gc_seconds)
        assert row["samples_per_s"] == pytest.approx(2 / statistics.median(seconds), rel=1e-12)
        assert row["memory"]["peak_bytes"] >= row["memory"]["static_bytes"]
        assert row["memory_ratio_to_gc"] == pytest.approx(
            row["memory"]["peak_bytes"] / results["GC"]["memory"]["peak_bytes"]
        )
    assert results["GC"]["time_ratio_to_gc"] == {"median": 1.0, "min": 1.0, "max": 1.0}
    cached = results["harmoclip cached"]
    assert [t["value"] for t in payload["targets"]] == [
        cached["time_ratio_to_gc"]["median"],
        cached["memory_ratio_to_gc"],
    ]
    assert [t["name"] for t in payload["targets"]] == [
        "harmoclip cached step time / GC-only",
        "harmoclip cached peak memory / GC-only",
    ]
    assert len(table_rows(payload["markdown"], "variant")) == 8


def test_train_step_variants_subset_and_the_shipped_recipe(tmp_path: Path) -> None:
    """`--variants` runs a subset (GC always, as the baseline); "harmoclip frozen" is TrainConfig's default recipe."""
    from benchmarks.train_step import VARIANTS, selected_variants
    from training.config import TrainConfig

    defaults = TrainConfig()
    shipped = VARIANTS["harmoclip frozen"]
    assert {key: getattr(defaults, key) for key in shipped} == shipped
    assert selected_variants("GC+RLA") == ["GC", "GC+RLA"]
    with pytest.raises(ValueError, match=r"--variants: unknown variant\(s\) \['GC\+XYZ'\]"):
        selected_variants("GC+XYZ")
    payload = run_script(
        "train_step", tmp_path, "--batch-size", "2", "--boxes", "2", "--variants", "GC+RLA", "--skip-memory"
    )
    assert [row["variant"] for row in payload["results"]] == ["GC", "GC+RLA"]
    assert payload["targets"] == []


def test_the_cached_teacher_holds_the_frozen_teachers_targets(tmp_path: Path) -> None:
    """The cached variant reads real cache entries: those of the frozen teacher (the starting weights) for the batch."""
    from argparse import Namespace

    from benchmarks.train_step import StepRunner, variant_config, write_region_manifest
    from training.cache_teacher import build_teacher_cache_folder
    from training.train import teacher_targets

    args = Namespace(preset="tiny", seed=0, batch_size=2, boxes=3, dtype_name="fp32")
    manifest = write_region_manifest(tmp_path / "data", 2, 3, 64, seed=0)
    assert [len(json.loads(line)["regions"]) for line in manifest.read_text().splitlines()] == [3, 3]
    cache_dir = tmp_path / "cache"
    build_teacher_cache_folder(variant_config(args, "GC+GR cached", manifest, cache_dir), cache_dir, batch_size=2)
    names = ["GC+GR frozen", "GC+GR cached"]
    runner = StepRunner({name: variant_config(args, name, manifest, cache_dir) for name in names}, torch.device("cpu"))
    frozen, cached = (
        teacher_targets(
            runner.configs[name], runner.batch, runner.teacher, runner.unwrapped, runner.cache, runner.accelerator
        )
        for name in names
    )
    assert frozen.shape == cached.shape == (2, 3, runner.unwrapped.config.projection_dim)
    torch.testing.assert_close(cached, frozen, atol=1e-5, rtol=1e-4)


def test_phrase_extraction(tmp_path: Path) -> None:
    payload = run_script("phrase_extraction", tmp_path, "--captions", "20", "--repeats", "2")
    batched, single = payload["results"]
    batched_seconds, single_seconds = check_summary(batched, 2), check_summary(single, 2)
    assert batched["captions_per_s"] == pytest.approx(20 / statistics.median(batched_seconds), rel=1e-12)
    assert single["captions_per_s"] == pytest.approx(20 / statistics.median(single_seconds), rel=1e-12)
    check_ratio(payload["settings"]["speedup"], single_seconds, batched_seconds)
    assert payload["settings"]["captions"] == 20 and payload["settings"]["phrases_per_caption"] >= 2
    table = table_rows(payload["markdown"], "method")
    assert [row[1] for row in table] == [cell(batched["captions_per_s"]), cell(single["captions_per_s"])]
    assert table[0][3].startswith(f"{payload['settings']['speedup']['median']:.2f} (")


def test_data_loading(tmp_path: Path) -> None:
    payload = run_script(
        "data_loading", tmp_path, "--num-train", "8", "--batch-size", "4", "--workers", "0", "--steps-per-round", "1"
    )
    methods = [row["method"] for row in payload["results"]]
    assert methods == ["loader, 0 workers", "training step"]
    loader, step = payload["results"]
    loader_seconds, step_seconds = check_summary(loader, 1), check_summary(step, 1)
    samples_per_epoch = 8  # 8 images in batches of 4, none dropped
    assert loader["samples_per_s"] == pytest.approx(samples_per_epoch / statistics.median(loader_seconds), rel=1e-12)
    assert step["samples_per_s"] == pytest.approx(1 * 4 / statistics.median(step_seconds), rel=1e-12)  # 1 step of 4
    assert loader["ratio_to_step"] == pytest.approx(loader["samples_per_s"] / step["samples_per_s"], rel=1e-12)
    # With 0 workers loading and stepping alternate: the share of a sample's time spent loading.
    per_sample_loading, per_sample_step = 1 / loader["samples_per_s"], 1 / step["samples_per_s"]
    assert loader["loading_share_of_loop"] == pytest.approx(
        per_sample_loading / (per_sample_loading + per_sample_step), rel=1e-12
    )
    assert payload["targets"][0]["value"] == loader["ratio_to_step"]
    assert set(step["loss_terms"]) == {"loss", "loss_gc", "loss_gr"}  # the losses it measures: GC+GR (`LOSSES`)


def test_data_loading_full_pipeline(tmp_path: Path) -> None:
    payload = run_script(
        "data_loading",
        tmp_path,
        "--pipeline",
        "jpeg224",
        "--num-train",
        "8",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--source-size",
        "48",
    )
    assert [row["method"] for row in payload["results"]] == [
        "JPEG files (JSONL), 0 workers",
        "COCO files, spaCy in the loader, 0 workers",
        "Parquet shards, map-style, 0 workers",
        "Parquet shards, streamed, 0 workers",
    ]
    for row in payload["results"]:  # 2 batches of 4 per round
        assert (
            row["samples_per_s"] == pytest.approx(8 / row["median_s"])
            and row["samples_per_s_per_worker"] == row["samples_per_s"]
        )
        assert row["samples_per_cpu_second"] > 0
    assert payload["settings"]["input_size"] == 224 and payload["settings"]["prepare_samples_per_s"] > 0


def test_run_all_writes_one_report(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "benchmarks.run_all",
        "--quick",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--only",
        "phrase_extraction,global_overhead",
        "--output-dir",
        str(tmp_path),
    ]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    summary = json.loads((tmp_path / "results.json").read_text())
    assert list(summary["results"]) == ["phrase_extraction", "global_overhead"]
    assert summary["targets"] == summary["results"]["global_overhead"]["targets"]
    report = (tmp_path / "results.md").read_text()
    assert report.startswith("## Benchmark results") and "### phrase_extraction" in report and "### Targets" in report
    assert (tmp_path / "phrase_extraction.json").is_file() and (tmp_path / "global_overhead.json").is_file()


def test_run_all_refuses_unknown_benchmarks(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "benchmarks.run_all",
        "--only",
        "nonsense",
        "--output-dir",
        str(tmp_path),
    ]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "nonsense" in result.stderr


def test_owlv2_detection(tmp_path: Path) -> None:
    payload = run_script("owlv2_detection", tmp_path, "--images", "2", "--labels", "3", "--repeats", "2")
    assert payload["settings"]["images"] == 2 and len(payload["settings"]["labels"]) == 3
    assert [row["method"] for row in payload["results"]] == ["harmoclip_own_size", "harmoclip_owlv2_size"]
    printed = table_rows(payload["markdown"], "HarmoCLIP input")
    assert len(printed) == 2
    for row, line in zip(payload["results"], printed, strict=True):
        ours, owl = check_summary(row["harmoclip"], 2), check_summary(row["owlv2"], 2)
        check_ratio(row["speedup"], owl, ours)
        assert row["harmoclip_images_per_s"] == pytest.approx(2 / statistics.median(ours), rel=1e-12)
        assert row["owlv2_images_per_s"] == pytest.approx(2 / statistics.median(owl), rel=1e-12)
        assert line[:4] == [
            f"{row['harmoclip_input_size']} px",
            f"{row['owlv2_input_size']} px",
            cell(row["harmoclip_images_per_s"]),
            cell(row["owlv2_images_per_s"]),
        ]
        assert line[4].startswith(f"{row['speedup']['median']:.2f} (")
    # The same OWLv2 times in both rows: one run, one OWLv2 pipeline.
    assert payload["results"][0]["owlv2"] == payload["results"][1]["owlv2"]
