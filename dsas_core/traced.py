"""The update as ``torch.compile`` traces it, read from one packed tensor per site.

Every object a traced hook reads becomes a guard that dynamo checks before each call of the compiled graph: the
handle's switches, each concept's transform and scaler modules, their buffers (each tensor several guards) and the
path to each. Where every concept at a site has a logistic scaler (``sigmoid(w·h + b)``) and an affine update
(``a ⊙ h + d``: mean shift, ITI-c, LinEAS), their tensors are packed once into a (concepts, 3, d + 1) table, and
the tables of all such sites of one width and device into one tensor, so a steered call checks far fewer guards
and gathers one input where it gathered one per site; the arithmetic is the full path's (float32, α as a product
and a sum over the width).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .scaler import Scaler
from .transforms import Transform


class Packed(NamedTuple):
    """One site's concepts for the traced update, on one device."""

    device: torch.device
    tables: Tensor  # (sites, concepts, 3, d + 1) float32, shared by the sites packed together; per concept:
    # (w, b), (the offset d, 0), (the scale a or zeros, 0)
    index: int  # this site's table in ``tables``
    lams: tuple[Tensor, ...]  # each concept's λ, the handle's 0-d tensors (moving a slider fills them in place)
    flags: tuple[tuple[bool, bool], ...]  # per concept: whether its update has a scale a; its gate (α ≡ 0)


Parts = Sequence[tuple[Transform, Scaler, bool, Tensor]]  # per concept: (transform, scaler, gated, λ tensor)


def pack(sites: Sequence[tuple[Parts, torch.device]]) -> list[Packed | None]:
    """Per site (its concepts' ``parts``, its device): its :class:`Packed`, or None unless every scaler there is
    logistic and every update affine. Sites of one device whose tables have one shape share one tensor."""
    tables = {i: t for i, t in enumerate(_table(parts) for parts, _ in sites) if t is not None}
    groups: dict[tuple[torch.device, torch.Size], list[int]] = {}
    for i, (table, _) in tables.items():
        groups.setdefault((sites[i][1], table.shape), []).append(i)
    out: list[Packed | None] = [None] * len(sites)
    for (device, _), members in groups.items():
        stacked = torch.stack([tables[i][0] for i in members]).to(device)  # (sites, concepts, 3, d + 1)
        for index, i in enumerate(members):
            out[i] = Packed(device, stacked, index, tuple(p[3] for p in sites[i][0]), tables[i][1])
    return out


def _table(parts: Parts) -> tuple[Tensor, tuple[tuple[bool, bool], ...]] | None:
    """One site's (concepts, 3, d + 1) table and flags, or None where a concept lacks the form."""
    rows, flags = [], []
    for transform, scaler, gated, _ in parts:
        gate, affine = scaler.logistic(), transform.affine()
        if gate is None or affine is None:
            return None
        (w, b), (scale, offset) = gate, affine
        row = torch.zeros(3, w.shape[-1] + 1)
        row[0, :-1], row[0, -1], row[1, :-1] = w, b, offset
        if scale is not None:
            row[2, :-1] = scale
        rows.append(row)
        flags.append((scale is not None, bool(gated)))
    return torch.stack(rows).detach(), tuple(flags)


def update(packed: Packed, x32: Tensor, adaptive: bool, rows: Tensor | None) -> Tensor | None:
    """x32 (..., d) plus every concept's λ·α·Δ, or None when nothing steers (every concept gated off)."""
    out: Tensor | None = None
    table = packed.tables[packed.index]  # (concepts, 3, d + 1)
    for i, (lam, (scaled, gated)) in enumerate(zip(packed.lams, packed.flags)):
        if adaptive and gated:  # α ≡ 0
            continue
        (w, offset, scale), b = table[i, :, :-1], table[i, 0, -1]  # (d,) each; ()
        delta = torch.addcmul(offset, scale, x32) if scaled else offset  # a ⊙ h + d
        coef: Any = lam
        if adaptive:
            alpha = torch.sigmoid((x32 * w).sum(-1, keepdim=True) + b)  # (..., 1)
            coef = lam * (alpha if rows is None else alpha[rows])
        out = torch.addcmul(x32 if out is None else out, coef, delta)
    return out
