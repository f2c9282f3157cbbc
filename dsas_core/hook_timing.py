"""The steering's own time inside a model run, hook by hook (``dsas bench --only hooks``, ``hooks-flux``,
``hooks-llm``).

Where a model is launch-bound (a GPU whose host issues kernels no faster than the GPU runs them), every µs a hook
spends on the host adds to the wall clock, and whole-model timings wander too much between rounds to show a few
µs. This times each hook's call inside the real model instead — caches are cold there after the model's own work,
so a hook costs more than in a tight loop.

On the CPU a hook's work is done when it returns, so the steering's time in a run — its site hooks, the hooks
around each model call (step tracking, the check that the hooks ran), and the slower path ``nn.Module`` takes for
a hooked call — over the run's time is what steering adds (``share``), read to a fraction of a percent where whole
runs timed against each other wander by several percent on a shared machine. (On a GPU the hooks' kernels run
after they return: there the kernel count and GPU time tell the rest.)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch
from torch import nn

from .hooks import HookHandle, _SiteHook
from .timing import _timed, rotate


class _Timed:
    """A hook that appends the µs of each call to ``into``."""

    def __init__(self, hook: Callable[..., Any], into: list[float]) -> None:
        self.hook, self.into = hook, into

    def __call__(self, *args: Any) -> Any:
        start = time.perf_counter_ns()
        out = self.hook(*args)
        self.into.append((time.perf_counter_ns() - start) / 1e3)
        return out


@contextmanager
def timed_hooks(handle: HookHandle, sites: list[float], others: list[float]) -> Iterator[None]:
    """While inside, every hook ``handle`` registered appends the µs of each call: site hooks to ``sites``, the
    others (e.g. step tracking before a denoiser call, the check after it) to ``others``."""
    swapped = []
    for removable in handle._removables:
        hooks = removable.hooks_dict_ref()
        if hooks is not None and removable.id in hooks:
            hook = hooks[removable.id]
            hooks[removable.id] = _Timed(hook, sites if isinstance(hook, _SiteHook) else others)
            swapped.append((hooks, removable.id, hook))
    try:
        yield
    finally:
        for hooks, key, hook in swapped:
            if key in hooks:
                hooks[key] = hook


def dispatch_us(calls: int = 2000, repeats: int = 7) -> float:
    """µs a module call costs more with one (no-op) forward hook than without: ``nn.Module`` leaves its fast path
    for any hooked call. Median over ``repeats`` tight loops of ``calls`` calls each, on the CPU."""
    bare, hooked = nn.Identity(), nn.Identity()
    hooked.register_forward_hook(lambda module, args, kwargs, output: None, with_kwargs=True)
    x = torch.zeros(1)

    def loop(module: nn.Module) -> float:
        start = time.perf_counter_ns()
        for _ in range(calls):
            module(x)
        return (time.perf_counter_ns() - start) / 1e3 / calls

    return max(0.0, statistics.median([loop(hooked) - loop(bare) for _ in range(repeats)]))


def steering_times(run: Callable[[], Any], configs: dict[str, Callable[[], AbstractContextManager[Any]]],
                   sites: int, repeats: int = 7, device: torch.device | None = None,
                   core: Callable[[Any], HookHandle] = lambda handle: handle,
                   limits: dict[str, float] | None = None) -> dict[str, Any]:
    """Per configuration (a factory of the steering's context; ``core(ctx)`` its :class:`HookHandle`), ``repeats``
    rounds, the configurations in turn (the order rotating each round, so a machine that speeds up or slows down
    during the benchmark touches every configuration alike); in each round it is attached, run once to warm up
    and run once timed — the state of a pipeline steered for its next image: site hook calls per run, the median
    µs of a call, the site hooks' ms per run, the other hooks', the hooked calls' extra dispatch
    (:func:`dispatch_us` each), the run's ms (medians over the timed runs), ``share``, the steering's ms over the
    run's, ``ratio``, the run's time over the run without the steering's (1 / (1 − share)), and where ``limits``
    names the configuration's time budget (e.g. 1.03), that ``limit`` and ``within``: ratio ≤ limit. The first
    warm-up run's first call of each site (it may plan, and compile or look up its kernel) is reported apart:
    ``us_first_call``, its median, and ``first_calls_ms``, what all of them cost more than later calls do — paid
    once per attach."""
    extra_us = dispatch_us()
    calls: dict[str, list[list[float]]] = {name: [] for name in configs}
    other: dict[str, list[list[float]]] = {name: [] for name in configs}
    first: dict[str, list[float]] = {}

    def measure(name: str) -> float:
        into: list[float] = []
        others: list[float] = []
        with configs[name]() as ctx, timed_hooks(core(ctx), into, others):
            for warm in (True, False):
                seconds = _timed(run, time.perf_counter, device)
                if warm:
                    first.setdefault(name, into[:sites])
                    into.clear()
                    others.clear()
                if hasattr(ctx, "clear_records"):  # recorded α: as many records in every run
                    ctx.clear_records()
        calls[name].append(into)
        other[name].append(others)
        return seconds * 1e3

    runs = rotate(measure, list(configs), repeats, warm_up=False)
    out: dict[str, Any] = {}
    for name in configs:
        us = statistics.median(t for c in calls[name] for t in c)
        row = {"calls_per_run": len(calls[name][0]), "us_per_call": us, "us_first_call": statistics.median(first[name]),
               "first_calls_ms": sum(t - us for t in first[name]) / 1e3,
               "hooks_ms_per_run": statistics.median([sum(c) / 1e3 for c in calls[name]]),
               "other_hooks_ms_per_run": statistics.median([sum(c) / 1e3 for c in other[name]]),
               "dispatch_ms_per_run": extra_us * (len(calls[name][0]) + len(other[name][0])) / 1e3,
               "run_ms": statistics.median(runs[name])}
        steering_ms = row["hooks_ms_per_run"] + row["other_hooks_ms_per_run"] + row["dispatch_ms_per_run"]
        share = steering_ms / row["run_ms"]
        ratio = 1 / (1 - share)
        limit = (limits or {}).get(name)
        out[name] = row | {"share": share, "ratio": ratio} | ({"limit": limit, "within": ratio <= limit}
                                                              if limit else {})
    return {"per_hook": out, "sites": sites, "dispatch_us": extra_us}
