"""Where the bundled assets live (found relative to the checkout for editable installs)."""

from __future__ import annotations

from pathlib import Path

from .errors import DsasError


def assets_dir() -> Path:
    """The repository's ``assets/`` folder: bundled demo models, example concepts and prompt lists."""
    return Path(__file__).resolve().parent.parent / "assets"


def require_checkout(what: str) -> None:
    """Raise a :class:`DsasError` saying where ``what`` comes from when this install has no ``assets/`` folder
    beside its packages (an installed wheel rather than the repository's editable install)."""
    if not assets_dir().is_dir():
        raise DsasError(f"{what} ships with the repository, not with the installed package ({assets_dir()} does not "
                        "exist): clone the repository and install it with `pip install -e .` (the README's quick "
                        "start); your own models and concepts need neither.")
