"""The README's Python examples and its diffusion and language-model CLI walk-throughs run as written, on the
bundled demo models in place of the hub checkpoints they name: each replaced line is checked to be in the README
first, so an edited example fails here until this follows."""

import re
import shlex
from pathlib import Path

import pytest

from dsas_core.paths import assets_dir

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
PROMPTS = assets_dir() / "prompts"


def block(first_line: str) -> str:
    """The README's Python block that holds ``first_line``."""
    found = [b for b in BLOCKS if first_line in b]
    assert len(found) == 1, f"{len(found)} README Python blocks hold {first_line!r}"
    return found[0]


def run(code: str, replace: dict[str, str], names: dict[str, object]) -> dict[str, object]:
    """Execute ``code`` with each key of ``replace`` (which must occur) replaced; returns its namespace."""
    for old, new in replace.items():
        assert old in code, f"the README no longer holds {old!r}: update this test"
        code = code.replace(old, new)
    scope = dict(names)
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the project's own README
    return scope


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_the_core_example_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope = run(block("from dsas_core import Site, PooledCollector"), {}, {})
    assert tuple(scope["handle"].records[0].alpha.shape) == (2, 5)
    assert (tmp_path / "concepts" / "demo" / "dsas_config.json").is_file()


def test_the_diffusion_example_runs_on_the_demo_pipeline(tmp_path, monkeypatch):
    from dsas_diffusion.demo import load_demo_pipeline

    monkeypatch.chdir(tmp_path)
    folder = PROMPTS / "circles-on-black"
    scope = run(block("from diffusers import StableDiffusionPipeline"), {
        'StableDiffusionPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5",\n'
        '                                               dtype=torch.float16).to("cuda")': "demo_pipeline()",
        '["a bowl of apples on a table", "oranges in a basket", ...]': 'SOURCE',
        '["a bowl of apples and a pear on a table", ...]': 'TARGET',
        '["a red car in the street", "a portrait of an old man", ...]': 'CONTROL',
        'source_text="fruit", target_text="a pear"': 'source_text="circle", target_text="black background"',
        'pipe("a still life on a table", generator': 'pipe("a red circle on a white background", '
                                                    'num_inference_steps=4, generator',
    }, {"demo_pipeline": load_demo_pipeline, "SOURCE": lines(folder / "source.txt")[:8],
        "TARGET": lines(folder / "target.txt")[:8], "CONTROL": lines(folder / "control.txt")[:8]})
    assert scope["pear"].config.scaler == "prompt" and scope["handle"].strengths["pear"] == pytest.approx(0.3)
    side = 32 // scope["pipe"].vae_scale_factor  # the demo's 32-pixel images
    assert tuple(scope["heat"].shape) == (1, side, side) == (1, 16, 16)  # one image, latent H, latent W
    assert scope["maps"] and all(m.shape[0] == 4 for m in scope["maps"].values())  # 4 steps recorded
    assert (tmp_path / "concepts" / "pear" / "dsas_model.safetensors").is_file()


def test_the_language_model_example_runs_on_the_demo_lm(tmp_path, monkeypatch):
    from dsas_transformers.demo import load_demo_lm

    monkeypatch.chdir(tmp_path)
    model, tok = load_demo_lm()
    scope = run(block("detox = fit_concept(model, tok, source=toxic_texts"), {
        'model = AutoModelForCausalLM.from_pretrained("Qwen/Qwen2.5-1.5B", dtype="auto", device_map="auto")':
            "model = MODEL",
        'tok = AutoTokenizer.from_pretrained("Qwen/Qwen2.5-1.5B")': "tok = TOK",
        'layers="-16:-4"': 'layers="0:3"',  # the demo LM has 4 layers
        '"You are such a"': '"feeling grumpy about the bread , the pirate shoved the door and said"',
    }, {"MODEL": model, "TOK": tok, **{name: lines(PROMPTS / "lm" / f"detox_{kind}.txt")[:16] for name, kind in
                                       (("toxic_texts", "source"), ("polite_texts", "target"),
                                        ("neutral_texts", "control"))}})
    assert scope["detox"].name == "detox" and scope["h"].strengths["detox"] == pytest.approx(0.5)
    alpha = scope["alpha"]
    assert alpha.mean.shape[0] == 1 and (tmp_path / "alpha.html").stat().st_size > 0
    assert scope["out"].shape[1] > scope["inputs"]["input_ids"].shape[1]


def test_the_prompt_scaler_example_runs_on_the_demo_pipeline():
    from dsas_diffusion import fit_concept, steer
    from dsas_diffusion.demo import load_demo_pipeline

    folder = PROMPTS / "circles-on-black"
    scope = run(block("handle.prompt_alpha(prompt)"), {"pipe(prompt)": "pipe(prompt, num_inference_steps=2)"}, {
        "fit_concept": fit_concept, "steer": steer, "pipe": load_demo_pipeline(),
        "prompt": "a red circle on a white background",
        "fruit": lines(folder / "source.txt")[:8], "fruit_with_pear": lines(folder / "target.txt")[:8],
        "other": lines(folder / "control.txt")[:8]})
    words = scope["handle"].prompt_alpha("a red circle on a white background")
    assert [w for w, _ in words] == "a red circle on a white background".split()


def commands(first_line: str) -> list[list[str]]:
    """The README's bash block holding ``first_line`` as argument lists: continuations joined, comments and
    placeholder lines (``...``) left out, ``NAME=value`` lines substituted into later ones."""
    found = [b for b in re.findall(r"```bash\n(.*?)```", README, re.S) if first_line in b]
    assert len(found) == 1, f"{len(found)} README bash blocks hold {first_line!r}"
    variables, out = {}, []
    for line in re.sub(r"\\\n\s*", " ", found[0]).splitlines():
        for name, value in variables.items():
            line = line.replace(f"${name}", value)
        words = shlex.split(line, comments=True)
        if len(words) == 1 and "=" in words[0]:
            name, value = words[0].split("=", 1)
            variables[name] = value
        elif words and "..." not in words:
            out.append(words)
    return out


def test_the_diffusion_cli_example_runs_as_written(tmp_path, monkeypatch, capsys):
    from dsas_core.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "assets").symlink_to(assets_dir())  # the example's paths are the repository's
    steps = commands("dsas sites demo")
    assert [c[:2] for c in steps] == [["dsas", "sites"], ["dsas", "fit"], ["dsas", "inspect"], ["dsas", "generate"],
                                     ["dsas", "generate"], ["dsas", "generate"]]
    for words in steps:
        assert main(words[1:]) == 0, words
    out = capsys.readouterr().out
    assert "concept     black-bg" in out
    for image in ("steered.png", "side_by_side.png", "alpha.png", "square.png", "sweep.png", "sweep_both.png"):
        assert (tmp_path / image).stat().st_size > 0, image


def test_the_language_model_cli_example_runs_on_the_demo(tmp_path, monkeypatch, capsys):
    from dsas_core.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "assets").symlink_to(assets_dir())
    steps = commands("--role mlp_input --out runs/concepts/detox-probe")
    assert [c[:3] for c in steps] == [["dsas", "llm", "fit"], ["dsas", "llm", "eval"], ["dsas", "llm", "eval"]]
    for words in steps:
        words = [("1" if w == "5" and words[i - 1] == "--seeds" else w) for i, w in enumerate(words)]  # one seed
        assert main(words[1:]) == 0, words
    out = capsys.readouterr().out
    for run_dir in ("runs/llm-detox/probe", "runs/llm-detox/e2e"):
        assert any((tmp_path / run_dir).iterdir()), run_dir
    assert "best DSAS" in out


def test_the_language_model_sweep_prints_what_the_readme_shows(tmp_path, monkeypatch, capsys):
    from dsas_core.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "assets").symlink_to(assets_dir())
    (words,) = commands("--sweep 0,1,1.5,2 --compare")
    shown = re.search(r"```bash\n[^`]*--sweep 0,1,1.5,2 --compare[^`]*```\n\n```text\n(.*?)```", README, re.S)
    assert main([*words[1:], "--device", "cpu"]) == 0
    assert capsys.readouterr().out == shown.group(1)


def test_the_chat_transcript_is_what_the_chat_replies(tmp_path, monkeypatch, capsys):
    import io
    import sys

    from dsas_core.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "assets").symlink_to(assets_dir())
    (shown,) = [b for b in re.findall(r"```text\n(.*?)```", README, re.S) if b.startswith("$ dsas llm chat")]
    command, intro, *turns = shown.splitlines()
    assert intro.startswith("demo: a prompt a line (no chat template); DSAS: detox 1.5.")
    typed = [line[len("you: "):] for line in turns if line.startswith("you: ")]
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(f"{line}\n" for line in typed)))  # a pipe: replies only
    assert main([*shlex.split(command)[2:], "--device", "cpu"]) == 0
    assert capsys.readouterr().out.splitlines() == [line for line in turns if not line.startswith("you: ")]
