"""Architecture facts, in one table: which modules of each diffusers denoiser can be steered, and how.

A site is a module path inside the denoiser (``pipe.unet`` or ``pipe.transformer``), e.g.
``down_blocks.1.attentions.0.transformer_blocks.0.attn2``. Forward hooks on the attention modules themselves keep
working after ``set_attn_processor``, LoRA loading (peft wraps the projections inside) and ``fuse_qkv_projections``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from dsas_core import DsasError, Site


@dataclass(frozen=True)
class Candidate:
    """A steerable site with its output width and whether it is steered by default."""

    site: Site
    width: int
    default: bool


@dataclass(frozen=True)
class Architecture:
    """How to find the steerable sites of one denoiser class."""

    class_name: str
    find: Callable[[nn.Module], list[Candidate]]
    fingerprint_keys: tuple[str, ...]  # config entries that must match between fitting and steering
    calls_per_step: int = 1  # denoiser calls per denoising step (true CFG in FLUX makes two)


def _attention_width(module: nn.Module) -> int:
    """Output width of a diffusers ``Attention`` module."""
    to_out = getattr(module, "to_out", None)
    if isinstance(to_out, nn.ModuleList) and isinstance(to_out[0], nn.Linear):
        return int(to_out[0].out_features)
    return int(getattr(module, "out_dim", getattr(module, "inner_dim")))


_UNET_ORDER = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}


def _unet_sites(unet: nn.Module) -> list[Candidate]:
    """Self- (``attn1``) and cross-attention (``attn2``) outputs of every transformer block: (B, H·W, C).
    Listed in forward order (down blocks, mid block, up blocks)."""
    out = []
    for name, module in unet.named_modules():
        if re.search(r"transformer_blocks\.\d+\.attn[12]$", name):
            out.append(Candidate(Site(name, module, None, "tokens"), _attention_width(module), default=True))
    return sorted(out, key=lambda c: _UNET_ORDER.get(c.site.name.split(".")[0], 3))


ARCHITECTURES: dict[str, Architecture] = {
    "UNet2DConditionModel": Architecture(
        "UNet2DConditionModel", _unet_sites,
        fingerprint_keys=("in_channels", "block_out_channels", "cross_attention_dim", "addition_embed_type",
                          "transformer_layers_per_block", "down_block_types"),
    ),
}


def denoiser_of(pipe_or_model: Any) -> nn.Module:
    """The denoiser of a pipeline (``unet`` or ``transformer``), or the model itself."""
    for attr in ("unet", "transformer"):
        model = getattr(pipe_or_model, attr, None)
        if isinstance(model, nn.Module):
            return model
    if isinstance(pipe_or_model, nn.Module):
        return pipe_or_model
    raise DsasError(
        f"cannot find a denoiser in {type(pipe_or_model).__name__}: expected a diffusers pipeline with a `unet` or "
        "`transformer`, or the denoiser module itself."
    )


def architecture_of(denoiser: nn.Module) -> Architecture:
    """The table entry for this denoiser's class."""
    name = type(denoiser).__name__
    if name not in ARCHITECTURES:
        raise DsasError(f"{name} is not supported yet; supported denoisers: {sorted(ARCHITECTURES)}.")
    return ARCHITECTURES[name]


def candidates(denoiser: nn.Module) -> list[Candidate]:
    """Every steerable site of the denoiser, in forward (registration) order."""
    return architecture_of(denoiser).find(denoiser)


def site_widths(denoiser: nn.Module) -> dict[str, int]:
    """``{site name: output width}`` for every candidate site."""
    return {c.site.name: c.width for c in candidates(denoiser)}


def fingerprint(denoiser: nn.Module) -> dict[str, Any]:
    """The config entries that identify an architecture (compared when a concept is attached)."""
    arch = architecture_of(denoiser)
    config = getattr(denoiser, "config", {})
    fp: dict[str, Any] = {"class": arch.class_name}
    for key in arch.fingerprint_keys:
        value = config.get(key) if hasattr(config, "get") else None
        fp[key] = list(value) if isinstance(value, (tuple, list)) else value
    return fp


def select_sites(denoiser: nn.Module, sites: str | Sequence[str] | None = None) -> list[Site]:
    """Choose sites: ``None`` for the defaults, a regex (searched in each name), or a list of exact names."""
    cands = candidates(denoiser)
    names = [c.site.name for c in cands]
    if sites is None:
        chosen = [c.site for c in cands if c.default]
    elif isinstance(sites, str):
        try:
            pattern = re.compile(sites)
        except re.error as err:
            raise DsasError(f"sites pattern {sites!r} is not a valid regular expression: {err}.") from None
        chosen = [c.site for c in cands if pattern.search(c.site.name)]
        if not chosen:
            raise DsasError(f"no site matches {sites!r}; sites look like {names[:2]} (list them: dsas sites MODEL).")
    else:
        by_name = {c.site.name: c.site for c in cands}
        unknown = [s for s in sites if s not in by_name]
        if unknown:
            near = difflib.get_close_matches(unknown[0], names, n=3, cutoff=0.5)
            raise DsasError(f"unknown site {unknown[0]!r}; nearest candidates: {near or names[:3]} "
                            "(list them all: dsas sites MODEL).")
        chosen = [by_name[s] for s in sites]
    if not chosen:
        raise DsasError(f"{type(denoiser).__name__} offers no steerable sites.")
    return chosen


_CACHE_HOOK_WORDS = ("cache", "pyramid_attention_broadcast", "fbc", "layer_skip")


def refuse_cache_hooks(denoiser: nn.Module) -> None:
    """Raise if a diffusers cache hook (FirstBlockCache, FasterCache, MagCache, ...) is on the denoiser: such hooks
    skip blocks or replay stale outputs, so steering would silently act on some steps and not others."""
    for name, module in denoiser.named_modules():
        registry = getattr(module, "_diffusers_hook", None)
        hooks = getattr(registry, "hooks", {}) or {}
        found = [h for h in hooks if any(w in h.lower() for w in _CACHE_HOOK_WORDS)]
        if found:
            raise DsasError(
                f"the denoiser has a diffusers cache hook ({found[0]!r} on {name or 'the model'}): cached blocks skip "
                "or replay computation, so steering would act on some steps only. Disable it first "
                "(denoiser.disable_cache()) and steer without caching."
            )
