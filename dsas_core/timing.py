"""Side-by-side timing for benchmarks: interleaved repeats, medians with their spread, honest verdicts."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass
class Timing:
    """Seconds of one configuration over its repeats."""

    name: str
    median: float
    low: float
    high: float
    repeats: int
    peak_mb: float | None = None

    @property
    def spread(self) -> float:
        """(max − min) / median."""
        return (self.high - self.low) / self.median if self.median > 0 else float("inf")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"spread": self.spread}


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    run: Callable[[], Any],
    configs: dict[str, Callable[[], AbstractContextManager[Any]]],
    repeats: int = 7,
    device: torch.device | None = None,
    after: Callable[[Any], None] | None = None,
) -> dict[str, Timing]:
    """Time ``run`` under each config's context, rotating the order every repeat (after one warm-up each).

    ``after(ctx)`` runs outside the timed region (e.g. to clear recorded α)."""
    names = list(configs)
    samples: dict[str, list[float]] = {n: [] for n in names}
    peaks: dict[str, float] = {}
    for rep in range(repeats + 1):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            with configs[name]() as ctx:
                if device is not None and device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                _sync(device)
                start = time.perf_counter()
                run()
                _sync(device)
                elapsed = time.perf_counter() - start
                if device is not None and device.type == "cuda":
                    peaks[name] = max(peaks.get(name, 0.0), torch.cuda.max_memory_allocated(device) / 2**20)
                if after is not None:
                    after(ctx)
            if rep > 0:
                samples[name].append(elapsed)
    return {n: Timing(n, statistics.median(v), min(v), max(v), len(v), peaks.get(n)) for n, v in samples.items()}


def verdict(ratio: float, limit: float, baseline: Timing) -> str:
    """'pass' / 'fail', or 'inconclusive' when the baseline's own spread exceeds the margin being judged."""
    margin = limit - 1.0
    if baseline.spread > margin:
        return "inconclusive"
    return "pass" if ratio <= limit else "fail"


class PeakRSS:
    """Peak resident memory (MiB) of this process while the context is open, sampled every 5 ms (CPU runs)."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> "PeakRSS":
        import psutil

        proc = psutil.Process()
        self.start_mb = proc.memory_info().rss / 2**20

        def sample() -> None:
            while not self._stop.is_set():
                self.peak_mb = max(self.peak_mb, proc.memory_info().rss / 2**20)
                time.sleep(0.005)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        """Peak minus the resident size when the context opened."""
        return self.peak_mb - self.start_mb


def no_context() -> AbstractContextManager[None]:
    """The unsteered configuration."""
    return nullcontext()
