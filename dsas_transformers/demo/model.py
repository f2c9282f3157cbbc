"""The tavern world's word-level tokenizer and tiny Llama, built in code, and the loader of the bundled weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsas_core import DsasError
from dsas_core.paths import assets_dir, require_checkout

from .world import vocabulary

SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")  # ids 0-3
ARCH = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 4, "max_position_embeddings": 64}


def demo_lm_dir() -> Path:
    """``assets/demo-lm``: config.json, model.safetensors, tokenizer.json."""
    return assets_dir() / "demo-lm"


def build_tokenizer() -> Any:
    """A whitespace word-level ``PreTrainedTokenizerFast`` over the world's vocabulary that prepends ``<bos>``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(dict.fromkeys([*SPECIALS, *vocabulary()]))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                      special_tokens=[("<bos>", vocab["<bos>"])])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>",
                                  eos_token="<eos>")
    tok.model_max_length = ARCH["max_position_embeddings"]
    return tok


def build_model(vocab_size: int, seed: int = 0) -> nn.Module:
    """A freshly initialised tiny ``LlamaForCausalLM`` (about 0.9M parameters)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab_size, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                      tie_word_embeddings=False, **ARCH)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def require_demo_lm() -> Path:
    """The bundled LM's folder, or a :class:`DsasError` saying how to get it."""
    path = demo_lm_dir()
    require_checkout("the bundled demo LM")
    if not (path / "model.safetensors").is_file():
        raise DsasError(f"the bundled demo LM is missing from {path}: rebuild it with "
                        "`python -m dsas_transformers.demo.train` (about 7 minutes on one CPU core).")
    return path


def load_demo_lm(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Any]:
    """(model, tokenizer) of the bundled tavern-world LM, in eval mode, offline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = require_demo_lm()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    model.config._name_or_path = "demo"  # what concepts record as fitted on: the CLI's name, not this machine's path
    return model, AutoTokenizer.from_pretrained(path)
