"""Steer any diffusers pipeline (or its denoiser) with one or more concepts.

Classifier-free guidance runs the denoiser on a doubled batch ``[unconditional; conditional]``. Each conditional
sample gets its own per-position α; its unconditional twin reuses that same α map (``cfg_alpha="cond"``, the
default). Why: guidance computes ``uncond + g·(cond − uncond)``; steering both halves by the same amount keeps
the steered result what the unguided model would make of the steered activations, whereas an empty prompt's own
α (usually ≈ 0) would leave the unconditional half unsteered and multiply the steering by the guidance scale.
``cfg_alpha="own"`` lets every sample use its own α instead. Plain steering (``adaptive=False``) steers both.

FLUX's true CFG (``true_cfg_scale > 1`` with a negative prompt) makes two denoiser calls per step instead, the
prompt's then the negative prompt's: with ``cfg_alpha="cond"`` the second call reuses the first call's α, site by
site. Steps are counted by the scheduler, never by denoiser calls, so step windows and α maps hold either way.
"""

from __future__ import annotations

import functools
import sys
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from dsas_core import AlphaRecord, Concept, DsasError, PromptScaler, SteeringHandle, attach as core_attach
from dsas_core.hub import Concepts, concept_pairs, load_concept

from .prompt_scaler import word_alpha
from .sites import (CallInfo, Candidate, architecture_of, candidates, check_stream, denoiser_of, fingerprint, latent_hw,
                    refuse_cache_hooks, token_grid)


def check_concept_fits(concept: Concept, denoiser: nn.Module) -> None:
    """Raise with a clear message unless the concept was fitted on this kind of denoiser."""
    concept.check_fits({c.site.name: c.width for c in candidates(denoiser)}, model_class=type(denoiser).__name__)
    here = fingerprint(denoiser)
    concept.check_fingerprint("denoiser", here, here["class"])


_MISSING = object()


class RunningPipeline:
    """Which pipeline's call is running the denoiser right now, read from the calling frames: pipelines built from
    another's components (img2img, inpainting) share its denoiser, and each keeps its own guidance setting and
    current timestep. Returns ``fallback`` (the pipeline steering was attached to) when no caller holds the
    denoiser, e.g. the denoiser called directly. Reads the locals of the frames that have a ``self`` and are not
    torch's own module call: ≈ 40 µs per denoiser call on a CPU (reading a frame's locals copies them all; no frame
    is kept between calls to save that: it would hold a finished call's tensors)."""

    def __init__(self, denoiser: nn.Module, fallback: Any, depth: int = 12) -> None:
        self.denoiser, self.fallback, self.depth = denoiser, fallback, depth
        # by code object, decided once; keyed by id (hashing a code object hashes its constants on every call), the
        # code held beside its answer so that its id cannot be reused
        self.worth_reading: dict[int, tuple[Any, bool]] = {}
        for skip in (nn.Module._call_impl.__code__, nn.Module._wrapped_call_impl.__code__):
            self.worth_reading[id(skip)] = (skip, False)

    def __call__(self) -> Any:
        frame = sys._getframe(1)
        known = self.worth_reading
        for _ in range(self.depth):
            frame = frame.f_back
            if frame is None:
                break
            code = frame.f_code
            entry = known.get(id(code))
            if entry is None or entry[0] is not code:
                entry = known[id(code)] = (code, "self" in code.co_varnames)
            if not entry[1]:  # reading a frame's locals copies them all
                continue
            owner = frame.f_locals.get("self")
            if owner is not None and owner is not self.denoiser and any(
                    getattr(owner, attr, None) is self.denoiser for attr in ("unet", "transformer")):
                return owner
        return self.fallback


class StepClock:
    """Which denoising step a denoiser call belongs to, and its place within that step.

    Steps are read, in this order of preference, from the scheduler's ``step_index`` (minus its ``begin_index``,
    e.g. for img2img), from the pipeline's current timestep object (a new one each step), or by counting calls,
    ``calls_per_step`` per step. The first two are exact whatever the number of denoiser calls per step (true CFG,
    skip-layer guidance). A new ``scheduler.timesteps`` (``set_timesteps`` ran) starts a new pipeline call.
    """

    def __init__(self, pipe: Any, calls_per_step: int) -> None:
        self.pipe, self.calls_per_step = pipe, calls_per_step
        self.timesteps: Any = None
        self.timestep: Any = None  # the pipeline's current timestep at the last call (held: its id stays unique)
        self.calls, self.step, self.in_step = 0, -1, 0
        self.pipeline_calls = 0  # pipeline calls begun so far (the current one is pipeline_calls - 1)

    def tick(self, pipe: Any = None, called_directly: bool = False) -> tuple[int, int]:
        """(step, index of this call within the step) for the denoiser call about to run, made by ``pipe`` (by
        default the pipeline the clock was made for). ``called_directly``: ``pipe`` is the denoiser itself, called
        by no pipeline — no scheduler or timestep to read (each read of a missing attribute costs µs there)."""
        pipe = self.pipe if pipe is None else pipe
        scheduler = None if called_directly else getattr(pipe, "scheduler", None)
        timesteps = getattr(scheduler, "timesteps", None)
        if timesteps is not self.timesteps or self.pipeline_calls == 0:  # set_timesteps ran: a new pipeline call
            self.timesteps, self.timestep, self.calls, self.step, self.in_step = timesteps, None, 0, -1, 0
            self.pipeline_calls += 1
        index = getattr(scheduler, "step_index", _MISSING) if scheduler is not None else _MISSING
        if index is not _MISSING:  # None until the scheduler's first step() of this pipeline call
            step = 0 if index is None else int(index) - int(getattr(scheduler, "begin_index", None) or 0)
            in_step = self.in_step + 1 if step == self.step else 0
        elif not called_directly and (current := getattr(pipe, "_current_timestep", None)) is not None:
            new = current is not self.timestep
            step, in_step = (self.step + 1, 0) if new else (self.step, self.in_step + 1)
            self.timestep = current
        else:
            step, in_step = divmod(self.calls, self.calls_per_step)
        self.calls += 1
        self.step, self.in_step = step, in_step
        return step, in_step


class DiffusionHandle(SteeringHandle):
    """A :class:`SteeringHandle` that also tracks denoising steps and turns α into maps on the latent grid.

    ``context`` holds, at every denoiser call: ``step`` (index of the denoising step within the current pipeline
    call), ``branch`` (``"cond"``, or ``"uncond"`` for the negative-prompt call of FLUX true CFG), ``cfg`` (whether
    the batch is CFG-doubled), ``latent_hw`` and ``patch`` (the latent grid and the patch side of an image token;
    FLUX records the packed tokens' ``image_ids`` instead of ``latent_hw``), and ``prompt_pooled`` (B, D) when a
    concept uses the prompt scaler (:meth:`prompt_alpha` tells which words of a prompt raised that scaler's α).
    """

    step_window: tuple[int, int] | None = None
    cfg_alpha: Literal["cond", "own"] = "cond"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.in_window = True  # set before every denoiser call: is this step inside step_window?
        super().__init__(*args, **kwargs)
        self.pipe: Any = None
        self.text_sites: set[str] = set()  # text-stream sites: their α has no place on the latent grid

    @property
    def enabled(self) -> bool:  # type: ignore[override]
        """False pauses steering without removing the hooks; steps outside ``step_window`` are paused too."""
        return self._enabled and self.in_window

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = bool(value)

    def _name(self, concept: str | None) -> str:
        if concept is None:
            return next(iter(self.concepts))
        if concept not in self.concepts:
            raise DsasError(f"no concept {concept!r} is attached here; attached: {list(self.concepts)}.")
        return concept

    def _image_records(self, name: str, branch: str) -> list[AlphaRecord]:
        """The records of ``name``'s image-stream sites in ``branch``, from the last pipeline call only."""
        kept = [r for r in self.alpha_records(concept=name)
                if r.site not in self.text_sites and r.context.get("branch", "cond") == branch]
        last = max((r.context.get("call", 0) for r in kept), default=0)
        return [r for r in kept if r.context.get("call", 0) == last]

    @staticmethod
    def _grids() -> Callable[[dict[str, Any], int], tuple[int, int]]:
        """(record context, n tokens) -> grid, cached per denoiser call (FLUX reads it from its token positions)."""
        cache: dict[tuple[int, int], tuple[int, int]] = {}

        def grid(context: dict[str, Any], n: int) -> tuple[int, int]:
            key = (id(context.get("image_ids", context.get("latent_hw"))), n)
            if key not in cache:
                cache[key] = token_grid(context, n)
            return cache[key]

        return grid

    def alpha_maps(self, concept: str | None = None, branch: str = "cond") -> dict[str, dict[str, Tensor]]:
        """``{concept: {site: α (steps, B, h, w)}}`` from the records of the last pipeline call, on the CPU: every
        attached concept, or just ``concept``. ``B``: the denoiser's batch (with CFG, the unconditional rows first).

        ``h, w``: the site's grid (a UNet level, or the latent grid cut into patches for SD3/FLUX). ``branch``:
        which denoiser call of a step (``"uncond"``: the negative-prompt call of FLUX true CFG). Text-stream sites
        are left out (their α is in :meth:`alpha_records`)."""
        names = list(self.concepts) if concept is None else [self._name(concept)]
        out: dict[str, dict[str, list[Tensor]]] = {}
        grid = self._grids()
        for name in names:
            for r in self._image_records(name, branch):
                h, w = grid(r.context, r.alpha.shape[-1])
                out.setdefault(name, {}).setdefault(r.site, []).append(
                    r.alpha.detach().float().cpu().reshape(-1, h, w))
        return {c: {s: torch.stack(v) for s, v in sites.items()} for c, sites in out.items()}

    def alpha_heatmap(self, concept: str | None = None) -> Tensor:
        """One α heat map per generated image of the last pipeline call, (n_images, H_latent, W_latent): the mean
        over steered steps and ungated image sites, each site's map upsampled to the latent grid (zeros where every
        site is gated off: the concept steers nowhere). Only the conditional half of a CFG batch (and the
        conditional call of true CFG)."""
        name = self._name(concept)
        cfg = self.concepts[name].config
        gated = {s for s, d in cfg.diagnostics.items() if d.get("gated")} if self.adaptive else set()
        recorded = self._image_records(name, "cond")
        if not recorded:
            raise DsasError(f"no α was recorded for {name!r}: attach with record_alpha=True and run the pipeline.")
        records = [r for r in recorded if r.site not in gated]
        size = latent_hw(recorded[-1].context)
        if not records:  # every site gated off: α is 0 everywhere
            rows = recorded[-1].alpha.shape[0] // (2 if recorded[-1].context.get("cfg") else 1)
            return torch.zeros(rows, *size)
        total, grid = None, self._grids()
        for r in records:
            a = r.alpha.detach().float().cpu()
            if r.context.get("cfg"):
                a = a[a.shape[0] // 2:]
            h, w = grid(r.context, a.shape[-1])
            up = torch.nn.functional.interpolate(a.reshape(-1, 1, h, w), size=size, mode="bilinear",
                                                 align_corners=False)
            total = up if total is None else total + up
        return (total / len(records)).squeeze(1)

    def prompt_alpha(self, prompt: str, concept: str | None = None, logits: bool = False,
                     **call_kwargs: Any) -> list[tuple[str, float]]:
        """Prompt scaler: ``[(word, α), ...]``, the α each word of ``prompt`` added as the text encoders read it left
        to right: α of its first i words minus α of its first i − 1. They add up to the prompt's α minus the empty
        prompt's; a negative value is a word that lowered α. ``logits=True`` gives the same in logits (they rank
        words where α saturates at 0 or 1). A word's share counts all of it: its tokens in every text encoder and
        what it passes on to later tokens and padding. The prompt's prefixes are encoded in one batch (no
        denoising); ``call_kwargs`` go to that pipeline call (e.g. the ``max_sequence_length`` you generated with)."""
        name = concept or next(iter(self.concepts))
        if name not in self.concepts or self.concepts[name].config.scaler != "prompt":
            usable = [c for c, v in self.concepts.items() if v.config.scaler == "prompt"]
            raise DsasError(f"prompt_alpha reads a concept fitted with scaler='prompt'; {name!r} is not one "
                            f"(prompt-scaler concepts attached here: {usable}).")
        if not self.adaptive:
            raise DsasError("plain steering (adaptive=False) applies α = 1 whatever the prompt says: no word decides "
                            "it. Attach with adaptive=True to see which words raise the prompt scaler's α.")
        if self.pipe is None or denoiser_of(self.pipe) is self.pipe:
            raise DsasError("prompt_alpha needs the pipeline's text encoders: attach to the pipeline, not its "
                            "denoiser.")
        scaler = next(iter(self.concepts[name].sites.values())).scaler  # one probe, shared by every site
        if not isinstance(scaler, PromptScaler):
            raise DsasError(f"concept {name!r} is marked scaler='prompt' but holds a {type(scaler).__name__}: "
                            "re-fit it.")
        return [(w, dl if logits else da) for w, da, dl in word_alpha(self.pipe, scaler, prompt, **call_kwargs)]


class _StepTracker:
    """Runs before every denoiser call: reads the call, applies the step window, the CFG α pairing, and puts what
    scalers and α maps need into ``handle.context``."""

    def __init__(self, pipe: Any, denoiser: nn.Module, concepts: Sequence[Concept]) -> None:
        self.handle: DiffusionHandle | None = None  # set once attached
        self.pipe, self.denoiser = pipe, denoiser
        self.arch = architecture_of(denoiser)
        self.clock = StepClock(pipe, self.arch.calls_per_step)
        self.running = RunningPipeline(denoiser, pipe)
        self.info: CallInfo | None = None
        self.prompt_concepts = [c for c in concepts if c.config.scaler == "prompt"]
        self.rows: dict[tuple[int, torch.device | None], Tensor] = {}  # CFG pairings made so far
        self.texts: list[tuple[weakref.ref[Tensor], int, Tensor]] = []  # (text, its version, pooled), newest first

    def cond_rows(self, info: CallInfo) -> Tensor:
        """(B,): each sample of a CFG batch [unconditional; conditional] takes the α of its conditional twin. The
        same tensor for every call of one batch size and device, so the hooks' kernels keep reading it (made once:
        two kernel launches on a GPU)."""
        n, device = info.batch // 2, info.text.device if info.text is not None else None
        rows = self.rows.get((n, device))
        if rows is None:
            half = torch.arange(n, 2 * n, device=device)
            rows = self.rows[(n, device)] = torch.cat([half, half])
        return rows

    def pooled(self, text: Tensor) -> Tensor:
        """(B, T, D) -> (B, D): the text embeddings' mean over tokens, the prompt scaler's input. The same tensor
        while the pipeline passes the same text tensor unchanged — every step of a pipeline call — so a prompt's α
        is computed once per pipeline call, not once per step (the hooks keep it while their input is the same
        object). A few texts are kept (true CFG alternates two); none kept alive."""
        if text.is_inference():  # no version counter to tell an in-place change by
            return text.float().mean(1)
        for ref, version, pooled in self.texts:
            if ref() is text and text._version == version:
                return pooled
        pooled = text.float().mean(1)
        self.texts = [(weakref.ref(text), text._version, pooled), *self.texts[:3]]
        return pooled

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        pipe = self.running()
        called_directly = pipe is self.denoiser
        step, in_step = self.clock.tick(pipe, called_directly)
        info = self.info = self.arch.describe(self.denoiser, args, kwargs)
        handle, branches = self.handle, self.arch.branches
        assert handle is not None
        branch = branches[in_step] if in_step < len(branches) else f"call{in_step}"
        cfg = (in_step == 0 and info.batch % 2 == 0 and not called_directly
               and bool(getattr(pipe, "do_classifier_free_guidance", False)))
        context: dict[str, Any] = {"step": step, "branch": branch, "cfg": cfg, "latent_hw": info.latent_hw,
                                   "patch": info.patch, "call": self.clock.pipeline_calls - 1}
        if info.image_ids is not None:
            context["image_ids"] = info.image_ids
        active = [c for c in self.prompt_concepts if handle.record_alpha or handle.strengths[c.name] != 0.0]
        if active and info.text is not None:
            context["prompt_pooled"] = self.pooled(info.text)  # (B, D): the prompt scaler's input
        handle.context = context
        window = handle.step_window
        handle.in_window = window is None or window[0] <= step < window[1]
        handle.alpha_rows = self.cond_rows(info) if cfg and handle.cfg_alpha == "cond" else None
        handle.alpha_reuse = "off"
        if len(branches) > 1 and handle.cfg_alpha == "cond":  # separate calls per step: later ones reuse the first's α
            if in_step == 0:
                handle.alpha_memory.clear()
            handle.alpha_reuse = "store" if in_step == 0 else "load"


def attach(
    pipe: Any,
    concepts: Concepts,
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
    refuse_cache_hooks(denoiser)
    architecture_of(denoiser)
    pairs = concept_pairs(concepts)
    for concept, _ in pairs:
        check_concept_fits(concept, denoiser)
    if cfg_alpha not in ("cond", "own"):
        raise DsasError(f"cfg_alpha must be 'cond' or 'own', got {cfg_alpha!r}.")
    if step_window is not None and not (len(step_window) == 2 and 0 <= step_window[0] < step_window[1]):
        raise DsasError(f"step_window must be (start, stop) with 0 <= start < stop, got {step_window!r}.")
    cands = candidates(denoiser)
    tracker = _StepTracker(pipe, denoiser, [c for c, _ in pairs])
    used = {s for c, _ in pairs for s in c.config.sites}
    streams = [c for c in cands if c.site.name in used and c.stream is not None]
    checks = {c.site.name: functools.partial(guard_stream, c, tracker) for c in streams}
    handle = core_attach([c.site for c in cands], pairs, adaptive=adaptive, record_alpha=record_alpha,
                         handle_class=DiffusionHandle, root=denoiser, checks=checks)
    assert isinstance(handle, DiffusionHandle)
    handle.pipe = pipe
    handle.step_window = tuple(step_window) if step_window is not None else None
    handle.cfg_alpha = cfg_alpha
    handle.text_sites = {c.site.name for c in streams if c.stream == "text"}
    tracker.handle = handle
    handle.before_calls(denoiser, tracker)
    return handle


def guard_stream(candidate: Candidate, tracker: _StepTracker, output: Any) -> None:
    """Before a block's output is steered: check it is the stream the site stands for."""
    check_stream(candidate, output, tracker.info)


steer = attach  # ``with steer(pipe, {concept: 0.8}) as handle: ...`` reads best as a context manager


__all__ = ["DiffusionHandle", "attach", "check_concept_fits", "load_concept", "steer"]
