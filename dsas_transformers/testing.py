"""Tiny random-initialised causal LMs and a word-level tokenizer, built in code (offline): for tests and demos.

These models know nothing; they exist so that sites, fitting, hooks and generation can be checked exactly on a CPU
in seconds. Real use loads a checkpoint with ``AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
TINY_FAMILIES = ("gpt2", "llama", "qwen2", "mistral", "gemma2", "gemma3_text", "phi", "phi3")


def tiny_tokenizer(words: Sequence[str]) -> "object":
    """A whitespace word-level ``PreTrainedTokenizerFast`` over ``words`` that prepends ``<bos>``; ids 0-3 are
    ``<pad> <unk> <bos> <eos>``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(dict.fromkeys([*SPECIALS, *words]))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                      special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>",
                                   eos_token="<eos>")


def tiny_config(family: str, vocab_size: int, hidden: int = 32, layers: int = 2, heads: int = 4) -> "object":
    """A transformers config for a tiny model of ``family`` (one of :data:`TINY_FAMILIES`)."""
    import transformers as tf

    ids = {"pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3}
    common = {"vocab_size": vocab_size, "hidden_size": hidden, "intermediate_size": 2 * hidden,
              "num_hidden_layers": layers, "num_attention_heads": heads, "max_position_embeddings": 128, **ids}
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=128,
                             resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids)
    builders = {
        "llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "mistral": tf.MistralConfig, "phi": tf.PhiConfig,
        "phi3": tf.Phi3Config, "gemma2": tf.Gemma2Config, "gemma3_text": tf.Gemma3TextConfig,
    }
    if family not in builders:
        raise ValueError(f"unknown tiny family {family!r}; choose one of {TINY_FAMILIES}")
    extra = {"num_key_value_heads": max(1, heads // 2)} if family != "phi" else {}
    if family.startswith("gemma"):
        extra["head_dim"] = hidden // heads
    return builders[family](**common, **extra)


def tiny_model(family: str, vocab_size: int, hidden: int = 32, layers: int = 2, seed: int = 0,
               dtype: torch.dtype = torch.float32) -> nn.Module:
    """A random-initialised ``AutoModelForCausalLM`` (seeded, eval mode)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, vocab_size, hidden, layers), dtype=dtype)
    return model.eval()
