"""Where the bundled assets live (found relative to the checkout for editable installs)."""

from __future__ import annotations

from pathlib import Path


def assets_dir() -> Path:
    """The repository's ``assets/`` folder: bundled demo models, example concepts and prompt lists."""
    return Path(__file__).resolve().parent.parent / "assets"
