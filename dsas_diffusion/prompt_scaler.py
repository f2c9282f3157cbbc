"""The ``prompt`` scaler for diffusers pipelines: one α per prompt, read from the text encoder's output.

The probe is the paper's (PCA + logistic regression, folded, held-out accuracy gate), fitted on the conditioning
text embeddings the denoiser receives (``encoder_hidden_states`` (B, T, D), averaged over the T positions) of
source vs control prompts. At steering time α = sigmoid(w·ē + b) is computed once per prompt and applied to every
position of every site, at every step.

Which words triggered it (:func:`word_alpha`, ``DiffusionHandle.prompt_alpha``): the prompt is read again, word by
word, and each word gets the α it added, α(first i words) − α(first i − 1 words). The words' shares add up to
α(prompt) − α(""). Reading the probe on each token's embedding alone would not do: a causal CLIP encoder carries a
word into every later token, its EOS and its padding, FLUX's unmasked T5 padding (most of the 512 positions) and
SD3's T5 copy of the prompt do the same, and the probe, fitted on averages over all positions, reads mostly those.

The text is captured just before the denoiser's first call and the call is skipped, so fitting the scaler costs
one text encoding per prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from dsas_core import Concept, ConceptConfig, DsasError, HookHandle, ProbeScaler, PromptScaler, SiteSteer
from dsas_core.scaler import DEFAULT_COMPONENTS, DEFAULT_GATE, max_components

from .sites import architecture_of, denoiser_of


class _Captured(Exception):
    """Raised inside the denoiser's pre-call hook once the text is read: ends the pipeline call early."""


def collect_prompt_embeddings(
    pipe: Any, prompts: Sequence[str], batch_size: int = 8, guidance_scale: float | None = None, seed: int = 0,
    desc: str = "prompts", progress: bool = False, size: dict[str, int] | None = None, **call_kwargs: Any,
) -> Tensor:
    """Pooled conditioning text (n_prompts, D): the denoiser's ``encoder_hidden_states`` averaged over positions,
    the conditional half under classifier-free guidance. The denoiser itself never runs (``size``: height and
    width of the call, only so that no full-size latents are drawn; ``call_kwargs``: further pipeline arguments,
    e.g. ``max_sequence_length``)."""
    denoiser = denoiser_of(pipe)
    arch = architecture_of(denoiser)
    rows: list[Tensor] = []

    def capture(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        info = arch.describe(denoiser, args, kwargs)
        if info.text is None:
            raise DsasError(f"{type(denoiser).__name__} was called without encoder_hidden_states: the prompt "
                            "scaler needs text conditioning.")
        text = info.text.detach().float()  # (B, T, D)
        cfg = bool(getattr(pipe, "do_classifier_free_guidance", False)) and text.shape[0] % 2 == 0
        rows.append((text[text.shape[0] // 2:] if cfg else text).mean(1).cpu())  # (b, D)
        raise _Captured

    kwargs: dict[str, Any] = {"num_inference_steps": 1, "output_type": "latent", **(size or {}), **call_kwargs}
    if guidance_scale is not None:
        kwargs["guidance_scale"] = guidance_scale
    old_bar = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(disable=True)
    hooks = HookHandle()
    hooks.before_calls(denoiser, capture)
    try:
        with hooks, torch.no_grad():
            for start in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress, leave=False):
                try:
                    pipe(list(prompts[start:start + batch_size]), generator=torch.Generator().manual_seed(seed + start),
                         **kwargs)
                except _Captured:
                    continue
                raise DsasError(f"{type(pipe).__name__} finished without calling its denoiser: cannot read the text.")
    finally:
        pipe._progress_bar_config = old_bar
    out = torch.cat(rows)
    if len(out) != len(prompts):
        raise DsasError(f"read {len(out)} text embeddings for {len(prompts)} prompts: run with one image per prompt.")
    return out


def with_prompt_scaler(
    concept: Concept, source: Tensor, control: Tensor, n_components: int = DEFAULT_COMPONENTS,
    gate: float = DEFAULT_GATE, seed: int = 0, cap_components: bool = False,
) -> Concept:
    """``concept`` with every site's scaler replaced by one prompt probe fitted on pooled text embeddings of source
    (n_s, D) vs control (n_c, D) prompts; its held-out accuracy gates every site at once. ``cap_components``: use
    fewer than ``n_components`` where the prompts cannot support them (the number used is the config's)."""
    if cap_components:
        n_components = min(n_components, max_components(
            torch.arange(len(source)), torch.arange(len(control)) + len(source), int(source.shape[-1])))
    probe, fit = ProbeScaler.fit(source, control, n_components=n_components, gate=gate, seed=seed)
    diag = {"accuracy": fit.accuracy, "gated": fit.gated, "n_control": fit.n_control, "scaler_input": "prompt"}
    cfg = concept.config.to_dict()
    cfg |= {"scaler": "prompt", "scaler_input_width": int(source.shape[-1]), "n_components": n_components,
            "gate": gate, "diagnostics": {s: cfg["diagnostics"].get(s, {}) | diag for s in concept.config.sites}}
    sites = {s: SiteSteer(steer.transform, PromptScaler.from_probe(probe)) for s, steer in concept.sites.items()}
    return Concept(ConceptConfig.from_dict(cfg), sites)


def word_alpha(pipe: Any, scaler: PromptScaler, prompt: str, batch_size: int = 8,
               **call_kwargs: Any) -> list[tuple[str, float, float]]:
    """``[(word, Δα, Δlogit), ...]`` for the whitespace-separated words of ``prompt``: what each word added to the
    prompt scaler's α and logit as the prompt was read left to right, i.e. the value for its first i words minus
    the value for its first i − 1 (the empty prompt before the first word). The Δs add up to the prompt's value
    minus the empty prompt's. Every prefix is encoded whole, so all of a word counts toward its share: its BPE
    pieces, its copy in each text encoder, and what it passes on to later tokens, EOS and padding. A gated scaler
    has α ≡ 0 (every Δα is 0; the Δlogits are still the probe's). ``call_kwargs`` go to the pipeline call."""
    words = prompt.split()
    prefixes = [" ".join(words[:i]) for i in range(len(words) + 1)]
    pooled = collect_prompt_embeddings(pipe, prefixes, batch_size=batch_size, **call_kwargs)  # (n + 1, D)
    logit = pooled @ scaler.weight.detach().float().cpu() + scaler.bias.detach().float().cpu()  # (n + 1,)
    alpha = torch.zeros_like(logit) if scaler.gated else logit.sigmoid()
    return [(word, float(alpha[i + 1] - alpha[i]), float(logit[i + 1] - logit[i])) for i, word in enumerate(words)]
