"""Side-by-side timing for benchmarks: interleaved repeats, medians with their spread, honest verdicts."""

from __future__ import annotations

import gc
import math
import statistics
import threading
import time
from collections.abc import Callable, MutableMapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass
class Timing:
    """Seconds of one configuration over its repeats (``samples`` in the order they ran)."""

    name: str
    median: float
    low: float
    high: float
    repeats: int
    peak_mb: float | None = None
    samples: list[float] = field(default_factory=list)
    host: float | None = None  # GPU runs: median seconds to issue a run's work, before waiting for the device

    @property
    def spread(self) -> float:
        """(max − min) / median."""
        return (self.high - self.low) / self.median if self.median > 0 else float("inf")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"spread": self.spread}

    @classmethod
    def of(cls, name: str, samples: list[float], peak_mb: float | None = None,
           host: list[float] | None = None) -> "Timing":
        """Summary of ``samples`` (and of ``host``, the issuing times of GPU runs)."""
        return cls(name, statistics.median(samples), min(samples), max(samples), len(samples), peak_mb, samples,
                   statistics.median(host) if host else None)


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def rotate(measure: Callable[[str], float], names: list[str], repeats: int,
           warm_up: bool = True) -> dict[str, list[float]]:
    """``measure(name)`` for every name, ``repeats`` rounds (after one warm-up round unless ``warm_up`` is False),
    the order rotating by one each round so that no configuration always runs first or after the same
    neighbour."""
    from tqdm.auto import tqdm

    samples: dict[str, list[float]] = {n: [] for n in names}
    first = 0 if warm_up else 1
    # a progress bar on a terminal only (disable=None), drawn between runs, outside every timed region
    with tqdm(total=(repeats + 1 - first) * len(names), desc="rounds (1 warm-up)" if warm_up else "rounds",
              unit="run", leave=False, disable=None) as bar:
        for rep in range(first, repeats + 1):
            for name in names[rep % len(names):] + names[:rep % len(names)]:
                elapsed = measure(name)
                bar.update()
                if rep > 0:
                    samples[name].append(elapsed)
    return samples


def cpu_clock(device: torch.device | None) -> bool:
    """Whether to time in CPU seconds of this process: on the CPU with one torch thread, where they are the work
    done and other processes on the machine inflate them far less than the wall clock."""
    return (device is None or device.type == "cpu") and torch.get_num_threads() == 1


def clock_name(cpu_time: bool) -> str:
    """How a benchmark's seconds were counted, for its report."""
    return "CPU seconds of this process" if cpu_time else "wall seconds"


def interleaved(
    run: Callable[[], Any],
    configs: dict[str, Callable[[], AbstractContextManager[Any]]],
    repeats: int = 7,
    device: torch.device | None = None,
    after: Callable[[Any], None] | None = None,
    cpu_time: bool = False,
    best_of: int = 1,
) -> dict[str, Timing]:
    """Time ``run`` under each config's context, rotating the order every repeat (after one warm-up each).

    A repeat is the fastest of ``best_of`` back-to-back runs (interference from the rest of the machine only ever
    adds time). ``after(ctx)`` runs after each run, outside the timed region (e.g. to clear recorded α).
    ``cpu_time=True`` counts this process's CPU seconds instead of wall seconds. The garbage collector is off
    while a run is timed. On a GPU each timing also keeps the seconds the host took to issue the run (``host``):
    when they are close to the run's time, the GPU waits for the CPU, and every kernel added costs its launch."""
    cuda = device is not None and device.type == "cuda"
    clock = time.process_time if cpu_time else time.perf_counter
    peaks: dict[str, float] = {}
    hosts: dict[str, list[float]] = {n: [] for n in configs}

    def measure(name: str) -> float:
        best = float("inf")
        with configs[name]() as ctx:
            for _ in range(best_of):
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device)
                best = min(best, _timed(run, clock, device, hosts[name] if cuda else None))
                if cuda:
                    peaks[name] = max(peaks.get(name, 0.0), torch.cuda.max_memory_allocated(device) / 2**20)
                if after is not None:
                    after(ctx)
        return best

    samples = rotate(measure, list(configs), repeats)
    timed = repeats * best_of  # the warm-up round's issuing times left out
    return {n: Timing.of(n, v, peaks.get(n), hosts[n][-timed:]) for n, v in samples.items()}


def _timed(run: Callable[[], Any], clock: Callable[[], float], device: torch.device | None,
           host: list[float] | None = None) -> float:
    """Seconds of one ``run()`` by ``clock``, the device synchronised at both ends, the garbage collector off;
    ``host`` gets the seconds until ``run()`` returned, before the final synchronisation."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        _sync(device)
        start = clock()
        run()
        if host is not None:
            host.append(clock() - start)
        _sync(device)
        return clock() - start
    finally:
        if enabled:
            gc.enable()


def kernel_profile(run: Callable[[], Any], device: torch.device,
                   context: Callable[[], AbstractContextManager[Any]] = nullcontext) -> dict[str, Any]:
    """The GPU kernels one ``run()`` launches inside ``context()`` and their GPU milliseconds (torch.profiler),
    after one run to warm up: where a model is launch-bound, these tell the GPU's share of an overhead from the
    host's."""
    from torch.profiler import ProfilerActivity, profile

    with context():
        run()
        _sync(device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            run()
            _sync(device)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return {"kernels": len(kernels), "gpu_ms": sum(e.device_time for e in kernels) / 1e3}


def interleaved_jobs(jobs: dict[str, Callable[[], Any]], repeats: int = 5, device: torch.device | None = None,
                     cpu_time: bool = False) -> dict[str, Timing]:
    """Time each job (rotating, after one warm-up round). ``cpu_time=True`` counts this process's CPU seconds
    instead of wall seconds: for single-threaded CPU runs it is the work done, and other processes on a shared
    machine inflate it far less than the wall clock."""
    clock = time.process_time if cpu_time else time.perf_counter
    samples = rotate(lambda name: _timed(jobs[name], clock, device), list(jobs), repeats)
    return {n: Timing.of(n, v) for n, v in samples.items()}


def compiled_beside_eager(runs: dict[str, Callable[[], Any]], strengths: dict[str, MutableMapping[str, float]],
                          repeats: int = 7, device: torch.device | None = None,
                          concept: str = "bench") -> tuple[dict[str, Timing], dict[str, Any]]:
    """Time eager and compiled runs side by side (those named 'compiled…' are compiled): ``strengths[name]``, for
    steered runs, gets a new λ for ``concept`` before every run (a slider move). Each compiled run goes twice
    first — the first compiles (its seconds kept), the second at another strength — then every run is timed
    interleaved (:func:`interleaved_jobs`), with ``torch._dynamo.config.skip_nnmodule_hook_guards`` off so steered
    and unsteered copies of one class keep their own graphs. Returns the timings and what describes the run:
    clock, compiled speed-up over eager unsteered, compile seconds, graphs before timing, recompiles (0 expected),
    graphs inductor compiled without the CUDA graphs asked for (``cudagraph_skips``: the reasons are logged with
    ``TORCH_LOGS=perf_hints``), and on a GPU each run's kernels and their GPU time (:func:`kernel_profile`)."""
    from torch._dynamo.utils import counters

    lams = iter(torch.linspace(0.5, 1.5, len(runs) * (repeats + 3)).tolist())

    def job(name: str) -> Callable[[], None]:
        def go() -> None:
            if name in strengths:
                strengths[name][concept] = next(lams)
            runs[name]()
        return go

    jobs = {n: job(n) for n in runs}
    compile_s = {}
    with torch._dynamo.config.patch(skip_nnmodule_hook_guards=False):
        for name in [n for n in runs if n.startswith("compiled")]:
            start = time.perf_counter()
            jobs[name]()
            compile_s[name] = time.perf_counter() - start
            jobs[name]()  # a second strength: must not recompile
        graphs = counters["stats"]["unique_graphs"]
        cpu = cpu_clock(device)
        timings = interleaved_jobs(jobs, repeats=repeats, device=device, cpu_time=cpu)
        cuda = device is not None and device.type == "cuda"
        kernels = {n: kernel_profile(run, device) for n, run in runs.items()} if cuda else {}
    return timings, {"clock": clock_name(cpu), **({"kernels": kernels} if kernels else {}),
                     "compiled_speedup": timings["unsteered"].median / timings["compiled"].median,
                     "compile_s": compile_s, "graphs": graphs,
                     "recompiles": counters["stats"]["unique_graphs"] - graphs,
                     "cudagraph_skips": counters["inductor"]["cudagraph_skips"]}


def heap_malloc() -> str | None:
    """On Linux with glibc, serve every allocation from malloc's heap and never give freed memory back
    (``mallopt(M_MMAP_MAX, 0)``, ``M_TRIM_THRESHOLD`` at its maximum; the same as ``MALLOC_MMAP_MAX_=0``).

    Why, for CPU benchmarks: large allocations (above glibc's mmap threshold, which adapts up to 32 MiB; a large
    UNet makes such buffers on every call) are otherwise fresh mmaps, and their page faults, paid again on every
    call, add system time and noise to every configuration. Returns what was set, or None where it does not
    apply."""
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or not platform.libc_ver()[0].startswith("glibc"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    m_trim_threshold, m_mmap_max = -1, -4
    if libc.mallopt(m_mmap_max, 0) != 1 or libc.mallopt(m_trim_threshold, 2**31 - 1) != 1:
        return None
    return "glibc heap only (mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=2^31-1)"


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """A distribution-free confidence interval for the median: the k-th smallest and k-th largest value, k the
    largest rank with P(Binomial(n, ½) < k) ≤ (1 − level) / 2. Returns (low, high, the interval's exact coverage);
    with too few values for ``level`` (fewer than 6 for 95 %), the whole range and its coverage."""
    xs = sorted(values)
    n = len(xs)
    tail = [math.comb(n, i) / 2**n for i in range(n + 1)]
    k = 1
    while k < n // 2 and sum(tail[:k + 1]) <= (1 - level) / 2:
        k += 1
    return xs[k - 1], xs[n - k], 1 - 2 * sum(tail[:k])


def paired_ratios(num: Timing, den: Timing) -> dict[str, float]:
    """Median, min and max of the per-round ratios ``num / den`` (rounds ran side by side), their spread, and a
    95 % confidence interval of their median (:func:`median_interval`)."""
    r = [a / b for a, b in zip(num.samples, den.samples)]
    med = statistics.median(r)
    low, high, coverage = median_interval(r)
    return {"median": med, "low": min(r), "high": max(r), "spread": (max(r) - min(r)) / med,
            "ci_low": low, "ci_high": high, "ci_coverage": coverage}


def paired_verdict(ratios: dict[str, float], limit: float) -> str:
    """'pass' when the whole confidence interval of the per-round ratios' median is within ``limit``, 'fail' when
    all of it is above, else 'inconclusive'."""
    if ratios["ci_high"] <= limit:
        return "pass"
    return "fail" if ratios["ci_low"] > limit else "inconclusive"


def drift(timings: dict[str, Timing], base: str = "unsteered") -> dict[str, float]:
    """How the machine's speed moved during an interleaved run, read from every configuration's rounds.

    ``drift``: the change of the rounds' common time (each round's median over the configurations) from the first
    third of the rounds to the last; every configuration shares it, so the per-round ratios cancel it while the
    base's spread counts it. ``round_noise``: the spread ((max − min) / median) of the base's rounds once each is
    divided by its round's common time: what is left for the per-round ratios. A spread far above the round noise
    means a drifting machine (the paired verdict is the one to read), not an unsteady measurement."""
    rounds = min(len(t.samples) for t in timings.values())
    common = [statistics.median(t.samples[i] for t in timings.values()) for i in range(rounds)]
    k = max(1, rounds // 3)
    relative = [timings[base].samples[i] / common[i] for i in range(rounds)]
    mid = statistics.median(relative)
    return {"drift": statistics.median(common[-k:]) / statistics.median(common[:k]) - 1,
            "round_noise": (max(relative) - min(relative)) / mid}


def verdict(ratio: float, limit: float, baseline: Timing) -> str:
    """'pass' / 'fail', or 'inconclusive' when the baseline's own spread exceeds the margin being judged."""
    margin = limit - 1.0
    if baseline.spread > margin:
        return "inconclusive"
    return "pass" if ratio <= limit else "fail"


def judged(timing: Timing, base: Timing, limit: float) -> tuple[float, dict[str, float], dict[str, Any]]:
    """``timing`` against ``base``: the ratio of medians, the per-round ratios (:func:`paired_ratios`) and both
    verdicts against ``limit`` (:func:`verdict`, :func:`paired_verdict`)."""
    ratio = timing.median / base.median
    paired = paired_ratios(timing, base)
    return ratio, paired, {"limit": limit, "verdict": verdict(ratio, limit, base),
                           "paired_verdict": paired_verdict(paired, limit)}


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


def in_fresh_processes(fn: Callable[..., Any], calls: dict[str, tuple[Any, ...]]) -> dict[str, Any]:
    """``fn(*args)`` for each named call, each in a new spawned process (one at a time): for peak-memory
    measurements, since a process's C allocator keeps what it freed and would hide the next call's peak.
    ``fn`` must be importable (a module-level function)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1, maxtasksperchild=1) as pool:
        return {name: pool.apply(fn, args) for name, args in calls.items()}


def rss_of_runs(run: Callable[[], Any], context: AbstractContextManager[Any], runs: int = 2) -> dict[str, float]:
    """Resident memory (MiB) before and at the peak of ``runs`` calls of ``run`` inside ``context`` (the second
    call shows memory that grows from call to call, e.g. α records), and the growth."""
    with PeakRSS() as rss, context:
        for _ in range(runs):
            run()
    return {"start_mb": rss.start_mb, "peak_mb": rss.peak_mb, "growth_mb": rss.growth_mb}


def memory_report(runs: dict[str, dict[str, float]], base: str = "unsteered") -> dict[str, Any]:
    """:func:`rss_of_runs` results per configuration, with each peak as a ratio to ``base``'s and each growth
    beyond ``base``'s."""
    ref = runs[base]
    return {"unit": "MiB, RSS", "configs": runs,
            "peak_ratio": {c: r["peak_mb"] / ref["peak_mb"] for c, r in runs.items() if c != base},
            "growth_extra_mb": {c: r["growth_mb"] - ref["growth_mb"] for c, r in runs.items() if c != base}}


def no_context() -> AbstractContextManager[None]:
    """The unsteered configuration."""
    return nullcontext()
