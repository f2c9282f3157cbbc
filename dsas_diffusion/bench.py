"""Benchmarks of steering overhead on diffusers denoisers (``dsas bench``); fitting cost is in ``bench_fit``.

Every configuration runs the same denoiser calls on the same inputs, interleaved and repeated; ratios are medians
over the unsteered median. A concept with every site active (gate 0) is the worst case for DSAS.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dsas_core import Concept, DsasError, fit_from_activations
from dsas_core.timing import (Timing, clock_name, compiled_beside_eager, cpu_clock, drift, interleaved, judged,
                              no_context)

from .pipeline import attach
from .sites import candidates

LIMITS = {"lambda0": 1.01, "plain": 1.03, "dsas": 1.03, "dsas_record": 1.10, "dsas_prompt": 1.03}


def bench_concept(denoiser: nn.Module, transform: str = "mean_shift", seed: int = 0,
                  device: torch.device | None = None) -> Concept:
    """A concept on every default site of ``denoiser``, fitted on random activations, with no site gated; its
    tensors moved to ``device`` when given (α's parameters follow the activations anyway; copying them once keeps
    the first call fair)."""
    g = torch.Generator().manual_seed(seed)
    widths = {c.site.name: c.width for c in candidates(denoiser) if c.default}
    acts = {k: {s: torch.randn(16, w, generator=g) + (i == 0) for s, w in widths.items()} for i, k in
            enumerate(("source", "target", "control"))}
    concept = fit_from_activations("bench", acts["source"], acts["target"], acts["control"], transform=transform,
                                   scaler="probe", gate=0.0, progress=False, model_class=type(denoiser).__name__)
    return concept if device is None else concept.to(device)


def prompt_bench_concept(denoiser: nn.Module, concept: Concept, seed: int = 0) -> Concept:
    """``concept`` with the prompt scaler instead (the default of fitted diffusion concepts: one α per prompt, from
    its pooled text embedding), fitted on random pooled embeddings of the denoiser's text width, gate 0."""
    from .prompt_scaler import with_prompt_scaler

    cfg = denoiser.config
    width = cfg.get("cross_attention_dim") or cfg.get("joint_attention_dim")
    if not isinstance(width, int):
        raise DsasError(f"cannot tell the text width of {type(denoiser).__name__} (cross_attention_dim "
                        f"{cfg.get('cross_attention_dim')!r}): the prompt-scaler configuration needs one integer "
                        "width.")
    g = torch.Generator().manual_seed(seed + 1)
    source, control = torch.randn(16, width, generator=g) + 1, torch.randn(16, width, generator=g)
    return with_prompt_scaler(concept, source, control, gate=0.0, cap_components=True)


def sd15_unet() -> nn.Module:
    """A UNet with Stable Diffusion 1.5's configuration and random weights (860M parameters)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8,
    ).eval()


def sdxl_unet() -> nn.Module:
    """A UNet with Stable Diffusion XL's configuration and random weights (2.6B parameters)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=2048,
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    ).eval()


def cast(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """``model.to(device, dtype)`` for the random-weight benchmark models, without the warning diffusers prints on
    every dtype cast of a model (about float32-only modules, also when there are none, as here)."""
    return nn.Module.to(model, device, dtype)


def unet_runner(unet: nn.Module, latent: int, batch: int, steps: int, text_tokens: int = 77,
                device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Callable[[], None]:
    """``steps`` UNet calls on fixed random inputs (a CFG-sized batch), without gradients."""
    device = device or torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    cfg = unet.config
    sample = torch.randn(batch, cfg.in_channels, latent, latent, generator=g).to(device, dtype)
    text = torch.randn(batch, text_tokens, cfg.cross_attention_dim, generator=g).to(device, dtype)
    timesteps = [t.to(device) for t in torch.linspace(900, 100, steps).long()]  # 0-d tensors, as pipelines pass
    added = None
    if cfg.addition_embed_type == "text_time":  # SDXL: pooled text and the six size/crop numbers
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        added = {"text_embeds": torch.randn(batch, pooled, generator=g).to(device, dtype),
                 "time_ids": torch.tensor([[8.0 * latent, 8.0 * latent, 0, 0, 8.0 * latent, 8.0 * latent]] * batch).to(device, dtype)}

    @torch.no_grad()
    def run() -> None:
        for t in timesteps:
            unet(sample, t, encoder_hidden_states=text, added_cond_kwargs=added, return_dict=False)

    return run


def steering_configs(denoiser: nn.Module, concept: Concept | None) -> dict[str, Callable[[], Any]]:
    """The configurations every overhead benchmark compares, each a context manager factory: unsteered, every
    λ = 0, plain steering, DSAS (the concept's probe: α per position), DSAS recording α, and DSAS with the prompt
    scaler (one α per prompt)."""
    prompt = prompt_bench_concept(denoiser, concept) if concept is not None else None
    return {
        "unsteered": no_context,
        "lambda0": lambda: attach(denoiser, {concept: 0.0}),
        "plain": lambda: attach(denoiser, {concept: 1.0}, adaptive=False),
        "dsas": lambda: attach(denoiser, {concept: 1.0}),
        "dsas_record": lambda: attach(denoiser, {concept: 1.0}, record_alpha=True),
        "dsas_prompt": lambda: attach(denoiser, {prompt: 1.0}),
    }


def workload(name: str, device: torch.device,
             latent: int | None = None) -> tuple[nn.Module, Callable[[], None], dict[str, Any]]:
    """The denoiser and the calls an overhead benchmark times — 'demo', 'sd15', 'sdxl' or 'flux' — with what
    describes them: small inputs on the CPU, real resolutions (fp16 / bf16) on a GPU."""
    gpu = device.type == "cuda"
    if name == "demo":
        from .demo import load_demo_pipeline

        unet = load_demo_pipeline(device=device).unet
        return unet, unet_runner(unet, latent=16, batch=2, steps=20, text_tokens=32, device=device), {}
    if name in ("sd15", "sdxl"):
        dtype = torch.float16 if gpu else torch.float32
        unet = cast(sdxl_unet() if name == "sdxl" else sd15_unet(), device, dtype)
        side = latent or ((128 if name == "sdxl" else 64) if gpu else 16)
        run = unet_runner(unet, latent=side, batch=2, steps=4 if gpu else 1, device=device, dtype=dtype)
        return unet, run, {"latent": side, "dtype": str(dtype)}
    if name == "flux":
        model = flux_transformer(device, double=2 if gpu else 1, single=4 if gpu else 2)
        side = 64 if gpu else 8  # 64: a 1024-pixel image's packed grid
        run = flux_runner(model, device, image_side=side, text_tokens=512 if gpu else 32, steps=2 if gpu else 1)
        return model, run, {"image_side": side}
    raise DsasError(f"unknown workload {name!r}; choose demo, sd15, sdxl or flux.")


def overhead(denoiser: nn.Module, run: Callable[[], None], repeats: int = 7, device: torch.device | None = None,
             transform: str = "mean_shift", best_of: int = 1) -> dict[str, Any]:
    """Unsteered vs attached-at-λ=0 vs plain vs DSAS vs DSAS with α recording, with ratios and verdicts; each
    repeat is the fastest of ``best_of`` runs."""
    concept = bench_concept(denoiser, transform, device=device)
    cpu = cpu_clock(device)
    clear = lambda ctx: ctx.clear_records() if hasattr(ctx, "clear_records") else None  # noqa: E731
    timings = interleaved(run, steering_configs(denoiser, concept), repeats=repeats, device=device, cpu_time=cpu,
                          best_of=best_of, after=clear)
    return report(timings, LIMITS) | {"clock": clock_name(cpu), "best_of": best_of}


def report(timings: dict[str, Timing], limits: dict[str, float], bases: dict[str, str] | None = None) -> dict[str, Any]:
    """Timings with ratios to 'unsteered' (or to ``bases[name]``), the per-round ratios (each configuration over
    its base in the same round: slow drift of the machine's speed cancels there) and two verdicts per limit: by the
    ratio of medians, 'inconclusive' when the base's spread exceeds the margin; and by the 95 % confidence interval
    of the per-round ratios' median."""
    out: dict[str, Any] = {"timings": {n: t.as_dict() for n, t in timings.items()}, "ratios": {}, "verdicts": {},
                           "per_round_ratios": {}}
    for name, limit in limits.items():
        if name in timings:
            base = timings[(bases or {}).get(name, "unsteered")]
            out["ratios"][name], out["per_round_ratios"][name], out["verdicts"][name] = judged(timings[name], base,
                                                                                              limit)
    if "unsteered" in timings and len(timings) > 1 and timings["unsteered"].repeats >= 3:
        out["drift"] = drift(timings)
    return out


def compile_overhead(denoiser: nn.Module, make_run: Callable[[nn.Module], Callable[[], None]], repeats: int = 7,
                     device: torch.device | None = None, mode: str | None = None,
                     backend: str = "inductor") -> dict[str, Any]:
    """Compiled unsteered vs compiled DSAS (attached, then compiled), beside the unsteered and DSAS denoiser run
    eagerly; every configuration on its own copy of ``denoiser``. (α recording under compile breaks the graph at
    every site and recompiles when switched: not timed here.)

    λ moves before every steered run; ``recompiles`` counts the graphs compiled after the first calls (0 expected);
    ``compile_s``: seconds of each compiled copy's first call, compiling included
    (:func:`dsas_core.timing.compiled_beside_eager`)."""
    import copy

    concept = bench_concept(denoiser)
    models = {n: copy.deepcopy(denoiser) for n in ("unsteered", "dsas", "compiled", "compiled_dsas")}
    handles = {n: attach(models[n], {concept: 1.0}) for n in ("dsas", "compiled_dsas")}
    runs = {}
    for name, model in models.items():
        if name.startswith("compiled"):
            model.compile(mode=mode, backend=backend)
        runs[name] = make_run(model)
    timings, run_info = compiled_beside_eager(runs, {n: h.strengths for n, h in handles.items()}, repeats, device)
    for h in handles.values():
        h.remove()
    limits = {"dsas": LIMITS["dsas"], "compiled_dsas": LIMITS["dsas"]}
    out = report(timings, limits, bases={"compiled_dsas": "compiled"})
    return out | run_info | {"mode": mode or "default", "backend": backend, "sites": len(concept.config.sites)}


def flux_transformer(device: torch.device | None = None, double: int = 1, single: int = 2) -> nn.Module:
    """A FLUX.1-shaped transformer (real widths: 24 heads × 128, T5 width 4096) at reduced depth, random weights."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=double, num_single_layers=single, attention_head_dim=128,
        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
        axes_dims_rope=(16, 56, 56)).eval()
    gpu = device is not None and device.type == "cuda"
    return cast(model, torch.device(device or "cpu"), torch.bfloat16 if gpu else torch.float32)


def flux_runner(model: nn.Module, device: torch.device | None = None, image_side: int = 8, text_tokens: int = 32,
                steps: int = 1) -> Callable[[], None]:
    """``steps`` calls on a packed ``image_side``² token grid (side 8 = a 128-pixel image) with distilled guidance."""
    device = device or torch.device("cpu")
    dtype = next(model.parameters()).dtype
    g = torch.Generator().manual_seed(0)
    n = image_side * image_side
    rows, cols = torch.meshgrid(torch.arange(image_side), torch.arange(image_side), indexing="ij")
    img_ids = torch.stack([torch.zeros(n), rows.flatten().float(), cols.flatten().float()], -1).to(device, dtype)
    inputs = {
        "hidden_states": torch.randn(1, n, 64, generator=g).to(device, dtype),
        "encoder_hidden_states": torch.randn(1, text_tokens, 4096, generator=g).to(device, dtype),
        "pooled_projections": torch.randn(1, 768, generator=g).to(device, dtype),
        "img_ids": img_ids, "txt_ids": torch.zeros(text_tokens, 3).to(device, dtype),
        "guidance": torch.full((1,), 3.5).to(device, dtype),
    }
    timesteps = torch.linspace(1.0, 0.1, steps).tolist()

    @torch.no_grad()
    def run() -> None:
        for t in timesteps:
            model(timestep=torch.full((1,), t).to(device, dtype), return_dict=False, **inputs)

    return run
