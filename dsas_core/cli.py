"""The ``dsas`` command. Subcommands live with the code they drive: each package registers its own through the
``dsas.commands`` entry-point group (a function ``register(subparsers)``), so adding commands edits no shared file.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from .errors import DsasError

EPILOG = """examples:
  dsas inspect assets/concepts/circles-on-black
  dsas fit --model demo --source assets/prompts/circles-on-black/source.txt \\
      --target assets/prompts/circles-on-black/target.txt --control assets/prompts/circles-on-black/control.txt \\
      --scaler prompt --out concepts/mine
  dsas generate --model demo --prompt "a red circle on a white background" --concept concepts/mine=1.5

run `dsas COMMAND --help` for each command's options and an example."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps example blocks as written, wraps prose paragraphs, and shows defaults: once, and only where there is
    one to show."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        # a paragraph whose lines all start at the margin is prose (a docstring's, say): joined, stripped of
        # reStructuredText's double backticks and wrapped; a paragraph with indented lines (examples) stays as written
        paragraphs = []
        for para in text.strip("\n").split("\n\n"):
            lines = para.splitlines()
            if lines and all(line and not line[0].isspace() for line in lines):
                prose = " ".join(lines).replace("``", "")
                paragraphs.append(textwrap.fill(prose, width, initial_indent=indent, subsequent_indent=indent))
            else:
                paragraphs.append("\n".join(indent + line for line in lines))
        return "\n\n".join(paragraphs)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if any(action.default is v for v in (None, False, argparse.SUPPRESS)) or "default" in text:
            return action.help
        return super()._get_help_string(action)


def output_folder(path: str | Path, option: str) -> Path:
    """A folder the command will write, checked before any work: missing (it is created) or a folder."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise DsasError(f"{option} {str(out)!r} is a file: give a folder (it is created when missing).")
    return out


def output_file(path: str | Path, option: str) -> Path:
    """A file the command will write, checked before any work: not a folder, and its folder exists."""
    out = Path(path)
    if out.is_dir():
        raise DsasError(f"{option} {str(out)!r} is a folder: give a file path.")
    if not out.parent.is_dir():
        raise DsasError(f"{option} {str(out)!r}: the folder {str(out.parent)!r} does not exist; create it or give "
                        "another path.")
    return out


def parse_concept_arg(value: str) -> tuple[str, float]:
    """``--concept`` values: 'DIR=STRENGTH' -> (DIR, STRENGTH); 'DIR' (also a folder whose name holds '=') ->
    (DIR, 1.0)."""
    path, sep, strength = value.rpartition("=")
    if not sep or Path(value).is_dir():
        return value, 1.0
    try:
        return path, float(strength)
    except ValueError:
        raise DsasError(f"--concept {value!r}: the strength after '=' must be a number, e.g. "
                        f"{path or 'DIR'}=1.5.") from None


def torch_device(name: str, option: str = "--device") -> Any:
    """``torch.device(name)``, refused up front when it names no device this machine has."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DsasError(f"{option} {name!r} is not a device: give cpu, cuda or cuda:N.") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DsasError(f"{option} {name!r}: no CUDA GPU is visible on this machine (torch.cuda.is_available() is "
                            "False); use --device cpu.")
        if device.index is not None and device.index >= count:
            raise DsasError(f"{option} {name!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}.")
    elif device.type != "cpu":
        try:
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError):
            raise DsasError(f"{option} {name!r}: this machine has no such device; use --device cpu.") from None
    return device


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="dsas", description="Dynamically Scaled Activation Steering for diffusers and transformers.",
        epilog=EPILOG, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"dsas {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for ep in sorted(entry_points(group="dsas.commands"), key=lambda e: e.name):
        ep.load()(sub)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dsas`` console script."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "passthrough", None) is None:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:  # a command that hands its flags on (dsas studio): they come in order, unknown ones first
        setattr(args, args.passthrough, [*extra, *getattr(args, args.passthrough)])
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except DsasError as err:
        print(f"dsas {_command(args)}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # concepts and JSON results go through a temporary file and a rename: none half-written
        print(f"\ndsas {_command(args)}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`dsas inspect DIR | head`): stop quietly, as shell tools do
        _silence_stdout()
        return 141


def _command(args: argparse.Namespace) -> str:
    """The subcommand as typed, e.g. 'llm fit'."""
    # subcommand names by depth: `command`, then a package's nested `<name>_command` (e.g. llm_command)
    names = sorted((k for k, v in vars(args).items() if k.endswith("command") and isinstance(v, str)), key=len)
    return " ".join(getattr(args, k) for k in names)


def _silence_stdout() -> None:
    """Point stdout at the null device, so that flushing it at exit raises no second BrokenPipeError."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # stdout replaced by an object without a file descriptor
        pass


if __name__ == "__main__":
    sys.exit(main())
