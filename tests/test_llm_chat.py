"""`dsas llm chat` on the bundled tavern-world LM: replies, strengths moved between turns, commands, templates."""

import io
import sys

from dsas_core.cli import main
from dsas_core.paths import assets_dir
from dsas_transformers import steer
from dsas_transformers.chat import HELP, Chat
from dsas_transformers.demo import load_demo_lm

DETOX = str(assets_dir() / "concepts" / "detox")
INSULT = "you are a big nitwit and a"


def _chat(monkeypatch, capsys, lines, *extra):
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(f"{line}\n" for line in lines)))
    assert main(["llm", "chat", "--model", "demo", "--device", "cpu", "--max-new-tokens", "8", *extra]) == 0
    return capsys.readouterr().out.splitlines()


def _generated(capsys, *extra):
    """The continuation a single `dsas llm generate` prints."""
    assert main(["llm", "generate", "--model", "demo", "--device", "cpu", "--max-new-tokens", "8", "--prompt",
                 INSULT, *extra]) == 0
    return capsys.readouterr().out.splitlines()[0][len(INSULT):].strip()


def test_each_reply_is_what_generate_gives_at_the_strengths_set_then(monkeypatch, capsys):
    out = _chat(monkeypatch, capsys, [INSULT, "/strength 0", INSULT, "/plain", "/strength detox 3", INSULT, "/dsas",
                                      INSULT, "/quit", INSULT], "--concept", f"{DETOX}=1.5")
    assert out[1:2] + out[3:5] + out[6:7] == ["(DSAS: detox 0)", "(plain: detox 0)", "(plain: detox 3)",
                                              "(DSAS: detox 3)"]
    assert out[0] == _generated(capsys, "--concept", f"{DETOX}=1.5") == "treasure ."
    assert out[2] == _generated(capsys) == "nitwit ."  # λ = 0: unsteered
    assert out[5] == _generated(capsys, "--concept", f"{DETOX}=3", "--constant")
    assert out[7] == _generated(capsys, "--concept", f"{DETOX}=3") != out[5]
    assert len(out) == 8  # nothing after /quit


def test_commands_explain_themselves(monkeypatch, capsys):
    out = _chat(monkeypatch, capsys, ["/alpha", INSULT, "/strength x", "/strength nope 1", "/strength", "/bogus",
                                      "/show"], "--concept", DETOX)
    assert out[:2] == ["(α shown)", "nitwit ."]  # λ = 1: not yet enough on this model
    assert out[2] == "α detox: <bos>[0.50] you[0.53] are[0.50] a[0.24] big[0.16] nitwit[0.75] and[0.01] a[1.00] " \
                     "nitwit[0.50] .[0.51]"  # α is highest where the insult comes
    assert out[3:5] == ["strength for 'detox' must be a number, got 'x'.", "no concept 'nope' here; attached: detox."]
    assert out[5] == "give /strength VALUE or /strength NAME VALUE, e.g. /strength 1.5."
    assert out[6] == "unknown command '/bogus'." and "\n".join(out[7:-1]) == HELP
    assert out[-1] == "(DSAS: detox 1)"


def test_a_chat_template_keeps_the_conversation_until_reset():
    model, tok = load_demo_lm()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"  # the turns, one after another
    with steer(model, {DETOX: 1.5}) as handle:
        chat = Chat(model, tok, handle, {"max_new_tokens": 6, "do_sample": False, "pad_token_id": tok.pad_token_id})
        first = chat.say("the pirate shoved the door and said")
        second = chat.say("and then")
        assert [m["role"] for m in chat.history] == ["user", "assistant", "user", "assistant"]
        assert chat.history[1]["content"] == first
        fresh = Chat(model, tok, handle, chat.generate)  # the whole conversation as one message renders the same
        assert second == fresh.say(f"the pirate shoved the door and said {first} and then")
        assert chat.say("/reset") == "(conversation forgotten)" and chat.history == []
        assert chat.say("and then") == Chat(model, tok, handle, chat.generate).say("and then") != second


def test_chat_needs_a_concept_before_loading(tmp_path, capsys):
    assert main(["llm", "chat", "--model", str(tmp_path / "no-model")]) == 2
    assert "give at least one --concept DIR[=STRENGTH] to steer with" in capsys.readouterr().err


def test_at_a_terminal_the_chat_introduces_itself_and_ends_at_end_of_input(monkeypatch, capsys):
    typed = iter([INSULT, "/show"])

    def read(prompt):
        assert prompt == "you: "
        return next(typed)  # StopIteration after the last line: turned into end of input below

    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr("builtins.input", lambda prompt: _or_eof(read, prompt))
    assert main(["llm", "chat", "--model", "demo", "--device", "cpu", "--max-new-tokens", "8", "--concept",
                 f"{DETOX}=1.5", "--constant"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "demo: a prompt a line (no chat template); plain: detox 1.5. /help for commands, /quit or Ctrl-D to leave.",
        "treasure friend friend friend friend friend friend friend", "(plain: detox 1.5)", ""]


def _or_eof(read, prompt):
    try:
        return read(prompt)
    except StopIteration:
        raise EOFError from None
