"""The one-kernel DSAS update on a GPU (optional: used where Triton is installed, else the torch ops run).

On a GPU an eager steering hook costs mostly kernel launches, not arithmetic: the torch ops of one concept's
update (product with the scaler's weights, sigmoid, update) are four launches per site and call. Where a site is
steered by one concept whose scaler is logistic (``sigmoid(w·h + b)``) and whose update is affine
(``a ⊙ h + d``: mean shift, ITI-c, LinEAS), the hook runs the whole update as one Triton kernel instead, computed
in float32 like the reference path.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Callable

import torch
from torch import Tensor

from .scaler import Scaler
from .transforms import Transform


class FusedFailed(RuntimeError):
    """The fused kernel could not run on this device (the hook then falls back to torch ops)."""


@functools.cache
def _kernel(interpret: bool) -> object | None:
    """The Triton kernel, or None where Triton is not installed."""
    try:
        from . import fused_kernel
    except ImportError:
        return None
    return fused_kernel.compiled(interpret)


def interpreting() -> bool:
    """True when Triton's interpreter is asked for (``TRITON_INTERPRET=1``): the kernel then runs on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available(device: torch.device) -> bool:
    """Whether the fused update can run on ``device``: a CUDA device with Triton, or the interpreter on the CPU."""
    if device.type == "cuda":
        return _kernel(False) is not None
    return device.type == "cpu" and interpreting() and _kernel(True) is not None


def fused_update(transform: Transform, scaler: Scaler, lam: float, layout: str,
                 device: torch.device) -> Callable[[Tensor, Tensor | None], Tensor | None] | None:
    """``update(h, rows) -> h'`` (the steered stream, h's shape, dtype and memory format) for one concept, or None
    where the concept or the device does not allow it; ``update`` itself returns None for a stream whose memory
    layout it does not handle (the torch ops then run)."""
    gate, affine = scaler.logistic(), transform.affine()
    if gate is None or affine is None or not available(device):
        return None
    kernel = _kernel(device.type == "cpu")
    weight, bias = (t.detach().to(device, torch.float32).contiguous() for t in gate)  # (d,), ()
    scale, offset = affine
    offset = offset.detach().to(device, torch.float32).contiguous()  # (d,)
    scale = None if scale is None else scale.detach().to(device, torch.float32).contiguous()  # (d,)
    channels = weight.shape[0]

    def update(h: Tensor, rows: Tensor | None) -> Tensor | None:
        geometry = _geometry(h, layout, channels)
        if geometry is None or h.numel() >= 2**31 or (rows is not None and rows.shape != h.shape[:1]):
            return None  # the kernel's offsets are 32-bit; one α row per sample
        per_sample, stride_sample, stride_position, stride_channel = geometry
        out = torch.empty_like(h)  # same strides as h (contiguous or channels-last)
        n = h.numel() // channels
        block_p, block_c = _blocks(layout, n, channels)
        grid = (-(-n // block_p),)
        if rows is not None and rows.device != h.device:
            rows = rows.to(h.device)
        # Triton launches on the current CUDA device: make it the stream's (a model on cuda:1, say)
        here = torch.cuda.device(h.device) if h.is_cuda and h.device.index != torch.cuda.current_device() else None
        try:
            with here or contextlib.nullcontext():
                kernel[grid](h, out, weight, bias, offset if scale is None else scale, offset,
                             offset if rows is None else rows, lam, n, per_sample, channels,
                             stride_sample, stride_position, stride_channel,
                             HAS_SCALE=scale is not None, HAS_ROWS=rows is not None, BLOCK_P=block_p, BLOCK_C=block_c)
        except Exception as err:  # compiling or launching failed: Triton's own error types vary by version
            raise FusedFailed(f"the fused steering kernel failed on {h.device}: {type(err).__name__}: {err}.") from err
        return out

    return update


def _blocks(layout: str, positions: int, channels: int) -> tuple[int, int]:
    """(positions, channels) one program handles: the fastest of six shapes per layout timed on an H200 at the
    SD 1.5 / SDXL / FLUX site sizes (GPU time per launch, e.g. 41 → 14 µs at 1280 channels on 8 × 8 maps)."""
    if layout == "channels":  # positions contiguous
        return (16, 64) if positions >= 4096 else (8, 64)
    return (16, 128) if channels <= 512 else (2, 512)  # channels contiguous


def _geometry(h: Tensor, layout: str, channels: int) -> tuple[int, int, int, int] | None:
    """(positions per sample, sample stride, position stride, channel stride) of a stream: (B, d, *spatial)
    contiguous or channels-last, or (B, ..., d) contiguous; None for any other layout (the torch ops then run)."""
    if h.ndim < 2 or h.shape[1 if layout == "channels" else -1] != channels:
        return None
    per_sample = math.prod(h.shape[1:]) // channels
    if layout == "tokens" and h.is_contiguous():
        return per_sample, per_sample * channels, channels, 1
    if layout == "channels" and h.is_contiguous():
        return per_sample, per_sample * channels, 1, per_sample
    if layout == "channels" and h.ndim == 4 and h.is_contiguous(memory_format=torch.channels_last):
        return per_sample, per_sample * channels, channels, 1
    return None
