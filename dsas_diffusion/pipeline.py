"""Steer any diffusers pipeline (or its denoiser) with one or more concepts.

Classifier-free guidance runs the denoiser on a doubled batch ``[unconditional; conditional]``. Each conditional
sample gets its own per-position α; its unconditional twin reuses that same α map (``cfg_alpha="cond"``, the
default). Why: guidance computes ``uncond + g·(cond − uncond)``; steering both halves by the same amount keeps
the steered result what the unguided model would make of the steered activations, whereas an empty prompt's own
α (usually ≈ 0) would leave the unconditional half unsteered and multiply the steering by the guidance scale.
``cfg_alpha="own"`` lets every sample use its own α instead. Plain steering (``adaptive=False``) steers both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from dsas_core import Concept, DsasError, SteeringHandle, attach as core_attach

from .sites import architecture_of, candidates, denoiser_of, fingerprint, refuse_cache_hooks


def check_concept_fits(concept: Concept, denoiser: nn.Module) -> None:
    """Raise with a clear message unless the concept was fitted on this kind of denoiser."""
    concept.check_fits({c.site.name: c.width for c in candidates(denoiser)}, model_class=type(denoiser).__name__)
    saved = concept.config.fitted_on.get("denoiser")
    if saved:
        here = fingerprint(denoiser)
        diff = [k for k in saved if k in here and saved[k] != here[k]]
        if diff:
            k = diff[0]
            raise DsasError(
                f"concept {concept.name!r} was fitted on a different {here['class']} ({k} = {saved[k]!r} there, "
                f"{here[k]!r} here): fit the concept again on this model."
            )


def _latent_grid(n_tokens: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a UNet level with ``n_tokens`` positions: the latent grid halved (rounding up) k times."""
    h, w = latent_hw
    for _ in range(8):
        if h * w == n_tokens:
            return h, w
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    raise DsasError(f"cannot place {n_tokens} positions on a latent grid of {latent_hw}.")


class DiffusionHandle(SteeringHandle):
    """A :class:`SteeringHandle` that also tracks denoising steps and turns α into maps on the latent grid.

    ``context`` holds ``step`` (index of the denoising step within the current pipeline call), ``latent_hw`` and
    ``cfg`` (whether the batch is CFG-doubled) at every denoiser call.
    """

    step_window: tuple[int, int] | None = None
    cfg_alpha: Literal["cond", "own"] = "cond"

    def alpha_maps(self, concept: str | None = None) -> dict[str, dict[str, Tensor]]:
        """``{concept: {site: α (steps, B, h, w)}}`` from the records of the last pipeline call(s), on the CPU."""
        name = concept or next(iter(self.concepts))
        out: dict[str, dict[str, list[Tensor]]] = {}
        for r in self.alpha_records(concept=name):
            h, w = _latent_grid(r.alpha.shape[-1], r.context["latent_hw"])
            out.setdefault(name, {}).setdefault(r.site, []).append(r.alpha.detach().float().cpu().reshape(-1, h, w))
        return {c: {s: torch.stack(v) for s, v in sites.items()} for c, sites in out.items()}

    def alpha_heatmap(self, concept: str | None = None) -> Tensor:
        """One α heat map per generated image, (n_images, H_latent, W_latent): the mean over steered steps and
        ungated sites, each site's map upsampled to the latent grid. Only the conditional half of a CFG batch."""
        name = concept or next(iter(self.concepts))
        cfg = self.concepts[name].config
        gated = {s for s, d in cfg.diagnostics.items() if d.get("gated")} if self.adaptive else set()
        records = [r for r in self.alpha_records(concept=name) if r.site not in gated]
        if not records:
            raise DsasError(f"no α was recorded for {name!r}: attach with record_alpha=True and run the pipeline.")
        latent_hw = records[-1].context["latent_hw"]
        total = None
        for r in records:
            a = r.alpha.detach().float().cpu()
            if r.context.get("cfg"):
                a = a[a.shape[0] // 2:]
            h, w = _latent_grid(a.shape[-1], latent_hw)
            up = torch.nn.functional.interpolate(a.reshape(-1, 1, h, w), size=latent_hw, mode="bilinear", align_corners=False)
            total = up if total is None else total + up
        return (total / len(records)).squeeze(1)


class _StepTracker:
    """Runs before every denoiser call: counts steps, applies the step window and the CFG α pairing."""

    def __init__(self, handle: DiffusionHandle, pipe: Any, calls_per_step: int) -> None:
        self.handle, self.pipe, self.calls_per_step = handle, pipe, calls_per_step
        self.timesteps: Any = None
        self.calls = 0

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        scheduler = getattr(self.pipe, "scheduler", None)
        timesteps = getattr(scheduler, "timesteps", None)
        if timesteps is not self.timesteps:  # set_timesteps ran: a new pipeline call began
            self.timesteps, self.calls = timesteps, 0
        step = self.calls // self.calls_per_step
        self.calls += 1
        sample = kwargs.get("sample", kwargs.get("hidden_states", args[0] if args else None))
        handle = self.handle
        cfg = bool(getattr(self.pipe, "do_classifier_free_guidance", False)) and sample is not None and sample.shape[0] % 2 == 0
        handle.context = {"step": step, "latent_hw": tuple(sample.shape[-2:]) if sample is not None else None, "cfg": cfg}
        window = handle.step_window
        handle.enabled = window is None or window[0] <= step < window[1]
        if cfg and handle.cfg_alpha == "cond":
            n = sample.shape[0] // 2
            rows = torch.arange(n, 2 * n, device=sample.device)
            handle.alpha_rows = torch.cat([rows, rows])
        else:
            handle.alpha_rows = None


def attach(
    pipe: Any,
    concepts: Mapping[Concept, float] | Sequence[tuple[Concept, float]],
    adaptive: bool = True,
    record_alpha: bool = False,
    step_window: tuple[int, int] | None = None,
    cfg_alpha: Literal["cond", "own"] = "cond",
) -> DiffusionHandle:
    """Hook the concepts into ``pipe``'s denoiser (or a denoiser given directly); returns the handle.

    ``step_window=(start, stop)`` steers only denoising steps ``start <= step < stop`` of each pipeline call.
    Every pipeline sharing the denoiser (img2img, inpainting built from ``pipe.components``) is steered too.
    """
    denoiser = denoiser_of(pipe)
    arch = architecture_of(denoiser)
    refuse_cache_hooks(denoiser)
    pairs = list(concepts.items()) if isinstance(concepts, Mapping) else list(concepts)
    for concept, _ in pairs:
        if not isinstance(concept, Concept):
            raise DsasError(f"expected Concept objects as keys, got {type(concept).__name__}; load one with load_concept(dir).")
        check_concept_fits(concept, denoiser)
    if cfg_alpha not in ("cond", "own"):
        raise DsasError(f"cfg_alpha must be 'cond' or 'own', got {cfg_alpha!r}.")
    if step_window is not None and not (len(step_window) == 2 and 0 <= step_window[0] < step_window[1]):
        raise DsasError(f"step_window must be (start, stop) with 0 <= start < stop, got {step_window!r}.")
    sites = [c.site for c in candidates(denoiser)]
    handle = core_attach(sites, pairs, adaptive=adaptive, record_alpha=record_alpha, handle_class=DiffusionHandle)
    assert isinstance(handle, DiffusionHandle)
    handle.step_window = tuple(step_window) if step_window is not None else None
    handle.cfg_alpha = cfg_alpha
    handle.before_calls(denoiser, _StepTracker(handle, pipe, arch.calls_per_step))
    return handle


steer = attach  # ``with steer(pipe, {concept: 0.8}) as handle: ...`` reads best as a context manager


def load_concept(path_or_repo: str) -> Concept:
    """Load a concept from a local folder, or from a hub repository id (for users who can reach one)."""
    from pathlib import Path

    if Path(path_or_repo).exists():
        return Concept.from_pretrained(path_or_repo)
    if path_or_repo.count("/") == 1 and not path_or_repo.startswith((".", "/")):
        from huggingface_hub import snapshot_download

        from dsas_core.concept import CONFIG_NAME, WEIGHTS_NAME

        local = snapshot_download(path_or_repo, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME])
        return Concept.from_pretrained(local)
    raise DsasError(f"no concept at {path_or_repo!r}: give a folder holding dsas_config.json + dsas_model.safetensors.")


__all__ = ["DiffusionHandle", "attach", "check_concept_fits", "load_concept", "steer"]
