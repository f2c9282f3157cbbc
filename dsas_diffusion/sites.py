"""Architecture facts, in one table: which modules of each diffusers denoiser can be steered, and how.

A site is a module path inside the denoiser (``pipe.unet`` or ``pipe.transformer``), e.g.
``down_blocks.1.attentions.0.transformer_blocks.0.attn2``. Forward hooks on the attention modules themselves keep
working after ``set_attn_processor``, LoRA loading (peft wraps the projections inside) and ``fuse_qkv_projections``.

SD3 and FLUX sites are whole transformer blocks. Their outputs (diffusers 0.42) are ``(text, image)`` tuples; the
last SD3 block returns ``(None, image)``. A block's image stream is the site named after the block
(``transformer_blocks.3``), its text stream the site with ``:text`` appended (not steered by default). Every call
checks that the steered element has as many tokens as the stream it stands for, so a format change in diffusers
raises a clear error instead of steering the wrong stream.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from torch import Tensor, nn

from dsas_core import DsasError, Site, refuse_compiled


@dataclass(frozen=True)
class Candidate:
    """A steerable site with its output width and whether it is steered by default."""

    site: Site
    width: int
    default: bool
    stream: Literal["image", "text"] | None = None  # transformer blocks: which token stream the site steers


class CallInfo(NamedTuple):
    """What one denoiser call's arguments say (shapes only: no host sync). A named tuple: made on every denoiser
    call, in half the time of a frozen dataclass."""

    batch: int
    latent_hw: tuple[int, int] | None  # the latent grid, when the input's shape shows it
    patch: int  # latent cells per image token along each side (1 for UNet levels at full resolution)
    image_tokens: int | None  # tokens of the image stream at transformer blocks
    text: Tensor | None  # (B, T, D) conditioning text embeddings as the denoiser receives them
    image_ids: Tensor | None = None  # FLUX: (N, 3) positions of the packed image tokens (row, column in 1 and 2)


@dataclass(frozen=True)
class Architecture:
    """How to find the steerable sites of one denoiser class, and how to read its calls."""

    class_name: str
    find: Callable[[nn.Module], list[Candidate]]
    fingerprint_keys: tuple[str, ...]  # config entries that must match between fitting and steering
    describe: Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], CallInfo]
    calls_per_step: int = 1  # denoiser calls per step, used only when the scheduler does not count steps
    branches: tuple[str, ...] = ("cond",)  # meaning of the 1st, 2nd, ... denoiser call within one step
    patch: Callable[[nn.Module], int] = lambda model: 1  # latent cells per image token along each side
    side_multiple: int = 1  # what its pipelines also want image sides to be multiples of, whatever the VAE


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


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], name: str, position: int) -> Any:
    """A call argument given by keyword or by position."""
    return kwargs[name] if name in kwargs else (args[position] if len(args) > position else None)


def _unet_call(unet: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CallInfo:
    """``sample`` (B, C, H, W) is the latent; ``encoder_hidden_states`` (B, T, D) the text."""
    sample = _arg(args, kwargs, "sample", 0)
    return CallInfo(batch=sample.shape[0], latent_hw=tuple(sample.shape[-2:]), patch=1, image_tokens=None,
                    text=_arg(args, kwargs, "encoder_hidden_states", 2))


def _sd3_call(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CallInfo:
    """``hidden_states`` (B, C, H, W) is the latent, cut into p×p patches: (H/p)·(W/p) image tokens."""
    latent = _arg(args, kwargs, "hidden_states", 0)
    p = int(model.config.patch_size)
    h, w = latent.shape[-2:]
    return CallInfo(batch=latent.shape[0], latent_hw=(h, w), patch=p, image_tokens=(h // p) * (w // p),
                    text=_arg(args, kwargs, "encoder_hidden_states", 1))


def _flux_call(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CallInfo:
    """``hidden_states`` (B, N, 4·C) are latents packed in 2×2 patches; ``img_ids`` (N, 3) place them."""
    packed = _arg(args, kwargs, "hidden_states", 0)
    ids = _arg(args, kwargs, "img_ids", 4)
    if isinstance(ids, Tensor) and ids.ndim == 3:  # deprecated batched ids
        ids = ids[0]
    return CallInfo(batch=packed.shape[0], latent_hw=None, patch=2, image_tokens=packed.shape[1],
                    text=_arg(args, kwargs, "encoder_hidden_states", 1), image_ids=ids)


def _block_sites(model: nn.Module, lists: Sequence[str], text_index: int, image_index: int) -> list[Candidate]:
    """Each block of the named ``ModuleList`` s: its image stream (default) and text stream (opt-in)."""
    width = int(model.config.num_attention_heads * model.config.attention_head_dim)
    out = []
    for attr in lists:
        blocks = getattr(model, attr, None) or []
        for i, block in enumerate(blocks):
            name = f"{attr}.{i}"
            out.append(Candidate(Site(name, block, image_index, "tokens"), width, default=True, stream="image"))
            if not getattr(block, "context_pre_only", False):  # the last SD3 block returns (None, image)
                out.append(Candidate(Site(f"{name}:text", block, text_index, "tokens"), width, default=False,
                                     stream="text"))
    return out


def _sd3_sites(model: nn.Module) -> list[Candidate]:
    """``JointTransformerBlock`` outputs ``(text, image)`` (the last block ``(None, image)``), in forward order."""
    return _block_sites(model, ["transformer_blocks"], text_index=0, image_index=1)


def _flux_sites(model: nn.Module) -> list[Candidate]:
    """Double-stream ``FluxTransformerBlock`` then single-stream ``FluxSingleTransformerBlock`` outputs, both
    ``(text, image)`` in diffusers 0.42 (older versions returned one concatenated tensor from single blocks)."""
    return _block_sites(model, ["transformer_blocks", "single_transformer_blocks"], text_index=0, image_index=1)


_TRANSFORMER_KEYS = ("in_channels", "patch_size", "num_layers", "attention_head_dim", "num_attention_heads",
                     "joint_attention_dim", "pooled_projection_dim")

ARCHITECTURES: dict[str, Architecture] = {
    "UNet2DConditionModel": Architecture(
        "UNet2DConditionModel", _unet_sites,
        fingerprint_keys=("in_channels", "block_out_channels", "cross_attention_dim", "addition_embed_type",
                          "transformer_layers_per_block", "down_block_types"),
        describe=_unet_call, side_multiple=8,  # diffusers' SD and SDXL pipelines check `height % 8`
    ),
    "SD3Transformer2DModel": Architecture(
        "SD3Transformer2DModel", _sd3_sites,
        fingerprint_keys=(*_TRANSFORMER_KEYS, "caption_projection_dim", "dual_attention_layers"),
        describe=_sd3_call,
        patch=lambda model: int(model.config.patch_size),
    ),
    "FluxTransformer2DModel": Architecture(
        "FluxTransformer2DModel", _flux_sites,
        fingerprint_keys=(*_TRANSFORMER_KEYS, "num_single_layers", "guidance_embeds"),
        describe=_flux_call,
        branches=("cond", "uncond"),  # true CFG: the prompt's call, then the negative prompt's, per step
        patch=lambda model: 2,  # the pipeline packs 2×2 latent cells into one token
    ),
}


def check_stream(candidate: Candidate, output: Any, info: CallInfo | None) -> None:
    """Raise unless ``output[site.output_index]`` is the (B, N, d) stream the candidate stands for: as many tokens
    as the call's image tokens (image stream) or text tokens (text stream)."""
    if candidate.stream is None or info is None:
        return
    site = candidate.site
    expected = info.image_tokens if candidate.stream == "image" else (None if info.text is None else info.text.shape[1])
    ok = isinstance(output, (tuple, list)) and len(output) > site.output_index
    value = output[site.output_index] if ok else None
    if ok and isinstance(value, Tensor) and value.ndim == 3 and (expected is None or value.shape[1] == expected):
        return
    import diffusers

    if isinstance(output, (tuple, list)):
        got = "(" + ", ".join(str(tuple(v.shape)) if isinstance(v, Tensor) else type(v).__name__ for v in output) + ")"
    else:
        got = f"a {type(output).__name__} of shape {tuple(getattr(output, 'shape', ()))}"
    raise DsasError(
        f"site {site.name!r}: expected output[{site.output_index}] to be the {candidate.stream} stream of shape "
        f"(batch, {expected} tokens, width), but the block returned {got}. This diffusers version "
        f"({diffusers.__version__}) formats block outputs differently from dsas's site table (written for 0.42), "
        "so dsas stops instead of steering the wrong stream: update dsas, or install diffusers 0.42."
    )


def token_grid(context: dict[str, Any], n_tokens: int) -> tuple[int, int]:
    """(h, w) of the grid a site's ``n_tokens`` positions lie on, from a denoiser call's context: FLUX's packed
    token positions, else the latent grid cut into patches, halved (rounding up) for deeper UNet levels."""
    ids = context.get("image_ids")
    if ids is not None:
        h, w = int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1
        if h * w == n_tokens:
            return h, w
    elif context.get("latent_hw") is not None:
        p = int(context.get("patch", 1))
        h, w = -(-context["latent_hw"][0] // p), -(-context["latent_hw"][1] // p)
        for _ in range(8):
            if h * w == n_tokens:
                return h, w
            h, w = -(-h // 2), -(-w // 2)
    raise DsasError(f"cannot place {n_tokens} positions on the latent grid of this call "
                    f"(latent {context.get('latent_hw')}, patch {context.get('patch', 1)}).")


def latent_hw(context: dict[str, Any]) -> tuple[int, int]:
    """The latent grid (H, W) of a denoiser call's context (FLUX: twice the packed token grid)."""
    if context.get("latent_hw") is not None:
        return tuple(context["latent_hw"])
    ids = context.get("image_ids")
    if ids is None:
        raise DsasError("this call's context records no latent grid; α maps need the denoiser's inputs.")
    return (int(ids[:, 1].max()) + 1) * context.get("patch", 2), (int(ids[:, 2].max()) + 1) * context.get("patch", 2)


def image_size(pipe: Any, height: int | None = None, width: int | None = None) -> dict[str, int]:
    """``{"height", "width"}`` in pixels of a text-to-image call: the given sides, else the pipeline's default.

    Each side must be a positive multiple of the VAE's downscaling times the denoiser's patch side (8 × 2 = 16 for
    SD3 and FLUX, where FLUX itself would round a wrong size down without a word), and for SD and SDXL of 8, which
    their pipelines check whatever the VAE. Empty if the pipeline has no VAE scale factor (then the pipeline
    decides)."""
    vae = getattr(pipe, "vae_scale_factor", None)
    if not isinstance(vae, int):
        return {}
    denoiser = denoiser_of(pipe)
    arch = architecture_of(denoiser)
    patch = arch.patch(denoiser)
    step = math.lcm(vae * patch, arch.side_multiple)
    side = getattr(pipe, "default_sample_size", None) or getattr(denoiser.config, "sample_size", None)
    out = {}
    for name, value in (("height", height), ("width", width)):
        if value is None:
            if not isinstance(side, int):
                continue
            value = side * vae
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % step:
            near = max(step, round(value / step) * step) if isinstance(value, (int, float)) else 64 * step
            raise DsasError(f"{name}={value!r}: image sides of {type(pipe).__name__} must be positive multiples of "
                            f"{step} (VAE downscaling {vae} × patch side {patch}"
                            f"{f', and of {arch.side_multiple} for the pipeline' if step != vae * patch else ''}), "
                            f"e.g. {name}={near}.")
        out[name] = value
    return out


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
    skip blocks or replay stale outputs, so steering would silently act on some steps and not others. Also raise
    if the denoiser is already compiled (hooks added after compiling are skipped: see ``refuse_compiled``)."""
    refuse_compiled(denoiser, "the denoiser")
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
