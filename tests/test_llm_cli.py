"""`dsas llm fit | generate | sites` end to end on a tiny model folder saved by the test, and the α renderings."""

import json
import re
import sys

import pytest
import torch

from dsas_core import Concept
from dsas_core.cli import main, parse_concept_arg
from dsas_transformers import encode, steer
from dsas_transformers.cli import read_prompt_file
from test_llm_planted import PHRASE, TOK, make
from dsas_transformers.testing import tiny_model

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama", len(TOK), hidden=64, layers=4, seed=0).save_pretrained(path)
    TOK.save_pretrained(path)
    return path


def write(path, lines):
    path.write_text("# a comment line\n\n" + "\n".join(lines) + "\n\n")
    return path


def fit(model_dir, texts, out, *flags):
    """``dsas llm fit`` on the tiny model's folder; returns the saved concept."""
    files = [a for k in ("source", "target", "control") for a in (f"--{k}", str(texts / f"{k}.txt"))]
    assert main(["llm", "fit", "--model", str(model_dir), *files, "--out", str(out), "--dtype", "float32",
                 "--device", "cpu", *flags]) == 0
    return Concept.from_pretrained(out)


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("texts")
    for k, seed, planted in (("source", 1, True), ("target", 2, False), ("control", 3, False)):
        write(tmp / f"{k}.txt", make(32, seed, planted))
    return tmp


@pytest.fixture(scope="module")
def concept_dir(model_dir, texts):
    fit(model_dir, texts, texts / "planted", "--layers=-3:")
    return texts / "planted"


def test_prompt_files_skip_blank_lines_and_comments(tmp_path):
    path = write(tmp_path / "p.txt", ["  one text ", "# not this", "two"])
    assert read_prompt_file(path) == ["one text", "two"]


def test_concept_arguments_parse_an_optional_strength():
    assert parse_concept_arg("concepts/a=0.5") == ("concepts/a", 0.5)
    assert parse_concept_arg("concepts/a") == ("concepts/a", 1.0)
    assert parse_concept_arg("concepts/a=-2") == ("concepts/a", -2.0)


def test_fit_writes_a_concept_on_the_chosen_layers(concept_dir):
    concept = Concept.from_pretrained(concept_dir)
    assert concept.name == "planted"
    assert concept.config.sites == ["model.layers.1", "model.layers.2", "model.layers.3"]
    assert concept.config.model_class == "LlamaForCausalLM"
    assert concept.config.fitted_on["n_texts"] == {"source": 32, "target": 32, "control": 32}


def test_fit_hands_the_e2e_flags_to_the_trainer(model_dir, texts, tmp_path):
    flags = ["--layers=-2:", "--transform", "lineas", "--scaler", "e2e", "--e2e-steps", "3", "--e2e-lr", "0.05",
             "--e2e-head", "relu"]
    kept = fit(model_dir, texts, tmp_path / "kept", *flags, "--retain-weight", "7")
    free = fit(model_dir, texts, tmp_path / "free", *flags, "--retain-weight", "0")
    settings = kept.config.fitted_on["e2e"]
    assert (settings["steps"], settings["lr"], settings["retain_weight"], settings["head"]) == (3, 0.05, 7.0, "relu")
    assert kept.config.fitted_on["e2e_report"]["steps_run"] == 2
    assert [s.scaler.use_relu for s in kept.sites.values()] == [True, True]
    site = "model.layers.3"
    assert not torch.equal(kept.sites[site].transform.beta, free.sites[site].transform.beta)


def test_generate_with_a_concept_prints_the_text_and_a_coloured_alpha_line(model_dir, concept_dir, tmp_path, capsys,
                                                                           monkeypatch):
    html_path = tmp_path / "alpha.html"
    prompt = " ".join(PHRASE + ["the"])
    args = ["llm", "generate", "--model", str(model_dir), "--prompt", prompt, "--concept", f"{concept_dir}=0.5",
            "--show-alpha", "--html", str(html_path), "--max-new-tokens", "3", "--dtype", "float32", "--device", "cpu"]
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(prompt + " ") and len(out[0].split()) == 5 + 3
    pieces = re.findall(r"(\S+?)\[(\d\.\d\d)\]", out[2])  # a pipe: each token then its α in brackets
    assert [p for p, _ in pieces] == ["<bos>", *out[0].split()[:-1]] and all(0 <= float(a) <= 1 for _, a in pieces)
    assert "\x1b" not in out[2]
    assert html_path.read_text().count("<span ") == 1 + 5 + 2
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)  # a terminal: the same tokens, coloured
    assert main(args) == 0
    line = capsys.readouterr().out.splitlines()[2]
    assert ANSI.sub("", line) == " ".join(["<bos>", *out[0].split()[:-1]])
    assert line.count("\x1b[48;2;") == 1 + 5 + 2


def test_generate_is_deterministic_and_constant_mode_differs_from_adaptive(model_dir, concept_dir, capsys):
    def run(*extra):
        assert main(["llm", "generate", "--model", str(model_dir), "--prompt", "the a of", "--concept",
                     f"{concept_dir}=8", "--max-new-tokens", "4", "--dtype", "float32", "--device", "cpu",
                     *extra]) == 0
        return capsys.readouterr().out

    assert run() == run()
    assert run("--sample", "--seed", "3") == run("--sample", "--seed", "3")
    plain = run("--constant")
    assert main(["llm", "generate", "--model", str(model_dir), "--prompt", "the a of", "--max-new-tokens", "4",
                 "--dtype", "float32", "--device", "cpu"]) == 0
    unsteered = capsys.readouterr().out
    assert plain != unsteered


def test_sites_lists_every_role_of_every_layer(model_dir, capsys):
    assert main(["llm", "sites", str(model_dir), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 * 4
    assert rows[0] == {"role": "residual", "layer": 0, "name": "model.layers.0", "output": "tensor", "width": 64}
    assert main(["llm", "sites", str(model_dir)]) == 0
    assert "model.layers.3.post_attention_layernorm" in capsys.readouterr().out


@pytest.mark.parametrize("command", [["llm"], ["llm", "fit"], ["llm", "generate"], ["llm", "sites"], ["llm", "chat"]])
def test_every_llm_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    assert "example:\n  dsas llm" in capsys.readouterr().out


def test_errors_are_reported_without_a_traceback(model_dir, tmp_path, capsys):
    assert main(["llm", "sites", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith(f"dsas llm sites: error: no model folder at '{tmp_path / 'nowhere'}'")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["llm", "sites", str(empty)]) == 2
    assert capsys.readouterr().err.startswith("dsas llm sites: error: could not load model")
    assert main(["llm", "sites", "gpt2"]) == 2  # a hub id without an owner is a hub id (offline here), not a path
    assert capsys.readouterr().err.startswith("dsas llm sites: error: could not load model 'gpt2'")
    assert main(["llm", "generate", "--model", str(model_dir), "--prompt", "x", "--show-alpha"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dsas llm generate: error: --show-alpha / --html need at least one --concept")
    from pathlib import Path

    diffusion_concept = Path(__file__).parents[1] / "assets" / "concepts" / "no-green"
    args = ["llm", "generate", "--model", str(model_dir), "--prompt", "x", "--concept", str(diffusion_concept)]
    assert main(args) == 2
    assert "was fitted on a UNet2DConditionModel" in (err := capsys.readouterr().err) and "`dsas llm fit`" in err


def test_bad_outputs_devices_and_strengths_are_refused_before_any_work(model_dir, concept_dir, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("a b\nc d\n")
    taken = tmp_path / "taken.txt"
    taken.write_text("x")
    fit = ["llm", "fit", "--model", "/nowhere/model", "--source", str(texts), "--target", str(texts), "--scaler",
           "constant"]
    # the model path is checked after the outputs: each refusal comes before loading anything
    assert main([*fit, "--out", str(taken)]) == 2
    assert capsys.readouterr().err == (f"dsas llm fit: error: --out '{taken}' is a file: give a folder (it is created "
                                       "when missing).\n")
    generate = ["llm", "generate", "--model", str(model_dir), "--prompt", "x", "--concept", str(concept_dir)]
    assert main([*generate, "--html", str(tmp_path / "no" / "a.html")]) == 2
    assert f"the folder '{tmp_path / 'no'}' does not exist" in capsys.readouterr().err
    assert main([*generate[:-1], f"{concept_dir}=strong"]) == 2
    assert "the strength after '=' must be a number, e.g." in capsys.readouterr().err
    assert main([*generate, "--device", "tpu"]) == 2
    assert capsys.readouterr().err.endswith("--device 'tpu' is not a device: give cpu, cuda or cuda:N.\n")
    evaluate = ["llm", "eval", "--model", str(model_dir), "--concept", str(concept_dir), "--prompts", str(texts)]
    assert main([*evaluate, "--limit", "0"]) == 2
    assert "--limit must be >= 1" in capsys.readouterr().err
    assert main([*evaluate, "--strengths", "0"]) == 2
    assert "holds no strength but 0" in capsys.readouterr().err


def test_alpha_renderings_colour_each_token_and_escape_html():
    model = tiny_model("llama", len(TOK), hidden=64, layers=4, seed=0)
    from dsas_transformers import fit_concept

    concept = fit_concept(model, TOK, make(8, 1, True), make(8, 2, False), make(8, 3, False), gate=0.0,
                          progress=False)
    batch = encode(TOK, ["zebra quantum", "the a of and"])
    with steer(model, {concept: 0.0}, record_alpha=True) as handle:
        model(**batch)
        at = handle.alpha_tokens()
    pieces = at.pieces(TOK, row=0)
    assert [p for p, _ in pieces] == ["<bos>", " zebra", " quantum"]
    assert torch.allclose(torch.tensor([a for _, a in pieces]), at.mean[0, -3:], atol=0, rtol=0)
    assert ANSI.sub("", at.ansi(TOK, row=1)) == "<bos> the a of and"
    profile = at.per_site(row=1)
    assert list(profile) == concept.config.sites
    assert abs(sum(profile.values()) / len(profile) - at.mean[1].mean().item()) <= 1e-6
    html = at.html(TOK, row=0)
    assert html.count("<span ") == 3 and "&lt;bos&gt;" in html and "<bos>" not in html
