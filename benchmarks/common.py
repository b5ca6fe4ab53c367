"""Shared pieces of the benchmarks: command-line options, devices and precision, side-by-side timing, statistics,
the machine description, markdown tables and JSON results (the models and captions they run on: `benchmarks/inputs.py`).

Timing rules (every script follows them): each method runs `warmup` untimed calls, then `repeats` timed rounds in
which every method runs once, the order rotating from round to round, so that slow phases of a shared machine hit
all methods alike. On CUDA the device is synchronised before the clock starts and before it stops. A time is the
median of its rounds, the spread is (max - min) / median, and a ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

# Re-exported: the benchmarks' models and captions live in benchmarks/inputs.py.
from benchmarks.inputs import build_model as build_model
from benchmarks.inputs import model_config_for as model_config_for
from benchmarks.inputs import sample_captions as sample_captions
from benchmarks.inputs import vitb16_config as vitb16_config
from plumbing.atomic_files import write_text_atomic
from plumbing.command_line import run_command

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT_DIR = ROOT / "outputs" / "benchmarks"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ---------------------------------------------------------------- options


def add_common_arguments(parser: argparse.ArgumentParser, cpu_repeats: int, cuda_repeats: int, warmup: int = 1) -> None:
    """Options every benchmark takes; the default number of rounds depends on the device (a GPU is quicker and less
    disturbed by other processes, so it gets more rounds)."""
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
        help=f"where to write the JSON result (default {DEFAULT_OUTPUT_DIR.relative_to(ROOT)}/<benchmark>.json)",
    )
    parser.set_defaults(cpu_repeats=cpu_repeats, cuda_repeats=cuda_repeats)


def resolve_common(args: argparse.Namespace, quick_repeats: int = 2) -> argparse.Namespace:
    """Fills `device` (torch.device), `dtype` (torch dtype) and `repeats` from the options."""
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


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device` (nothing for float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- timing


def time_call(function: Callable[[], Any], device: torch.device) -> float:
    """Seconds one call of `function` takes, the device's queued work included."""
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def time_side_by_side(
    methods: dict[str, Callable[[], Any]],
    device: torch.device,
    repeats: int,
    warmup: int = 1,
    progress: str | None = None,
) -> dict[str, list[float]]:
    """Times several methods in alternating rounds; returns {method: [seconds of each round]}.

    Every method first runs `warmup` untimed calls; then each round runs every method once, starting one method
    further along each round (A B C, B C A, C A B, ...), so drifts of the machine's load spread evenly.
    """
    names = list(methods)
    for _ in range(warmup):
        for name in names:
            time_call(methods[name], device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            times[name].append(time_call(methods[name], device))
        if progress:
            print(
                f"[{progress}] round {round_index + 1}/{repeats}: "
                + ", ".join(f"{name} {times[name][-1]:.3f}s" for name in names),
                file=sys.stderr,
                flush=True,
            )
    return times


def summarize(seconds: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and relative spread ((max - min) / median) of a list of times, with the times themselves
    (`seconds`, in round order: every figure of the results can be recomputed from them)."""
    median = statistics.median(seconds)
    return {
        "median_s": median,
        "min_s": min(seconds),
        "max_s": max(seconds),
        "spread": (max(seconds) - min(seconds)) / median if median > 0 else 0.0,
        "rounds": len(seconds),
        "seconds": list(seconds),
    }


def ratio_summary(numerator: Sequence[float], denominator: Sequence[float]) -> dict[str, float]:
    """Per-round ratios numerator / denominator (both from the same rounds): median, min, max."""
    ratios = [a / b for a, b in zip(numerator, denominator)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


# ---------------------------------------------------------------- memory


def current_rss_bytes() -> int:
    """This process's resident set size now (bytes; Linux /proc, else the peak so far)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return peak_rss_bytes()


class RssSampler:
    """Highest RSS seen while the `with` block runs (a thread samples /proc every `interval` seconds). Used only where
    nothing is being timed: the sampling thread takes the interpreter lock now and then."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self._stop = interval, 0, None

    def __enter__(self) -> RssSampler:
        import threading

        self._stop = threading.Event()
        self.peak = current_rss_bytes()

        def sample() -> None:
            while not self._stop.wait(self.interval):
                self.peak = max(self.peak, current_rss_bytes())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_bytes())


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB, macOS bytes


# ---------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device, dtype_name: str) -> dict[str, Any]:
    """What the numbers were measured on."""
    import transformers

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "dtype": dtype_name,
        "gpu": None,
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(
            gpu=torch.cuda.get_device_name(device),
            gpu_memory_gib=round(properties.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
        )
    return info


def describe_machine(info: dict[str, Any]) -> str:
    """One line: CPU, cores, GPU, versions, device and precision."""
    gpu = f", GPU {info['gpu']} ({info.get('gpu_memory_gib')} GiB, CUDA {info.get('cuda')})" if info.get("gpu") else ""
    load = f", load average {info['load_average_1min']} at start" if info.get("load_average_1min") is not None else ""
    return (
        f"{info['cpu']} ({info['cpu_cores']} cores, torch threads {info['torch_threads']}){gpu}; "
        f"Python {info['python']}, torch {info['torch']}, transformers {info['transformers']}; "
        f"device {info['device']}, {info['dtype']}{load}"
    )


# ---------------------------------------------------------------- tables and results


def format_number(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "**no**", None: "-"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value == 0:
            return "0"
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 100:
            return f"{value:.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; numbers formatted to about three significant digits."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(format_number(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def target(name: str, description: str, value: float, limit: float, higher_is_better: bool) -> dict[str, Any]:
    """A target check: `value` against `limit` (at least it, or at most it)."""
    met = value >= limit if higher_is_better else value <= limit
    return {"name": name, "target": description, "value": value, "limit": limit, "met": bool(met)}


def targets_table(targets: Sequence[dict[str, Any]]) -> str:
    return markdown_table(
        ["target", "wanted", "measured", "met"], [[t["name"], t["target"], t["value"], t["met"]] for t in targets]
    )


def finish(
    name: str,
    args: argparse.Namespace,
    settings: dict[str, Any],
    results: list[dict[str, Any]],
    table: str,
    targets: list[dict[str, Any]],
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """Assembles the result, prints its markdown, writes its JSON; returns the result."""
    info = machine_info(args.device, args.dtype_name)
    markdown = f"### {name}\n\n{table}\n"
    if targets:
        markdown += "\n" + targets_table(targets) + "\n"
    for note in notes or []:
        markdown += f"\n{note}\n"
    markdown += f"\nMachine: {describe_machine(info)}.\n"
    payload = {
        "benchmark": name,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
        "machine": info,
        "settings": {
            **settings,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "quick": args.quick,
            "seed": args.seed,
        },
        "results": results,
        "targets": targets,
        "notes": notes or [],
        "markdown": markdown,
    }
    print(markdown)
    write_json(args.json_out or DEFAULT_OUTPUT_DIR / f"{name}.json", payload)
    return payload


def write_json(path: Path, payload: Any) -> None:
    """Writes `payload` as JSON, atomically (temporary file renamed into place)."""
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


@contextlib.contextmanager
def temporary_folder(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        yield Path(folder)


# ---------------------------------------------------------------- profiling


def write_profile(function: Callable[[], Any], device: torch.device, path: Path, row_limit: int = 30) -> Path:
    """Runs `function` once under `torch.profiler` and writes the operator table (sorted by self time on the device
    that does the work) to `path`; returns it. Used with `--profile` to find why a target is missed."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    with profile(activities=activities, record_shapes=True) as profiler:
        function()
        synchronize(device)
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    write_text_atomic(path, profiler.key_averages().table(sort_by=sort_by, row_limit=row_limit) + "\n")
    return path


def profile_path(args: argparse.Namespace, benchmark: str, method: str) -> Path:
    """Where `--profile` writes the table of `method`: beside the benchmark's JSON."""
    json_path = Path(args.json_out or DEFAULT_OUTPUT_DIR / f"{benchmark}.json")
    return json_path.with_name(f"{json_path.stem}.profile.{method}.txt")


def benchmark_main(
    build_parser: Callable[[], argparse.ArgumentParser],
    run: Callable[[argparse.Namespace], dict[str, Any]],
    argv: Sequence[str] | None,
) -> int:
    """A benchmark's `main`: its options parsed from `argv`, `run` measured; returns the exit code (a user's
    mistake: one line `error: ...`)."""
    return run_command(lambda: run(build_parser().parse_args(argv)))
