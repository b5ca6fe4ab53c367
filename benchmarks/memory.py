"""This process's memory on the CPU: its resident set size now, its peak so far, and the highest one sampled while a
block of code runs (the training-step benchmarks' peak memory, each measured in a fresh process)."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path


def current_rss_bytes() -> int:
    """This process's resident set size now (bytes; Linux /proc, else the peak so far)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB, macOS bytes


class RssSampler:
    """Highest RSS seen while the `with` block runs (a thread samples /proc every `interval` seconds). Used only where
    nothing is being timed: the sampling thread takes the interpreter lock now and then."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()

    def __enter__(self) -> RssSampler:
        self._stop.clear()
        self.peak = current_rss_bytes()

        def sample() -> None:
            while not self._stop.wait(self.interval):
                self.peak = max(self.peak, current_rss_bytes())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_bytes())
