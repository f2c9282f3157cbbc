"""Host time of the steering hooks inside a diffusion denoiser (``dsas bench --only hooks``, ``hooks-flux``):
:mod:`dsas_core.hook_timing` on the benchmark's configurations, and on a GPU the kernels of one run and their
GPU time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dsas_core.hook_timing import steering_times
from dsas_core.hooks import SteeringHandle
from dsas_core.timing import kernel_profile, no_context

from .bench import LIMITS, bench_concept, steering_configs


def hook_times(denoiser: nn.Module, run: Callable[[], None], repeats: int = 7,
               device: torch.device | None = None) -> dict[str, Any]:
    """:func:`dsas_core.hook_timing.steering_times` for λ = 0, plain, DSAS, DSAS recording α and the prompt
    scaler (on a GPU also DSAS on torch ops instead of the one-kernel update); on a GPU also the kernels one run
    launches and their GPU ms, unsteered included."""
    concept = bench_concept(denoiser, device=device)
    configs = {n: f for n, f in steering_configs(denoiser, concept).items() if n != "unsteered"}
    cuda = device is not None and device.type == "cuda"
    if cuda:
        def torch_ops() -> SteeringHandle:
            handle = configs["dsas"]()
            handle.fused = False
            return handle
        configs["dsas_torch_ops"] = torch_ops
    out = steering_times(run, configs, len(concept.sites), repeats=repeats, device=device, limits=LIMITS)
    if cuda:
        for name, make in {"unsteered": no_context, **configs}.items():
            out["per_hook"][name] = out["per_hook"].get(name, {}) | kernel_profile(run, device, make)
    return out

