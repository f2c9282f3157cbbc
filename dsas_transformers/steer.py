"""Attach concepts to a causal LM for ``model.generate`` (KV cache included): ``steer(model, {concept: λ})``.

Hooks go through ``dsas_core.attach``; this module adds the model-level bookkeeping that turns the core's
per-call α records into per-token maps (:meth:`LMSteering.alpha_tokens`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dsas_core import AlphaRecord, Concept, DsasError, SteeringHandle, refuse_compiled
from dsas_core import attach as core_attach
from dsas_core.hub import Concepts, concept_pairs

from .alpha import AlphaTokens
from .sites import LMSite, candidate_modules, fingerprint, resolve, resolve_static


@dataclass
class _Forward:
    """One forward call of the model: which generation it belongs to and which positions it read."""

    generation: int
    start: int  # tokens already in the KV cache
    ids: Tensor  # (B, N)
    mask: Tensor | None  # (B, N) attention mask of the new tokens


class LMSteering:
    """Steering attached to a language model. Knobs as in the core: ``strengths[name]``, ``adaptive``,
    ``record_alpha``, ``enabled``; ``alpha_tokens()`` gives per-token α of the last generation. A context manager:
    leaving it removes every hook."""

    def __init__(self, model: nn.Module, core: SteeringHandle) -> None:
        self.model = model
        self.core = core
        self.forwards: list[_Forward] = []
        core.before_calls(model, self._before_forward, when=lambda: core.record_alpha)  # no graph break otherwise

    # ---------------------------------------------------------------- knobs, delegated to the core handle
    @property
    def strengths(self) -> Any:
        """λ per concept name; assign to move a slider without re-attaching."""
        return self.core.strengths

    @property
    def adaptive(self) -> bool:
        """False forces α ≡ 1 at every fitted site (plain steering)."""
        return self.core.adaptive

    @adaptive.setter
    def adaptive(self, value: bool) -> None:
        self.core.adaptive = bool(value)

    @property
    def record_alpha(self) -> bool:
        """Whether α is recorded on every forward call."""
        return self.core.record_alpha

    @record_alpha.setter
    def record_alpha(self, value: bool) -> None:
        self.core.record_alpha = bool(value)

    @property
    def enabled(self) -> bool:
        """False pauses steering without removing the hooks."""
        return self.core.enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self.core.enabled = bool(value)

    @property
    def records(self) -> list[AlphaRecord]:
        """The core's raw α records, one per forward call per site per concept."""
        return self.core.records

    @property
    def concepts(self) -> dict[str, Concept]:
        """The attached concepts by name."""
        return self.core.concepts

    @property
    def attached(self) -> bool:
        """True until :meth:`remove`."""
        return self.core.attached

    def clear_records(self) -> None:
        """Forget recorded α and the forward-call log."""
        self.core.clear_records()
        self.forwards.clear()

    def remove(self) -> None:
        """Remove every hook (idempotent); the model is bit-identical to before."""
        self.core.remove()

    def __enter__(self) -> "LMSteering":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # ---------------------------------------------------------------- bookkeeping
    def _before_forward(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Log the forward call for α maps; runs only while α is recorded (nothing grows otherwise)."""
        ids = kwargs.get("input_ids", args[0] if args else None)
        if not isinstance(ids, Tensor):
            embeds = kwargs.get("inputs_embeds")
            ids = torch.full(embeds.shape[:2], -1, dtype=torch.long) if isinstance(embeds, Tensor) else None
        if ids is None:
            return
        n = ids.shape[1]
        mask = kwargs.get("attention_mask")
        mask = mask if isinstance(mask, Tensor) and mask.ndim == 2 else None
        if mask is not None:
            start = mask.shape[1] - n
        else:
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            start = int(cache.get_seq_length()) if hasattr(cache, "get_seq_length") else 0
        last = self.forwards[-1].generation if self.forwards else -1
        generation = last + 1 if start == 0 or last < 0 else last
        index = len(self.forwards)
        self.forwards.append(_Forward(generation, start, ids.detach(), None if mask is None else mask[:, start:].detach()))
        self.core.context = {"forward": index, "generation": generation, "start": start, "tokens": n}

    def alpha_tokens(self, concept: str | None = None, generation: int = -1) -> AlphaTokens:
        """Per-token α of one generation (the last by default) for ``concept`` (needed when several are attached).

        Needs ``record_alpha=True`` during the generation. A generation starts with every forward call that begins
        at position 0: with the KV cache that is the prefill, followed by one call per decode step; without the cache
        every call re-reads the whole sequence, so each call is its own generation (all positions ``prefill``).
        Rows are the batch rows the model saw: with beam search (``num_beams``) one row per beam slot as decoding
        kept it at each step — beams are reordered between steps, so a row is not one returned sequence; sampling
        with ``num_return_sequences`` keeps rows and returned sequences aligned."""
        names = list(self.core.concepts)
        if concept is None:
            if len(names) > 1:
                raise DsasError(f"several concepts are attached ({names}): pass alpha_tokens(concept=NAME).")
            concept = names[0]
        if concept not in self.core.concepts:
            raise DsasError(f"no concept named {concept!r} is attached; attached: {names}.")
        if not self.forwards:
            raise DsasError("no forward pass was recorded: attach with record_alpha=True (or set "
                            "handle.record_alpha = True), then run model.generate(...).")
        generations = sorted({f.generation for f in self.forwards})
        try:
            gen = generations[generation]
        except IndexError:
            raise DsasError(f"generation={generation} is out of range: {len(generations)} generation(s) ran.") from None
        calls = [i for i, f in enumerate(self.forwards) if f.generation == gen]
        forwards = [self.forwards[i] for i in calls]
        length = max(f.start + f.ids.shape[1] for f in forwards)
        batch = forwards[0].ids.shape[0]
        ids = torch.full((batch, length), -1, dtype=torch.long)
        mask = torch.ones((batch, length), dtype=torch.long)
        phase = ["prefill"] * length
        for f in forwards:  # later calls overwrite: without the KV cache the last call covers every position
            end = f.start + f.ids.shape[1]
            ids[:, f.start:end] = f.ids.cpu()
            if f.mask is not None:
                mask[:, f.start:end] = f.mask.cpu()
            if f.start > 0:
                phase[f.start:end] = ["decode"] * (end - f.start)
        c = self.core.concepts[concept]
        sites = list(c.config.sites)
        by_site = torch.full((len(sites), batch, length), float("nan"))
        wanted = set(calls)
        found = 0
        for r in self.core.records:
            if r.concept != concept or r.context.get("forward") not in wanted:
                continue
            f = self.forwards[r.context["forward"]]
            a = r.alpha.detach().float().cpu()  # (B, N)
            by_site[sites.index(r.site), :, f.start:f.start + a.shape[-1]] = a
            found += 1
        if not found:
            raise DsasError("no α was recorded for this generation: attach with record_alpha=True (or set "
                            "handle.record_alpha = True) before calling generate.")
        ungated = [s for s in sites if not (self.core.adaptive and c.sites[s].scaler.gated)]
        return AlphaTokens(concept, sites, ungated, by_site, ids, mask, phase)


def check_fits(model: nn.Module, concepts: list[Concept]) -> list[LMSite]:
    """Resolve the sites every concept steers and raise a clear error unless each concept fits ``model``
    (model class, site names, widths, the config entries of :func:`.sites.fingerprint`). Returns the resolved
    sites."""
    modules = dict(model.named_modules())
    needed = list(dict.fromkeys(s for c in concepts for s in c.config.sites))
    present = [s for s in needed if s in modules]
    by_name = {n: i for n, i in candidate_modules(model, sites=present)} if present else {}
    if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
        # other hooks (e.g. another steering handle) would see a probe call: trust what fitting recorded instead
        outputs = {k: v for c in concepts for k, v in c.config.fitted_on.get("site_outputs", {}).items()}
        resolved = resolve_static(model, list(by_name.items()), outputs)
    else:
        resolved = resolve(model, list(by_name.items())) if present else []
    widths = {s.site.name: s.width for s in resolved}
    here = fingerprint(model)
    for c in concepts:
        c.check_fits(widths, type(model).__name__)
        c.check_fingerprint("config", here, type(model).__name__)
    return resolved


def attach(
    model: nn.Module, concepts: Concepts, adaptive: bool = True, record_alpha: bool = False,
) -> LMSteering:
    """Steer ``model`` with ``{concept (or concept directory): strength}``; returns the handle.

    Checks first that every concept fits the model (class, sites, widths). ``adaptive=False`` forces α ≡ 1
    (plain steering); ``record_alpha=True`` keeps α of every token for :meth:`LMSteering.alpha_tokens`.
    """
    pairs = concept_pairs(concepts)
    if not pairs:
        raise DsasError("no concepts given: pass {concept: strength}, e.g. {detox: 1.5}.")
    refuse_compiled(model)
    resolved = check_fits(model, [c for c, _ in pairs])
    core = core_attach([s.site for s in resolved], pairs, adaptive=adaptive, record_alpha=record_alpha, root=model)
    try:
        return LMSteering(model, core)
    except BaseException:
        core.remove()
        raise


def steer(
    model: nn.Module, concepts: Concepts, adaptive: bool = True, record_alpha: bool = False,
) -> LMSteering:
    """Context manager form: ``with steer(model, {concept: 1.0}) as h: model.generate(...)``; hooks are removed
    on exit, even after an exception."""
    return attach(model, concepts, adaptive=adaptive, record_alpha=record_alpha)
