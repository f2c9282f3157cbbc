"""Peak resident memory of each overhead-benchmark configuration on the CPU, each in a fresh process.

One process per configuration: the C allocator keeps memory a process freed, so configurations measured one after
another in one process would hide each other's peaks. On a GPU the timed runs record allocated memory instead.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

import torch

from dsas_core.timing import PeakRSS


def _child(name: str, config: str, latent: int | None, threads: int) -> dict[str, float]:
    """In a fresh process: build the workload, then run it twice under ``config`` (the second run shows memory that
    grows from call to call, e.g. α records); RSS is sampled from before the first run."""
    from .bench import bench_concept, steering_configs, workload

    torch.set_num_threads(threads)
    model, run, _ = workload(name, torch.device("cpu"), latent)
    concept = bench_concept(model)
    with PeakRSS() as rss, steering_configs(model, concept)[config]():
        run()
        run()
    return {"start_mb": rss.start_mb, "peak_mb": rss.peak_mb, "growth_mb": rss.growth_mb}


def overhead_memory(name: str, latent: int | None = None) -> dict[str, Any]:
    """Peak RSS (MiB) of two runs of workload ``name`` per configuration, its growth over the resident size before
    them (model, concept and libraries loaded), the peak as a ratio to unsteered's and the growth beyond it."""
    from .bench import steering_configs

    configs = list(steering_configs(torch.nn.Identity(), None))  # type: ignore[arg-type]  # names only
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1, maxtasksperchild=1) as pool:
        runs = {c: pool.apply(_child, (name, c, latent, torch.get_num_threads())) for c in configs}
    base = runs["unsteered"]
    return {"unit": "MiB, RSS", "configs": runs,
            "peak_ratio": {c: r["peak_mb"] / base["peak_mb"] for c, r in runs.items() if c != "unsteered"},
            "growth_extra_mb": {c: r["growth_mb"] - base["growth_mb"] for c, r in runs.items() if c != "unsteered"}}
