"""The only place where dsas registers and removes forward hooks.

At every hooked site, one hook applies every attached concept c to the site's output h:

    h' = h + Σ_c λ_c · α_c(h) · (T_c(h) − h)

Composition rule: all concepts read the same, unsteered h and their updates add up, so the result does not
depend on the order concepts were given. Math runs in float32 and is cast back to h's dtype. With every λ = 0
and no α recorded the hook returns ``None`` and the output is untouched, bit for bit.

Under ``torch.compile`` (attach first, then compile) λ is read only as a 0-d tensor, so moving a slider never
recompiles; λ = 0 then adds an exact zero. Bookkeeping (step tracking, α records) runs eagerly between graphs.

Inference (no gradients, eager) takes a fast path with the same arithmetic: a plan per site cached until a
strength or ``adaptive`` changes (made when attaching), λ·α·Δ in one ``addcmul``, and a per-input scaler's α (the
prompt scaler's: one value per input) computed once per call for every site of its concept; on a GPU with Triton,
a site steered by one concept with an affine update runs its whole update as one kernel (:mod:`.fused`): with a
logistic scaler (α records and stored α included), with plain steering, or with the prompt scaler. While
``torch.compile`` traces, sites whose concepts all have a logistic scaler and an affine update read them from one
packed tensor shared by the sites of one width (:mod:`.traced`): fewer objects read, fewer guards checked
before every compiled call.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from . import traced
from .concept import Concept
from .errors import DsasError
from .fused import PROBE, FusedFailed, FusedUpdate, Launches, fused_update
from .one_call import HALF, OneCall, offset_update, stream_lane, torch_update
from .scaler import Scaler
from .transforms import Transform

# Read by every site hook call. Bound once: where a hook runs between a model's kernels, each attribute lookup on
# the way costs a µs (caches are cold there). torch.compile still folds the call (it knows the function itself).
_compiling, _grad_enabled = torch.compiler.is_compiling, torch.is_grad_enabled

Layout = Literal["tokens", "channels"]


@dataclass(frozen=True)
class Site:
    """A hookable place: a module, which element of its (tuple) output to steer, and the output's layout.

    ``layout="tokens"``: (..., N, d) with the width last; ``"channels"``: (B, d, H, W) feature maps.
    """

    name: str
    module: nn.Module
    output_index: int | None = None
    layout: Layout = "tokens"


def read_output(site: Site, output: Any) -> Tensor:
    """The steered stream of a module's output, as a tensor."""
    value = output if site.output_index is None else output[site.output_index]
    if not isinstance(value, Tensor):
        where = "output" if site.output_index is None else f"output[{site.output_index}]"
        raise DsasError(
            f"site {site.name!r}: expected the module's {where} to be a tensor, got {type(value).__name__}. "
            "The model's output format differs from what the adapter's site table expects: choose other sites "
            "or update the library."
        )
    return value


def write_output(site: Site, output: Any, value: Tensor) -> Any:
    """The module's output with the steered stream replaced."""
    return traced.replaced(output, site.output_index, value)


def tokens_last(site: Site, h: Tensor) -> Tensor:
    """View of h with the width last: (B, N, d) stays, (B, d, H, W) becomes (B, H, W, d)."""
    return h.movedim(1, -1) if site.layout == "channels" else h


class HookHandle:
    """Owns registered hooks: ``.remove()``, or use it as a context manager (removes in ``finally``)."""

    def __init__(self) -> None:
        self._removables: list[torch.utils.hooks.RemovableHandle] = []

    def _register(self, module: nn.Module, hook: Callable[..., Any], prepend: bool = False) -> None:
        self._removables.append(module.register_forward_hook(hook, with_kwargs=True, prepend=prepend))

    def before_calls(self, module: nn.Module, fn: Callable[[tuple[Any, ...], dict[str, Any]], None],
                     when: Callable[[], bool] | None = None) -> None:
        """Run ``fn(args, kwargs)`` before every call of ``module`` (e.g. to track the denoising step), or only
        while ``when()`` is true; removed with this handle. ``fn`` must not change the inputs. Under
        ``torch.compile`` it runs eagerly (one graph break before the module): Python bookkeeping such as step
        counters would otherwise be baked into the graph and recompile it on every call. ``when()`` is traced
        instead: while it is false the graph has no break (its value is guarded: a change recompiles once)."""
        eager = torch.compiler.disable(fn)  # its wrapper costs µs on every eager call too: taken only when tracing

        def pre_hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if when is None or when():
                (eager if _compiling() else fn)(args, kwargs)

        self._removables.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))

    def after_calls(self, module: nn.Module, fn: Callable[[Any], None], prepend: bool = False) -> None:
        """Run ``fn(output)`` after every call of ``module`` with its raw output (e.g. to learn whether it is a
        tensor or a tuple); removed with this handle. ``fn`` must not change the output. ``prepend=True`` runs it
        before every other forward hook of the module (e.g. to check the output format before anything reads it)."""

        def post_hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            fn(output)

        self._register(module, post_hook, prepend=prepend)

    @property
    def attached(self) -> bool:
        """True until :meth:`remove`."""
        return bool(self._removables)

    def remove(self) -> None:
        """Remove every hook this handle registered (idempotent)."""
        while self._removables:
            self._removables.pop().remove()

    def __enter__(self) -> "HookHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def refuse_compiled(model: nn.Module, what: str = "the model") -> None:
    """Raise if ``model`` (a ``torch.compile`` wrapper, or a module with a ``.compile()``d part) is compiled.

    Why: compiled graphs do not check a module's empty hook lists (``torch._dynamo.config.skip_nnmodule_hook_guards``,
    on by default), so hooks added after a compiled model ran without them are silently skipped. Hooks attached
    before compiling are traced into the graph and work; removing them recompiles."""
    inner = getattr(model, "_orig_mod", None)
    where = ["torch.compile(...) wrapper"] if isinstance(inner, nn.Module) else []
    root = inner if isinstance(inner, nn.Module) else model
    where += [f"{n or 'model'}.compile()" for n, m in root.named_modules()
              if getattr(m, "_compiled_call_impl", None) is not None]
    if where:
        raise DsasError(
            f"{what} is already compiled ({where[0]}): hooks added now would be silently skipped, because compiled "
            "graphs do not check a module's empty hook lists (torch._dynamo.config.skip_nnmodule_hook_guards). "
            "Attach first, then compile (handle = steer(model, {concept: 0.0}); model.compile()), and keep the "
            "handle: changing its strengths never recompiles. To attach to a model compiled earlier, load it again "
            "without compiling."
        )


# ------------------------------------------------------------------------------------------------ observing
def observe(sites: Sequence[Site], callback: Callable[[Site, Tensor], None], into: HookHandle | None = None) -> HookHandle:
    """Call ``callback(site, h)`` with each site's output (width last) on every forward; changes nothing.

    The hooks are registered on ``into`` (or on a new handle), which is returned."""
    handle = into if into is not None else HookHandle()
    for site in sites:
        def hook(module: nn.Module, args: Any, kwargs: Any, output: Any, site: Site = site) -> None:
            callback(site, tokens_last(site, read_output(site, output)))
        handle._register(site.module, hook)
    return handle


# ------------------------------------------------------------------------------------------------ steering
class Strengths(MutableMapping[str, float]):
    """λ per concept name. Setting a value updates a 0-d tensor in place: no re-attach, no recompile."""

    def __init__(self, initial: Mapping[str, float]) -> None:
        self._values: dict[str, float] = {}
        self.version = 0  # bumped on every change: hooks rebuild their cached plan when it moves
        self._tensors: dict[str, Tensor] = {}
        self._on_device: dict[tuple[str, torch.device], Tensor] = {}
        for name, value in initial.items():
            self._tensors[name] = torch.zeros((), dtype=torch.float32)
            self[name] = value

    def __getitem__(self, name: str) -> float:
        return self._values[name]

    def __setitem__(self, name: str, value: float) -> None:
        if name not in self._tensors:
            raise DsasError(f"no concept named {name!r} is attached; attached: {sorted(self._tensors)}.")
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise DsasError(f"strength for {name!r} must be a number, got {value!r}.") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise DsasError(f"strength for {name!r} must be finite, got {value}.")
        self._values[name] = value
        self.version += 1
        self._tensors[name].fill_(value)
        for (n, _), t in self._on_device.items():
            if n == name:
                t.fill_(value)  # a kernel launch on that device, no host sync

    def __delitem__(self, name: str) -> None:
        raise DsasError("strengths cannot be deleted; set them to 0 to switch a concept off.")

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def tensor(self, name: str, device: torch.device | None = None) -> Tensor:
        """The 0-d float32 tensor the hooks multiply by, kept on ``device`` (copied there once)."""
        if device is None or device.type == "cpu":
            return self._tensors[name]
        key = (name, device)
        if key not in self._on_device:
            self._on_device[key] = self._tensors[name].to(device)
        return self._on_device[key]

    def __repr__(self) -> str:
        return f"Strengths({self._values})"


@dataclass
class AlphaRecord:
    """α of one concept at one site for one forward call: ``alpha`` is (B, N) for tokens, (B, H, W) for feature
    maps."""

    concept: str
    site: str
    call: int  # index of the recorded forward call at this site since attach
    context: dict[str, Any]  # a copy of handle.context at the call (adapters put e.g. the denoising step here)
    column: Tensor = field(repr=False)  # α as the hook kept it, (..., 1): no tensor op on the hot path

    @property
    def alpha(self) -> Tensor:
        """α per position: the column without its last dimension."""
        return self.column.squeeze(-1)


@dataclass
class _Entry:
    name: str
    transform: Transform
    scaler: Scaler
    gated: bool


class _Step(NamedTuple):
    """One concept's update in the inference fast path (see :meth:`_SiteHook.make_plan`)."""

    name: str  # the concept's
    column: Callable[..., Tensor] | None  # α as a column, from activations of the plan's dtype; None: α ≡ 1
    delta: Callable[[Tensor], Tensor]
    lam: float
    lam_tensor: Tensor  # λ as the full path's 0-d tensor
    fused: FusedUpdate | OneCall | None  # the whole update in one kernel or one call of torch ops, or None
    per_input: Callable[[Tensor, Tensor | None], Tensor] | None  # α once per call for a per-input scaler, or None
    keeps_alpha: bool = True  # ``fused`` also keeps or reuses α (the kernel); False: it takes the common call only


@dataclass(slots=True)  # no instance __dict__: dynamo checks no method lookups in one while tracing
class _SiteHook:
    site: Site
    width: int
    entries: list[_Entry]
    handle: "SteeringHandle"
    recorded: int = 0  # α records made at this site
    check: Callable[[Any], None] | None = None  # raises unless the module's output is the stream this site expects
    by_device: dict[tuple[torch.device, torch.dtype], list[_Entry]] = field(default_factory=dict)
    # (strengths version, adaptive, fused) and (device, activations' dtype) the cached plan was made for
    plan_for: tuple[int, bool, bool] | None = None
    plan_on: tuple[int | None, torch.dtype] | None = None  # device index (as Tensor.get_device), dtype
    plan: list["_Step"] = field(default_factory=list)
    plan_records: bool = False  # the plan computes every concept's α here, so α recording can use it
    packed: traced.Packed | None = None  # the traced update's tensors, on the device the site was attached on
    # the common call bound to its stream (FusedUpdate.lane, OneCall.lane), for the knobs and α rows it was
    # opened with
    lane: Callable[[Any], Any] | None = None
    lane_for: tuple[int, bool, bool, bool, str] | None = None  # strengths version, adaptive, fused, record, reuse
    lane_rows: Tensor | None = None

    def on_device(self, device: torch.device, scaler_dtype: torch.dtype = torch.float32) -> list[_Entry]:
        """The entries with their tensors on ``device`` (copied once per device, shared when already there), the
        scalers in ``scaler_dtype`` (those that read the handle's context stay float32)."""
        key = (device, scaler_dtype)
        if key not in self.by_device:
            moved = []
            for e in self.entries if scaler_dtype == torch.float32 else self.on_device(device):
                t, s = e.transform, e.scaler
                if any(b.device != device for b in [*t.parameters(), *t.buffers()]):
                    t = copy.deepcopy(t).to(device)
                if scaler_dtype != torch.float32 and not s.reads_context:
                    s = copy.deepcopy(s).to(device, scaler_dtype)
                elif any(b.device != device for b in [*s.parameters(), *s.buffers()]):
                    s = copy.deepcopy(s).to(device)
                moved.append(_Entry(e.name, t, s, e.gated))
            self.by_device[key] = moved
        return self.by_device[key]

    def alpha(self, name: str, column: Callable[..., Tensor], x: Tensor) -> Tensor:
        """α of one concept at this site as a column (..., 1), from ``column(x, handle.context)``.
        ``handle.alpha_reuse``: ``"store"`` keeps this call's α, ``"load"`` reuses the stored one (same shape)."""
        handle = self.handle
        reuse = handle.alpha_reuse
        if reuse == "load":
            stored = handle.alpha_memory.get((name, self.site.name))
            if stored is not None and stored.shape[:-1] == x.shape[:-1]:
                return stored
        alpha = column(x, handle.context)
        if reuse == "store":
            handle.alpha_memory[(name, self.site.name)] = alpha
        return alpha

    def make_plan(self, like: Tensor, dtype: torch.dtype) -> None:
        """The eager fast path's steps for the current strengths and ``adaptive``, for activations of ``dtype`` on
        the device of ``like`` (a tensor there): one :class:`_Step` per concept that moves this site."""
        handle = self.handle
        device = like.device
        adaptive = handle.adaptive
        plan, moving = [], []
        for e, e32 in zip(self.on_device(device, dtype), self.on_device(device)):
            lam = handle.strengths[e.name]
            if lam == 0.0 or (adaptive and e.gated):
                continue
            column, per_input = e.scaler.column if adaptive else None, None
            if adaptive and e.scaler.per_input:  # one α per input: computed once per call, shared by the sites
                per_input = self.input_column(e.name, e.scaler)
                column = functools.partial(_expanded, per_input)
            plan.append(_Step(e.name, column, e.transform.delta, lam, handle.strengths.tensor(e.name, device), None,
                              per_input))
            moving.append(e32)
        # One concept: one kernel where the device allows, else its torch ops in one call (plain steering and α per
        # input: any float dtype; α per position: a float32 stream)
        if len(plan) == 1 and handle.fused:
            step, layout, launches = plan[0], self.site.layout, handle.launches
            transform, scaler = moving[0].transform, moving[0].scaler
            fused: FusedUpdate | OneCall | None
            if not adaptive:  # α ≡ 1: the kernel, else one addcmul with λ as the full path's 0-d tensor
                fused = fused_update(transform, None, step.lam, layout, device, launches)
                if fused is None:
                    fused = offset_update(transform, step.lam_tensor, 1.0, layout)
            elif step.per_input is not None:  # α per input: the kernel reads it, else one addcmul
                source = self.input_column(step.name, scaler, flat=True)
                fused = fused_update(transform, scaler, step.lam, layout, device, launches, source)
                if fused is None:
                    fused = offset_update(transform, step.per_input, step.lam, layout)
            else:
                fused = fused_update(transform, scaler, step.lam, layout, device, launches)
                if fused is None and dtype == torch.float32:  # the plan's own entries
                    fused = torch_update(transform, scaler, step.lam, layout)
            keeps = isinstance(fused, FusedUpdate) and fused.mode == PROBE
            plan[0] = step._replace(fused=fused, keeps_alpha=keeps)
        self.plan = plan
        self.plan_records = adaptive and len(plan) == len(self.entries)
        self.plan_for = (handle.strengths.version, adaptive, handle.fused)
        self.plan_on = (like.get_device(), dtype)

    def input_column(self, name: str, scaler: Scaler, flat: bool = False) -> Callable[[Any, Tensor | None], Tensor]:
        """``column(x, rows)``: α of a per-input scaler (one value per input, e.g. the prompt scaler) as a column
        (B, 1, ..., 1) that broadcasts over x's positions, paired by ``rows``. Computed once per call, from the first
        site that asks, for every site of the concept where all of them hold the same scaler (else once per site and
        call). ``flat``: ``column(B, rows)``, α as (B,) float32, contiguous (what the kernel reads)."""
        handle = self.handle
        memos = handle.input_alphas
        key = name if name in handle.shared_input_alpha else (name, self.site.name)
        source = scaler.context_key

        def column(x: Any, rows: Tensor | None) -> Tensor:  # x: the stream, or with ``flat`` its batch size
            context = handle.context
            given = context.get(source)
            memo = memos.get(key)
            batch = x if flat else x.shape[0]
            if memo is None or memo[0] is not given or memo[1] is not rows:
                alpha = scaler.input_alpha(context, batch)  # (B,) or (1,)
                if rows is not None:
                    alpha = alpha.expand(batch)[rows]
                memo = memos[key] = (given, rows, alpha, {})
            views = memo[3]  # one view per rank (or flat copy per batch), made once per call: each is a dispatch
            form = ("flat", batch) if flat else x.ndim
            if form not in views:
                views[form] = (memo[2].float().expand(batch).contiguous() if flat
                               else memo[2].view(-1, *([1] * (x.ndim - 1))))
            return views[form]

        return column

    def stream(self, output: Any) -> Tensor:
        """The steered stream h of a module's output, checked against the fitted width."""
        if self.check is not None:
            self.check(output)
        h = read_output(self.site, output)
        width = h.shape[1] if self.site.layout == "channels" else h.shape[-1]
        if width != self.width:
            raise DsasError(
                f"site {self.site.name!r} produced width {width} but the concept was fitted on width "
                f"{self.width}: the concept belongs to another model."
            )
        return h

    def read(self, output: Any) -> tuple[Tensor, Tensor]:
        """The checked stream h (:meth:`stream`) and its width-last view x."""
        h = self.stream(output)
        return h, tokens_last(self.site, h)

    def fast(self, output: Any) -> Any:
        """Inference without gradients or compile: the same update in fewer kernels (on a GPU each costs a launch).
        The plan is cached per strengths version, ``adaptive``, device and dtype; λ is folded into the
        ``addcmul``, which reads the activations in their own dtype, computes in float32 and writes the output's
        dtype. Half-precision activations get α from a copy of the scaler in their dtype (no float32 copy of the
        stream); float32 activations, and plain steering in any dtype, give exactly the full path's result. Where
        the plan's one step has a fused form (GPU, Triton; plain steering and the prompt scaler included), that one
        kernel runs instead: float32 arithmetic like the full path, rounded once to the stream's dtype. Stored α
        (``alpha_reuse``) works as on the full path; α recording too where the plan computes every concept's α at
        this site (else the full path runs)."""
        handle = self.handle
        record = handle.record_alpha
        current = self.plan_for == (handle.strengths.version, handle.adaptive, handle.fused)
        if current and not self.plan and not record:  # every concept here at λ = 0 or gated off: nothing to read
            return None
        h = self.stream(output)
        half = h.dtype in HALF
        dtype = h.dtype if half else torch.float32  # other dtypes computed in float32, as the full path does
        if not current or self.plan_on != (h.get_device(), dtype):
            self.make_plan(h, dtype)
        if record and not self.plan_records:
            return self.full(output)
        if not self.plan:
            return None
        step = self.plan[0]
        common = handle.alpha_reuse == "off" and not record  # α computed, kept nowhere
        if step.fused is not None and (common or step.keeps_alpha):
            try:
                if common:
                    new = step.fused(h, handle.alpha_rows)
                    if new is not None:
                        self.open_lane(step.fused, h)
                else:
                    new = self.fused_keeping_alpha(step, h)
                    if new is not None and record and handle.alpha_reuse == "off":  # α recorded: its own lane
                        self.open_lane(step.fused, h, self.recorder(step.name))
            except FusedFailed as err:  # e.g. a GPU the kernel compiler does not support: torch ops from now on
                warnings.warn(f"{err} Steering continues with torch ops (handle.fused = False).", stacklevel=3)
                handle.fused = False
                new = None
            if new is not None:
                return write_output(self.site, output, new)
        if common:  # the next calls like this one go straight to the ops below
            self.open_lane(None, h)
        return self.apply(output, h)

    def apply(self, output: Any, h: Tensor) -> Any:
        """The plan's torch ops on the checked stream h of ``output`` (see :meth:`fast`)."""
        handle = self.handle
        record = handle.record_alpha
        half = h.dtype in HALF
        x = tokens_last(self.site, h)
        x = x if half or x.dtype == torch.float32 else x.float()  # .float() of a float32 tensor is still a dispatch
        res = torch.empty_like(h) if half else None  # the steered stream in h's layout, written by the last step
        out = x
        rows = handle.alpha_rows
        last = len(self.plan) - 1
        kept: list[tuple[str, Tensor | None, bool]] = []
        for i, (name, column, delta, lam, lam_t, _, per_input, _) in enumerate(self.plan):
            d = delta(x)  # (..., d) or (d,), float32
            into = {"out": tokens_last(self.site, res)} if res is not None and i == last else {}
            if column is None:  # α ≡ 1: the full path's own op
                out = torch.addcmul(out, lam_t, d, **into)
                continue
            if per_input is not None and handle.alpha_reuse == "off":
                alpha = per_input(x, rows)  # (B, 1, ..., 1), paired
                if record:
                    alpha = alpha.expand(*x.shape[:-1], 1)
            else:
                alpha = self.alpha(name, column, x)  # (..., 1)
                if rows is not None:
                    alpha = alpha[rows]
            if record:
                kept.append((name, alpha if alpha.dtype == torch.float32 else alpha.float(), False))
            out = torch.addcmul(out, alpha, d, value=lam, **into)  # λ·α·Δ in one kernel, Python λ
        if kept:
            self.keep(kept, x.shape[:-1], x.device)
        if res is not None:
            return write_output(self.site, output, res)
        return self.written(output, h, out)

    def open_lane(self, fused: FusedUpdate | OneCall | None, h: Tensor,
                  keep: Callable[[Tensor], None] | None = None) -> None:
        """Keep a lane for the next calls with the knobs and α rows of this one (see :meth:`__call__`): ``fused``'s,
        or where None, :meth:`apply` on streams like h; with ``keep`` (a :meth:`recorder`), the kernel's
        α-recording lane."""
        handle = self.handle
        index = self.site.output_index
        if fused is None:
            self.lane = stream_lane(self.apply, h, index)
        elif keep is None:
            self.lane = fused.lane(h, handle.alpha_rows, index)
        else:
            assert isinstance(fused, FusedUpdate)  # the only update that records α in its call
            self.lane = fused.lane(h, handle.alpha_rows, index, keep)
        self.lane_for = (handle.strengths.version, handle.adaptive, handle.fused, handle.record_alpha,
                         handle.alpha_reuse)
        self.lane_rows = handle.alpha_rows

    def fused_keeping_alpha(self, step: _Step, h: Tensor) -> Tensor | None:
        """The steered stream from the step's one kernel where α is stored, reused or recorded, or None where it
        cannot run here (torch ops then do): α comes from the kernel, or from memory for an ``alpha_reuse="load"``
        call, and is kept for a ``"store"`` call and for α recording."""
        handle = self.handle
        reuse, rows, record = handle.alpha_reuse, handle.alpha_rows, handle.record_alpha
        if reuse != "off" and rows is not None:  # stored α is the unpaired one: the torch ops handle the pairing
            return None
        key = (step.name, self.site.name)
        positions = (h.shape[0], *h.shape[2:]) if self.site.layout == "channels" else h.shape[:-1]
        alpha = handle.alpha_memory.get(key) if reuse == "load" else None
        load = alpha is not None and alpha.shape[:-1] == positions
        if not load:
            alpha = h.new_empty((*positions, 1), dtype=torch.float32) if reuse == "store" or record else None
        new = step.fused(h, rows, alpha, load)
        if new is None:
            return None
        if reuse == "store":
            handle.alpha_memory[key] = alpha
        if record:
            self.keep([(step.name, alpha, False)], positions, h.device)
        return new

    def recorder(self, name: str) -> Callable[[Tensor], None]:
        """``keep(alpha)``: the :class:`AlphaRecord` of concept ``name`` for this call, α (..., 1) as given (what
        :meth:`keep` does for one concept)."""
        handle, site = self.handle, self.site.name

        def keep(alpha: Tensor) -> None:
            handle.records.append(AlphaRecord(name, site, self.recorded, dict(handle.context), alpha))
            self.recorded += 1

        return keep

    def written(self, output: Any, h: Tensor, out: Tensor) -> Any:
        """The module's output with the steered stream replaced by ``out`` (width last, float32)."""
        return traced.written(output, self.site.output_index, self.site.layout, h, out)

    def __call__(self, module: nn.Module, args: Any, kwargs: Any, output: Any) -> Any:
        handle = self.handle
        handle.hooks_ran = True  # read by the root model's check (a store only: nothing to guard under compile)
        if not handle.enabled:
            return None
        if _compiling():  # traced: from the packed form where it applies (few guards per call)
            packed = self.packed
            if (packed is not None and not handle.record_alpha and handle.alpha_reuse == "off"
                    and traced.takes(packed, output)):
                return traced.steer(packed, output, handle.adaptive, handle.alpha_rows)
            return self.full(output)
        if _grad_enabled():
            return self.full(output)
        lane = self.lane
        if lane is not None and handle.alpha_rows is self.lane_rows and self.lane_for == (
                handle.strengths.version, handle.adaptive, handle.fused, handle.record_alpha, handle.alpha_reuse):
            if self.check is not None:  # the knobs and rows of the lane's call: straight to the kernel
                self.check(output)
            new = lane(output)
            if new is not None:
                return new
            self.lane = None  # another stream, or no launch now: the fast path decides (and may open another)
        return self.fast(output)

    def full(self, output: Any) -> Any:
        """Every concept's update in float32 torch ops, α recorded where asked: the path gradients take, and
        ``torch.compile`` traces where :mod:`.traced` does not apply (α recorded or stored, a concept without
        its form, another device)."""
        handle = self.handle
        strengths = handle.strengths
        record = handle.record_alpha
        # Under torch.compile λ is read only as its 0-d tensor (λ = 0 then adds an exact zero): reading its Python
        # value would bake it into the graph, and every slider move would recompile.
        compiled = torch.compiler.is_compiling()
        steering = [compiled or strengths[e.name] != 0.0 for e in self.entries]
        if not (record or any(steering)):
            return None
        h, x = self.read(output)
        x32 = x.float()
        adaptive = handle.adaptive
        out: Tensor | None = None  # x32 plus every concept's update, accumulated in one buffer
        kept: list[tuple[str, Tensor | None, bool]] = []  # (concept, α or None, off) to record
        for e, steer in zip(self.on_device(x.device), steering):
            if not (steer or record):
                continue
            off = adaptive and e.gated  # α ≡ 0
            alpha = self.alpha(e.name, e.scaler.column, x32) if adaptive and not e.gated else None  # (..., 1)
            if alpha is not None and handle.alpha_rows is not None:
                alpha = alpha[handle.alpha_rows]  # e.g. the unconditional half of a CFG batch reuses its pair's α
            if record:
                kept.append((e.name, alpha, off))
            if steer and not off:
                delta = e.transform.delta(x32)  # (..., d) or (d,)
                lam = strengths.tensor(e.name, x.device)
                coef = lam if alpha is None else lam * alpha  # () or (..., 1)
                if out is None:
                    out = torch.addcmul(x32, coef, delta)
                elif out.requires_grad:
                    out = torch.addcmul(out, coef, delta)
                else:
                    out.addcmul_(coef, delta)
        if kept:
            self.keep_eagerly(kept, x32.shape[:-1], x.device)
        if out is None:
            return None
        return self.written(output, h, out)

    def keep(self, kept: list[tuple[str, Tensor | None, bool]], shape: torch.Size, device: torch.device) -> None:
        """Append one :class:`AlphaRecord` per (concept, α (..., 1), off) of this call; α None is the constant 0 (off)
        or 1. Eagerly without gradients the α tensors are kept as they are: each tensor op here (a view, a detach)
        costs a dispatch, ≈ 8 µs in place on the CPU."""
        handle = self.handle
        for name, alpha, off in kept:
            if alpha is None:
                alpha = (torch.zeros if off else torch.ones)((*shape, 1), device=device)
            elif alpha.requires_grad:
                alpha = alpha.detach()
            handle.records.append(AlphaRecord(name, self.site.name, self.recorded, dict(handle.context), alpha))
        self.recorded += 1

    # Python bookkeeping: under torch.compile it runs eagerly (a graph break per site); eager calls skip the wrapper
    keep_eagerly = torch.compiler.disable(keep)


class SteeringHandle(HookHandle):
    """Steering attached to a model. Knobs: ``strengths[name]``, ``adaptive``, ``record_alpha``, ``enabled``,
    ``fused``.

    ``adaptive=False`` forces α ≡ 1 at every fitted site (plain steering, gated sites included).
    ``fused=False`` keeps inference on the general torch ops: no one-kernel update, no one-call form (:mod:`.fused`).
    ``context`` is copied into every :class:`AlphaRecord` (adapters store the denoising step or decode position).
    ``alpha_rows`` (B,), when set, makes sample i use the α computed for sample ``alpha_rows[i]``.
    ``alpha_reuse``: ``"store"`` keeps each site's α of a call, ``"load"`` makes the next call reuse it (e.g. the
    separate unconditional call of true classifier-free guidance reuses the conditional call's α); ``"off"``.
    """

    def __init__(self, concepts: Sequence[Concept], strengths: Mapping[str, float], adaptive: bool, record_alpha: bool) -> None:
        super().__init__()
        self.concepts: dict[str, Concept] = {c.name: c for c in concepts}
        self.strengths = Strengths(strengths)
        self.adaptive = adaptive
        self.record_alpha = record_alpha
        self.enabled = True
        self.fused = True  # one Triton kernel per site where possible (GPU, Triton installed); False: torch ops
        self.launches = Launches()  # the kernels' compiled specialisations, launched directly (GPU)
        self.context: dict[str, Any] = {}
        self.alpha_rows: Tensor | None = None
        self.alpha_reuse: Literal["off", "store", "load"] = "off"
        self.alpha_memory: dict[tuple[str, str], Tensor] = {}  # (concept, site) -> α of the last "store" call
        # per-input α (the prompt scaler) of the current call: key -> (context input, alpha_rows, α (B,), its views)
        self.input_alphas: dict[object, tuple[Tensor | None, Tensor | None, Tensor, dict[object, Tensor]]] = {}
        self.shared_input_alpha: set[str] = set()  # concepts whose sites all hold one per-input scaler
        self.records: list[AlphaRecord] = []
        self.hooks_ran = False  # set by every site hook; checked and cleared after each call of the root model

    def check_hooks_ran(self, output: Any = None) -> None:
        """After a call of the root model: raise unless a site hook ran during it."""
        ran, self.hooks_ran = self.hooks_ran, False
        if not ran:
            raise DsasError(
                "the steering hooks did not run during this call: the model ran a torch.compile graph traced "
                "without them. Compiled graphs are shared by every module of a class and do not check empty hook "
                "lists (torch._dynamo.config.skip_nnmodule_hook_guards), so a graph compiled for an unsteered copy "
                "of this model, or for this model before steering was attached, skips the hooks. Call "
                "torch.compiler.reset() and run again; to keep steered and unsteered copies compiled side by side, "
                "set torch._dynamo.config.skip_nnmodule_hook_guards = False before compiling."
            )

    def alpha_records(self, concept: str | None = None, site: str | None = None) -> list[AlphaRecord]:
        """Recorded α, optionally filtered by concept and site, in call order."""
        return [r for r in self.records if (concept is None or r.concept == concept) and (site is None or r.site == site)]

    def clear_records(self) -> None:
        """Forget recorded α (e.g. before the next generation)."""
        self.records.clear()

    def __enter__(self) -> "SteeringHandle":
        return self


def attach(
    sites: Sequence[Site],
    concepts: Mapping[Concept, float] | Sequence[tuple[Concept, float]],
    adaptive: bool = True,
    record_alpha: bool = False,
    handle_class: type[SteeringHandle] = SteeringHandle,
    root: nn.Module | None = None,
    checks: Mapping[str, Callable[[Any], None]] | None = None,
) -> SteeringHandle:
    """Hook every site any concept steers; returns the handle (also a context manager).

    ``sites`` must include every site of every concept (extra sites are ignored). Raises if a site already
    carries dsas steering, if two concepts share a name, or if a concept names a site not given. Adapters pass
    their own ``handle_class`` (a subclass adding e.g. α maps). ``root``, the model the sites belong to: after
    each of its calls, a check that the site hooks ran (a stale compiled graph would skip them silently).
    ``checks[site name](output)``, run before a site's output is read, raises unless it is what the site expects.
    """
    pairs = list(concepts.items()) if isinstance(concepts, Mapping) else list(concepts)
    if not pairs:
        raise DsasError("no concepts given: pass {concept: strength, ...}.")
    names = [c.name for c, _ in pairs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DsasError(f"two concepts share the name {dup[0]!r}: concept names must be unique; rename one "
                        "(config.name; --name when fitting in the CLI).")
    by_name = {s.name: s for s in sites}
    if len(by_name) != len(sites):
        raise DsasError("the same site name was given twice.")
    for concept, _ in pairs:
        unknown = [s for s in concept.config.sites if s not in by_name]
        if unknown:
            raise DsasError(f"concept {concept.name!r} steers sites the model does not offer: {unknown[:3]}; "
                            "fit the concept on this model.")
    handle = handle_class([c for c, _ in pairs], {c.name: lam for c, lam in pairs}, adaptive, record_alpha)
    handle.shared_input_alpha = {c.name for c, _ in pairs if _one_input_scaler(c)}
    used = [s for s in sites if any(s.name in c.sites for c, _ in pairs)]
    for site in used:
        for hook in site.module._forward_hooks.values():
            if isinstance(hook, _SiteHook) and hook.site.output_index == site.output_index and hook.handle.attached:
                raise DsasError(
                    f"site {site.name!r} is already steered by another handle: remove it first (handle.remove()), "
                    "or pass every concept in one steer(...) call."
                )
    try:
        packing: list[tuple[traced.Parts, traced.Stream, Any]] = []  # per hook of ``packed_hooks``
        packed_hooks: list[_SiteHook] = []
        for site in used:
            entries = [
                _Entry(c.name, c.sites[site.name].transform, c.sites[site.name].scaler, c.sites[site.name].scaler.gated)
                for c, _ in pairs if site.name in c.sites
            ]
            widths = {c.name: c.config.site_widths[site.name] for c, _ in pairs if site.name in c.sites}
            if len(set(widths.values())) > 1:
                raise DsasError(f"concepts disagree on the width of site {site.name!r}: {widths}; one of them "
                                "was fitted on another model.")
            width = next(iter(widths.values()))
            hook = _SiteHook(site, width, entries, handle, check=(checks or {}).get(site.name))
            param = next(site.module.parameters(), None)
            # copies made now, so a compiled graph finds them instead of recompiling; an offloaded module's weights
            # wait on the meta device until its forward, so its copies are made on the first call's device instead
            if param is not None and not param.is_meta:
                lams = [handle.strengths.tensor(e.name, param.device) for e in entries]
                # the fast path's plan, and with it the entries' copies on the device (float32 and the plan's dtype)
                hook.make_plan(param, param.dtype if param.dtype in HALF else torch.float32)
                stream = (site.output_index, site.layout, width, param.device)
                packing.append(([(e.transform, e.scaler, e.gated, lam)
                                 for e, lam in zip(hook.on_device(param.device), lams)], stream, hook.check))
                packed_hooks.append(hook)
            handle._register(site.module, hook)
        for hook, packed in zip(packed_hooks, traced.pack(packing)):  # one tensor for the sites of one width
            hook.packed = packed
        if root is not None:
            # traced under torch.compile (no graph break); a graph run without the site hooks still fails it
            handle.after_calls(root, handle.check_hooks_ran)
    except BaseException:
        handle.remove()
        raise
    return handle


def _expanded(per_input: Callable[[Tensor, Tensor | None], Tensor], x: Tensor, context: Any = None) -> Tensor:
    """A per-input α column (:meth:`_SiteHook.input_column`, unpaired) expanded over x's positions: (..., 1)."""
    return per_input(x, None).expand(*x.shape[:-1], 1)


def _one_input_scaler(concept: Concept) -> bool:
    """Whether every site of ``concept`` holds the same per-input scaler (same kind and tensors), so that one α
    per call serves them all."""
    scalers = [steer.scaler for steer in concept.sites.values()]
    if not scalers or not scalers[0].per_input:
        return False
    first = scalers[0].tensors()
    return all(type(s) is type(scalers[0]) and s.tensors().keys() == first.keys()
               and all(torch.equal(t, first[k]) for k, t in s.tensors().items()) for s in scalers[1:])
