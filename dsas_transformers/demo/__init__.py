"""The bundled "tavern world": a procedural corpus with exactly measurable toxicity, and a tiny LM trained on it.

``load_demo_lm()`` returns the bundled ``LlamaForCausalLM`` and its word-level tokenizer (offline, from
``assets/demo-lm/``); ``python -m dsas_transformers.demo.train`` rebuilds them; ``is_toxic(text)`` is the oracle.
"""

from .model import build_model, build_tokenizer, demo_lm_dir, load_demo_lm
from .world import INSULTS, Doc, corpus, counterpart, is_toxic, sample_doc, vocabulary

__all__ = ["INSULTS", "Doc", "build_model", "build_tokenizer", "corpus", "counterpart", "demo_lm_dir", "is_toxic",
           "load_demo_lm", "sample_doc", "vocabulary"]
