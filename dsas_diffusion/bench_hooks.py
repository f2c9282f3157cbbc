"""Host time of the steering hooks in place (``dsas bench --only hooks``).

Where a model is launch-bound (a GPU whose host issues kernels no faster than the GPU runs them), every µs a hook
spends on the host adds to the wall clock, and whole-model timings wander too much between rounds to show a few
µs. This times each site hook's call inside the real model instead — caches are cold there after the model's own
work, so a hook costs more than in a tight loop — and, on a GPU, counts the kernels of one run and their GPU time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from dsas_core.hooks import SteeringHandle, _SiteHook
from dsas_core.timing import _timed, kernel_profile, no_context

from .bench import bench_concept, steering_configs


class _Timed:
    """A site hook that appends the µs of each call to ``into``."""

    def __init__(self, hook: _SiteHook, into: list[float]) -> None:
        self.hook, self.into = hook, into

    def __call__(self, *args: Any) -> Any:
        start = time.perf_counter_ns()
        out = self.hook(*args)
        self.into.append((time.perf_counter_ns() - start) / 1e3)
        return out


@contextmanager
def timed_hooks(model: nn.Module, handle: SteeringHandle, into: list[float]) -> Iterator[None]:
    """While inside, every site hook of ``handle`` on ``model`` appends the µs of each call to ``into``."""
    swapped = []
    for module in model.modules():
        for key, hook in module._forward_hooks.items():
            if isinstance(hook, _SiteHook) and hook.handle is handle:
                module._forward_hooks[key] = _Timed(hook, into)
                swapped.append((module, key, hook))
    try:
        yield
    finally:
        for module, key, hook in swapped:
            if key in module._forward_hooks:
                module._forward_hooks[key] = hook


def hook_times(denoiser: nn.Module, run: Callable[[], None], repeats: int = 7,
               device: torch.device | None = None) -> dict[str, Any]:
    """Per configuration (λ = 0, plain, DSAS, DSAS recording α; on a GPU also DSAS on torch ops instead of the
    one-kernel update): hook calls per run, the median µs of a call (a site's first call of each run apart: it
    may plan), the hooks' ms per run and the run's ms (medians over ``repeats`` runs after a warm-up run); on a GPU,
    the kernels one run launches and their GPU ms, unsteered included."""
    concept = bench_concept(denoiser, device=device)
    configs = {n: f for n, f in steering_configs(denoiser, concept).items() if n != "unsteered"}
    cuda = device is not None and device.type == "cuda"
    if cuda:
        def torch_ops() -> SteeringHandle:
            handle = configs["dsas"]()
            handle.fused = False
            return handle
        configs["dsas_torch_ops"] = torch_ops
    sites = len(concept.sites)
    out: dict[str, Any] = {}
    for name, make in configs.items():
        calls: list[list[float]] = []
        runs: list[float] = []
        for rep in range(repeats + 1):
            into: list[float] = []
            with make() as handle, timed_hooks(denoiser, handle, into):
                seconds = _timed(run, time.perf_counter, device)
            if rep > 0:
                runs.append(seconds * 1e3)
                calls.append(into)
        first = [t for c in calls for t in c[:sites]]
        later = [t for c in calls for t in c[sites:]]
        out[name] = {"calls_per_run": len(calls[0]), "us_per_call": statistics.median(later or first),
                     "us_first_call": statistics.median(first), "hooks_ms_per_run": statistics.median(
                         [sum(c) / 1e3 for c in calls]), "run_ms": statistics.median(runs)}
    if cuda:
        for name, make in {"unsteered": no_context, **configs}.items():
            out[name] = out.get(name, {}) | kernel_profile(run, device, make)
    return {"per_hook": out, "sites": sites}

