"""Writing result files: whole or not at all, and valid JSON."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


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
