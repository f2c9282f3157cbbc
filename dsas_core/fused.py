"""The one-kernel DSAS update on a GPU (optional: used where Triton is installed, else the torch ops run).

On a GPU an eager steering hook costs mostly kernel launches, not arithmetic: the torch ops of one concept's
update (product with the scaler's weights, sigmoid, update) are four launches per site and call. Where a site is
steered by one concept whose scaler is logistic (``sigmoid(w·h + b)``) and whose update is affine
(``a ⊙ h + d``: mean shift, ITI-c, LinEAS), the hook runs the whole update as one Triton kernel instead, computed
in float32 like the reference path; with α ≡ 1 (plain steering) or one α per input (the prompt scaler) too.
"""

from __future__ import annotations

import copy
import functools
import math
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from . import traced
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


class Launches:
    """The compiled kernels a steering handle launches directly, by specialisation (kept on the handle: every
    site and every re-plan after a strength change shares them)."""

    KEEP = 256  # specialisations remembered: stream shapes differ with prompt lengths, say

    def __init__(self) -> None:
        self.direct: dict[tuple[object, ...], _Direct | None] = {}
        self.works = True  # False once a direct launch raised: Triton's entry point from then on


PROBE, CONSTANT, PER_SAMPLE = 0, 3, 4  # the kernel's ALPHA in the common call: sigmoid(w·h + b), ≡ 1, per sample
Source = Callable[[int, "Tensor | None"], Tensor]  # (batch, rows) -> α per sample, (B,) float32 contiguous, paired


def fused_update(transform: Transform, scaler: Scaler | None, lam: float, layout: str, device: torch.device,
                 launches: Launches | None = None, source: Source | None = None) -> FusedUpdate | None:
    """The one-kernel update of one concept (:class:`FusedUpdate`), or None where the concept or the device does
    not allow it: ``scaler`` logistic (α per position), None (plain steering: α ≡ 1), or one α per input read
    from ``source(batch, rows)`` at each call (the prompt scaler). ``launches``: where compiled kernels are kept for
    direct launches (a fresh store when None)."""
    affine = transform.affine()
    probe = scaler is not None and source is None  # α per position: the scaler must be logistic
    gate = scaler.logistic() if probe else None
    if affine is None or (probe and gate is None) or not available(device):
        return None
    return FusedUpdate(gate, affine, lam, layout, _Launcher(_kernel(device.type == "cpu"), launches or Launches()),
                       device, source)


class FusedUpdate:
    """``update(h, rows, alpha=None, reuse=False) -> h'``: the steered stream (h's shape, dtype and memory format)
    from one kernel, or None for a stream whose memory layout it does not handle (the torch ops then run).
    ``alpha``, a float32 tensor with one element per position (``tokens_last(h).shape[:-1]``, contiguous): the
    kernel writes each position's α there, or, with ``reuse=True``, reads α from there instead of computing it
    (``rows`` must then be None). Without a gate (``mode`` not PROBE) only the common call: α ≡ 1, or α per sample
    from ``source`` (``alpha``: one float32 per sample instead, paired already; ``rows`` are the source's).
    :meth:`lane`: the common call (no α kept or reused) bound to one stream geometry."""

    def __init__(self, gate: tuple[Tensor, Tensor] | None, affine: tuple[Tensor | None, Tensor], lam: float,
                 layout: str, launch: _Launcher, device: torch.device, source: Source | None = None) -> None:
        scale, offset = affine
        offset = offset.detach().to(device, torch.float32).contiguous()  # (d,)
        scale = offset if scale is None else scale.detach().to(device, torch.float32).contiguous()  # (d,)
        # (d,), (): the probe's (the kernel reads neither without one)
        weight, bias = (offset, offset) if gate is None else (t.detach().to(device, torch.float32).contiguous()
                                                              for t in gate)
        self.fixed = [weight, bias, scale, offset]
        self.fixed_pointers = [t.data_ptr() for t in self.fixed]
        self.has_scale = affine[0] is not None
        self.mode = PROBE if gate is not None else CONSTANT if source is None else PER_SAMPLE
        self.source = source
        self.lam, self.layout, self.launch, self.channels = lam, layout, launch, offset.shape[0]
        self.shapes: dict[tuple[object, ...], _Spec | None] = {}

    def spec(self, h: Tensor) -> _Spec | None:
        """:func:`_spec` of h, kept per (shape, strides, dtype)."""
        where = (h.shape, h.stride(), h.dtype)
        spec = self.shapes.get(where, False)
        if spec is False:
            if len(self.shapes) >= Launches.KEEP:
                self.shapes.clear()
            spec = self.shapes[where] = _spec(h, self.layout, self.channels, self.lam, self.has_scale, self.mode)
        return spec

    def arguments(self, spec: _Spec, h: Tensor, out: Tensor | int, rows: Tensor | None,
                  alpha: Tensor | int | None, reuse: bool) -> tuple[tuple[object, ...], list[Tensor], list[int],
                                                                 tuple[object, ...]]:
        """(specialisation key, tensors, their pointers, constants) of a launch on h writing ``out`` (a tensor, or
        the pointer it will have; ``alpha`` likewise); ``rows`` on h's device."""
        base, _, _, constants = spec
        fixed, pointers = self.fixed, self.fixed_pointers
        out_ptr = out if isinstance(out, int) else out.data_ptr()
        tensors = [h, out, *fixed]  # type: ignore[list-item]
        if rows is None and alpha is None:  # the common call
            tensors += [fixed[3], fixed[3]]
            ptrs = [h.data_ptr(), out_ptr, *pointers, pointers[3], pointers[3]]
            return (base, ptrs[0] % 16, out_ptr % 16), tensors, ptrs, constants
        tensors += [fixed[3] if rows is None else rows, fixed[3] if alpha is None else alpha]
        alpha_ptr = alpha if isinstance(alpha, int) else tensors[7].data_ptr()
        ptrs = [h.data_ptr(), out_ptr, *pointers, tensors[6].data_ptr(), alpha_ptr]
        mode = self.mode or (0 if alpha is None else 2 if reuse else 1)
        constants = (self.has_scale, rows is not None, mode, *constants[3:])
        key = (base, ptrs[0] % 16, out_ptr % 16, constants, ptrs[6] % 16, ptrs[7] % 16, tensors[6].dtype)
        return key, tensors, ptrs, constants

    def __call__(self, h: Tensor, rows: Tensor | None, alpha: Tensor | None = None,
                 reuse: bool = False) -> Tensor | None:
        spec = self.spec(h)
        if spec is None or (rows is not None and (reuse or rows.shape != h.shape[:1])):
            return None  # a layout the kernel cannot walk; one α row per sample, and stored α unpaired
        if self.mode != PROBE:  # α ≡ 1, or per sample from the source, which pairs it
            alpha = self.source(h.shape[0], rows) if alpha is None and self.source is not None else alpha
            rows, reuse = None, False
        if alpha is not None and (alpha.numel() != (h.shape[0] if self.mode == PER_SAMPLE else spec[2][1])
                                  or alpha.dtype != torch.float32 or not alpha.is_contiguous()
                                  or alpha.device != h.device):
            return None  # α must be one float32 per position (or sample), contiguous, beside the stream
        if rows is not None and rows.device != h.device:
            rows = rows.to(h.device)
        out = torch.empty_like(h)  # same strides as h (contiguous or channels-last)
        key, tensors, pointers, constants = self.arguments(spec, h, out, rows, alpha, reuse)
        device_index = spec[0][2]
        try:
            if device_index < 0 or device_index == _device_getter()():
                self.launch(key, spec[1], tensors, pointers, spec[2], constants, device_index)
            else:  # Triton launches on the current CUDA device: make it the stream's (a model on cuda:1, say)
                with torch.cuda.device(device_index):
                    self.launch(key, spec[1], tensors, pointers, spec[2], constants, device_index)
        except Exception as err:  # compiling or launching failed: Triton's own error types vary by version
            raise FusedFailed(f"the fused steering kernel failed on {h.device}: {type(err).__name__}: {err}.") from err
        return out

    def lane(self, h: Tensor, rows: Tensor | None, index: int | None = None,
             keep: Callable[[Tensor], None] | None = None) -> Callable[[Any], Any] | None:
        """``lane(output) -> steered output``: the common call (no α kept or reused) on ``output[index]`` (the
        output itself where ``index`` is None), steered with these ``rows`` (the caller checks they are still the
        ones), for streams of h's shape, strides, dtype and device, launched straight through the compiled kernel
        that a call of this object already launched — the least host work per call (α per sample read from the
        source at each call). With ``keep`` (a gate's kernel only), the α-recording call instead: the kernel writes
        each position's α into a new float32 tensor (``tokens_last(h).shape[:-1]`` + (1,)), handed to ``keep``
        after the launch. None where there is none (the interpreter, a first call, another device's rows). Where
        the kernel cannot be launched that way now (another alignment, a profiler listens, another current device)
        the lane calls this object instead; it returns None for another stream, or after a direct launch raised:
        the caller then calls this object itself (nothing kept)."""
        launches = self.launch.launches
        spec = self.spec(h) if launches.works else None  # works: direct launches have not failed here
        if spec is None or spec[0][2] < 0 or (rows is not None and (rows.shape != h.shape[:1]
                                                                    or rows.device != h.device)):
            return None
        if keep is not None and self.mode != PROBE:
            return None  # only a gate's kernel computes α to keep
        source, gated = self.source, self.mode == PROBE
        # the output's pointer taken as 16-byte aligned (CUDA's caching allocator rounds every block to 512 bytes);
        # α's, where the kernel takes one, checked at each call
        takes_alpha = keep is not None or source is not None
        key, _, pointers, constants = self.arguments(spec, h, 0, rows if gated else None, 0 if takes_alpha else None,
                                                     False)
        direct = launches.direct.get(key)
        if direct is None:
            return None
        launch, function, head, packed, stream_of, hooks = direct
        grid, device, tail = spec[1], spec[0][2], (*spec[2], *constants)
        rest, middle = (*pointers[2:], *tail), pointers[2:7]  # after (h, out); between (h, out) and α
        shape, strides, dtype, on, align = h.shape, h.stride(), h.dtype, h.get_device(), pointers[0] % 16
        positions = (*((h.shape[0], *h.shape[2:]) if self.layout == "channels" else h.shape[:-1]), 1)
        current, replaced, empty_like = _device_getter(), traced.replaced, torch.empty_like
        alpha_of = (functools.partial(torch.empty, positions, dtype=torch.float32, device=h.device) if keep is not None
                    else functools.partial(source, h.shape[0], rows) if source is not None else None)

        def lane(output: Any) -> Any:  # stream_lane's check inlined, with the pointer: one call less a hook call
            try:
                h = output if index is None else output[index]
                if h.shape != shape or h.stride() != strides or h.dtype is not dtype or h.get_device() != on:
                    return None
                p = h.data_ptr()
            except (TypeError, IndexError, KeyError, AttributeError):  # not a stream: the full checks explain
                return None
            enter, leave = hooks.launch_enter_hook, hooks.launch_exit_hook
            alpha = a = None
            if alpha_of is not None:
                alpha = alpha_of()
                a = alpha.data_ptr()
            if (p % 16 != align or (a is not None and (a % 16 or alpha.get_device() != on)) or current() != device
                    or (enter is not None and getattr(enter, "calls", True))
                    or (leave is not None and getattr(leave, "calls", True))):
                out = self.launched(h, rows, alpha)
                if out is None:
                    return None
            else:
                out = empty_like(h)
                args = (p, out.data_ptr(), *rest) if a is None else (p, out.data_ptr(), *middle, a, *tail)
                try:
                    if packed:
                        launch(grid, 1, 1, stream_of(device), function, *head, args)
                    else:
                        launch(grid, 1, 1, stream_of(device), function, *head, *args)
                except Exception:  # as in the launcher: this Triton's entry point from now on
                    launches.works = False
                    launches.direct.clear()
                    return None
            if keep is not None:
                keep(alpha)
            return out if index is None else replaced(output, index, out)

        return lane

    def launched(self, h: Tensor, rows: Tensor | None, alpha: Tensor | None = None) -> Tensor | None:
        """This object's call (writing α where given), or None where it failed (the caller's own call then raises
        and explains)."""
        try:
            return self(h, rows, alpha)
        except FusedFailed:
            return None


def _device_getter() -> Callable[[], int]:
    """The current CUDA device's index, read without ``torch.cuda.current_device``'s initialisation check (a launch
    has initialised CUDA by then)."""
    return getattr(torch._C, "_cuda_getDevice", torch.cuda.current_device)


# (specialisation: (integers, dtype, device index, HAS_SCALE, blocks), grid, (λ, *integers), the common call's
# constants: (HAS_SCALE, HAS_ROWS, ALPHA, BLOCK_P, BLOCK_C))
_Spec = tuple[tuple[object, ...], int, tuple[object, ...], tuple[object, ...]]


def _spec(h: Tensor, layout: str, channels: int, lam: float, has_scale: bool,
          mode: int = PROBE) -> _Spec | None:
    """What a launch needs of a stream's shape, strides, dtype and device (the integers: positions, positions per
    sample, channels, sample, position and channel strides), or None for a layout the kernel cannot walk or a
    stream too large for its 32-bit offsets. Triton specialises a compiled kernel on every one of these."""
    geometry = _geometry(h, layout, channels)
    if geometry is None or h.numel() >= 2**31:
        return None
    per_sample, stride_sample, stride_position, stride_channel = geometry
    n = h.numel() // channels
    block_p, block_c = _blocks(layout, n, channels)
    integers = (n, per_sample, channels, stride_sample, stride_position, stride_channel)
    base = (integers, h.dtype, h.get_device(), has_scale, block_p, block_c, mode)
    return base, -(-n // block_p), (lam, *integers), (has_scale, False, mode, block_p, block_c)


class _Launcher:
    """Launches the kernel: the first time for each specialisation through Triton's entry point, which binds and
    specialises every argument on every call (≈ 18 µs of host time on an H100 machine), later straight through
    the compiled kernel that call returned (pointers passed as integers; kept in ``launches``), unless a launch
    hook listens (profilers) or this Triton version's compiled kernels do not expose their launcher."""

    NAMES = ("HAS_SCALE", "HAS_ROWS", "ALPHA", "BLOCK_P", "BLOCK_C")

    def __init__(self, kernel: object, launches: Launches) -> None:
        self.kernel, self.launches = kernel, launches

    def __call__(self, key: tuple[object, ...], grid: int, tensors: list[Tensor], pointers: list[int],
                 scalars: tuple[object, ...], constants: tuple[object, ...], device: int) -> None:
        """Launch ``grid`` programs on (``tensors`` or their ``pointers``, then ``scalars``, ``constants``);
        ``key`` holds everything Triton specialises on; ``device``: CUDA index, or -1 (the interpreter)."""
        launches = self.launches
        direct = launches.direct.get(key)
        if direct is not None:
            launch, function, head, packed, stream_of, hooks = direct
            enter, leave = hooks.launch_enter_hook, hooks.launch_exit_hook  # None or a hook chain, by version
            if not ((enter is not None and getattr(enter, "calls", True))
                    or (leave is not None and getattr(leave, "calls", True))):  # else a profiler listens
                try:
                    arguments = (*pointers, *scalars, *constants)
                    if packed:
                        launch(grid, 1, 1, stream_of(device), function, *head, arguments)
                    else:
                        launch(grid, 1, 1, stream_of(device), function, *head, *arguments)
                    return
                except Exception:  # this Triton's launcher wants its arguments otherwise: its entry point from now on
                    launches.works = False
                    launches.direct.clear()
        compiled = self.kernel[(grid,)](*tensors, *scalars, **dict(zip(self.NAMES, constants)))
        if key not in launches.direct and launches.works:
            if len(launches.direct) >= launches.KEEP:
                launches.direct.clear()
            launches.direct[key] = _direct_launch(compiled) if device >= 0 else None


# a compiled kernel's direct launch: (launch, function, head, packed, Triton's stream getter, its runtime knobs),
# called launch(grid, 1, 1, stream, function, *head, *arguments), or with the arguments as one tuple where packed
_Direct = tuple[Callable[..., object], object, tuple[object, ...], bool, Callable[[int], int], object]


def _direct_launch(compiled: object) -> _Direct | None:
    """What launching straight through a compiled kernel's launcher needs (Triton 3.x), or None: its C launch
    function where :func:`_c_launch` finds it, else the launcher object (``compiled.run``) itself."""
    try:
        from triton import knobs
        from triton.runtime import driver

        run, function, metadata = compiled.run, compiled.function, compiled.packed_metadata  # type: ignore[attr-defined]
        stream_of, hooks = driver.active.get_current_stream, knobs.runtime
    except (ImportError, AttributeError):  # the interpreter (no compiled kernel), or another Triton
        return None
    if function is None or not callable(run):
        return None
    head = (metadata, None, None, None)  # packed metadata, launch metadata, enter and exit hooks
    launch, head, packed = _c_launch(run, function, head) or (run, head, False)
    return launch, function, head, packed, stream_of, hooks


_CLaunch = tuple[Callable[..., object], tuple[object, ...], bool]  # (C function, head, packed)


def _c_launch(run: Any, function: object, head: tuple[object, ...]) -> _CLaunch | None:
    """(launch, head, packed): the C function Triton's launcher object calls, with the arguments it adds, or None.
    Where the kernel needs no scratch memory the object only reorders its arguments (a Python frame, closures and
    scratch checks: µs of host time a launch); its call is recorded twice on a copy whose C function records
    instead of launching (another grid and stream each time), and taken only where every argument it adds is the
    same both times and ours come through unchanged, in order, at the end or as a tuple there."""
    if (getattr(run, "global_scratch_size", 1) != 0 or getattr(run, "profile_scratch_size", 1) != 0
            or getattr(run, "gsan_enabled", False) or not callable(getattr(run, "launch", None))):
        return None
    try:
        (head_a, packed_a), (head_b, packed_b) = (_recorded(run, function, head, grid) for grid in (7, 11))
        same = packed_a == packed_b and len(head_a) == len(head_b) and all(
            a is b or a == b for a, b in zip(head_a, head_b))
    except Exception:  # noqa: BLE001 - another launcher (or one call not like the other): launch through the object
        return None
    return (run.launch, head_a, packed_a) if same else None


def _recorded(run: Any, function: object, head: tuple[object, ...], grid: int) -> tuple[tuple[object, ...], bool]:
    """(what the launcher object adds before our arguments, whether it passes them as one tuple) in its call of
    the C function for ``grid`` programs, recorded on a copy with new stand-ins for the stream and our arguments
    (so anything derived from them differs between two recordings); raises where ours do not come through
    unchanged and in order."""
    calls: list[tuple[object, ...]] = []
    probe, stream, ours = copy.copy(run), object(), (object(), object(), object())
    probe.launch = lambda *args: calls.append(args)
    probe(grid, 1, 1, stream, function, *head, *ours)
    (args,) = calls
    if len(args) < 6 or args[:5] != (grid, 1, 1, stream, function):
        raise ValueError("another call")
    added = args[5:]
    if len(added) > 3 and all(a is b for a, b in zip(added[-3:], ours)):
        head, packed = added[:-3], False
    elif isinstance(added[-1], tuple) and len(added[-1]) == 3 and all(a is b for a, b in zip(added[-1], ours)):
        head, packed = added[:-1], True
    else:
        raise ValueError("our arguments moved")
    return head, packed


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
