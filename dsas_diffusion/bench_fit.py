"""What fitting a concept costs (``dsas bench --only fit``): time against the bare denoising passes it needs, and
peak memory as the image side and the collected steps double.

Time: ``fit_concept`` on three prompt lists against the same prompts run through the same pipeline with no hooks
(same batch size, same steps, latents only), interleaved; on the CPU with one torch thread the clock is this
process's CPU time, which other processes on a shared machine inflate far less than the wall clock.
Memory: each configuration runs in a fresh process, so no allocator pool of an earlier run hides a later peak.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from dsas_core.paths import assets_dir, require_checkout
from dsas_core.timing import (clock_name, cpu_clock, in_fresh_processes, interleaved_jobs, paired_ratios, rss_of_runs,
                              verdict)

FIT_LIMIT = 1.2  # fit_concept ≤ 1.2 × the bare passes
MEMORY_LIMIT = 1.10  # peak memory × 1.10 at most when the image side or the collected steps double


def fit_prompts() -> dict[str, list[str]]:
    """The bundled red-circles-to-blue prompt lists of the demo world: 32 source, target and control prompts."""
    from .loading import read_prompts

    require_checkout("the fitting benchmark's prompt lists")
    folder = assets_dir() / "prompts" / "red-circles-to-blue"
    return {k: read_prompts(folder / f"{k}.txt") for k in ("source", "target", "control")}


def _jobs(pipe: Any, prompts: dict[str, list[str]], steps: int, side: int | None, batch_size: int,
          scaler: str) -> dict[str, Any]:
    """``bare``: each list through the pipeline with no hooks, batched as fitting batches it (list by list);
    ``fit``: ``fit_concept`` on the same lists."""
    from .fit import fit_concept

    size = {} if side is None else {"height": side, "width": side}
    pipe.set_progress_bar_config(disable=True)

    def bare() -> None:
        for texts in prompts.values():
            for i in range(0, len(texts), batch_size):
                pipe(texts[i:i + batch_size], num_inference_steps=steps, output_type="latent",
                     generator=torch.Generator().manual_seed(i), **size)

    def fit() -> None:
        fit_concept(pipe, prompts["source"], prompts["target"], prompts["control"], name="bench", scaler=scaler,
                    num_inference_steps=steps, batch_size=batch_size, progress=False, **size)

    return {"bare": bare, "fit": fit}


def fit_cost(pipe: Any, prompts: dict[str, list[str]], steps: int = 10, batch_size: int = 8, repeats: int = 5,
             scaler: str = "probe", device: torch.device | None = None) -> dict[str, Any]:
    """``fit_concept`` vs the bare passes, ``repeats`` interleaved rounds; the ratio of each round, their median
    and spread, and a verdict against :data:`FIT_LIMIT`. The probe scaler runs all three lists through the
    denoiser at every step (the prompt scaler skips the control list's denoising)."""
    jobs = _jobs(pipe, prompts, steps, None, batch_size, scaler)
    cpu = cpu_clock(device)
    timings = interleaved_jobs(jobs, repeats=repeats, device=device, cpu_time=cpu)
    ratio = paired_ratios(timings["fit"], timings["bare"])
    return {"clock": clock_name(cpu), "scaler": scaler, "steps": steps,
            "batch_size": batch_size, "prompts": {k: len(v) for k, v in prompts.items()},
            "timings": {n: t.as_dict() for n, t in timings.items()}, "ratio": ratio,
            "verdict": {"limit": FIT_LIMIT, "verdict": verdict(ratio["median"], FIT_LIMIT, timings["bare"])}}


def _peak_child(job: str, side: int, steps: int, device: str, threads: int, scaler: str) -> dict[str, float]:
    """In a fresh process: load the demo pipeline, warm it up, then run ``job`` once; memory in MiB."""
    from .demo import load_demo_pipeline

    torch.set_num_threads(threads)
    dev = torch.device(device)
    pipe = load_demo_pipeline(device=dev)
    pipe.set_progress_bar_config(disable=True)
    pipe(["a red circle on a blue background"], num_inference_steps=1, output_type="latent", height=side, width=side)
    run = _jobs(pipe, fit_prompts(), steps, side, 8, scaler)[job]
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        start = torch.cuda.memory_allocated(dev)
        run()
        return {"start_mb": start / 2**20, "peak_mb": torch.cuda.max_memory_allocated(dev) / 2**20}
    return rss_of_runs(run, nullcontext(), runs=1)


def fit_memory(device: torch.device, side: int = 32, steps: int = 10, scaler: str = "probe") -> dict[str, Any]:
    """Peak memory of fitting (every collected step, batch 8) at ``side``/``steps``, at twice the side and at twice
    the steps, each beside the bare passes of the same configuration, each in a fresh process. On the CPU memory
    is resident memory (RSS: the loaded model and libraries included), on a GPU allocated memory."""
    configs = {"base": (side, steps), "double_side": (2 * side, steps), "double_steps": (side, 2 * steps)}
    out: dict[str, Any] = {"unit": "MiB, RSS" if device.type == "cpu" else "MiB, CUDA allocated"}
    for name, (s, n) in configs.items():
        runs = in_fresh_processes(_peak_child, {job: (job, s, n, str(device), torch.get_num_threads(), scaler)
                                                for job in ("bare", "fit")})
        grow = {job: r["peak_mb"] - r["start_mb"] for job, r in runs.items()}
        out[name] = {"side": s, "steps": n, "fit_peak_mb": runs["fit"]["peak_mb"],
                     "bare_peak_mb": runs["bare"]["peak_mb"], "fit_growth_mb": grow["fit"],
                     "bare_growth_mb": grow["bare"], "fitting_extra_mb": grow["fit"] - grow["bare"]}
    base = out["base"]["fit_peak_mb"]
    out["ratios"] = {k: out[k]["fit_peak_mb"] / base for k in ("double_side", "double_steps")}
    out["verdicts"] = {k: {"limit": MEMORY_LIMIT, "verdict": "pass" if r <= MEMORY_LIMIT else "fail"}
                       for k, r in out["ratios"].items()}
    return out
