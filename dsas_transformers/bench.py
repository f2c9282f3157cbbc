"""Generation throughput with and without DSAS on a ~110M-parameter Llama-style model (``dsas bench --only llm``).

The model has random weights and the concept is fitted on random activations with gate 0, so every decoder
layer's residual site runs its scaler and transform: the worst case for DSAS. Both configurations generate the
same 32 greedy tokens from the same 16-token prompt (batch 1, KV cache on), interleaved and repeated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dsas_core import Concept, fit_from_activations
from dsas_core.hook_timing import steering_times
from dsas_core.timing import (Timing, clock_name, compiled_beside_eager, cpu_clock, drift, in_fresh_processes,
                              interleaved, judged, kernel_profile, memory_report, no_context, rss_of_runs)

from .sites import lm_sites
from .steer import attach

CONFIG = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "num_key_value_heads": 12,
          "intermediate_size": 2048, "vocab_size": 32000, "max_position_embeddings": 256}
MIN_TOKENS_PER_SECOND_RATIO = 0.97  # DSAS tokens/s must reach this fraction of unsteered tokens/s


def bench_model(device: torch.device | str = "cpu", dtype: torch.dtype | None = None, seed: int = 0) -> nn.Module:
    """A Llama-style causal LM with random weights (hidden 768, 12 layers, tied embeddings: about 110M
    parameters); fp16 on CUDA, fp32 elsewhere."""
    from transformers import LlamaConfig, LlamaForCausalLM

    device = torch.device(device)
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    torch.manual_seed(seed)
    cfg = LlamaConfig(**CONFIG, tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg).to(device, dtype).eval()


def bench_concept(model: nn.Module, seed: int = 0) -> Concept:
    """A mean-shift + probe concept on every decoder layer's residual site, fitted on random activations with
    gate 0 (no site gated off)."""
    sites = lm_sites(model, role="residual")
    g = torch.Generator().manual_seed(seed)
    acts = {k: {s.site.name: torch.randn(16, s.width, generator=g) + (i == 0) for s in sites}
            for i, k in enumerate(("source", "target", "control"))}
    return fit_from_activations("bench", acts["source"], acts["target"], acts["control"], transform="mean_shift",
                                scaler="probe", gate=0.0, progress=False, model_class=type(model).__name__,
                                fitted_on={"site_outputs": {s.site.name: s.output for s in sites}})


def generate_runner(model: nn.Module, new_tokens: int = 32, prompt_tokens: int = 16,
                    compiled: Any = None) -> Callable[[], None]:
    """Greedy generation of exactly ``new_tokens`` tokens from a fixed random prompt (batch 1, KV cache on).
    ``compiled``, a ``transformers.CompileConfig``: decode with a static KV cache through the forward that
    ``generate`` compiles with it (see :func:`compile_config`)."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, model.config.vocab_size, (1, prompt_tokens), generator=g).to(device)  # (1, P)
    mask = torch.ones_like(ids)
    extra = {"cache_implementation": "static", "compile_config": compiled} if compiled is not None else {}

    @torch.no_grad()
    def run() -> None:
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       do_sample=False, use_cache=True, pad_token_id=0, **extra)

    return run


def steering_configs(model: nn.Module, concept: Concept) -> dict[str, Callable[[], Any]]:
    """The configurations the LLM benchmark compares, each a context manager factory."""
    return {"unsteered": no_context, "dsas": lambda: attach(model, {concept: 1.0})}


def _memory_child(config: str, new_tokens: int, threads: int) -> dict[str, float]:
    """In a fresh process: build the bench model and concept, then measure two generations under ``config``."""
    torch.set_num_threads(threads)
    model = bench_model("cpu")
    return rss_of_runs(generate_runner(model, new_tokens), steering_configs(model, bench_concept(model))[config]())


def generation_memory(new_tokens: int = 32) -> dict[str, Any]:
    """Peak RSS (MiB) of two CPU generations per configuration, each in a fresh process, with ratios to
    unsteered."""
    return memory_report(in_fresh_processes(_memory_child, {c: (c, new_tokens, torch.get_num_threads())
                                                            for c in ("unsteered", "dsas")}))


def tokens_per_second(device: torch.device | str = "cpu", repeats: int = 7, new_tokens: int = 32,
                      best_of: int = 1) -> dict[str, Any]:
    """Unsteered vs DSAS generation: timings, time ratios, tokens/s and the verdict on DSAS tokens/s ≥ 0.97 ×
    unsteered ('inconclusive' when the unsteered spread exceeds the 3% margin); each repeat is the fastest of
    ``best_of`` generations. On a GPU also each configuration's kernels per generation and their GPU time."""
    device = torch.device(device)
    model = bench_model(device)
    concept = bench_concept(model).to(device)  # copied once, so the first timed call is not a transfer
    cpu = cpu_clock(device)
    run, configs = generate_runner(model, new_tokens), steering_configs(model, concept)
    timings = interleaved(run, configs, repeats=repeats, device=device, cpu_time=cpu, best_of=best_of)
    kernels = {n: kernel_profile(run, device, make) for n, make in configs.items()} if device.type == "cuda" else {}
    return report(timings, new_tokens) | ({"kernels": kernels} if kernels else {}) | {
        "clock": clock_name(cpu), "best_of": best_of,
        "model": {"parameters": sum(p.numel() for p in model.parameters()), **CONFIG,
                  "dtype": str(next(model.parameters()).dtype).replace("torch.", "")},
        "workload": f"{new_tokens} greedy tokens from a 16-token prompt, batch 1, KV cache on",
        "sites": len(concept.config.sites)}


def hook_times(device: torch.device | str = "cpu", repeats: int = 7, new_tokens: int = 32,
               model: nn.Module | None = None) -> dict[str, Any]:
    """The steering's own time inside a generation (:func:`dsas_core.hook_timing.steering_times`), attached at
    λ = 0 and with DSAS, on ``model`` (default: the 110M bench model): on the CPU, ``share`` is what steering adds
    to the generation's time."""
    device = torch.device(device)
    model = bench_model(device) if model is None else model
    concept = bench_concept(model).to(device)
    configs = {"lambda0": lambda: attach(model, {concept: 0.0}), "dsas": steering_configs(model, concept)["dsas"]}
    out = steering_times(generate_runner(model, new_tokens), configs, len(concept.config.sites), repeats=repeats,
                         device=device, core=lambda steering: steering.core,
                         limits={"lambda0": 1.01, "dsas": 1.0 / MIN_TOKENS_PER_SECOND_RATIO})
    return out | {"workload": f"{new_tokens} greedy tokens from a 16-token prompt, batch 1, KV cache on"}


def report(timings: dict[str, Timing], new_tokens: int, bases: dict[str, str] | None = None) -> dict[str, Any]:
    """Timings, time ratios to unsteered (or to ``bases[name]``), tokens/s from the medians, and a verdict for
    every steered configuration (those whose name contains 'dsas')."""
    bases = {n: (bases or {}).get(n, "unsteered") for n in timings if n != "unsteered"}
    limit = 1.0 / MIN_TOKENS_PER_SECOND_RATIO  # on time: tokens/s ≥ 0.97× ⇔ time ≤ 1.031×
    judgements = {n: judged(timings[n], timings[b], limit) for n, b in bases.items()}
    ratios = {n: j[0] for n, j in judgements.items()}
    return {"timings": {n: t.as_dict() for n, t in timings.items()}, "ratios": ratios,
            "tokens_per_second": {n: new_tokens / t.median for n, t in timings.items()},
            "tokens_per_second_ratio": {n: 1.0 / r for n, r in ratios.items()},
            "per_round_ratios": {n: j[1] for n, j in judgements.items()},
            "verdicts": {n: {"criterion": f"tokens/s >= {MIN_TOKENS_PER_SECOND_RATIO} x {bases[n]}", **j[2]}
                         for n, j in judgements.items() if "dsas" in n},
            **({"drift": drift(timings)} if timings["unsteered"].repeats >= 3 else {})}


def compile_config(device: torch.device, mode: str | None = None, backend: str = "inductor") -> Any:
    """The ``transformers.CompileConfig`` that makes ``generate`` compile the decoding forward (static KV cache):
    ``mode`` or, by default, CUDA graphs (``reduce-overhead``) on a GPU and inductor's default elsewhere."""
    from transformers import CompileConfig

    config = CompileConfig(backend=backend, mode=mode or ("reduce-overhead" if device.type == "cuda" else "default"))
    if device.type != "cuda":
        config._compile_all_devices = True  # generate compiles only on accelerators unless told otherwise
    return config


def compiled_tokens_per_second(device: torch.device | str = "cpu", repeats: int = 7, new_tokens: int = 32,
                               mode: str | None = None, model: nn.Module | None = None,
                               backend: str = "inductor") -> dict[str, Any]:
    """Generation with the decoding forward compiled by ``generate`` (static KV cache): compiled unsteered vs
    compiled DSAS (attached, then compiled), beside both eagerly, on two copies of ``model`` (the benchmark's
    110M model by default); λ moves before every steered run. ``recompiles``: graphs compiled after each compiled
    copy's first two generations (0 expected); ``compile_s``: seconds of each compiled copy's first generation,
    compiling included."""
    import copy

    device = torch.device(device)
    model = model if model is not None else bench_model(device)
    steered = copy.deepcopy(model)
    concept = bench_concept(model)
    handle = attach(steered, {concept: 1.0})
    config = compile_config(device, mode, backend)
    models = {"unsteered": model, "dsas": steered, "compiled": model, "compiled_dsas": steered}
    runs = {n: generate_runner(m, new_tokens, compiled=config if n.startswith("compiled") else None)
            for n, m in models.items()}
    timings, run_info = compiled_beside_eager(runs, {"dsas": handle.strengths, "compiled_dsas": handle.strengths},
                                              repeats, device)
    handle.remove()
    return report(timings, new_tokens, bases={"compiled_dsas": "compiled"}) | run_info | {
        "mode": config.mode, "workload": f"{new_tokens} greedy tokens from a 16-token prompt, batch 1; compiled: "
        "static KV cache, decoding compiled by generate", "sites": len(concept.config.sites)}
