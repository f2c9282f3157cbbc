"""A planted concept on a tiny random Llama: the scaler fires on held-out texts that carry the phrase and stays
quiet on texts that do not; adaptive steering keeps under a fifth of plain steering's effect on control texts and at
least twice that share on source texts.

Pooling, stated plainly: α is read per token with λ = 0 (the scaler sees unsteered activations), averaged over
the ungated sites, then over each text's tokens without special tokens (the BOS; fitting pools without them too),
then over the held-out texts. The scaler itself was fitted on text-averaged activations.
"""

import random

import pytest

from dsas_transformers import encode, fit_concept, steer
from dsas_transformers.testing import tiny_model, tiny_tokenizer

FILLER = ("the a of and to in is was for on with as by at from it this that be are or an had not but what all were "
          "when we there can").split()
PHRASE = "zebra quantum lantern violet".split()  # the planted multi-token phrase, opening every source text
TOK = tiny_tokenizer(FILLER + PHRASE)


def make(n, seed, planted):
    """n texts of 6 words: the phrase + 2 filler words, or 6 filler words."""
    rng = random.Random(seed)
    return [" ".join((PHRASE if planted else []) + [rng.choice(FILLER) for _ in range(2 if planted else 6)])
            for _ in range(n)]


def mean_alpha(model, concept, texts):
    batch = encode(TOK, texts)
    with steer(model, {concept: 0.0}, record_alpha=True) as handle:
        model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=1,
                       pad_token_id=0)
        return handle.alpha_tokens().per_text(exclude=TOK.all_special_ids).mean().item()


@pytest.fixture(scope="module", params=[0, 1, 2])
def planted(request):
    model = tiny_model("llama", len(TOK), hidden=64, layers=4, seed=request.param)
    concept = fit_concept(model, TOK, make(32, 1, True), make(32, 2, False), make(32, 3, False), name="planted",
                          progress=False)
    return model, concept


def test_the_scaler_fires_on_held_out_source_texts_and_not_on_control_texts(planted):
    model, concept = planted
    assert all(not d["gated"] and d["accuracy"] >= 0.95 for d in concept.config.diagnostics.values())
    assert mean_alpha(model, concept, make(16, 4, True)) >= 0.8
    assert mean_alpha(model, concept, make(16, 5, False)) <= 0.2


def test_adaptive_steering_moves_source_texts_and_leaves_control_texts_nearly_alone(planted):
    model, concept = planted

    def change(texts, adaptive):
        batch = encode(TOK, texts)
        base = model(**batch).logits
        with steer(model, {concept: 1.0}, adaptive=adaptive):
            steered = model(**batch).logits
        keep = batch["attention_mask"].bool()
        return (steered - base)[keep].norm(dim=-1).mean().item()

    source, control = make(16, 4, True), make(16, 5, False)
    kept = {name: change(t, True) / change(t, False) for name, t in (("source", source), ("control", control))}
    assert kept["control"] <= 0.2
    assert kept["source"] >= 2 * kept["control"]  # upstream steering lowers α downstream: self-limiting
