"""The real CLIP BPE tokenizer, rebuilt offline from the vocabulary bundled inside the open_clip package.

open_clip ships ``bpe_simple_vocab_16e6.txt.gz`` (the merges of OpenAI's CLIP). From it we write the
``vocab.json`` + ``merges.txt`` pair that ``transformers.CLIPTokenizer`` reads; token ids are identical to
open_clip's (49408 tokens, ``<|startoftext|>`` = 49406, ``<|endoftext|>`` = 49407). transformers pads with
49407, open_clip with 0: only the padding differs.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

N_MERGES = 49152 - 256 - 2  # open_clip's SimpleTokenizer keeps lines [1, N_MERGES] of the gz file
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """(token -> id, merge lines) of CLIP's BPE, read from open_clip's bundled ``bpe_simple_vocab_16e6.txt.gz``."""
    import open_clip.tokenizer as oct

    lines = gzip.open(oct.default_bpe()).read().decode("utf-8").split("\n")[1 : N_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + [BOS, EOS]
    return {tok: i for i, tok in enumerate(vocab)}, [" ".join(m) for m in merges]


def write_clip_tokenizer(directory: str | Path, model_max_length: int) -> Path:
    """Write a ``transformers.CLIPTokenizer`` folder (vocab.json, merges.txt, tokenizer_config.json,
    special_tokens_map.json) with the given ``model_max_length``. Returns the folder."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges()
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length,
              "do_lower_case": True, "clean_up_tokenization_spaces": False, **special}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
    return out
