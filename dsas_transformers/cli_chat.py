"""``dsas llm chat``: a conversation with a steered model on the command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from dsas_core import DsasError
from dsas_core.cli import HelpFormatter, parse_concept_arg

CHAT_EXAMPLE = """example:
  dsas llm chat --model Qwen/Qwen2.5-1.5B-Instruct --concept concepts/detox=1.5
  dsas llm chat --model demo --concept assets/concepts/detox --max-new-tokens 12   # no template: a prompt a line
then type a message, or /strength 2, /plain, /dsas, /alpha, /reset, /help, /quit"""


def add_parser(cmds: argparse._SubParsersAction) -> None:
    """Register ``dsas llm chat``."""
    from .cli import _model_args, steering_args

    p = cmds.add_parser("chat", help="talk to a steered model, moving strengths between turns",
                        formatter_class=HelpFormatter, epilog=CHAT_EXAMPLE,
                        description="Talk to a model steered by each --concept DIR[=STRENGTH]: type a message and "
                                    "read the reply; /strength, /plain and /dsas change the steering between turns "
                                    "(attached once, nothing reloads). With a chat template the conversation is "
                                    "kept; without one each line is a prompt continued. Reads a pipe too, a line a "
                                    "turn.")
    _model_args(p)
    steering_args(p, max_new_tokens=64)
    p.set_defaults(func=chat_command)


def chat_command(args: argparse.Namespace) -> int:
    """dsas llm chat."""
    from dsas_core.hub import load_concept

    from .chat import Chat, converse
    from .cli import decoding, load
    from .steer import attach

    if not args.concept:
        raise DsasError("give at least one --concept DIR[=STRENGTH] to steer with (its strength moves later with "
                        "/strength).")
    if args.max_new_tokens < 1:
        raise DsasError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}.")
    concepts = {load_concept(p): s for p, s in map(parse_concept_arg, args.concept)}
    model, tokenizer = load(args.model, args.dtype, args.device)
    terminal = sys.stdin.isatty()
    colour = sys.stdout.isatty()  # escape codes only for a terminal
    with attach(model, concepts, adaptive=not args.constant) as handle:
        chat = Chat(model, tokenizer, handle, decoding(args, tokenizer), seed=args.seed,
                    render=(lambda at, tok: at.ansi(tok)) if colour else (lambda at, tok: at.plain(tok)))
        if terminal:
            kind = "a conversation (chat template)" if chat.templated else "a prompt a line (no chat template)"
            print(f"{args.model}: {kind}; {chat.state()[1:-1]}. /help for commands, /quit or Ctrl-D to leave.")
        converse(chat, _typed() if terminal else sys.stdin, print)
    return 0


def _typed() -> Iterator[str]:
    """Lines typed at a terminal, after a prompt, until end of input."""
    while True:
        try:
            yield input("you: ")
        except EOFError:
            print()
            return
