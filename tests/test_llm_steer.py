"""Steering through `generate` on tiny GPT-2, Llama, Qwen2 and Gemma 2: identity at λ = 0, KV cache parity,
per-token α in prefill and decode, padding-invariant pooling, and refusal of concepts fitted on another model."""

import copy
import dataclasses
import random

import pytest
import torch

from dsas_core import Concept, DsasError
from dsas_transformers import collect_pooled, encode, fit_concept, lm_sites, steer
from dsas_transformers.testing import tiny_model, tiny_tokenizer

ARCHS = ["gpt2", "llama", "qwen2", "gemma2"]
WORDS = "the a red blue fox cat dog runs jumps over under green small big old new sun moon tree river".split()
TOK = tiny_tokenizer(WORDS)
VOCAB = len(TOK)


def texts(n, seed, lo=3, hi=8):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


@pytest.fixture(scope="module", params=ARCHS)
def arch(request):
    """(name, model, concept fitted on it with the probe scaler)."""
    model = tiny_model(request.param, VOCAB, hidden=32, layers=2, seed=0)
    concept = fit_concept(model, TOK, texts(16, 1), texts(16, 2), texts(16, 3), name="c", progress=False, gate=0.0)
    return request.param, model, concept


def prompts(n=2):
    batch = encode(TOK, ["the red fox runs", "a dog"][:n])
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def greedy(model, steps=4, **kw):
    return model.generate(**prompts(), max_new_tokens=steps, min_new_tokens=steps, do_sample=False, pad_token_id=0,
                          return_dict_in_generate=True, output_logits=True, **kw)


def test_strength_zero_and_detaching_leave_logits_and_greedy_tokens_unchanged(arch):
    _, model, concept = arch
    before = greedy(model)
    with steer(model, {concept: 0.0}):
        zero = greedy(model)
    with steer(model, {concept: 3.0}):
        steered = greedy(model)
    after = greedy(model)
    for run in (zero, after):
        assert torch.equal(run.sequences, before.sequences)
        assert max((a - b).abs().max().item() for a, b in zip(run.logits, before.logits)) <= 1e-6
    assert max((a - b).abs().max().item() for a, b in zip(steered.logits, before.logits)) > 1e-3
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0


def test_steered_logits_with_and_without_the_kv_cache_agree(arch):
    _, model, concept = arch
    with steer(model, {concept: 3.0}):
        cached = greedy(model, steps=5, use_cache=True)
        uncached = greedy(model, steps=5, use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    assert max((a - b).abs().max().item() for a, b in zip(cached.logits, uncached.logits)) <= 1e-5


def test_alpha_is_recorded_per_token_for_the_prefill_and_every_decode_step(arch):
    _, model, concept = arch
    batch = prompts()
    with steer(model, {concept: 0.0}, record_alpha=True) as handle:
        out = model.generate(**batch, max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0)
        at = handle.alpha_tokens()
        positions = encode(TOK, ["the red fox runs", "a dog"])["position_ids"]  # what generate derives too
        hidden = model(**batch, position_ids=positions, output_hidden_states=True).hidden_states[1]  # (B, N, d)
    n_prompt, n_sites = batch["input_ids"].shape[1], len(concept.config.sites)
    assert len(handle.records) == n_sites * (1 + 2 + 1)  # prefill, two decode steps, then the extra model call
    assert at.by_site.shape == (n_sites, 2, n_prompt + 2)
    assert at.phase == ["prefill"] * n_prompt + ["decode"] * 2
    assert torch.equal(at.ids, out[:, :-1])
    assert torch.equal(at.mask[:, :n_prompt], batch["attention_mask"])
    assert not torch.isnan(at.by_site).any()
    scaler = concept.sites[concept.config.sites[0]].scaler
    expected = torch.sigmoid(hidden @ scaler.weight + scaler.bias)  # (B, N)
    assert torch.allclose(at.by_site[0, :, :n_prompt], expected, atol=1e-6, rtol=0)


def test_left_padding_with_mask_derived_positions_gives_the_unpadded_pooled_means(arch):
    name, model, _ = arch
    sites = lm_sites(model)
    batch = texts(6, 7, lo=1, hi=9)
    padded = collect_pooled(model, TOK, batch, sites, batch_size=6, progress=False)
    alone = [collect_pooled(model, TOK, [t], sites, batch_size=1, progress=False) for t in batch]
    for s in padded:
        # float32 summation order differs with padding: 1e-6 absolute plus 1e-6 relative (Gemma's |h| reaches ~5)
        assert torch.allclose(padded[s], torch.cat([a[s] for a in alone]), atol=1e-6, rtol=1e-6)
    if name == "gpt2":  # absolute positions: without position_ids the padding would shift every token
        enc = encode(TOK, batch)
        wrong = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        right = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                      position_ids=enc["position_ids"]).logits
        assert (wrong - right).abs().max().item() > 1e-3


def test_a_concept_fitted_on_another_model_is_refused_with_a_clear_error(arch):
    name, model, concept = arch
    other = "llama" if name != "llama" else "qwen2"
    foreign = tiny_model(other, VOCAB, hidden=32, layers=2)
    with pytest.raises(DsasError, match=f"fitted on a {type(model).__name__}"):
        steer(foreign, {concept: 1.0})
    wider = tiny_model(name, VOCAB, hidden=48, layers=2)
    with pytest.raises(DsasError, match="has width 48 here but 32"):
        steer(wider, {concept: 1.0})
    assert sum(len(m._forward_hooks) for m in foreign.modules()) + sum(len(m._forward_hooks) for m in wider.modules()) == 0


def test_a_concept_fitted_on_a_model_of_the_same_class_and_widths_but_another_vocabulary_is_refused(arch):
    name, model, concept = arch
    assert concept.config.fitted_on["config"]["vocab_size"] == VOCAB
    other = tiny_model(name, VOCAB + 8, hidden=32, layers=2)  # same class, sites and widths
    with pytest.raises(DsasError, match=f"fitted on a different {type(model).__name__} "
                                        f"\\(vocab_size = {VOCAB} there, {VOCAB + 8} here\\): fit the concept again"):
        steer(other, {concept: 1.0})
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in other.modules()) == 0
    older = Concept(dataclasses.replace(concept.config, fitted_on={k: v for k, v in concept.config.fitted_on.items()
                                                                   if k != "config"}), concept.sites)
    with steer(other, {older: 1.0}) as handle:  # saved before the config was recorded: widths checked only
        assert handle.attached


def test_a_fitted_concept_records_what_it_was_fitted_on_and_round_trips(arch, tmp_path):
    name, model, concept = arch
    cfg = concept.config
    assert cfg.model_class == type(model).__name__
    assert cfg.site_widths == {s.site.name: 32 for s in lm_sites(model)}
    assert cfg.fitted_on["model_type"] == model.config.model_type
    assert cfg.fitted_on["n_texts"] == {"source": 16, "target": 16, "control": 16}
    assert cfg.fitted_on["site_outputs"] == {s: "tensor" for s in cfg.sites}
    assert {"torch", "transformers", "dsas"} <= set(cfg.fitted_on)
    loaded = Concept.from_pretrained(concept.save_pretrained(tmp_path / "c"))
    with steer(model, {concept: 2.0}):
        a = greedy(model, steps=2)
    with steer(model, {loaded: 2.0}):
        b = greedy(model, steps=2)
    assert torch.equal(a.sequences, b.sequences)
    assert max((x - y).abs().max().item() for x, y in zip(a.logits, b.logits)) == 0.0


def test_several_concepts_and_concept_directories_attach_together_and_alpha_names_its_concept(tmp_path):
    model = tiny_model("llama", VOCAB, hidden=32, layers=2)
    a = fit_concept(model, TOK, texts(8, 1), texts(8, 2), texts(8, 3), name="a", gate=0.0, progress=False)
    b = fit_concept(model, TOK, texts(8, 4), texts(8, 5), texts(8, 6), name="b", gate=0.0, progress=False,
                    layers=[1])
    with steer(model, {a: 1.0, str(b.save_pretrained(tmp_path / "b")): 0.5}) as handle:
        greedy(model, steps=2)
        with pytest.raises(DsasError, match="record_alpha=True"):
            handle.alpha_tokens("a")
        handle.record_alpha = True
        greedy(model, steps=2)
        with pytest.raises(DsasError, match=r"several concepts are attached \(\['a', 'b'\]\)"):
            handle.alpha_tokens()
        assert handle.alpha_tokens("b").by_site.shape == (1, 2, 5 + 1)
        assert handle.alpha_tokens("a").by_site.shape == (2, 2, 5 + 1)
        with pytest.raises(DsasError, match="out of range: 1 generation"):
            handle.alpha_tokens("a", generation=1)  # the first generation ran before recording was switched on
        assert len(handle.forwards) == 2  # only recorded calls are logged: prefill + one decode step
        assert dict(handle.strengths) == {"a": 1.0, "b": 0.5}


@pytest.mark.parametrize("transform", ["itic", "linear_act"])
def test_other_transforms_fit_from_texts_and_keep_kv_cache_parity(transform):
    model = tiny_model("llama", VOCAB, hidden=32, layers=2)
    concept = fit_concept(model, TOK, texts(16, 1), texts(16, 2), texts(16, 3), transform=transform, gate=0.0,
                          progress=False)
    assert concept.config.transform == transform
    with steer(model, {concept: 1.5}, adaptive=False):
        cached = greedy(model, steps=4, use_cache=True)
        uncached = greedy(model, steps=4, use_cache=False)
    before = greedy(model, steps=4)
    assert torch.equal(cached.sequences, uncached.sequences)
    assert max((a - b).abs().max().item() for a, b in zip(cached.logits, uncached.logits)) <= 1e-5
    assert max((a - b).abs().max().item() for a, b in zip(cached.logits, before.logits)) > 1e-4


def test_a_second_handle_attaches_without_a_probe_call_reaching_the_first():
    model = tiny_model("qwen2", VOCAB, hidden=32, layers=2)
    a = fit_concept(model, TOK, texts(8, 1), texts(8, 2), texts(8, 3), name="a", layers=[0], gate=0.0, progress=False)
    b = fit_concept(model, TOK, texts(8, 4), texts(8, 5), texts(8, 6), name="b", layers=[1], gate=0.0, progress=False,
                    role="attention")
    with steer(model, {a: 1.0, b: 1.0}):
        together = greedy(model, steps=3)
    with steer(model, {a: 1.0}, record_alpha=True) as first:
        greedy(model, steps=3)
        calls = len(first.records)
        with steer(model, {b: 1.0}):
            assert len(first.records) == calls  # attaching ran no forward pass through the first handle
            first.record_alpha = False
            stacked = greedy(model, steps=3)
        assert first.alpha_tokens().by_site.shape == (1, 2, 5 + 2)
    assert torch.equal(stacked.sequences, together.sequences)
    assert max((x - y).abs().max().item() for x, y in zip(stacked.logits, together.logits)) <= 1e-6


def test_a_model_offloaded_by_accelerate_is_steered_like_the_model_in_memory(arch):
    """cpu_offload keeps each layer's weights on the meta device until its forward: steering still attaches."""
    from accelerate import cpu_offload

    _, model, concept = arch
    offloaded = cpu_offload(copy.deepcopy(model), execution_device=torch.device("cpu"))
    assert next(offloaded.parameters()).is_meta
    with steer(model, {concept: 3.0}):
        reference = greedy(model)
    with steer(offloaded, {concept: 3.0}):
        got = greedy(offloaded)
    assert torch.equal(got.sequences, reference.sequences)
    assert max((a - b).abs().max().item() for a, b in zip(got.logits, reference.logits)) <= 1e-6
