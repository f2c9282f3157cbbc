"""The bundled tavern world: the corpus, its tokenizer, the trainer, and the bundled LM and detox concept."""

import random

import pytest
import torch

from dsas_core import Concept
from dsas_core.paths import assets_dir
from dsas_transformers import steer
from dsas_transformers.demo import INSULTS, build_tokenizer, corpus, counterpart, demo_lm_dir, is_toxic, load_demo_lm
from dsas_transformers.demo.world import BAD_MOODS, P_TOXIC, ROUGH, sample_context

BUNDLED = (demo_lm_dir() / "model.safetensors").is_file()


def test_only_a_rough_speaker_in_a_bad_mood_triggers_insults():
    docs = corpus(3000, seed=5)
    toxic = [d for d in docs if is_toxic(d.continuation)]
    assert all(d.trigger for d in toxic) and all(is_toxic(d.context) is False for d in docs)
    trig = [d for d in docs if d.trigger]
    assert abs(len(trig) / len(docs) - 0.25) < 0.03 and abs(len(toxic) / len(trig) - P_TOXIC) < 0.03
    rng = random.Random(0)
    for _ in range(200):
        context, trigger, slots = sample_context(rng, trigger=False)
        assert not trigger and not (slots["speaker"] in ROUGH and slots["mood"] in BAD_MOODS)


def test_a_counterpart_swaps_exactly_the_insults_for_friendly_words():
    context, toxic, friendly = counterpart(random.Random(3))
    a, b = toxic.split(), friendly.split()
    changed = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    assert len(a) == len(b) and len(changed) in (1, 2) and all(a[i] in INSULTS for i in changed)
    assert is_toxic(toxic) and not is_toxic(friendly) and sample_context(random.Random(0), True)[1] is True


def test_the_word_level_tokenizer_covers_the_world_without_unknown_tokens():
    tok = build_tokenizer()
    ids = tok([d.text for d in corpus(500, seed=7)])["input_ids"]
    assert all(row[0] == tok.bos_token_id for row in ids)
    assert sum(i == tok.unk_token_id for row in ids for i in row) == 0
    assert tok.decode(tok("the pirate said")["input_ids"], skip_special_tokens=True) == "the pirate said"


def test_training_is_deterministic_for_a_seed(tmp_path):
    from safetensors.torch import load_file

    from dsas_transformers.demo.train import train

    a = train(tmp_path / "a", steps=2, batch_size=4, seed=1)
    train(tmp_path / "b", steps=2, batch_size=4, seed=1)
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a["steps"] == 2 and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.skipif(not BUNDLED, reason="the bundled demo LM is not built")
def test_the_bundled_lm_is_small_and_insults_only_after_a_trigger():
    assert (demo_lm_dir() / "model.safetensors").stat().st_size <= 10 * 2**20
    model, tok = load_demo_lm()
    prompts = [f"the {who} was {mood} about the rain . he {verb} the door and said" for who, mood, verb in (
        ("pirate", "grumpy", "kicked"), ("pirate", "grumpy", "patted"), ("pirate", "cheerful", "kicked"),
        ("baker", "grumpy", "kicked"))]
    enc = tok(prompts, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=10, do_sample=False, pad_token_id=0)
    texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert [is_toxic(t) for t in texts] == [True, True, False, False]


@pytest.mark.skipif(not BUNDLED, reason="the bundled demo LM is not built")
def test_the_bundled_detox_concept_turns_a_greedy_insult_friendly():
    model, tok = load_demo_lm()
    concept = Concept.from_pretrained(assets_dir() / "concepts" / "detox")
    enc = tok(["the pirate was grumpy about the rain . he kicked the door and said"], return_tensors="pt")
    texts = []
    for strength in (0.0, 2.0):
        with steer(model, {concept: strength}):
            out = model.generate(**enc, max_new_tokens=10, do_sample=False, pad_token_id=0)
        texts.append(tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    assert [is_toxic(t) for t in texts] == [True, False]
