"""The steering hook as ``torch.compile`` traces it, read from one packed tensor per site.

Every object a traced hook reads becomes a guard that dynamo checks before each call of the compiled graph: the
handle's switches, each concept's transform and scaler modules, their buffers (each tensor several guards), the
hook's own attributes and methods, and the path to each. Where every concept at a site has a logistic scaler
(``sigmoid(w·h + b)``) and an affine update (``a ⊙ h + d``: mean shift, ITI-c, LinEAS), their tensors are packed
once into a (concepts, 3, d + 1) table, the tables of all such sites of one width and device into one tensor, and
what the hook needs besides into one :class:`Packed`: a steered call checks 13 guards on the hook's own state per
site, where it checked 24 (and more before packing), and gathers one input where it gathered one per site. The
arithmetic is the full path's (float32, α as a product and a sum over the width)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .scaler import Scaler
from .transforms import Transform


Stream = tuple[int | None, str, int, torch.device]  # a site's output index, layout, width and device


class Packed(NamedTuple):
    """One site's concepts for the traced hook. Dynamo guards each object a traced hook reads before every call of
    the compiled graph, so the hook reads only this: one tuple of constants (compared in one guard), the shared
    table, the λ tensors and the stream check."""

    key: tuple[int, tuple[tuple[bool, bool], ...], int | None, str, int, torch.device]
    # (this site's table in ``tables``, per concept (whether its update has a scale a, its gate: α ≡ 0), then the
    # site's :data:`Stream`)
    tables: Tensor  # (sites, concepts, 3, d + 1) float32, shared by the sites packed together; per concept:
    # (w, b), (the offset d, 0), (the scale a or zeros, 0)
    lams: tuple[Tensor, ...]  # each concept's λ, the handle's 0-d tensors (moving a slider fills them in place)
    check: Callable[[Any], None] | None  # raises unless the module's output is the stream the site expects

    @property
    def index(self) -> int:
        """This site's table in ``tables``."""
        return self.key[0]

    @property
    def flags(self) -> tuple[tuple[bool, bool], ...]:
        """Per concept: whether its update has a scale a; its gate (α ≡ 0)."""
        return self.key[1]


Parts = Sequence[tuple[Transform, Scaler, bool, Tensor]]  # per concept: (transform, scaler, gated, λ tensor)


def pack(sites: Sequence[tuple[Parts, Stream, Callable[[Any], None] | None]]) -> list[Packed | None]:
    """Per site (its concepts' ``parts``, its :data:`Stream`, its stream check): its :class:`Packed`, or None unless
    every scaler there is logistic and every update affine. Sites of one device whose tables have one shape share
    one tensor."""
    tables = {i: t for i, t in enumerate(_table(parts) for parts, _, _ in sites) if t is not None}
    groups: dict[tuple[torch.device, torch.Size], list[int]] = {}
    for i, (table, _) in tables.items():
        groups.setdefault((sites[i][1][3], table.shape), []).append(i)
    out: list[Packed | None] = [None] * len(sites)
    for (device, _), members in groups.items():
        stacked = torch.stack([tables[i][0] for i in members]).to(device)  # (sites, concepts, 3, d + 1)
        for index, i in enumerate(members):
            parts, stream, check = sites[i]
            out[i] = Packed((index, tables[i][1], *stream), stacked, tuple(p[3] for p in parts), check)
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


def takes(packed: Packed, output: Any) -> bool:
    """After the site's stream check: whether the traced update applies to the module's ``output`` (its stream a
    tensor of the fitted width on the packed device). Where it does not, the hook's full path runs, and explains."""
    _, _, index, layout, width, device = packed.key
    if packed.check is not None:
        packed.check(output)
    h = output if index is None else output[index]
    return isinstance(h, Tensor) and h.device == device and h.shape[1 if layout == "channels" else -1] == width


def steer(packed: Packed, output: Any, adaptive: bool, rows: Tensor | None) -> Any:
    """The module's output with the stream steered, or None when nothing steers (:func:`takes` first)."""
    _, _, index, layout, _, _ = packed.key
    h = output if index is None else output[index]
    out = update(packed, (h.movedim(1, -1) if layout == "channels" else h).float(), adaptive, rows)
    return None if out is None else written(output, index, layout, h, out)


def update(packed: Packed, x32: Tensor, adaptive: bool, rows: Tensor | None) -> Tensor | None:
    """x32 (..., d) plus every concept's λ·α·Δ, or None when nothing steers (every concept gated off)."""
    out: Tensor | None = None
    index, flags = packed.key[:2]
    table = packed.tables[index]  # (concepts, 3, d + 1)
    for i, (lam, (scaled, gated)) in enumerate(zip(packed.lams, flags)):
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


def written(output: Any, index: int | None, layout: str, h: Tensor, out: Tensor) -> Any:
    """The module's output with its stream h replaced by ``out`` (width last, float32), in h's dtype and layout."""
    new = out if out.dtype == h.dtype else out.to(h.dtype)
    return replaced(output, index, new.movedim(-1, 1) if layout == "channels" else new)


def replaced(output: Any, index: int | None, value: Tensor) -> Any:
    """A module's output with item ``index`` replaced by ``value`` (the output itself where ``index`` is None)."""
    if index is None:
        return value
    items = list(output)
    items[index] = value
    return type(output)(items) if isinstance(output, (tuple, list)) else tuple(items)
