"""The harness every timing benchmark runs in (`benchmarks/harness.py`), on a toy spec without a model: the options
it adds, what it resolves before `measure`, the markdown it prints and the JSON it writes, a mistake in one line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from benchmarks.harness import BenchmarkSpec, Measurement
from benchmarks.tables import ratio_cell, spread_cell, target
from benchmarks.timing import ratio_summary, summarize, time_side_by_side

CPU = ["--device", "cpu", "--threads", "1"]


def toy_spec(seen: list[argparse.Namespace], measurement: Measurement | None = None) -> BenchmarkSpec:
    """A benchmark that records the options it was given and returns `measurement` (by default a one-row table)."""

    def measure(args: argparse.Namespace) -> Measurement | None:
        seen.append(args)
        if measurement is not None or args.size == 0:
            return measurement
        goal = target("toy ratio", "<= 1.5", 1.25, 1.5, False)
        return Measurement(
            ["size", "ratio"], [[args.size, 1.25]], [{"size": args.size}], {"size": args.size}, ["a note"], [goal]
        )

    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--size", type=int, default=3)

    return BenchmarkSpec("toy", "Toy: measures nothing.\n\nMore.", measure, options, cpu_repeats=5, model_preset=True)


def test_a_spec_runs_as_a_command_with_the_common_options(tmp_path: Path, capsys) -> None:
    seen: list[argparse.Namespace] = []
    out = tmp_path / "toy.json"
    assert toy_spec(seen).main([*CPU, "--json-out", str(out), "--size", "4"]) == 0
    (args,) = seen
    assert (str(args.device), args.dtype_name, args.threads, args.repeats, args.warmup) == ("cpu", "fp32", 1, 5, 1)
    assert args.preset == "vit-b-16" and args.json_out == out
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == "toy" and payload["results"] == [{"size": 4}]
    assert payload["settings"] == {"size": 4, "repeats": 5, "warmup": 1, "quick": False, "seed": 0}
    assert payload["machine"]["device"] == "cpu" and payload["machine"]["torch_threads"] == 1
    assert payload["targets"] == [{"name": "toy ratio", "target": "<= 1.5", "value": 1.25, "limit": 1.5, "met": True}]
    markdown = payload["markdown"]
    assert markdown.startswith("### toy\n\n| size | ratio |\n|---|---|\n| 4 | 1.25 |\n")
    assert "| toy ratio | <= 1.5 | 1.25 | yes |" in markdown and "\na note\n" in markdown and "\nMachine: " in markdown
    assert markdown.strip() in capsys.readouterr().out


def test_quick_runs_the_tiny_geometry_with_fewer_rounds(tmp_path: Path) -> None:
    seen: list[argparse.Namespace] = []
    assert toy_spec(seen).main([*CPU, "--quick", "--json-out", str(tmp_path / "t.json")]) == 0
    assert seen[0].preset == "tiny" and seen[0].repeats == 2
    assert (
        toy_spec(seen).main([*CPU, "--quick", "--model-preset", "vit-b-16", "--json-out", str(tmp_path / "t.json")])
        == 0
    )
    assert seen[1].preset == "vit-b-16"


def test_a_measurement_of_none_writes_nothing(tmp_path: Path) -> None:
    """train_step's child process writes its own file: the harness then prints and writes nothing."""
    seen: list[argparse.Namespace] = []
    assert toy_spec(seen).main([*CPU, "--size", "0", "--json-out", str(tmp_path / "t.json")]) == 0
    assert len(seen) == 1 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--repeats", "0"], "--repeats must be >= 1 and --warmup >= 0, got 0 and 1"),
        (["--threads", "0"], "--threads must be >= 1 or auto, got '0'"),
        (["--device", "mps"], "--device must be cpu, cuda, cuda:N or auto, got 'mps'"),
        (["--model-preset", "huge"], "argument --model-preset: invalid choice: 'huge'"),
    ],
)
def test_a_mistake_is_one_line_and_nothing_runs(argv: list[str], fragment: str, capsys) -> None:
    seen: list[argparse.Namespace] = []
    assert toy_spec(seen).main(["--device", "cpu", *argv]) in (1, 2)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0]
    assert seen == []


def test_side_by_side_rounds_rotate_and_the_cells_show_their_figures() -> None:
    calls: list[str] = []
    methods = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = time_side_by_side(methods, torch.device("cpu"), repeats=3, warmup=1)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")  # warm-up, then a rotating start
    assert {name: len(seconds) for name, seconds in times.items()} == {"a": 3, "b": 3, "c": 3}
    ratio = ratio_summary([2.0, 3.0, 8.0], [1.0, 1.0, 2.0])
    assert ratio == {"median": 3.0, "min": 2.0, "max": 4.0}
    assert ratio_cell(ratio) == "3.00 (2.00-4.00)" and ratio_cell(ratio, 3, range_digits=1) == "3.000 (2.0-4.0)"
    assert spread_cell(summarize([1.0, 2.0, 3.0]), summarize([1.0, 1.0, 1.0])) == "100%"
