"""Reading prompt files with errors that say what to give instead; writing result files whole or not at all, as
valid JSON."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .errors import DsasError


def read_text(path: str | os.PathLike[str], what: str = "prompt", expected: str = "one prompt per line") -> str:
    """The whole text of a UTF-8 file, or a :class:`DsasError` naming the ``what`` file and what to give instead
    (``expected``) when it is missing, unreadable or not UTF-8 text."""
    p = Path(path)
    if p.is_dir():
        raise DsasError(f"{what} file {str(p)!r} is a folder: give a text file in it, with {expected}.")
    if not p.is_file():
        raise DsasError(f"{what} file {str(p)!r} not found: give a text file with {expected}.")
    try:
        return p.read_text(encoding="utf-8")
    except OSError as err:
        raise DsasError(f"cannot read {what} file {str(p)!r} ({err.strerror}): give a text file with {expected}.") from None
    except UnicodeDecodeError as err:
        raise DsasError(f"{what} file {str(p)!r} is not UTF-8 text (byte {err.start}): save it as UTF-8, with "
                        f"{expected}.") from None


def prompt_lines(text: str) -> list[str]:
    """The stripped lines of ``text``, without blank lines and lines starting with '#'."""
    return [s for s in (line.strip() for line in text.splitlines()) if s and not s.startswith("#")]


def strength_list(text: str, what: str = "--strengths", example: str = "0,1,2,4") -> list[float]:
    """Comma-separated strengths, sorted, 0 (the unsteered run) always among them; at least one besides it."""
    try:
        strengths = sorted({float(s) for s in text.split(",") if s.strip()} | {0.0})
    except ValueError:
        raise DsasError(f"{what} {text!r}: give comma-separated numbers, e.g. {example}.") from None
    if strengths == [0.0]:
        raise DsasError(f"{what} {text!r} holds no strength but 0: nothing would be steered; give e.g. {example}.")
    if not all(math.isfinite(s) for s in strengths):
        raise DsasError(f"{what} {text!r}: every strength must be a finite number, e.g. {example}.")
    return strengths


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None (JSON has neither; Python would write bare ``NaN``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(path: str | os.PathLike[str], data: Any, indent: int = 1) -> Path:
    """Write ``data`` as JSON (NaN and infinities as null) to a temporary file beside ``path``, then rename it into
    place: an interrupted write leaves the previous file as it was."""
    out = Path(path)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        tmp.write_text(json.dumps(_finite(data), indent=indent, allow_nan=False) + "\n", encoding="utf-8")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
