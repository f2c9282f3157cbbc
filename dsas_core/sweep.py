"""Strength sweeps: one attached steering, the same run at several strengths (only the strengths move)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from .errors import DsasError

T = TypeVar("T")
STEERING = {"DSAS": True, "plain": False}  # a sweep's row (or line) -> adaptive: α from the scaler, or α ≡ 1


def steering_rows(methods: Sequence[str]) -> list[bool]:
    """``adaptive`` for each of a sweep's ``methods`` ("DSAS", "plain"), or an error naming the choices."""
    unknown = [m for m in methods if m not in STEERING]
    if unknown or not methods:
        raise DsasError(f"unknown steering {unknown or list(methods)}: choose from {sorted(STEERING)}.")
    return [STEERING[m] for m in methods]


def scaled_runs(handle: Any, strengths: Mapping[str, float], values: Sequence[float],
                run: Callable[[], T]) -> Iterator[tuple[float, T]]:
    """``(value, run())`` for each of ``values``, with every attached concept ``name`` at ``strengths[name]`` ×
    the value; ``handle`` (a steering handle with ``strengths`` and ``clear_records``) forgets its α records
    before each run, so what it records afterwards belongs to that run only. No re-attach, no recompile. The
    sweep is checked when called, before the first run."""
    if not strengths:
        raise DsasError("a strength sweep needs at least one concept to steer (--concept DIR).")
    if not values:
        raise DsasError("a strength sweep needs at least one strength, e.g. 0,1,2.")

    def runs() -> Iterator[tuple[float, T]]:
        for value in values:
            for name, strength in strengths.items():
                handle.strengths[name] = strength * value
            handle.clear_records()
            yield value, run()

    return runs()
