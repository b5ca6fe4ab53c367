"""The one harness every timing benchmark runs in.

A benchmark is a `BenchmarkSpec`: its name and description, its own options, its default number of rounds and its
`measure` function, which builds its inputs and methods, times them side by side (`benchmarks/timing.py`) and returns
a `Measurement` (its JSON results, its table, its targets, its settings and notes). The harness does the rest alike
for all of them: the command line (`--device`, `--dtype`, `--repeats`, `--warmup`, `--quick`, `--threads`, `--seed`,
`--profile`, `--json-out`, and `--model-preset` for the benchmarks with a model geometry), the device, precision,
threads and rounds, then the markdown (the table, the targets, the notes, the machine) printed and the JSON written,
and a user's mistake answered in one line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.machine import describe_machine, machine_info
from benchmarks.tables import markdown_table, targets_table
from benchmarks.timing import synchronize
from plumbing.atomic_files import write_text_atomic
from plumbing.command_line import CommandParser, run_command
from training.config import PROJECT_ROOT

DEFAULT_OUTPUT_DIR = PROJECT_ROOT / "outputs" / "benchmarks"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODEL_PRESETS = ("vit-b-16", "tiny")


@dataclass
class Measurement:
    """What a benchmark measured: the JSON results, the table (`columns` and one row per line), the targets, the
    settings it ran with and the notes printed under the table."""

    columns: Sequence[str]
    rows: list[list[Any]]
    results: list[dict[str, Any]]
    settings: dict[str, Any]
    notes: list[str]
    targets: list[dict[str, Any]] = field(default_factory=list)


def no_options(parser: argparse.ArgumentParser) -> None:
    """A benchmark without options of its own."""


@dataclass(frozen=True)
class BenchmarkSpec:
    """One timing benchmark: what is its own. `measure` gets the parsed options with `device` (torch.device), `dtype`
    (torch dtype) and `dtype_name`, `threads`, `repeats`, `json_out` and, with `model_preset`, `preset` resolved; it
    returns its `Measurement`, or None where it wrote its own output (train_step's memory, measured in a child
    process)."""

    name: str  # the JSON's "benchmark", the table's title and the default <name>.json
    description: str  # the module's docstring: its first paragraph is the command's --help
    measure: Callable[[argparse.Namespace], Measurement | None]
    options: Callable[[argparse.ArgumentParser], None] = no_options
    cpu_repeats: int = 3
    cuda_repeats: int = 10  # a GPU is quicker and less disturbed by other processes: more rounds
    quick_repeats: int = 2
    warmup: int = 1
    model_preset: bool = False  # takes --model-preset vit-b-16 or tiny (default vit-b-16, tiny with --quick)

    def parser(self) -> CommandParser:
        """The command line: the options every benchmark takes, then the benchmark's own."""
        parser = CommandParser(description=self.description.split("\n\n")[0])
        add_common_arguments(parser, self.cpu_repeats, self.cuda_repeats, self.warmup)
        if self.model_preset:
            parser.add_argument(
                "--model-preset", default=None, choices=list(MODEL_PRESETS), help="default vit-b-16 (--quick: tiny)"
            )
        self.options(parser)
        return parser

    def run(self, args: argparse.Namespace) -> dict[str, Any]:
        """Measures with the parsed options `args`; prints the markdown, writes the JSON and returns the result."""
        args = resolve_common(args, self.quick_repeats)
        args.json_out = args.json_out or DEFAULT_OUTPUT_DIR / f"{self.name}.json"
        if self.model_preset:
            args.preset = args.model_preset or ("tiny" if args.quick else "vit-b-16")
        measurement = self.measure(args)
        return {} if measurement is None else finish(self.name, args, measurement)

    def main(self, argv: Sequence[str] | None = None) -> int:
        """`python -m benchmarks.<name>`; returns the exit code (a user's mistake: one line `error: ...`)."""
        return run_command(lambda: self.run(self.parser().parse_args(argv)))


# ---------------------------------------------------------------- options


def add_common_arguments(parser: argparse.ArgumentParser, cpu_repeats: int, cuda_repeats: int, warmup: int) -> None:
    """Options every benchmark takes; the default number of rounds depends on the device."""
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when present; default)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", *DTYPES],
        help="autocast precision: auto = bf16 on CUDA, fp32 on the CPU",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"timed rounds (default {cpu_repeats} on the CPU, {cuda_repeats} on CUDA; fewer with --quick)",
    )
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed calls of each method first")
    parser.add_argument("--quick", action="store_true", help="small sizes and few rounds: checks that everything runs")
    parser.add_argument(
        "--threads",
        default="auto",
        help="CPU threads for torch: a number, or auto = 1 when the machine's load average already "
        "fills its cores (OpenMP threads then stall each other), else torch's default",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also run each method once under torch.profiler; tables written beside the JSON",
    )
    parser.add_argument(
        "--json-out",
        type=Path,
        default=None,
        help=f"where to write the JSON result (default {DEFAULT_OUTPUT_DIR.relative_to(PROJECT_ROOT)}/<benchmark>.json)",
    )
    parser.set_defaults(cpu_repeats=cpu_repeats, cuda_repeats=cuda_repeats)


def resolve_common(args: argparse.Namespace, quick_repeats: int = 2) -> argparse.Namespace:
    """Fills `device` (torch.device), `dtype` (torch dtype), `dtype_name`, `threads` and `repeats` from the options."""
    name = args.device if isinstance(args.device, str) else str(args.device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu, cuda, cuda:N or auto, got {name!r}")
    dtype_name = args.dtype if args.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    args.device, args.dtype_name, args.dtype = device, dtype_name, DTYPES[dtype_name]
    args.threads = set_threads(args.threads)
    if args.repeats is None:
        args.repeats = quick_repeats if args.quick else args.cuda_repeats if device.type == "cuda" else args.cpu_repeats
    if args.repeats < 1 or args.warmup < 0:
        raise ValueError(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")
    return args


def set_threads(threads: str | int) -> int:
    """Applies `--threads` (a number or "auto") to torch; returns the number of threads used."""
    if str(threads) == "auto":
        busy = hasattr(os, "getloadavg") and os.getloadavg()[0] >= (os.cpu_count() or 1)
        count = 1 if busy else torch.get_num_threads()
    else:
        count = int(threads)
        if count < 1:
            raise ValueError(f"--threads must be >= 1 or auto, got {threads!r}")
    torch.set_num_threads(count)
    return count


# ---------------------------------------------------------------- the methods' precision


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device` (nothing for float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def inference(
    args: argparse.Namespace, function: Callable[..., Any], *inputs: Any, **options: Any
) -> Callable[[], Any]:
    """A method to time: `function(*inputs, **options)` under `torch.no_grad()` and the benchmark's autocast."""

    def call() -> Any:
        with torch.no_grad(), autocast(args.device, args.dtype):
            return function(*inputs, **options)

    return call


# ---------------------------------------------------------------- the result


def finish(name: str, args: argparse.Namespace, measurement: Measurement) -> dict[str, Any]:
    """Assembles the result, prints its markdown, writes its JSON; returns the result."""
    info = machine_info(args.device, args.dtype_name)
    markdown = f"### {name}\n\n{markdown_table(measurement.columns, measurement.rows)}\n"
    if measurement.targets:
        markdown += "\n" + targets_table(measurement.targets) + "\n"
    for note in measurement.notes:
        markdown += f"\n{note}\n"
    markdown += f"\nMachine: {describe_machine(info)}.\n"
    payload = {
        "benchmark": name,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
        "machine": info,
        "settings": {
            **measurement.settings,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "quick": args.quick,
            "seed": args.seed,
        },
        "results": measurement.results,
        "targets": measurement.targets,
        "notes": measurement.notes,
        "markdown": markdown,
    }
    print(markdown)
    write_json(args.json_out, payload)
    return payload


def write_json(path: Path, payload: Any) -> None:
    """Writes `payload` as JSON, atomically (temporary file renamed into place)."""
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


# ---------------------------------------------------------------- profiling


def write_profiles(args: argparse.Namespace, methods: dict[str, Callable[[], Any]], device: torch.device) -> None:
    """With `--profile`: each method run once under `torch.profiler`, its operator table (sorted by self time on the
    device that does the work) written beside the JSON as `<json stem>.profile.<method>.txt` (`+`, `, ` and spaces
    of the method's name made `_`). Used to find why a target is missed."""
    if not args.profile:
        return
    from torch.profiler import ProfilerActivity, profile

    json_path = Path(args.json_out)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for method, function in methods.items():
        slug = method.replace("+", "_").replace(", ", "_").replace(" ", "_")
        synchronize(device)
        with profile(activities=activities, record_shapes=True) as profiler:
            function()
            synchronize(device)
        table = profiler.key_averages().table(sort_by=sort_by, row_limit=30)
        write_text_atomic(json_path.with_name(f"{json_path.stem}.profile.{slug}.txt"), table + "\n")
