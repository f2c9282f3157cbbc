"""The app's Text tab logic (TextStudio) on the bundled tavern-world LM and detox concept: continuations, α per
token, sampling, fitting, and the refusals."""

import pytest
import torch

from dsas_core import DsasError
from dsas_core.paths import assets_dir
from dsas_core.registry import ConceptRegistry
from dsas_transformers.demo import is_toxic, load_demo_lm
from dsas_transformers.studio import TextRequest, TextStudio

TRIGGER = "feeling grumpy about the bread , the pirate shoved the door and said"  # a rough speaker in a bad mood
NEUTRAL = "feeling calm about the bread , the baker patted the door and said"
LISTS = {k: (assets_dir() / "prompts" / "lm" / f"detox_{k}.txt").read_text() for k in ("source", "target", "control")}


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    registry = ConceptRegistry([assets_dir() / "concepts"], tmp_path_factory.mktemp("concepts"))
    return TextStudio({"demo": load_demo_lm}, registry, workers=1)


def text(studio, prompt, **kw):
    return studio.steered(TextRequest("demo", prompt, **kw)).text


def test_only_language_model_concepts_are_offered(studio):
    assert "circles-on-black" in studio.registry.names()  # an image concept in the same folder
    assert studio.concepts_for("demo") == ["detox"]


def test_unsteered_is_generate_itself_and_strength_zero_changes_nothing(studio):
    model, tok = load_demo_lm()
    ids = tok(TRIGGER, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    expected = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert studio.unsteered(TextRequest("demo", TRIGGER)) == expected == "you are a big nitwit and a nitwit ."
    assert text(studio, TRIGGER, strengths={"detox": 0.0}) == expected


def test_dsas_detoxifies_the_trigger_and_leaves_a_neutral_prompt_alone(studio):
    assert is_toxic(studio.unsteered(TextRequest("demo", TRIGGER)))
    assert text(studio, TRIGGER, strengths={"detox": 1.5}) == "you are a big treasure and a friend ."
    for lam in (1.5, 3.0):
        assert text(studio, NEUTRAL, strengths={"detox": lam}) == studio.unsteered(TextRequest("demo", NEUTRAL))
    # plain steering (α ≡ 1) at λ = 3 rewrites the neutral prompt's continuation too
    assert text(studio, NEUTRAL, plain=True, strengths={"detox": 3.0}) != studio.unsteered(TextRequest("demo", NEUTRAL))


def test_a_sweep_gives_what_single_requests_give_at_each_strength(studio):
    rows = studio.sweep(TextRequest("demo", TRIGGER, strengths={"detox": 0.5, "circles-on-black": 0.0}), "4,0,3")
    assert [(v, s) for v, s, _ in rows] == [(0.0, "unsteered"), (3.0, "DSAS"), (3.0, "plain"), (4.0, "DSAS"),
                                            (4.0, "plain")]
    assert rows[0][2] == studio.unsteered(TextRequest("demo", TRIGGER))
    for i, strength in ((1, 1.5), (3, 2.0)):  # the concept's 0.5 × each value
        assert rows[i][2] == text(studio, TRIGGER, strengths={"detox": strength})
        assert rows[i][2] == "you are a big treasure and a friend ."
        assert rows[i + 1][2] == text(studio, TRIGGER, plain=True, strengths={"detox": strength})
    assert rows[4][2].startswith("you are a big treasure neighbour friend champion")  # plain steering overshoots
    sampled = TextRequest("demo", TRIGGER, sample=True, seed=4, strengths={"detox": 1.0})
    assert studio.sweep(sampled, "0,2")[1][2] == text(studio, TRIGGER, sample=True, seed=4, strengths={"detox": 2.0})
    for strengths, values, said in (({"detox": 0.0}, "0,1", "every strength is 0"),
                                    ({"detox": 4.0}, "0,5", "between -16 and 16, got 20"),
                                    ({"detox": 1.0}, ",".join(map(str, range(20))), "at most 16")):
        with pytest.raises(DsasError, match=said):
            studio.sweep(TextRequest("demo", TRIGGER, strengths=strengths), values)


def test_tokens_carry_alpha_and_plain_steering_is_alpha_one(studio):
    result = studio.steered(TextRequest("demo", TRIGGER, strengths={"detox": 1.5}))
    pieces = [p for p, _ in result.tokens]
    assert "".join(pieces).strip() == f"{TRIGGER} {result.text}"
    alphas = [a for _, a in result.tokens]
    assert all(0.0 <= a <= 1.0 for a in alphas)  # EOS (never shown) was the last token, so every shown one was read
    assert max(alphas) > 0.5 > min(alphas)  # steered where the trigger is read, hardly elsewhere
    assert [s for _, s, _ in result.profile] == [f"model.layers.{i}" for i in range(4)]
    plain = studio.steered(TextRequest("demo", TRIGGER, plain=True, strengths={"detox": 1.5}))
    assert {a for _, a in plain.tokens} == {1.0}
    assert [a for _, _, a in plain.profile] == [1.0] * 4


def test_sampling_is_seeded_and_leaves_the_global_generator_alone(studio):
    state = torch.get_rng_state()
    a = [text(studio, TRIGGER, sample=True, seed=s, max_new_tokens=12) for s in (1, 1, 2, 3, 4)]
    assert torch.equal(torch.get_rng_state(), state)
    assert a[0] == a[1]
    assert len(set(a)) > 1


def test_an_unknown_word_is_counted_and_shown(studio):
    result = studio.steered(TextRequest("demo", "the calm baker smiled and said", strengths={"detox": 1.0}))
    assert result.unknown == 1
    assert [p.strip() for p, _ in result.tokens][:5] == ["the", "calm", "baker", "<unk>", "and"]


@pytest.mark.parametrize("kw, match", [
    ({"prompt": "  "}, "the prompt is empty"),
    ({"max_new_tokens": 0}, "new tokens must be between 1 and 256"),
    ({"strengths": {"detox": 17}}, "between -16 and 16"),
    ({"strengths": {"detox": float("nan")}}, "between -16 and 16"),
    ({"strengths": {"detox": "1.5"}}, "must be a number, got '1.5'"),
    ({"strengths": {"../detox": 1}}, "unknown concept"),
])
def test_bad_requests_are_refused(studio, kw, match):
    with pytest.raises(DsasError, match=match):
        studio.validate(TextRequest(**({"model": "demo", "prompt": TRIGGER} | kw)))


def test_an_image_concept_is_refused_and_an_unknown_model_named(studio):
    with pytest.raises(DsasError, match="fitted on a UNet2DConditionModel"):
        studio.steered(TextRequest("demo", TRIGGER, strengths={"circles-on-black": 1.0}))
    with pytest.raises(DsasError, match=r"unknown model 'gpt2'.*python app.py --lm NAME"):
        studio.pool("gpt2")


def test_a_fitted_concept_is_saved_offered_and_replaced_by_name(studio):
    concept, replaces = studio.fit("demo", LISTS["source"], LISTS["target"], LISTS["control"], "polite",
                                   "mean_shift", "probe")
    assert not replaces
    assert (studio.registry.user_dir / "polite" / "dsas_config.json").is_file()
    assert studio.concepts_for("demo") == ["detox", "polite"]
    assert not is_toxic(text(studio, TRIGGER, strengths={"polite": 3.0}))
    assert studio.fit("demo", LISTS["source"], LISTS["target"], LISTS["control"], "polite", "mean_shift",
                      "constant")[1]
    with pytest.raises(DsasError, match="bundled example"):
        studio.fit("demo", LISTS["source"], LISTS["target"], LISTS["control"], "detox", "mean_shift", "probe")


def test_the_chat_template_wraps_the_prompt_as_a_user_message(tmp_path):
    def with_template():
        model, tok = load_demo_lm()
        tok.chat_template = "{% for m in messages %}feeling grumpy about {{ m['content'] }} and said{% endfor %}"
        return model, tok

    registry = ConceptRegistry([assets_dir() / "concepts"], tmp_path)
    chat = TextStudio({"demo": with_template}, registry, workers=1)
    wrapped = "feeling grumpy about the bread , the pirate shoved the door and said"
    for lam in (0.0, 1.5):
        assert text(chat, "the bread , the pirate shoved the door", chat=True, strengths={"detox": lam}) == \
            text(chat, wrapped, strengths={"detox": lam})
    assert text(chat, "the bread , the pirate shoved the door") != text(chat, wrapped)
    with pytest.raises(DsasError, match="has no chat template"):
        text(TextStudio({"demo": load_demo_lm}, registry, workers=1), TRIGGER, chat=True)


def test_simultaneous_requests_match_sequential_ones(tmp_path):
    import threading

    two = TextStudio({"demo": load_demo_lm}, ConceptRegistry([assets_dir() / "concepts"], tmp_path), workers=2)
    reqs = [TextRequest("demo", TRIGGER, seed=s, sample=bool(s % 2), max_new_tokens=12, strengths={"detox": lam})
            for s in range(4) for lam in (0.0, 0.75, 1.5)]
    sequential = [two.steered(r).text for r in reqs]
    together: list[str | None] = [None] * len(reqs)

    def work(i: int) -> None:
        together[i] = two.steered(reqs[i]).text

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == sequential
    assert len(set(sequential)) > 3


def test_e2e_dsas_is_fitted_with_the_retain_weight_given(studio):
    studio.fit("demo", LISTS["source"], LISTS["target"], LISTS["control"], "e2e-detox", "lineas", "e2e",
               retain_weight=50.0, e2e_steps=20)
    loaded = studio.registry.get("e2e-detox")
    assert (loaded.config.transform, loaded.config.scaler) == ("lineas", "e2e")
    assert (loaded.config.fitted_on["e2e"]["retain_weight"], loaded.config.fitted_on["e2e"]["steps"]) == (50.0, 20)
    assert loaded.config.fitted_on["e2e_report"]["steps_run"] == 19  # steps 0 … 19
    with pytest.raises(DsasError, match="learns the 'lineas' transform together with the 'e2e' scaler"):
        studio.fit("demo", LISTS["source"], LISTS["target"], LISTS["control"], "bad", "mean_shift", "e2e")


def test_sites_are_chosen_by_role_and_layers(studio):
    concept, _ = studio.fit("demo", LISTS["source"], LISTS["target"], LISTS["control"], "mlp-1-2", "mean_shift",
                            "probe", role="mlp_input", layers=" 1,2 ")
    assert concept.config.sites == [f"model.layers.{i}.post_attention_layernorm" for i in (1, 2)]
    with pytest.raises(DsasError, match=r"layers='7' is not a valid choice .* \(layer 7 does not exist\)"):
        studio.fit("demo", LISTS["source"], LISTS["target"], LISTS["control"], "bad", "mean_shift", "probe",
                   layers="7")


def test_an_evaluation_shows_dsas_detoxifying_at_no_perplexity_cost_where_plain_steering_pays(studio):
    from app_widgets import bundled_prompts

    run = studio.evaluate("demo", "detox", bundled_prompts("lm/trigger.jsonl", 20), bundled_prompts("lm/neutral.txt", 50),
                          "0,1.5,3", seeds=1)
    assert run.verdict.startswith("best DSAS within 5% perplexity: λ=1.5, toxicity 100.0% -> 0.0% (100% lower)")
    assert run.verdict.endswith("at the same toxicity; acceptance passed")
    dsas, plain = ({p["strength"]: p for p in run.curves[m]} for m in ("dsas", "plain"))
    assert dsas[1.5]["toxicity"] == plain[1.5]["toxicity"] == 0.0
    assert abs(dsas[1.5]["rise_neutral"]) < 0.001 < 0.05 < plain[1.5]["rise_neutral"]
    assert [p.rsplit("/", 1)[1] for p in run.files] == ["pareto.png", "results.csv", "results.json"]
    assert len(open(run.files[1]).read().splitlines()) == 1 + 20 * 5  # header, then λ 0 once and 2 × 2 steered


@pytest.mark.parametrize("kw, match", [
    ({"prompts": "\n# only a comment\n"}, "no prompts to evaluate"),
    ({"strengths": "0"}, "holds no strength but 0"),
    ({"strengths": "1,two"}, "give comma-separated numbers"),
    ({"seeds": 0}, "seeds must be between 1 and 20"),
    ({"prompts": "a\n" * 257}, "257 trigger prompts: the app evaluates at most 256 per set; run larger sweeps with"),
    ({"strengths": ",".join(map(str, range(17)))}, "17 strengths: the app sweeps at most 16"),
    ({"concept": "circles-on-black"}, "fitted on a UNet2DConditionModel"),
    ({"toxicity": "assets/demo-lm"}, r"scorer 'assets/demo-lm' is not offered here: choose one of \['demo', "
                                     r"'s-nlp/roberta_toxicity_classifier'\] \(offer another at launch: python app.py "
                                     r"--toxicity SPEC\)"),
])
def test_an_evaluation_that_cannot_run_says_why(studio, kw, match):
    args = {"model": "demo", "concept": "detox", "prompts": TRIGGER, "neutral": NEUTRAL, "strengths": "0,1"} | kw
    with pytest.raises(DsasError, match=match):
        studio.evaluate(**args)


def test_another_family_works_the_same_way(tmp_path):
    from dsas_transformers.testing import tiny_model, tiny_tokenizer

    words = "the cat dog sat ran on a mat rug and said hello bye".split()
    tok = tiny_tokenizer(words)
    gpt2 = TextStudio({"tiny": lambda: (tiny_model("gpt2", len(tok)), tok)}, ConceptRegistry([], tmp_path), workers=1)
    source = "\n".join(f"the cat {v} on a {t}" for v in ("sat", "ran") for t in ("mat", "rug"))
    target = "\n".join(f"the dog {v} on a {t}" for v in ("sat", "ran") for t in ("mat", "rug"))
    concept, _ = gpt2.fit("tiny", source, target, "", "cat-to-dog", "mean_shift", "constant")
    assert concept.config.sites == ["transformer.h.0", "transformer.h.1"]
    prompt = "the cat sat on"
    unsteered = gpt2.unsteered(TextRequest("tiny", prompt, max_new_tokens=8))
    assert gpt2.steered(TextRequest("tiny", prompt, max_new_tokens=8, strengths={"cat-to-dog": 0.0})).text == unsteered
    steered = gpt2.steered(TextRequest("tiny", prompt, max_new_tokens=8, strengths={"cat-to-dog": 16.0}))
    assert steered.text != unsteered
    assert "".join(p for p, _ in steered.tokens).strip() == f"{prompt} {steered.text}".strip()
    assert {a for _, a in steered.tokens if a is not None} == {1.0}  # the constant scaler: α ≡ 1


def test_preloading_loads_a_model_once_in_the_background_and_leaves_a_failed_load_to_the_request(tmp_path):
    registry = ConceptRegistry([assets_dir() / "concepts"], tmp_path)
    loads = []

    def broken():
        loads.append("broken")
        raise DsasError("no such model folder")

    studio = TextStudio({"demo": lambda: loads.append("demo") or ("model", "tok"), "broken": broken}, registry,
                        workers=1)
    for name in ("demo", "broken"):
        thread = studio.preload(name)
        thread.join(timeout=10)
        assert thread.daemon and not thread.is_alive()
    assert loads == ["demo", "broken"]
    assert studio.pool("demo").reference == ("model", "tok") and loads == ["demo", "broken"]  # not loaded again
    with pytest.raises(DsasError, match="no such model folder"):  # the request loads again and shows why
        studio.pool("broken")
    assert loads == ["demo", "broken", "broken"]
