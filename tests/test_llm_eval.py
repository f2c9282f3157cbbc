"""`dsas llm eval` pieces: the toxicity oracle, RealToxicityPrompts-style prompt files, perplexity, the sweep's
results files and the matched-toxicity comparison — on a tiny random model, offline."""

import csv
import json
import math

import pytest
import torch

from dsas_core import DsasError
from dsas_core.cli import main
from dsas_transformers import fit_concept
from dsas_transformers.demo import build_tokenizer, is_toxic
from dsas_transformers.evaluate import (FIELDS, EvalSettings, LexiconToxicity, Prompt, at_toxicity, compare,
                                        interpolate, perplexity, plot_methods, read_prompts, summarize, sweep,
                                        write_results)
from dsas_transformers.testing import tiny_config


def test_the_oracle_flags_exactly_the_texts_with_a_lexicon_word():
    texts = ["you are a total muppet .", "you are a total friend .", "What a NITWIT!", "muppets are puppets",
             "", "listen you dunce , you right pal ."]
    assert [is_toxic(t) for t in texts] == [True, False, True, False, False, True]
    assert LexiconToxicity().scores(texts) == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]


def test_realtoxicityprompts_jsonl_gives_prompt_texts_and_reference_continuations(tmp_path):
    path = tmp_path / "rtp.jsonl"
    rows = [{"filename": "a", "prompt": {"text": "So I said", "toxicity": 0.1}, "continuation": {"text": " hello."}},
            {"prompt": {"text": "The weather"}},
            {"prompt": "A plain string prompt", "continuation": {"text": None}}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert read_prompts(path) == [Prompt("So I said", " hello."), Prompt("The weather"), Prompt("A plain string prompt")]
    picked = read_prompts(path, limit=2, seed=0)
    assert len(picked) == 2 and picked == read_prompts(path, limit=2, seed=0)


def test_prompt_files_in_plain_text_and_bad_jsonl_lines(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("# comment\none prompt\n\n two \n")
    assert read_prompts(txt) == [Prompt("one prompt"), Prompt("two")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": {"text": "ok"}}\n{"text": "no prompt key"}\n')
    with pytest.raises(DsasError, match=r"bad.jsonl:2 has no prompt text"):
        read_prompts(bad)


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoModelForCausalLM

    tok = build_tokenizer()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama", len(tok), hidden=32, layers=2)).eval()
    src = ["the pirate was grumpy about the rain and said you are a total muppet and a dunce ."] * 2 + [
        "the troll was cross about the cat and said what a ninny you are , a big dingbat ."] * 2
    tgt = [t.replace("muppet", "friend").replace("dunce", "pal").replace("ninny", "gem").replace("dingbat", "pal")
           for t in src]
    ctl = ["the baker was calm about the bread and said the bread is lovely today .",
           "the poet was happy about the music and said i like the music when it is loud ."] * 2
    concept = fit_concept(model, tok, src, tgt, ctl, name="detox", gate=0.0, progress=False)
    return model, tok, concept


def test_perplexity_ignores_padding_and_scores_only_the_continuation(tiny):
    model, tok, _ = tiny
    texts = ["the cat is lovely today .", "let us go to the village and look at the ship ."]
    together = perplexity(model, tok, texts)
    nll = [len(tok(t)["input_ids"]) - 1 for t in texts]
    apart = math.exp(sum(math.log(perplexity(model, tok, [t])) * n for t, n in zip(texts, nll)) / sum(nll))
    assert together == pytest.approx(apart, rel=1e-5)
    ids = tok("the cat said you are a pal .")["input_ids"]
    logp = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    k = len(tok("the cat said")["input_ids"])
    manual = math.exp(-sum(logp[i - 1, ids[i]].item() for i in range(k, len(ids))) / (len(ids) - k))
    assert perplexity(model, tok, ["you are a pal ."], ["the cat said"]) == pytest.approx(manual, rel=1e-5)


def test_a_sweep_writes_one_row_per_continuation_and_the_results_files(tiny, tmp_path):
    model, tok, concept = tiny
    prompts = [Prompt("the pirate was grumpy about the rain and said", "you are a total friend and a pal ."),
               Prompt("the baker was calm about the cat and said", "the cat is old today ."), Prompt("the troll said")]
    settings = EvalSettings(strengths=[0.0, 1.0], seeds=2, max_new_tokens=4, batch_size=2)
    rows, ppl = sweep(model, tok, concept, prompts, ["the cat is lovely today ."], settings, LexiconToxicity(),
                      progress=False)
    assert len(rows) == (1 + 2) * 2 * 3 and len(ppl) == 3
    assert {(r["method"], r["strength"]) for r in rows} == {("none", 0.0), ("dsas", 1.0), ("plain", 1.0)}
    assert all(set(FIELDS) <= set(r) and r["new_tokens"] <= 4 for r in rows)
    again, _ = sweep(model, tok, concept, prompts, [], settings, LexiconToxicity(), progress=False)
    assert [r["continuation"] for r in again] == [r["continuation"] for r in rows]  # seeded
    curves = summarize(rows, ppl)
    assert [p["strength"] for p in curves["dsas"]] == [0.0, 1.0]
    assert curves["plain"][0]["rise_neutral"] == 0.0 and curves["dsas"][1]["n"] == 6
    cmp = compare(curves)
    write_results(tmp_path, rows, {"curves": curves, "comparison": cmp})
    with open(tmp_path / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == FIELDS and len(table) == 18
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["rows"]) == 18 and set(saved["comparison"]) >= {"matched", "best", "passed"}


def test_plain_steering_is_compared_at_the_same_toxicity_along_its_strength_sweep():
    base = {"strength": 0.0, "toxicity": 0.9, "rise_neutral": 0.0}
    curves = {"dsas": [base, {"strength": 2.0, "toxicity": 0.2, "rise_neutral": 0.01}],
              "plain": [base, {"strength": 1.0, "toxicity": 0.5, "rise_neutral": 0.1},
                        {"strength": 2.0, "toxicity": 0.1, "rise_neutral": 0.3}]}
    assert interpolate(curves["plain"], "toxicity", 0.2, "rise_neutral") == pytest.approx(0.25)
    cmp = compare(curves)
    assert cmp["best"]["reduction"] == pytest.approx(7 / 9) and cmp["best"]["plain_rise_neutral"] == pytest.approx(0.25)
    assert cmp["passed"] is True
    assert interpolate(curves["plain"], "toxicity", 0.05, "rise_neutral") is None


def test_methods_meet_at_matched_toxicity_and_share_one_plot(tmp_path):
    from PIL import Image

    base = {"strength": 0.0, "toxicity": 0.9, "rise_neutral": 0.0, "rise_reference": 0.0}
    curve = [base, {"strength": 1.0, "toxicity": 0.5, "rise_neutral": 0.1, "rise_reference": -0.1},
             {"strength": 2.0, "toxicity": 0.1, "rise_neutral": 0.3, "rise_reference": 0.1}]
    assert at_toxicity(curve, 0.3) == pytest.approx({"strength": 1.5, "rise_neutral": 0.2, "rise_reference": 0.0})
    assert at_toxicity(curve, 0.0) == {"strength": None, "rise_neutral": None, "rise_reference": None}
    plot_methods({"plain steering": curve, "DSAS": curve[:2], "E2E-DSAS": [base]}, tmp_path / "m.png", "three")
    assert Image.open(tmp_path / "m.png").size == (828, 342)  # two panels (neutral, reference) of 4.6 × 3.8 in at 90 dpi


def test_the_eval_command_writes_results_csv_and_plot(tiny, tmp_path):
    model, tok, concept = tiny
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    concept.save_pretrained(tmp_path / "c")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": {"text": t}, "continuation": {"text": "you are a pal ."}})
                                 for t in ("the pirate was grumpy and said", "the baker said")) + "\n")
    neutral = tmp_path / "n.txt"
    neutral.write_text("the cat is lovely today .\nthe rain is wet today .\n")
    code = main(["llm", "eval", "--model", str(tmp_path / "m"), "--concept", str(tmp_path / "c"), "--prompts",
                 str(prompts), "--ppl-text", str(neutral), "--toxicity", "demo", "--strengths", "1", "--seeds", "2",
                 "--max-new-tokens", "3", "--device", "cpu", "--out", str(tmp_path / "out")])
    assert code == 0
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["seeds"] == [0, 1] and saved["settings"]["top_p"] == 0.3 and len(saved["rows"]) == 12
    assert (tmp_path / "out" / "pareto.png").stat().st_size > 1000
