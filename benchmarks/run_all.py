"""Runs every benchmark, each in its own process, and writes one markdown report and one JSON file.

    python -m benchmarks.run_all                               # CPU (or CUDA when present), about 10 minutes on 2 cores
    python -m benchmarks.run_all --quick                       # small sizes: checks that everything runs
    python -m benchmarks.run_all --device cuda --dtype bf16    # on a GPU

Writes `<output-dir>/<benchmark>.json` for each, `<output-dir>/results.md` (machine, command, every table, the
targets) and `<output-dir>/results.json` (all results together).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.harness import DEFAULT_OUTPUT_DIR, write_json
from benchmarks.machine import describe_machine
from benchmarks.tables import targets_table
from plumbing.atomic_files import write_text_atomic
from plumbing.command_line import CommandParser, run_command
from training.config import PROJECT_ROOT

BENCHMARKS = (
    "region_throughput",
    "detection_throughput",
    "global_overhead",
    "train_step",
    "phrase_extraction",
    "data_loading",
    "pipeline_throughput",
    "grounding_passes",
    "compile_speed",
)


def build_parser() -> CommandParser:
    parser = CommandParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--dtype", default="auto", help="fp32, bf16, fp16 or auto (bf16 on CUDA, fp32 on the CPU)")
    parser.add_argument("--threads", default="auto", help="CPU threads for torch (see any benchmark's --help)")
    parser.add_argument("--quick", action="store_true", help="small sizes and few rounds")
    parser.add_argument("--profile", action="store_true", help="profile tables of region_throughput and train_step")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR)
    return parser


def run_benchmark(name: str, args: argparse.Namespace) -> tuple[dict, float]:
    """Runs `python -m benchmarks.<name>` in a fresh process; returns its JSON result and the seconds it took."""
    out = args.output_dir / f"{name}.json"
    command = [
        sys.executable,
        "-m",
        f"benchmarks.{name}",
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--threads",
        str(args.threads),
        "--json-out",
        str(out),
    ] + (["--quick"] if args.quick else [])
    if args.profile and name in ("region_throughput", "train_step"):
        command.append("--profile")
    print(f"== {name}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=PROJECT_ROOT)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"benchmark {name} failed (exit code {result.returncode}; its output is above)")
    return json.loads(out.read_text()), seconds


def run_all(argv: list[str] | None = None) -> dict:
    """Runs the benchmarks the command line `argv` selects; writes results.md and results.json; returns the summary."""
    args = build_parser().parse_args(argv)
    names = BENCHMARKS if args.only is None else tuple(n.strip() for n in args.only.split(",") if n.strip())
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise ValueError(f"`--only`: unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    results, durations = {}, {}
    for name in names:
        results[name], durations[name] = run_benchmark(name, args)
    command = " ".join(["python -m benchmarks.run_all", *(argv if argv is not None else sys.argv[1:])]).strip()
    first = next(iter(results.values()))
    all_targets = [t for result in results.values() for t in result["targets"]]
    report = [
        "## Benchmark results\n",
        f"Command: `{command}`\n",
        f"Machine: {describe_machine(first['machine'])}.\n",
        f"Run time: {sum(durations.values()):.0f} s ({', '.join(f'{n} {s:.0f} s' for n, s in durations.items())}).\n",
    ]
    report += [results[name]["markdown"] for name in names]
    if all_targets:
        report += ["### Targets\n", targets_table(all_targets) + "\n"]
    markdown = "\n".join(report)
    summary = {
        "command": command,
        "machine": first["machine"],
        "seconds": durations,
        "results": results,
        "targets": all_targets,
    }
    write_text_atomic(args.output_dir / "results.md", markdown)
    write_json(args.output_dir / "results.json", summary)
    print(markdown)
    print(f"written: {args.output_dir / 'results.md'} and {args.output_dir / 'results.json'}", file=sys.stderr)
    return summary


def main(argv: list[str] | None = None) -> int:
    """All benchmarks as a command; returns the exit code (a user's mistake: one line `error: ...`)."""
    return run_command(lambda: run_all(argv))


if __name__ == "__main__":
    sys.exit(main())
