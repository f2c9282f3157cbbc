"""One call of torch ops for the eager fast path's common call (no α kept or reused), where the one Triton kernel
of :mod:`.fused` does not run: the same ops, in the same order, as the general fast path (``_SiteHook.apply``) —
so the same result — without its per-call bookkeeping. Where a hook runs between a model's large kernels, each
Python step costs µs (caches are cold there), and a 1-token decoding step of a small LM, or a launch-bound GPU's
step, is short.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from . import traced
from .scaler import ProbeScaler, Scaler
from .transforms import Transform

HALF = (torch.float16, torch.bfloat16)  # activations the fast path's scalers follow into their own dtype


class OneCall:
    """``update(h, rows) -> h'``: one concept's common call on the stream h (width at dim 1 for channels
    layouts, else last), α paired by ``rows``; None where the general path must run (e.g. a dtype this form does
    not take). :meth:`lane`: the same, bound to one stream geometry."""

    def __call__(self, h: Tensor, rows: Tensor | None) -> Tensor | None:
        raise NotImplementedError

    def lane(self, h: Tensor, rows: Tensor | None, index: int | None = None) -> Callable[[Any], Any]:
        """``lane(output) -> steered output``: this update on ``output[index]`` (the output itself where ``index``
        is None) with these ``rows`` (the caller checks they are still the ones), for streams of h's shape,
        strides, dtype and device; None for another stream (the caller's full path then runs)."""
        replaced = traced.replaced

        def steered(output: Any, h: Tensor) -> Any:
            out = self(h, rows)
            return out if out is None or index is None else replaced(output, index, out)

        return stream_lane(steered, h, index)


def torch_update(transform: Transform, scaler: Scaler, lam: float, layout: str) -> TorchUpdate | None:
    """The one-call update of one concept with a probe scaler (α per position) and a constant update (mean shift,
    ITI-c) from torch ops (:class:`TorchUpdate`), or None for other concepts."""
    affine = transform.affine()
    if not isinstance(scaler, ProbeScaler) or affine is None or affine[0] is not None:
        return None
    return TorchUpdate(scaler, affine[1], lam, layout)


class TorchUpdate(OneCall):
    """A probe scaler (α per position) and a constant update; float32 streams only (None for others: a half
    stream's α comes from the scaler's copy in its dtype, which the general path holds)."""

    def __init__(self, scaler: ProbeScaler, offset: Tensor, lam: float, layout: str) -> None:
        self.weight, self.bias, self.column = scaler.weight_row, scaler.bias_row, scaler.column  # (1, d), (1,)
        self.offset, self.lam, self.channels = offset, lam, layout == "channels"  # (d,)

    def __call__(self, h: Tensor, rows: Tensor | None) -> Tensor | None:
        if h.dtype != torch.float32:
            return None
        x = h.movedim(1, -1) if self.channels else h  # (..., d)
        alpha = (torch.sigmoid(torch.nn.functional.linear(x, self.weight, self.bias)) if x.stride(-1) == 1
                 else self.column(x))
        if rows is not None:
            alpha = alpha[rows]  # (..., 1), e.g. the unconditional half of a CFG batch takes its pair's α
        out = torch.addcmul(x, alpha, self.offset, value=self.lam)
        return out.movedim(-1, 1) if self.channels else out


def offset_update(transform: Transform, alpha: Callable[[Tensor, Tensor | None], Tensor] | Tensor, value: float,
                  layout: str) -> OffsetUpdate | None:
    """The one-call update of one concept whose update is constant (mean shift, ITI-c) and whose α does not read
    the stream (:class:`OffsetUpdate`), or None for other updates."""
    affine = transform.affine()
    if affine is None or affine[0] is not None:
        return None
    return OffsetUpdate(alpha, affine[1], value, layout)


class OffsetUpdate(OneCall):
    """``h + value · α · d``, one ``addcmul`` on the stream in its own layout, where α does not read the stream:
    ``alpha(h, rows)``, one α per input (the prompt scaler: (B, 1, …, 1), computed once per model call, paired by
    rows; ``value`` λ), or a tensor (plain steering: λ's 0-d tensor, ``value`` 1). Half-precision streams are read
    in their dtype, computed in float32 and written in theirs, as the general path does; other non-float32 dtypes
    take the general path. The same elementwise arithmetic as the general path's ``addcmul`` on the width-last view,
    so the same numbers."""

    def __init__(self, alpha: Callable[[Tensor, Tensor | None], Tensor] | Tensor, offset: Tensor, value: float,
                 layout: str) -> None:
        self.fixed = alpha if isinstance(alpha, Tensor) else None
        self.alpha, self.offset, self.value, self.channels = alpha, offset, value, layout == "channels"  # (d,)
        self.offsets: dict[int, Tensor] = {}  # channels layouts: d as (d, 1, …, 1) for a stream of each rank

    def __call__(self, h: Tensor, rows: Tensor | None) -> Tensor | None:
        half = h.dtype in HALF
        if not half and h.dtype != torch.float32:
            return None
        d = self.offset
        if self.channels:
            d = self.offsets.get(h.ndim)
            if d is None:
                d = self.offsets[h.ndim] = self.offset.view(-1, *([1] * (h.ndim - 2)))
        alpha = self.fixed if self.fixed is not None else self.alpha(h, rows)  # 0-d, or (B, 1, …, 1)
        if half:
            res = torch.empty_like(h)  # h's strides
            torch.addcmul(h, alpha, d, value=self.value, out=res)
            return res
        return torch.addcmul(h, alpha, d, value=self.value)


def stream_lane(steered: Callable[[Any, Tensor], Any], h: Tensor, index: int | None) -> Callable[[Any], Any]:
    """``lane(output)``: ``steered(output, stream)`` (the steered output, or None) where the stream
    ``output[index]`` (the output itself where ``index`` is None) has h's shape, strides, dtype and device, else
    None."""
    stream = (h.shape, h.stride(), h.dtype, h.get_device())

    def lane(output: Any) -> Any:
        try:
            h = output if index is None else output[index]
            if (h.shape, h.stride(), h.dtype, h.get_device()) != stream:
                return None
        except (TypeError, IndexError, KeyError, AttributeError):  # not a stream: the full checks explain
            return None
        return steered(output, h)

    return lane
