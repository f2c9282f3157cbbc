"""``dsas llm chat``: talk to a steered model, moving strengths between turns (attached once, no reload).

With a chat template the conversation is kept and each reply continues it; without one (base models, the demo LM)
every line is a prompt of its own, continued. Lines starting with ``/`` are commands (:data:`HELP`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from dsas_core import DsasError

from .fit import prompt_ids
from .sites import input_device
from .steer import LMSteering

HELP = """commands:
  /strength VALUE          every concept at strength VALUE (λ)
  /strength NAME VALUE     one concept
  /plain, /dsas            plain steering (α ≡ 1), or DSAS again
  /alpha                   show each reply's tokens with their α (on / off)
  /show                    the strengths and the steering
  /reset                   forget the conversation
  /help, /quit             this text; leave (so does end of input)"""


@dataclass
class Chat:
    """One conversation with a steered model: :meth:`say` for a line (a message or a command), the reply out."""

    model: Any
    tokenizer: Any
    handle: LMSteering
    generate: dict[str, Any]  # generate()'s settings: max_new_tokens, sampling, pad_token_id
    seed: int = 0
    show_alpha: bool = False
    render: Callable[[Any, Any], str] = lambda at, tokenizer: at.plain(tokenizer)  # α per token as text
    history: list[dict[str, str]] = field(default_factory=list)

    @property
    def templated(self) -> bool:
        """Whether the tokenizer has a chat template (else each line is a prompt of its own)."""
        return bool(getattr(self.tokenizer, "chat_template", None))

    def say(self, line: str) -> str | None:
        """The reply to ``line`` (or what a command did); None for /quit."""
        line = line.strip()
        if not line:
            return ""
        if line.startswith("/"):
            return self.command(line)
        return self.reply(line)

    def reply(self, text: str) -> str:
        """The model's answer to ``text``, continuing the conversation where there is a chat template."""
        ids, _ = prompt_ids(self.tokenizer, text, self.templated, self.history)
        ids = ids.to(input_device(self.model))  # (1, N)
        self.handle.clear_records()
        torch.manual_seed(self.seed)  # every turn samples from the same seed: a strength change is what differs
        with torch.no_grad():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), **self.generate)
        answer = self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        if self.templated:
            self.history = [*self.history, {"role": "user", "content": text}, {"role": "assistant", "content": answer}]
        if not self.show_alpha:
            return answer
        lines = [answer]
        for name in self.handle.concepts:
            lines.append(f"α {name}: {self.render(self.handle.alpha_tokens(concept=name), self.tokenizer)}")
        return "\n".join(lines)

    def command(self, line: str) -> str | None:
        """Run one /command; its message (None for /quit)."""
        word, *rest = line.split()
        if word in ("/quit", "/exit"):
            return None
        if word == "/help":
            return HELP
        if word == "/reset":
            self.history = []
            return "(conversation forgotten)"
        if word in ("/plain", "/dsas"):
            self.handle.adaptive = word == "/dsas"
            return self.state()
        if word == "/alpha":
            self.show_alpha = not self.show_alpha
            self.handle.record_alpha = self.show_alpha
            return f"(α {'shown' if self.show_alpha else 'hidden'})"
        if word == "/show":
            return self.state()
        if word == "/strength":
            return self.strength(rest)
        return f"unknown command {line!r}.\n{HELP}"

    def strength(self, words: list[str]) -> str:
        """``/strength VALUE`` or ``/strength NAME VALUE``."""
        names = list(self.handle.concepts)
        if len(words) == 2:
            if words[0] not in names:
                return f"no concept {words[0]!r} here; attached: {', '.join(names)}."
            names = [words[0]]
        elif len(words) != 1:
            return "give /strength VALUE or /strength NAME VALUE, e.g. /strength 1.5."
        try:
            for name in names:
                self.handle.strengths[name] = words[-1]  # checked there: a finite number
        except DsasError as err:
            return str(err)
        return self.state()

    def state(self) -> str:
        """The strengths and the steering, in one line."""
        strengths = ", ".join(f"{n} {self.handle.strengths[n]:g}" for n in self.handle.concepts)
        return f"({'DSAS' if self.handle.adaptive else 'plain'}: {strengths})"


def converse(chat: Chat, lines: Iterable[str], write: Callable[[str], None]) -> None:
    """Answer each of ``lines`` (a terminal's or a pipe's) with :meth:`Chat.say` until /quit or their end."""
    for line in lines:
        reply = chat.say(line)
        if reply is None:
            return
        if reply:
            write(reply)
