"""Cost of a benchmark phase: wall time (``time.perf_counter``) and peak resident-set increase."""

from __future__ import annotations

import os
import threading

import torch


class PeakMemory:
    """Peak resident-set increase (MiB) over a ``with`` block, sampled every 5 ms."""

    def __init__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak_mib = 0.0

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * self.page
        except OSError:  # not Linux: ru_maxrss only grows, so the increase is a lower bound
            import resource  # Unix only: imported where needed

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def __enter__(self) -> PeakMemory:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.start = self._rss()
        self.top = self.start
        self.stop = threading.Event()

        def watch() -> None:
            while not self.stop.wait(0.005):
                self.top = max(self.top, self._rss())

        self.thread = threading.Thread(target=watch, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.top = max(self.top, self._rss())
        self.peak_mib = (self.top - self.start) / 2**20
        self.cuda_mib = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
