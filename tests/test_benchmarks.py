"""The benchmark scripts run end to end with tiny sizes and write well-formed results (speed is never asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
TINY = ["--quick", "--device", "cpu", "--threads", "1", "--repeats", "1", "--warmup", "0"]


def run_script(name: str, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / f"{name}.json"
    command = [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *TINY, "--json-out", str(out), *extra]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == name
    assert payload["markdown"].strip() in result.stdout  # the table printed is the one saved
    machine = payload["machine"]
    assert {"cpu", "cpu_cores", "torch", "transformers", "gpu", "device", "dtype", "torch_threads"} <= set(machine)
    assert machine["device"] == "cpu" and machine["dtype"] == "fp32" and machine["gpu"] is None and machine["torch_threads"] == 1
    assert payload["settings"]["repeats"] == 1 and payload["settings"]["quick"] is True
    for item in payload["targets"]:
        assert set(item) == {"name", "target", "value", "limit", "met"}
        assert item["met"] == (item["value"] >= item["limit"] if item["target"].startswith(">=") else item["value"] <= item["limit"])
    return payload


def table_rows(markdown: str, header_start: str) -> list[list[str]]:
    """The body rows of the markdown table whose header begins with `header_start`."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header_start}"))
    assert set(lines[start + 1].replace("|", "")) == {"-"}
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_region_throughput(tmp_path: Path) -> None:
    payload = run_script("region_throughput", tmp_path, "--boxes", "1,3", "--images", "2", "--profile")
    for method in ("harmoclip", "crop_and_encode"):  # --profile: operator tables of the largest box count
        assert "aten::" in (tmp_path / f"region_throughput.profile.{method}-3boxes.txt").read_text()
    assert [row["boxes_per_image"] for row in payload["results"]] == [1, 3]
    for row in payload["results"]:
        assert row["images"] == 2 and row["speedup"]["median"] > 0
        assert row["harmoclip_boxes_per_s"] == pytest.approx(2 * row["boxes_per_image"] / row["harmoclip"]["median_s"])
    assert [t["limit"] for t in payload["targets"]] == pytest.approx([0.9, 2.7])
    assert [row[0] for row in table_rows(payload["markdown"], "boxes/image")] == ["1", "3"]


def test_crop_and_encode_of_the_whole_image_is_the_image_embedding(tiny_model) -> None:
    from benchmarks.region_throughput import crop_and_encode

    pixel_values = torch.randn(2, 3, 32, 32)
    boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0], [0.25, 0.25, 0.75, 1.0]]]).repeat(2, 1, 1)
    with torch.no_grad():
        embeds = crop_and_encode(tiny_model, pixel_values, boxes, chunk_size=3)
        whole = F.normalize(tiny_model.get_image_features(pixel_values=pixel_values).pooler_output, dim=-1)
    assert embeds.shape == (2, 2, tiny_model.config.projection_dim)
    torch.testing.assert_close(embeds[:, 0], whole, atol=1e-5, rtol=1e-5)  # aligned RoIAlign of the full frame is the identity
    assert not torch.allclose(embeds[:, 1], whole, atol=1e-3)


def test_global_overhead(tmp_path: Path) -> None:
    payload = run_script("global_overhead", tmp_path, "--images", "2", "--captions", "4")
    assert [row["tower"] for row in payload["results"]] == ["image", "text"]
    assert all(row["max_abs_difference"] == 0 for row in payload["results"])
    assert [t["limit"] for t in payload["targets"]] == [1.02, 1.02]
    assert [row[0] for row in table_rows(payload["markdown"], "method")] == ["get_image_features", "get_text_features"]


def test_train_step(tmp_path: Path) -> None:
    payload = run_script("train_step", tmp_path, "--batch-size", "2", "--boxes", "3")
    results = {row["variant"]: row for row in payload["results"]}
    assert list(results) == ["GC", "GC+LRC", "GC+LRC+GR frozen", "GC+LRC+GR cached"]
    terms = {name: set(row["loss_terms"]) - {"loss"} for name, row in results.items()}
    assert terms == {"GC": {"loss_gc"}, "GC+LRC": {"loss_gc", "loss_lrc"}, "GC+LRC+GR frozen": {"loss_gc", "loss_lrc", "loss_gr"},
                     "GC+LRC+GR cached": {"loss_gc", "loss_lrc", "loss_gr"}}
    assert payload["settings"]["boxes_in_batch"] == 6
    for row in results.values():
        assert row["memory"]["peak_bytes"] >= row["memory"]["static_bytes"] > 0
        assert row["memory_ratio_to_gc"] == pytest.approx(row["memory"]["peak_bytes"] / results["GC"]["memory"]["peak_bytes"])
    assert results["GC"]["time_ratio_to_gc"]["median"] == 1.0
    assert [t["name"] for t in payload["targets"]] == ["cached HarmoCLIP step time / GC-only", "cached HarmoCLIP peak memory / GC-only"]
    assert len(table_rows(payload["markdown"], "variant")) == 4


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
    build_teacher_cache_folder(variant_config(args, "GC+LRC+GR cached", manifest, cache_dir), cache_dir, batch_size=2)
    names = ["GC+LRC+GR frozen", "GC+LRC+GR cached"]
    runner = StepRunner({name: variant_config(args, name, manifest, cache_dir) for name in names}, torch.device("cpu"))
    frozen, cached = (teacher_targets(runner.configs[name], runner.batch, runner.teacher, runner.unwrapped, runner.cache,
                                      runner.accelerator) for name in names)
    assert frozen.shape == cached.shape == (2, 3, runner.unwrapped.config.projection_dim)
    torch.testing.assert_close(cached, frozen, atol=1e-5, rtol=1e-4)


def test_phrase_extraction(tmp_path: Path) -> None:
    payload = run_script("phrase_extraction", tmp_path, "--captions", "20")
    assert [row["captions_per_s"] > 0 for row in payload["results"]] == [True, True]
    assert payload["settings"]["captions"] == 20 and payload["settings"]["phrases_per_caption"] >= 2
    assert len(table_rows(payload["markdown"], "method")) == 2


def test_data_loading(tmp_path: Path) -> None:
    payload = run_script("data_loading", tmp_path, "--num-train", "8", "--batch-size", "4", "--workers", "0",
                         "--steps-per-round", "1")
    methods = [row["method"] for row in payload["results"]]
    assert methods == ["loader, 0 workers", "training step"]
    loader, step = payload["results"]
    assert loader["ratio_to_step"] == pytest.approx(loader["samples_per_s"] / step["samples_per_s"])
    assert 0 < loader["loading_share_of_loop"] < 1
    assert set(step["loss_terms"]) == {"loss", "loss_gc", "loss_lrc", "loss_gr"}  # the shipped config: all three terms


def test_run_all_writes_one_report(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick", "--device", "cpu", "--threads", "1",
               "--only", "phrase_extraction,global_overhead", "--output-dir", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    summary = json.loads((tmp_path / "results.json").read_text())
    assert list(summary["results"]) == ["phrase_extraction", "global_overhead"]
    assert summary["targets"] == summary["results"]["global_overhead"]["targets"]
    report = (tmp_path / "results.md").read_text()
    assert report.startswith("## Benchmark results") and "### phrase_extraction" in report and "### Targets" in report
    assert (tmp_path / "phrase_extraction.json").is_file() and (tmp_path / "global_overhead.json").is_file()


def test_run_all_refuses_unknown_benchmarks(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--only", "nonsense", "--output-dir", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "nonsense" in result.stderr
