"""A strength sweep of a language model: one continuation per strength, DSAS's and plain steering's."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dsas_core import Concept
from dsas_core.sweep import scaled_runs, steering_rows

from .steer import steer


def sweep_texts(model: Any, concepts: Mapping[Concept, float], values: Sequence[float],
                continuation: Callable[[], str],
                methods: Sequence[str] = ("DSAS", "plain")) -> list[tuple[float, str, str]]:
    """``[(value, steering, text)]``: ``continuation()`` with every concept at its strength × each value, for each
    of ``methods`` ("DSAS", "plain"; one attach each), in the order of ``values`` then ``methods``. At 0 one line,
    steering "unsteered", made once. ``continuation`` seeds its own sampling (every line samples alike)."""
    adaptive = steering_rows(methods)
    strengths = {concept.name: strength for concept, strength in concepts.items()}
    texts: dict[tuple[str, float], str] = {}
    for i, method in enumerate(methods):
        again = [v for v in values if v != 0.0 or not i]  # λ = 0 once: the unsteered continuation
        with steer(model, dict(concepts), adaptive=adaptive[i]) as handle:
            texts |= {(method, v): text for v, text in scaled_runs(handle, strengths, again, continuation)}
    return [(v, "unsteered", texts[(methods[0], v)]) if v == 0.0 else (v, m, texts[(m, v)])
            for v in values for m in (methods if v != 0.0 else methods[:1])]
