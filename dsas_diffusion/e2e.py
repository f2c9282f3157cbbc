"""E2E-DSAS on diffusers pipelines: record the denoiser's calls once, replay them with gradients.

Pipelines run under ``torch.no_grad``, so end-to-end training cannot go through ``pipe(...)``. Instead the
pipeline runs once per prompt set (no image decoding, stopped after the last collected step) while a pre-call
watcher stores each collected denoiser call's inputs; training then calls the denoiser itself on those inputs,
for any subset of (prompt, step) items, with the steering parameters in the autograd graph. Under classifier-free
guidance the replayed batch keeps its [unconditional; conditional] layout and only the conditional half is pooled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dsas_core import Concept, DsasError, HookHandle, PooledCollector, Site
from dsas_core.e2e import E2EConfig, train_e2e

from .pipeline import StepClock
from .sites import architecture_of, denoiser_of


@dataclass
class _Call:
    """One recorded denoiser call: its inputs and the prompts of its conditional rows."""

    step: int
    prompts: list[int]
    cfg: bool
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def _detach(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detach(v) for v in value)
    return value


def _rows(value: Any, batch: int, rows: Tensor) -> Any:
    """Select ``rows`` of every tensor whose first dimension is the call's batch."""
    if isinstance(value, Tensor):
        return value[rows] if value.ndim > 0 and value.shape[0] == batch else value
    if isinstance(value, dict):
        return {k: _rows(v, batch, rows) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_rows(v, batch, rows) for v in value)
    return value


def _cat(values: list[Any], batch_sizes: list[int]) -> Any:
    """Concatenate the batch tensors of several selections (same structure) along dimension 0."""
    first = values[0]
    if isinstance(first, Tensor):
        batched = first.ndim > 0 and all(v.shape[0] == b for v, b in zip(values, batch_sizes))
        return torch.cat(values) if batched and len(values) > 1 else first
    if isinstance(first, dict):
        return {k: _cat([v[k] for v in values], batch_sizes) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(_cat([v[i] for v in values], batch_sizes) for i in range(len(first)))
    return first


def record_calls(pipe: Any, prompts: list[str], steps: set[int], num_inference_steps: int,
                 guidance_scale: float | None, batch_size: int, seed: int, size: dict[str, int]) -> list[_Call]:
    """Run the pipeline on ``prompts`` at ``size`` (height, width) and keep the inputs of the denoiser calls at
    ``steps`` (first call of each)."""
    denoiser = denoiser_of(pipe)
    clock = StepClock(pipe, architecture_of(denoiser).calls_per_step)
    calls: list[_Call] = []
    current: list[int] = []
    last = max(steps)

    def watch(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        step, in_step = clock.tick()
        if in_step == 0 and step in steps:
            cfg = bool(getattr(pipe, "do_classifier_free_guidance", False))
            calls.append(_Call(step, list(current), cfg, _detach(args), _detach(kwargs)))

    def stop(p: Any, i: int, t: Any, kw: dict[str, Any]) -> dict[str, Any]:
        if i >= last:
            p._interrupt = True
        return {}

    kwargs: dict[str, Any] = {"num_inference_steps": num_inference_steps, "output_type": "latent",
                              "callback_on_step_end": stop, **size}
    if guidance_scale is not None:
        kwargs["guidance_scale"] = guidance_scale
    with HookHandle() as handle, torch.no_grad():
        handle.before_calls(denoiser, watch)
        for start in range(0, len(prompts), batch_size):
            current[:] = list(range(start, min(start + batch_size, len(prompts))))
            pipe(prompts[start:start + batch_size], generator=torch.Generator().manual_seed(seed + start), **kwargs)
    return calls


class Replay:
    """Items are (prompt, step) pairs, numbered step-major; ``forward`` runs the denoiser on any subset of them."""

    def __init__(self, denoiser: nn.Module, calls: list[_Call], n_prompts: int, steps: list[int]) -> None:
        self.denoiser, self.n_prompts, self.steps = denoiser, n_prompts, steps
        self.by_item: dict[tuple[int, int], tuple[_Call, int]] = {}
        for call in calls:
            for row, prompt in enumerate(call.prompts):
                self.by_item[(call.step, prompt)] = (call, row)

    def __len__(self) -> int:
        return self.n_prompts * len(self.steps)

    def __call__(self, indices: list[int], collector: PooledCollector) -> None:
        by_step: dict[int, list[int]] = {}
        for i in indices:
            by_step.setdefault(self.steps[i // self.n_prompts], []).append(i % self.n_prompts)
        for step in sorted(by_step):
            parts_a, parts_k, sizes, n_sel, cfg = [], [], [], 0, False
            for prompt in by_step[step]:
                call, row = self.by_item[(step, prompt)]
                n = len(call.prompts)
                total = 2 * n if call.cfg else n
                rows = torch.tensor([row, n + row] if call.cfg else [row])
                parts_a.append(_rows(call.args, total, rows))
                parts_k.append(_rows(call.kwargs, total, rows))
                sizes.append(len(rows))
                n_sel, cfg = n_sel + 1, call.cfg
            if cfg:  # regroup [u1, c1, u2, c2, ...] as [u1, u2, ...; c1, c2, ...]
                order = torch.tensor([2 * i for i in range(n_sel)] + [2 * i + 1 for i in range(n_sel)])
                args, kwargs = _cat(parts_a, sizes), _cat(parts_k, sizes)
                args, kwargs = _rows(args, 2 * n_sel, order), _rows(kwargs, 2 * n_sel, order)
                collector.rows = slice(n_sel, 2 * n_sel)
            else:
                args, kwargs = _cat(parts_a, sizes), _cat(parts_k, sizes)
                collector.rows = None
            self.denoiser(*args, **kwargs)


def fit_e2e(pipe: Any, prompts: dict[str, list[str]], sites: Sequence[Site], name: str, num_inference_steps: int,
            collect_steps: set[int] | None, guidance_scale: float | None, batch_size: int, seed: int,
            config: E2EConfig | None, progress: bool, size: dict[str, int],
            **concept_config: Any) -> Concept:
    """Train a ``lineas`` + ``e2e`` concept on a UNet pipeline through recorded denoiser calls."""
    denoiser = denoiser_of(pipe)
    if architecture_of(denoiser).class_name != "UNet2DConditionModel":
        raise DsasError(f"E2E training is available for UNet pipelines (SD, SDXL) so far, not {type(denoiser).__name__}; "
                        "use the probe or prompt scaler here.")
    steps = sorted(collect_steps) if collect_steps else list(range(num_inference_steps))
    replays = {
        k: Replay(denoiser, record_calls(pipe, v, set(steps), num_inference_steps, guidance_scale, batch_size, seed,
                                         size), len(v), steps)
        for k, v in prompts.items()
    }

    def forward(set_name: str, idx: list[int], collector: PooledCollector) -> None:
        replays[set_name](idx, collector)

    concept, report = train_e2e(name, list(sites), forward, {k: len(r) for k, r in replays.items()}, config=config,
                                model=denoiser, progress=progress, **concept_config)
    concept.config.fitted_on["e2e_report"] = {"best_val": report["best_val"], "steps_run": report["history"][-1]["step"]}
    return concept
