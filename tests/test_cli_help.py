"""Every command's --help: each option explained, each default shown once, prose wrapped to the terminal."""

import argparse

import pytest

from dsas_core.cli import build_parser


def _parsers() -> dict[str, argparse.ArgumentParser]:
    """Every parser of the ``dsas`` tree, by its command line."""
    found, todo = {}, [("dsas", build_parser())]
    while todo:
        name, parser = todo.pop()
        found[name] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [(f"{name} {sub}", p) for sub, p in action.choices.items()]
    return found


def formatter_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help line ``parser`` prints for ``action``, defaults expanded."""
    return parser._get_formatter()._expand_help(action)


def test_the_tree_holds_every_command():
    assert {"dsas fit", "dsas generate", "dsas eval", "dsas bench", "dsas llm fit", "dsas llm generate",
            "dsas llm eval"} <= set(_parsers())


@pytest.mark.parametrize("name", sorted(_parsers()))
def test_help_explains_every_option_and_shows_each_default_once(name, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    parser = _parsers()[name]
    for action in parser._actions:
        if action.option_strings:
            assert action.help, f"{name} {action.option_strings[0]} has no help"
    text = parser.format_help()
    assert "default: None" not in text and "default: False" not in text
    for action in parser._actions:  # a default of 0 is shown (0 == False must not hide it)
        if action.help and action.default == 0 and action.default is not False:
            assert "(default: 0" in formatter_help(parser, action), action.option_strings
    for action in parser._actions:
        if action.help and action.help is not argparse.SUPPRESS:
            assert formatter_help(parser, action).count("(default") <= 1, action.option_strings
    if parser.description:  # prose, a docstring's included: joined, wrapped to the terminal, no reST markup
        described = text.split("\n\n", 1)[1].split("\npositional arguments:")[0].split("\noptions:")[0]
        assert max(len(line) for line in described.splitlines()) <= 100 and "``" not in described
        first = " ".join(parser.description.split())[:40].replace("``", "")
        assert first in " ".join(described.split())
