"""Fit a concept on a diffusers pipeline from three prompt lists.

The pipeline's own text encoders and denoiser run on the prompts (batched, latents only, no image decoding,
stopped after the last collected step); each site's output is averaged over image positions per prompt and per
collected denoising step. The transform is fitted on source vs target, the scaler on source vs control, with
cross-validation folds that keep all steps of one prompt together.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from dsas_core import Concept, DsasError, PooledCollector, Site, fit_from_activations
from dsas_core.e2e import E2EConfig
from dsas_core.scaler import DEFAULT_GATE

from .pipeline import StepClock, guard_stream, attach
from .prompt_scaler import collect_prompt_embeddings, with_prompt_scaler
from .sites import (CallInfo, architecture_of, candidates, denoiser_of, fingerprint, image_size, refuse_cache_hooks,
                    select_sites)

DEFAULT_FIT_STEPS = 10
# Defaults chosen by measurement on the demo world (``python -m dsas_diffusion.demo.study``, README): the prompt
# scaler and 16 principal components beat the per-position probe and the paper's 5 components; pooling every
# denoising step, every attention output and fitting all sites at once did as well as or better than the
# alternatives at the lowest cost.
DEFAULT_SCALER = "prompt"
DEFAULT_FIT_COMPONENTS = 16


def _check_prompts(prompts: Sequence[str], what: str) -> list[str]:
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise DsasError(f"{what} prompts must be a list of strings, got {type(prompts).__name__}.")
    cleaned = [p.strip() for p in prompts if p.strip()]
    if len(cleaned) < 2:
        raise DsasError(f"{what} prompts: got {len(cleaned)} non-empty prompt(s), need at least 2 (32 is a good default).")
    return cleaned


class _CollectSteps:
    """Before each denoiser call: collect only the chosen steps, only the first (conditional) call of a step, and
    only the conditional half under CFG."""

    def __init__(self, collector: PooledCollector, pipe: Any, denoiser: torch.nn.Module,
                 steps: set[int] | None) -> None:
        self.collector, self.pipe, self.denoiser, self.steps = collector, pipe, denoiser, steps
        self.arch = architecture_of(denoiser)
        self.clock = StepClock(pipe, self.arch.calls_per_step)
        self.info: CallInfo | None = None
        self.prompt_ids: list[Tensor] = []  # per collected call: which prompt each kept row belongs to
        self.batch_ids: Tensor | None = None

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        step, in_step = self.clock.tick()
        info = self.info = self.arch.describe(self.denoiser, args, kwargs)
        keep = in_step == 0 and (self.steps is None or step in self.steps)
        self.collector.enabled = keep
        cfg = bool(getattr(self.pipe, "do_classifier_free_guidance", False)) and info.batch % 2 == 0
        n = info.batch
        self.collector.rows = slice(n // 2, n) if cfg else None
        if keep:
            self.prompt_ids.append(self.batch_ids)


def collect_pooled(
    pipe: Any, prompts: list[str], sites: list[Site], num_inference_steps: int, collect_steps: set[int] | None,
    guidance_scale: float | None, batch_size: int, seed: int, desc: str, progress: bool, size: dict[str, int],
) -> tuple[dict[str, Tensor], Tensor]:
    """Run the pipeline on ``prompts`` at ``size`` (height, width; empty: the pipeline's default); returns
    ``{site: (rows, d)}`` and each row's prompt index (rows,)."""
    denoiser = denoiser_of(pipe)
    last = num_inference_steps - 1 if collect_steps is None else max(collect_steps)
    if last >= num_inference_steps:
        raise DsasError(f"collect_steps {sorted(collect_steps or [])} must lie below num_inference_steps={num_inference_steps}.")
    collector = PooledCollector(sites)
    tracker = _CollectSteps(collector, pipe, denoiser, collect_steps)
    collector.before_calls(denoiser, tracker)
    names = {s.name for s in sites}
    for cand in candidates(denoiser):
        if cand.site.name in names and cand.stream is not None:
            collector.after_calls(cand.site.module, functools.partial(guard_stream, cand, tracker), prepend=True)

    def stop_after_last(p: Any, i: int, t: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        if i >= last:
            p._interrupt = True
        return {}

    old_bar = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(disable=True)
    kwargs: dict[str, Any] = {"num_inference_steps": num_inference_steps, "output_type": "latent",
                              "callback_on_step_end": stop_after_last, **size}
    if guidance_scale is not None:
        kwargs["guidance_scale"] = guidance_scale
    try:
        with collector, torch.no_grad():
            for start in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress, leave=False):
                batch = prompts[start:start + batch_size]
                tracker.batch_ids = torch.arange(start, start + len(batch))
                gen = torch.Generator(device="cpu").manual_seed(seed + start)
                pipe(batch, generator=gen, **kwargs)
    finally:
        pipe.set_progress_bar_config(**{"disable": False, **old_bar})
    pooled = collector.pooled()
    ids = torch.cat(tracker.prompt_ids)
    return pooled, ids


def fit_concept(
    pipe: Any,
    source: Sequence[str],
    target: Sequence[str],
    control: Sequence[str],
    transform: str = "mean_shift",
    scaler: str = DEFAULT_SCALER,
    name: str = "concept",
    sites: str | Sequence[str] | None = None,
    num_inference_steps: int = DEFAULT_FIT_STEPS,
    collect_steps: Sequence[int] | None = None,
    guidance_scale: float | None = None,
    height: int | None = None,
    width: int | None = None,
    incremental: int | bool = False,
    batch_size: int = 8,
    n_components: int | None = None,
    gate: float = DEFAULT_GATE,
    source_text: str | None = None,
    target_text: str | None = None,
    seed: int = 0,
    progress: bool = True,
    e2e: E2EConfig | None = None,
) -> Concept:
    """Fit a concept on ``pipe`` from prompt lists.

    ``source``: prompts where the concept should act (e.g. fruit prompts); ``target``: the same prompts with the
    wanted change (fruit *with a pear*); ``control``: prompts to leave alone. ``collect_steps``: denoising steps
    (of a ``num_inference_steps`` run) whose activations are pooled, default all. ``height``, ``width``: image size
    of the fitting runs (default: the pipeline's, 1024² for SDXL and FLUX; fit at the size you generate at, or
    smaller to save time). ``incremental=k`` fits the sites in k groups in forward order, each collected with the
    groups before it already steered (λ = 1).

    ``scaler``: ``"prompt"`` (default: one α per prompt from the text encoder's output, fitted on source vs control
    prompts, applied to every position of every site), ``"probe"`` (the paper's, per site and position, fitted on
    site activations of source vs control), ``"constant"`` (α ≡ 1), or ``"e2e"`` with ``transform="lineas"``: map and
    scaler trained together through the denoiser (settings in ``e2e``). ``n_components``: principal components of
    the probe or prompt scaler; by default 16, or fewer where the prompts cannot support 16.
    """
    if (transform == "lineas") != (scaler == "e2e"):
        raise DsasError(f"transform={transform!r} with scaler={scaler!r}: end-to-end training learns the 'lineas' "
                        "transform together with the 'e2e' scaler; pass both (or neither).")
    src = _check_prompts(source, "source")
    tgt = _check_prompts(target, "target")
    ctl = _check_prompts(control, "control") if scaler in ("probe", "prompt", "e2e") else []
    by_prompt = scaler == "prompt"
    denoiser = denoiser_of(pipe)
    refuse_cache_hooks(denoiser)
    size = image_size(pipe, height, width)
    site_list = select_sites(denoiser, sites)
    steps = None if collect_steps is None else {int(s) for s in collect_steps}
    if steps is not None and (not steps or min(steps) < 0):
        raise DsasError(f"collect_steps must be non-negative step indices, got {collect_steps!r}.")
    run = dict(num_inference_steps=num_inference_steps, collect_steps=steps, guidance_scale=guidance_scale,
               batch_size=batch_size, seed=seed, progress=progress, size=size)
    config: dict[str, Any] = dict(
        source_text=source_text, target_text=target_text, model_class=type(denoiser).__name__,
        fitted_on=_fitted_on(pipe, denoiser, run, incremental, len(src), len(tgt), len(ctl)),
    )
    if scaler == "e2e":
        from .e2e import fit_e2e

        return fit_e2e(pipe, {"source": src, "target": tgt, "control": ctl}, site_list, name, num_inference_steps,
                       steps, guidance_scale, batch_size, seed, e2e, progress, size=size, **config)
    cap = n_components is None
    fit_args = dict(transform=transform, scaler="constant" if by_prompt else scaler, gate=gate, seed=seed,
                    progress=False, n_components=DEFAULT_FIT_COMPONENTS if cap else n_components, cap_components=cap)
    tgt_acts, _ = collect_pooled(pipe, tgt, site_list, desc="target prompts", **run)
    groups = max(1, int(incremental)) if incremental else 1
    chunks = [site_list[i * len(site_list) // groups:(i + 1) * len(site_list) // groups] for i in range(groups)]
    fitted: Concept | None = None
    for chunk in chunks:
        handle = attach(pipe, {fitted: 1.0}) if fitted is not None else None
        try:
            src_acts, src_ids = collect_pooled(pipe, src, chunk, desc="source prompts", **run)
            ctl_acts, ctl_ids = ({}, None) if by_prompt or not ctl else collect_pooled(
                pipe, ctl, chunk, desc="control prompts", **run)
        finally:
            if handle is not None:
                handle.remove()
        part = fit_from_activations(
            name, src_acts, {s.name: tgt_acts[s.name] for s in chunk}, ctl_acts or None,
            groups=(src_ids, ctl_ids) if ctl_ids is not None else None, **fit_args, **config)
        fitted = part if fitted is None else _merge(fitted, part)
        fit_args["n_components"] = fitted.config.n_components  # later groups use the same number
    assert fitted is not None
    if by_prompt:
        text = {what: collect_prompt_embeddings(pipe, prompts, batch_size=batch_size, guidance_scale=guidance_scale,
                                                seed=seed, desc=f"{what} text", progress=progress, size=size)
                for what, prompts in (("source", src), ("control", ctl))}
        fitted = with_prompt_scaler(fitted, text["source"], text["control"], n_components=fit_args["n_components"],
                                    gate=gate, seed=seed, cap_components=cap)
    return fitted


def _merge(a: Concept, b: Concept) -> Concept:
    """One concept holding the sites of both (same settings)."""
    cfg = a.config
    if cfg.n_components != b.config.n_components:
        raise DsasError(f"the site groups of an incremental fit estimated {cfg.n_components} and "
                        f"{b.config.n_components} principal components (too few prompts for the narrowest site): "
                        "pass n_components explicitly.")
    merged = type(cfg).from_dict(cfg.to_dict() | {
        "sites": cfg.sites + b.config.sites, "site_widths": cfg.site_widths | b.config.site_widths,
        "diagnostics": cfg.diagnostics | b.config.diagnostics})
    return Concept(merged, a.sites | b.sites)


def _fitted_on(pipe: Any, denoiser: torch.nn.Module, run: dict[str, Any], incremental: int | bool,
               n_src: int, n_tgt: int, n_ctl: int) -> dict[str, Any]:
    import diffusers

    import dsas_core

    steps = run["collect_steps"]
    return {
        "adapter": "diffusers", "pipeline": type(pipe).__name__, "denoiser": fingerprint(denoiser),
        "num_inference_steps": run["num_inference_steps"], "collect_steps": sorted(steps) if steps else "all",
        "guidance_scale": run["guidance_scale"], **run["size"], "incremental": int(incremental), "seed": run["seed"],
        "prompts": {"source": n_src, "target": n_tgt, "control": n_ctl},
        "versions": {"dsas": dsas_core.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__},
    }
