"""Where to hook a causal language model: sites by *role*, mapped per architecture in one table.

Norm names mean different things across families (Llama's ``post_attention_layernorm`` is the norm *before* the
MLP; Gemma's is after attention), so sites are chosen by role:

* ``residual``  — the residual stream: each decoder layer's output (the default);
* ``mlp_input`` — the MLP's input: the output of the norm that feeds the MLP;
* ``attention`` — the attention block's output, before it is added to the residual stream.

Whether a module returns a tensor or a tuple is learned at run time from one single-token forward pass (decoder
layers return a plain tensor in transformers 5.x and a tuple in some 4.x families); tuples are steered at index 0.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dsas_core import DsasError, HookHandle, Site

ROLES = ("residual", "mlp_input", "attention")


@dataclass(frozen=True)
class Family:
    """Architecture facts for one ``config.model_type``: the decoder-layer list and each role's module inside a
    layer (``""`` = the layer itself)."""

    layers: str
    roles: dict[str, str]
    note: str = ""


_LLAMA_LIKE = Family("model.layers", {"residual": "", "mlp_input": "post_attention_layernorm", "attention": "self_attn"})
_GEMMA = Family("model.layers", {"residual": "", "mlp_input": "pre_feedforward_layernorm", "attention": "self_attn"},
                note="attention = self_attn output, before post_attention_layernorm")

FAMILIES: dict[str, Family] = {
    "llama": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _GEMMA,
    "gemma3_text": _GEMMA,
    "gemma3": Family("model.language_model.layers", _GEMMA.roles, note="the language model of Gemma 3 (image+text)"),
    "gpt2": Family("transformer.h", {"residual": "", "mlp_input": "ln_2", "attention": "attn"}),
    "phi": Family("model.layers", {"residual": "", "mlp_input": "input_layernorm", "attention": "self_attn"},
                  note="parallel block: input_layernorm feeds both attention and MLP"),
}


@dataclass(frozen=True)
class LMSite:
    """A resolved site: the core :class:`Site` plus its decoder-layer index (None outside the layers) and width."""

    site: Site
    layer: int | None
    width: int
    output: str  # "tensor" or "tuple[0]"


def family_of(model: nn.Module) -> Family:
    """The table entry for ``model``; for an unknown type, the residual stream of the decoder-layer list found."""
    model_type = str(getattr(getattr(model, "config", None), "model_type", ""))
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    return Family(_find_layer_list(model), {"residual": ""}, note=f"unknown model_type {model_type!r}: residual only")


def _find_layer_list(model: nn.Module) -> str:
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    matching = [name for name, m in lists if n_layers is None or len(m) == n_layers]
    if not matching:
        raise DsasError(
            f"could not find the decoder layers of {type(model).__name__}: no nn.ModuleList of num_hidden_layers="
            f"{n_layers} modules. Pass sites=REGEX (module names, see `dsas llm sites MODEL`)."
        )
    return max(matching, key=lambda name: len(dict(model.named_modules())[name]))


def parse_layers(layers: str | int | Sequence[int] | None, n_layers: int) -> list[int]:
    """Layer indices from ``None`` (all), an int, a list, ``"3,5,7"`` or a Python slice ``"-16:-4"``."""
    every = list(range(n_layers))
    if layers is None:
        return every
    try:
        if isinstance(layers, int):
            picked = [every[layers]]
        elif isinstance(layers, str) and ":" in layers:
            parts = [int(p) if p.strip() else None for p in layers.split(":")]
            if len(parts) > 3:
                raise ValueError
            picked = every[slice(*parts)]
        elif isinstance(layers, str):
            picked = [every[int(p)] for p in layers.split(",") if p.strip()]
        else:
            picked = [every[int(i)] for i in layers]
    except (ValueError, IndexError):
        raise DsasError(
            f"layers={layers!r} is not a valid choice for a model with {n_layers} decoder layers"
            f"{_out_of_range(layers, n_layers)}: use an index, a list like '3,5,7', or a slice like '-16:-4' (indices "
            f"from -{n_layers} to {n_layers - 1})."
        ) from None
    if not picked:
        raise DsasError(f"layers={layers!r} selects no layer of the {n_layers} decoder layers.")
    return sorted(set(picked))


def _out_of_range(layers: object, n_layers: int) -> str:
    """' (layers 5, 7 do not exist)' for the integer indices of ``layers`` outside the model, else ''."""
    items = layers.split(",") if isinstance(layers, str) and ":" not in layers else (
        [layers] if isinstance(layers, int) else layers if isinstance(layers, (list, tuple)) else [])
    bad = [str(i).strip() for i in items if str(i).strip().lstrip("-").isdigit() and not -n_layers <= int(i) < n_layers]
    if not bad:
        return ""
    return f" (layer {bad[0]} does not exist)" if len(bad) == 1 else f" (layers {', '.join(bad)} do not exist)"


def candidate_modules(
    model: nn.Module, role: str = "residual", layers: str | int | Sequence[int] | None = None,
    sites: str | Sequence[str] | None = None,
) -> list[tuple[str, int | None]]:
    """(module name, layer index) pairs for a role and layer range, or for an explicit name list / regex.

    ``sites`` as a string is a regular expression matched against full module names (``re.fullmatch``); as a list
    it names modules exactly. ``layers`` also filters explicitly named modules that live inside a decoder layer.
    """
    try:
        fam = family_of(model)
        n = len(model.get_submodule(fam.layers))
    except (AttributeError, DsasError) as err:
        if sites is None or layers is not None:
            raise DsasError(f"{type(model).__name__}: cannot locate its decoder layers ({err}); pass sites=[names] "
                            "without layers=.") from None
        fam, n = Family("", {}), 0  # explicit names only: no layer indices
    keep = set(parse_layers(layers, n)) if n else set()
    prefix = fam.layers + "."

    def layer_of(name: str) -> int | None:
        if not fam.layers or not name.startswith(prefix):
            return None
        head = name[len(prefix):].split(".", 1)[0]
        return int(head) if head.isdigit() else None

    if sites is None:
        if role not in ROLES:
            raise DsasError(f"unknown site role {role!r}; choose one of {list(ROLES)}, or pass sites=REGEX.")
        if role not in fam.roles:
            raise DsasError(f"{type(model).__name__} has no known {role!r} site in the table; use role='residual' "
                            "or pass sites=REGEX (see `dsas llm sites MODEL`).")
        rel = fam.roles[role]
        return [(f"{fam.layers}.{i}" + (f".{rel}" if rel else ""), i) for i in sorted(keep)]
    names = dict(model.named_modules())
    if isinstance(sites, str):
        try:
            pattern = re.compile(sites)
        except re.error as err:
            raise DsasError(f"sites={sites!r} is not a valid regular expression ({err}).") from None
        chosen = [name for name in names if name and pattern.fullmatch(name)]
        if not chosen:
            raise DsasError(f"sites='{sites}' matches no whole module name of {type(model).__name__} (the pattern "
                            "must match the full name, e.g. '.*layers\\.[12]'); module names look like "
                            f"{fam.layers}.0{'.' + fam.roles.get('mlp_input', '') if 'mlp_input' in fam.roles else ''}"
                            " (list them with `dsas llm sites MODEL`).")
    else:
        chosen = list(sites)
        missing = [s for s in chosen if s not in names]
        if missing:
            raise DsasError(f"{type(model).__name__} has no module(s) {missing[:3]}; list the sites with "
                            "`dsas llm sites MODEL`.")
    picked = [(name, layer_of(name)) for name in chosen]
    if layers is not None:
        picked = [(name, i) for name, i in picked if i is not None and i in keep]
        if not picked:
            raise DsasError(f"no module matching sites={sites!r} lies in layers {layers!r}.")
    return picked


FINGERPRINT_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
                    "num_key_value_heads", "vocab_size")


def fingerprint(model: nn.Module) -> dict[str, Any]:
    """The text config's entries that identify an architecture (recorded when fitting, compared when attaching):
    two models of one class with equal widths but another vocabulary or depth are different models."""
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    values = {key: getattr(text, key, None) for key in FINGERPRINT_KEYS}
    return {k: v for k, v in values.items() if isinstance(v, (str, int))}


def input_device(model: nn.Module) -> torch.device:
    """Where to put input ids: the input embeddings' device; the CPU when they are offloaded (weights on the meta
    device, moved in by accelerate's hooks, which also move the inputs)."""
    emb = model.get_input_embeddings()
    weight = getattr(emb, "weight", None)
    device = weight.device if isinstance(weight, Tensor) else next(model.parameters()).device
    return torch.device("cpu") if device.type == "meta" else device


def probe_input(model: nn.Module) -> dict[str, Tensor]:
    """A one-token batch for a shape probe, on the device of the input embeddings."""
    emb = model.get_input_embeddings()
    device = input_device(model)
    cfg = getattr(model, "config", None)
    vocab = emb.num_embeddings if isinstance(emb, nn.Embedding) else 1
    ids = (getattr(cfg, "bos_token_id", None), getattr(cfg, "pad_token_id", None))
    token = next((t for t in ids if isinstance(t, int) and 0 <= t < vocab), 0)
    ids = torch.full((1, 1), token, dtype=torch.long, device=device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def resolve(model: nn.Module, modules: Sequence[tuple[str, int | None]]) -> list[LMSite]:
    """Build sites for named modules, learning each one's output format and width from one single-token forward."""
    seen: dict[str, Any] = {}
    probe = HookHandle()
    try:
        for name, _ in modules:
            probe.after_calls(model.get_submodule(name), lambda out, name=name: seen.setdefault(name, _describe(out)))
        with torch.no_grad():
            model(**probe_input(model), use_cache=False)
    finally:
        probe.remove()
    out = []
    for name, layer in modules:
        if name not in seen:
            raise DsasError(f"module {name!r} did not run in a forward pass of {type(model).__name__}: it cannot be "
                            "steered. Choose another site (`dsas llm sites MODEL`).")
        kind, width = seen[name]
        if kind is None:
            raise DsasError(f"module {name!r} returns {width}, not a tensor or a tuple starting with a (batch, tokens, "
                            "width) tensor; dsas cannot steer it. Choose another site (`dsas llm sites MODEL`).")
        index = None if kind == "tensor" else 0
        out.append(LMSite(Site(name, model.get_submodule(name), output_index=index), layer, width, kind))
    return out


def resolve_static(model: nn.Module, modules: Sequence[tuple[str, int | None]], outputs: Mapping[str, str]) -> list[LMSite]:
    """Build sites without a forward pass (used while other hooks are attached, so that a probe call does not reach
    them): the output format as recorded at fit time (``outputs``: name -> "tensor" | "tuple[0]"), the width from
    the module (a Linear's ``out_features``, a norm's weight) or else the width of the input embeddings."""
    emb = model.get_input_embeddings()
    stream = int(emb.embedding_dim) if isinstance(emb, nn.Embedding) else None
    out = []
    for name, layer in modules:
        module = model.get_submodule(name)
        weight = getattr(module, "weight", None)
        if isinstance(module, nn.Linear):
            width: int | None = module.out_features
        elif isinstance(weight, Tensor) and weight.ndim == 1:
            width = int(weight.numel())
        else:
            width = stream
        kind = outputs.get(name, "tensor")
        if width is None or kind not in ("tensor", "tuple[0]"):
            raise DsasError(f"cannot tell the output of {name!r} without running the model while other hooks are "
                            "attached; remove the other hooks first, or attach every concept in one steer(...) call.")
        out.append(LMSite(Site(name, module, output_index=None if kind == "tensor" else 0), layer, width, kind))
    return out


def _describe(output: Any) -> tuple[str | None, Any]:
    """("tensor" | "tuple[0]", width) for a (B, N, d) stream, or (None, what it was)."""
    if isinstance(output, Tensor) and output.ndim == 3:
        return "tensor", int(output.shape[-1])
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor) and output[0].ndim == 3:
        return "tuple[0]", int(output[0].shape[-1])
    shape = tuple(output.shape) if isinstance(output, Tensor) else None
    return None, f"a tensor of shape {shape}" if shape else type(output).__name__


def lm_sites(
    model: nn.Module, role: str = "residual", layers: str | int | Sequence[int] | None = None,
    sites: str | Sequence[str] | None = None,
) -> list[LMSite]:
    """The steerable sites of ``model`` for a role and layer range (or a name list / regex), resolved."""
    return resolve(model, candidate_modules(model, role=role, layers=layers, sites=sites))


def sites_table(model: nn.Module) -> list[dict[str, Any]]:
    """Every role site of every layer, for ``dsas llm sites``: role, layer, module name, output format, width."""
    roles = {name: role for role in family_of(model).roles for name, _ in candidate_modules(model, role=role)}
    modules = [m for role in family_of(model).roles for m in candidate_modules(model, role=role)]
    return [{"role": roles[s.site.name], "layer": s.layer, "name": s.site.name, "output": s.output, "width": s.width}
            for s in resolve(model, modules)]
