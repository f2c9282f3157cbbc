"""`dsas llm generate --sweep` on the bundled tavern-world LM and its detox concept."""

import re

from dsas_core.cli import main
from dsas_core.paths import assets_dir

DETOX = str(assets_dir() / "concepts" / "detox")
PROMPT = "you are a big nitwit and a"
ARGS = ["llm", "generate", "--model", "demo", "--prompt", PROMPT, "--max-new-tokens", "6", "--device", "cpu"]
LINE = re.compile(r" *(\S+)  (unsteered|DSAS|plain) *  (.*)")


def _continuation(capsys, *extra):
    """The continuation that a single `dsas llm generate` prints (its first line less the prompt)."""
    assert main([*ARGS, *extra]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(PROMPT)
    return first[len(PROMPT):].strip()


def test_a_sweep_prints_what_single_runs_print_at_each_strength(capsys):
    assert main([*ARGS, "--concept", f"{DETOX}=0.5", "--sweep", "3,0,2", "--compare"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == [f"prompt: {PROMPT}", "strength  steering   continuation"]
    rows = [LINE.fullmatch(line).groups() for line in out[2:]]
    assert [(v, m) for v, m, _ in rows] == [("0", "unsteered"), ("2", "DSAS"), ("2", "plain"), ("3", "DSAS"),
                                            ("3", "plain")]
    texts = {(v, m): t for v, m, t in rows}
    assert texts[("0", "unsteered")] == _continuation(capsys)
    for value, strength in (("2", "1"), ("3", "1.5")):  # the concept's 0.5 × each value
        assert texts[(value, "DSAS")] == _continuation(capsys, "--concept", f"{DETOX}={strength}")
        assert texts[(value, "plain")] == _continuation(capsys, "--concept", f"{DETOX}={strength}", "--constant")
    assert texts[("3", "DSAS")] != texts[("3", "plain")]
    assert main([*ARGS, "--concept", f"{DETOX}=0.5", "--sweep", "3", "--constant"]) == 0
    assert capsys.readouterr().out.splitlines()[3] == f"       3  plain      {texts[('3', 'plain')]}"


def test_a_sweep_refuses_what_it_cannot_show(capsys):
    for extra, said in (
            (["--sweep", "0,1"], "--sweep scales the strengths of the --concept folders"),
            (["--concept", DETOX, "--compare"], "--compare puts plain steering beside DSAS in a strength sweep"),
            (["--concept", DETOX, "--sweep", "1", "--show-alpha"], "--show-alpha / --html show the α of one"),
            (["--concept", DETOX, "--sweep", "0"], "--sweep '0' holds no strength but 0")):
        assert main([*ARGS, *extra]) == 2
        assert said in capsys.readouterr().err
