"""Peak resident memory of each overhead-benchmark configuration on the CPU, each in a fresh process.

One process per configuration: the C allocator keeps memory a process freed, so configurations measured one after
another in one process would hide each other's peaks. On a GPU the timed runs record allocated memory instead.
"""

from __future__ import annotations

from typing import Any

import torch

from dsas_core.timing import in_fresh_processes, memory_report, rss_of_runs


def _child(name: str, config: str, latent: int | None, threads: int) -> dict[str, float]:
    """In a fresh process: build the workload and its concept, then measure two runs under ``config``."""
    from .bench import bench_concept, steering_configs, workload

    torch.set_num_threads(threads)
    model, run, _ = workload(name, torch.device("cpu"), latent)
    return rss_of_runs(run, steering_configs(model, bench_concept(model))[config]())


def overhead_memory(name: str, latent: int | None = None) -> dict[str, Any]:
    """Peak RSS (MiB) of two runs of workload ``name`` per configuration, its growth over the resident size before
    them (model, concept and libraries loaded), the peak as a ratio to unsteered's and the growth beyond it."""
    from .bench import LIMITS

    configs = ("unsteered", *LIMITS)  # every configuration but the baseline has a budget
    return memory_report(in_fresh_processes(_child, {c: (name, c, latent, torch.get_num_threads()) for c in configs}))
