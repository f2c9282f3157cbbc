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
from dsas_core.timing import (Timing, clock_name, cpu_clock, drift, in_fresh_processes, interleaved, memory_report,
                              no_context, paired_ratios, paired_verdict, rss_of_runs, verdict)

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


def generate_runner(model: nn.Module, new_tokens: int = 32, prompt_tokens: int = 16) -> Callable[[], None]:
    """Greedy generation of exactly ``new_tokens`` tokens from a fixed random prompt (batch 1, KV cache on)."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, model.config.vocab_size, (1, prompt_tokens), generator=g).to(device)  # (1, P)
    mask = torch.ones_like(ids)

    @torch.no_grad()
    def run() -> None:
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       do_sample=False, use_cache=True, pad_token_id=0)

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
    ``best_of`` generations."""
    device = torch.device(device)
    model = bench_model(device)
    concept = bench_concept(model)
    for steer in concept.sites.values():  # copy once, so the first timed call is not a transfer
        steer.transform.to(device)
        steer.scaler.to(device)
    cpu = cpu_clock(device)
    timings = interleaved(generate_runner(model, new_tokens), steering_configs(model, concept), repeats=repeats,
                          device=device, cpu_time=cpu, best_of=best_of)
    return report(timings, new_tokens) | {"clock": clock_name(cpu), "best_of": best_of,
        "model": {"parameters": sum(p.numel() for p in model.parameters()), **CONFIG,
                  "dtype": str(next(model.parameters()).dtype).replace("torch.", "")},
        "workload": f"{new_tokens} greedy tokens from a 16-token prompt, batch 1, KV cache on",
        "sites": len(concept.config.sites)}


def report(timings: dict[str, Timing], new_tokens: int) -> dict[str, Any]:
    """Timings, time ratios to unsteered, tokens/s from the medians, and the DSAS verdict."""
    base = timings["unsteered"]
    limit = 1.0 / MIN_TOKENS_PER_SECOND_RATIO  # on time: tokens/s ≥ 0.97× ⇔ time ≤ 1.031×
    ratios = {n: t.median / base.median for n, t in timings.items() if n != "unsteered"}
    paired = {n: paired_ratios(t, base) for n, t in timings.items() if n != "unsteered"}
    return {"timings": {n: t.as_dict() for n, t in timings.items()}, "ratios": ratios,
            "tokens_per_second": {n: new_tokens / t.median for n, t in timings.items()},
            "tokens_per_second_ratio": {n: base.median / t.median for n, t in timings.items() if n != "unsteered"},
            "per_round_ratios": paired,
            "verdicts": {"dsas": {"limit": limit, "criterion": f"tokens/s >= {MIN_TOKENS_PER_SECOND_RATIO} x unsteered",
                                  "verdict": verdict(ratios["dsas"], limit, base),
                                  "paired_verdict": paired_verdict(paired["dsas"], limit)}},
            **({"drift": drift(timings)} if base.repeats >= 3 else {})}
