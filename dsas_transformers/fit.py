"""Fit a concept on a causal language model from three lists of texts (source, target, control).

Each text is run through the model once (batched, left-padded, ``position_ids`` derived from the attention mask so
padding changes nothing) and every hooked site's output is mean-pooled over the text's tokens; the core fits the
transform on source vs target and the scaler on source vs control from those pooled means.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from dsas_core import Concept, DsasError, PooledCollector, fit_from_activations, refuse_compiled
from dsas_core.e2e import E2EConfig, train_e2e

from .sites import LMSite, fingerprint, input_device, lm_sites


def read_texts(texts: Sequence[str] | str, what: str) -> list[str]:
    """Validate a list of texts (a bare string is refused: it would be read as a list of characters)."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise DsasError(f"{what}: expected a list of texts, got {type(texts).__name__}. Wrap a single text in a list; "
                        "in the CLI give a file with one text per line.")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise DsasError(f"{what}: item {bad[0]} is {texts[bad[0]]!r}; every item must be a non-empty string.")
    if len(texts) < 2:
        raise DsasError(f"{what}: got {len(texts)} text(s), need at least 2 (32 per set is a good default).")
    return list(texts)


def apply_chat_template(tokenizer: Any, texts: Sequence[str], add_generation_prompt: bool = False,
                        history: Sequence[dict[str, str]] = ()) -> list[str]:
    """Wrap each text as one user message in the tokenizer's chat template (as text, special tokens included),
    after the earlier turns of ``history`` ({"role": ..., "content": ...} each) where given."""
    if not getattr(tokenizer, "chat_template", None):
        raise DsasError(f"chat_template=True, but the tokenizer ({type(tokenizer).__name__}) has no chat template. "
                        "Use a chat/instruct model's tokenizer, or leave the template off (chat_template=False; no "
                        "--chat-template in the CLI).")
    return [tokenizer.apply_chat_template([*history, {"role": "user", "content": t}], tokenize=False,
                                          add_generation_prompt=add_generation_prompt) for t in texts]


def prompt_ids(tokenizer: Any, prompt: str, chat_template: bool = False,
               history: Sequence[dict[str, str]] = ()) -> tuple[Tensor, int]:
    """(1, N) input ids of one prompt for ``generate`` — wrapped as a user message with the generation prompt when
    ``chat_template`` (the template then holds the special tokens), after the conversation's earlier turns
    (``history``) — and how many of them are the unknown token."""
    text = apply_chat_template(tokenizer, [prompt], True, history)[0] if chat_template else prompt
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=not chat_template)["input_ids"]
    unknown = 0 if tokenizer.unk_token_id is None else int((ids == tokenizer.unk_token_id).sum())
    return ids, unknown


def generation_pad_id(tokenizer: Any) -> int:
    """The id ``generate`` pads finished rows with: the pad token, else end-of-sequence."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def position_ids_from_mask(mask: Tensor) -> Tensor:
    """(B, N) attention mask -> (B, N) positions counting only real tokens: cumsum(mask) − 1, clamped at 0."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


def encode(
    tokenizer: Any, texts: Sequence[str], device: torch.device | str = "cpu", max_length: int | None = None,
    add_special_tokens: bool = True, pool_special_tokens: bool = False,
) -> dict[str, Tensor]:
    """Tokenize and left-pad by hand (any tokenizer, with or without a pad token).

    Returns ``input_ids``, ``attention_mask``, ``position_ids`` (B, N) and ``pool_mask`` (B, N): the tokens that are
    averaged (real tokens; special tokens such as BOS too only when ``pool_special_tokens``).
    """
    enc = tokenizer(list(texts), add_special_tokens=add_special_tokens, return_special_tokens_mask=True,
                    truncation=max_length is not None, max_length=max_length)
    ids: list[list[int]] = enc["input_ids"]
    special: list[list[int]] = enc["special_tokens_mask"]
    empty = [i for i, row in enumerate(ids) if not row]
    if empty:
        raise DsasError(f"text {empty[0]} ({texts[empty[0]]!r}) tokenizes to no tokens.")
    n = max(len(row) for row in ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([[pad] * (n - len(r)) + r for r in ids], dtype=torch.long)  # (B, N)
    mask = torch.tensor([[0] * (n - len(r)) + [1] * len(r) for r in ids], dtype=torch.long)  # (B, N)
    keep = torch.tensor([[0] * (n - len(r)) + [1 - s for s in sp] for r, sp in zip(ids, special)], dtype=torch.long)
    pool = mask if pool_special_tokens else keep
    only_special = [i for i in range(len(ids)) if pool[i].sum() == 0]
    if only_special:
        raise DsasError(f"text {only_special[0]} ({texts[only_special[0]]!r}) has only special tokens: nothing to pool.")
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device),
            "position_ids": position_ids_from_mask(mask).to(device), "pool_mask": pool.to(device)}


def _forward_target(model: nn.Module, sites: Sequence[LMSite]) -> nn.Module:
    """The decoder without the LM head when every site lives inside it (saves the vocabulary projection)."""
    base = getattr(model, "base_model", None)
    prefix = getattr(model, "base_model_prefix", "") + "."
    inside = all(s.site.name.startswith(prefix) for s in sites)
    return base if isinstance(base, nn.Module) and base is not model and inside else model


def collect_pooled(
    model: nn.Module, tokenizer: Any, texts: Sequence[str], sites: Sequence[LMSite], batch_size: int = 8,
    max_length: int | None = None, add_special_tokens: bool = True, pool_special_tokens: bool = False,
    progress: bool = True, desc: str = "collecting",
) -> dict[str, Tensor]:
    """Mean over each text's tokens of every site's output: ``{site: (len(texts), d)}`` float32 on the CPU."""
    if batch_size < 1:
        raise DsasError(f"batch_size must be >= 1, got {batch_size}.")
    device = input_device(model)
    runner = _forward_target(model, sites)
    collector = PooledCollector([s.site for s in sites])
    try:
        with torch.no_grad():
            for start in tqdm(range(0, len(texts), batch_size), desc=desc, disable=not progress, leave=False):
                batch = encode(tokenizer, texts[start:start + batch_size], device, max_length, add_special_tokens,
                               pool_special_tokens)
                collector.mask = batch.pop("pool_mask")
                runner(**batch, use_cache=False)
    finally:
        collector.remove()
    return collector.pooled()


def library_versions() -> dict[str, str]:
    """Versions recorded in a concept's ``fitted_on``."""
    import transformers

    import dsas_core

    return {"dsas": dsas_core.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def fit_concept(
    model: nn.Module,
    tokenizer: Any,
    source: Sequence[str],
    target: Sequence[str],
    control: Sequence[str] | None = None,
    transform: str = "mean_shift",
    scaler: str = "probe",
    name: str = "concept",
    sites: str | Sequence[str] | None = None,
    layers: str | int | Sequence[int] | None = None,
    role: str = "residual",
    batch_size: int = 8,
    chat_template: bool = False,
    max_length: int | None = None,
    pool_special_tokens: bool = False,
    n_components: int = 5,
    gate: float = 0.75,
    seed: int = 0,
    progress: bool = True,
    e2e: E2EConfig | None = None,
) -> Concept:
    """Fit a DSAS concept on a causal LM from text lists.

    ``source``: texts to steer away from (and where the scaler should fire); ``target``: texts to steer toward;
    ``control``: texts to leave alone (trains the ``probe`` scaler; may be None for ``scaler="constant"``).
    Sites: ``role`` (``residual`` | ``mlp_input`` | ``attention``) over ``layers`` (None = all, ``"-16:-4"``,
    ``[3, 5]``), or ``sites`` = module names / a regex. ``chat_template`` wraps each text as a user message.
    ``transform="lineas", scaler="e2e"`` trains map and scaler end to end (settings in ``e2e``).
    """
    _check_e2e_pair(transform, scaler)
    src = read_texts(source, "source texts")
    tgt = read_texts(target, "target texts")
    ctl = read_texts(control, "control texts") if control is not None else None
    refuse_compiled(model)
    resolved = lm_sites(model, role=role, layers=layers, sites=sites)
    sets = {"source": src, "target": tgt, "control": ctl}
    add_special = True
    if chat_template:
        sets = {k: None if v is None else apply_chat_template(tokenizer, v) for k, v in sets.items()}
        add_special = False  # the template already holds BOS and friends
    if scaler == "e2e":
        return _fit_e2e(model, tokenizer, sets, resolved, name, add_special, max_length, pool_special_tokens, e2e,
                        progress, fitted_on=_fitted_on(model, resolved, sets, role, sites, layers, batch_size,
                                                       chat_template, max_length, pool_special_tokens, seed))
    pooled = {
        k: None if v is None else collect_pooled(model, tokenizer, v, resolved, batch_size, max_length, add_special,
                                                 pool_special_tokens, progress, desc=f"{name}: {k} texts")
        for k, v in sets.items()
    }
    fitted_on = _fitted_on(model, resolved, sets, role, sites, layers, batch_size, chat_template, max_length,
                           pool_special_tokens, seed)
    return fit_from_activations(
        name, pooled["source"], pooled["target"], pooled["control"], transform=transform, scaler=scaler,
        n_components=n_components, gate=gate, seed=seed, progress=progress,
        model_class=type(model).__name__, fitted_on=fitted_on,
    )


def _check_e2e_pair(transform: str, scaler: str) -> None:
    """E2E training learns a lineas map together with an e2e scaler; neither makes sense alone."""
    if (transform == "lineas") != (scaler == "e2e"):
        raise DsasError(f"transform={transform!r} with scaler={scaler!r}: end-to-end training learns the 'lineas' "
                        "transform together with the 'e2e' scaler; pass both (or neither).")


def _fit_e2e(model: nn.Module, tokenizer: Any, sets: dict[str, list[str] | None], resolved: Sequence[LMSite],
             name: str, add_special: bool, max_length: int | None, pool_special: bool, config: E2EConfig | None,
             progress: bool, fitted_on: dict[str, Any]) -> Concept:
    """E2E-DSAS: the steered model runs on the texts (with gradients to the steering parameters only)."""
    if sets["control"] is None:
        raise DsasError("the 'e2e' scaler needs control texts (inputs to keep in place).")
    device = input_device(model)
    runner = _forward_target(model, resolved)

    def forward(set_name: str, idx: list[int], collector: PooledCollector) -> None:
        texts = sets[set_name]
        assert texts is not None
        batch = encode(tokenizer, [texts[i] for i in idx], device, max_length, add_special, pool_special)
        collector.mask = batch.pop("pool_mask")
        runner(**batch, use_cache=False)

    counts = {k: len(v) for k, v in sets.items() if v is not None}
    concept, report = train_e2e(name, [s.site for s in resolved], forward, counts, config=config, model=model,
                                progress=progress, model_class=type(model).__name__, fitted_on=fitted_on)
    concept.config.fitted_on["e2e_report"] = {"best_val": report["best_val"], "steps_run": report["history"][-1]["step"]}
    return concept


def _fitted_on(model: nn.Module, resolved: Sequence[LMSite], sets: dict[str, list[str] | None], role: str,
               sites: Any, layers: Any, batch_size: int, chat_template: bool, max_length: int | None,
               pool_special_tokens: bool, seed: int) -> dict[str, Any]:
    """What a concept records about the model and the fitting run."""
    cfg = getattr(model, "config", None)
    dtype = next(model.parameters()).dtype
    fitted_on: dict[str, Any] = {
        "library": "transformers",
        "model_type": str(getattr(cfg, "model_type", "")),
        "name_or_path": str(getattr(cfg, "_name_or_path", "") or getattr(model, "name_or_path", "")),
        "config": fingerprint(model),
        "dtype": str(dtype).replace("torch.", ""),
        "role": role if sites is None else "custom",
        "layers": None if layers is None else str(layers),
        "site_outputs": {s.site.name: s.output for s in resolved},
        "site_layers": {s.site.name: s.layer for s in resolved},
        "n_texts": {k: len(v) for k, v in sets.items() if v is not None},
        "batch_size": batch_size,
        "chat_template": chat_template,
        "max_length": max_length,
        "pooling": "mean over real tokens" + ("" if pool_special_tokens else ", special tokens excluded"),
        "padding": "left, position_ids = cumsum(attention_mask) - 1",
        "seed": seed,
        **library_versions(),
    }
    return fitted_on
