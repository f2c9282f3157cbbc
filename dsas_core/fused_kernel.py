"""The fused DSAS update as one Triton kernel (imported only where Triton is installed; see :mod:`.fused`).

Per position p of a stream with C channels, for one concept with a logistic scaler and an affine update:

    out[p, :] = x[p, :] + λ · sigmoid(w · x[r(p), :] + b) · (a ⊙ x[p, :] + d)

read once for the dot product and once for the update, computed in float32, written in the stream's dtype. r(p)
maps a sample to the sample whose α it uses (classifier-free guidance pairs); it is the identity without rows.
ALPHA = 1 also writes α (float32, one per position) to ``alpha``; ALPHA = 2 reads α from there instead of computing
it (a call that reuses an earlier call's α). Two modes read no probe: ALPHA = 3 steers with α ≡ 1 (plain
steering), ALPHA = 4 with one α per sample read from ``alpha`` (float32, one per sample, already paired: the
prompt scaler).
"""

from __future__ import annotations

import triton
import triton.language as tl


def dsas_update(x_ptr, out_ptr, w_ptr, b_ptr, a_ptr, d_ptr, rows_ptr, alpha_ptr, lam, n_positions, per_sample,
                channels, stride_sample, stride_position, stride_channel, HAS_SCALE: tl.constexpr,
                HAS_ROWS: tl.constexpr, ALPHA: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """One program steers BLOCK_P positions across every channel (see the module docstring)."""
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)  # (BLOCK_P,) positions: sample p // per_sample
    inside = p < n_positions
    sample = p // per_sample
    place = (p % per_sample) * stride_position
    base = sample * stride_sample + place  # (BLOCK_P,) where each position's channel 0 lies
    source = base
    if HAS_ROWS:
        source = tl.load(rows_ptr + sample, mask=inside, other=0) * stride_sample + place
    if ALPHA == 2:
        alpha = tl.load(alpha_ptr + p, mask=inside, other=0.0)
    elif ALPHA == 3:
        alpha = tl.full([BLOCK_P], 1.0, tl.float32)
    elif ALPHA == 4:
        alpha = tl.load(alpha_ptr + sample, mask=inside, other=0.0)
    else:
        z = tl.zeros([BLOCK_P], dtype=tl.float32)
        for c0 in range(0, channels, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            mask = inside[:, None] & (c < channels)[None, :]
            x = tl.load(x_ptr + source[:, None] + c[None, :] * stride_channel, mask=mask, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + c, mask=c < channels, other=0.0)
            z += tl.sum(x * w[None, :], axis=1)
        alpha = tl.sigmoid(z + tl.load(b_ptr))  # (BLOCK_P,)
        if ALPHA == 1:
            tl.store(alpha_ptr + p, alpha, mask=inside)
    coef = lam * alpha  # (BLOCK_P,) λ·α
    for c0 in range(0, channels, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        mask = inside[:, None] & (c < channels)[None, :]
        where = base[:, None] + c[None, :] * stride_channel
        x = tl.load(x_ptr + where, mask=mask, other=0.0).to(tl.float32)
        delta = tl.load(d_ptr + c, mask=c < channels, other=0.0)[None, :]
        if HAS_SCALE:
            delta += tl.load(a_ptr + c, mask=c < channels, other=0.0)[None, :] * x
        tl.store(out_ptr + where, (x + coef[:, None] * delta).to(out_ptr.dtype.element_ty), mask=mask)


def compiled(interpret: bool) -> object:
    """The kernel for the GPU, or run by Triton's interpreter on CPU tensors (tests)."""
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(dsas_update)
    return triton.jit(dsas_update)

