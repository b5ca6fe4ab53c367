"""Side-by-side timing and its statistics, the same for every benchmark.

Each method runs `warmup` untimed calls, then `repeats` timed rounds in which every method runs once, the order
rotating from round to round, so that slow phases of a shared machine hit all methods alike. On CUDA the device is
synchronised before the clock starts and before it stops. A time is the median of its rounds, the spread is
(max - min) / median, and a ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
