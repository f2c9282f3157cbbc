"""The fused update run by Triton's interpreter on CPU tensors. Triton must see TRITON_INTERPRET=1 before it is
first imported, so ``tests/test_core_fused.py`` runs this file in a fresh process; alone:
``TRITON_INTERPRET=1 python -m pytest tests/fused_cases.py``."""

import pytest
import torch

from dsas_core import fused
from dsas_core.hooks import Site, attach
from dsas_core.transforms import MeanShift
from fused_helpers import C, Source, concept, probe, reference, transforms

pytest.importorskip("triton")
if not fused.interpreting():
    pytest.skip("needs TRITON_INTERPRET=1 before Triton is imported", allow_module_level=True)

CASES = [("channels", (4, C, 5, 3), torch.contiguous_format), ("channels", (4, C, 5, 3), torch.channels_last),
         ("tokens", (4, 7, C), torch.contiguous_format), ("tokens", (9, C), torch.contiguous_format)]


@pytest.mark.parametrize("layout,shape,memory", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_the_fused_kernel_computes_the_update_in_float32_and_rounds_once(layout, shape, memory, dtype):
    g = torch.Generator().manual_seed(0)
    scaler = probe(g)
    for name, transform in transforms(g).items():
        for rows in [None, torch.tensor([2, 3, 2, 3])] if len(shape) > 2 else [None]:
            h = torch.randn(*shape, generator=g).to(dtype).contiguous(memory_format=memory)
            out = fused.fused_update(transform, scaler, 0.7, layout, torch.device("cpu"))(h, rows)
            ref = reference(h, layout, scaler, transform, 0.7, rows)
            assert out.dtype == dtype and out.shape == h.shape and out.stride() == h.stride()
            # float32 arithmetic (a few float32 roundings), then one rounding to the stream's dtype
            tol = max(torch.finfo(dtype).eps, 8 * torch.finfo(torch.float32).eps) * ref.abs().clamp_min(1.0)
            assert ((out.double() - ref).abs() <= tol).all(), (name, rows)


@pytest.mark.parametrize("layout,shape,memory", CASES)
def test_the_kernel_writes_alpha_where_asked_and_steers_with_a_given_alpha(layout, shape, memory):
    g = torch.Generator().manual_seed(4)
    scaler, shift = probe(g), MeanShift(shift=torch.randn(C, generator=g))
    update = fused.fused_update(shift, scaler, 0.7, layout, torch.device("cpu"))
    h = torch.randn(*shape, generator=g).half().contiguous(memory_format=memory)
    x = (h.movedim(1, -1) if layout == "channels" else h).double()  # width last
    for rows in [None, torch.tensor([2, 3, 2, 3])] if len(shape) > 2 else [None]:
        alpha = torch.full((*x.shape[:-1], 1), -1.0)
        out = update(h, rows, alpha)
        expected = torch.sigmoid(x @ scaler.weight.double() + scaler.bias.double())[..., None]
        expected = expected if rows is None else expected[rows]
        assert (alpha.double() - expected).abs().max() < 1e-6
        assert torch.equal(out, update(h, rows))  # the same update as without writing α
    given = torch.rand(*x.shape[:-1], 1, generator=g)  # α from an earlier call
    out = update(h, None, given, True)
    y = x + 0.7 * given.double() * shift.shift.double()
    ref = y.movedim(-1, 1) if layout == "channels" else y
    assert ((out.double() - ref).abs() <= torch.finfo(torch.float16).eps * ref.abs().clamp_min(1.0)).all()
    assert update(h, torch.arange(shape[0]), given, True) is None  # stored α with CFG rows: left to torch ops
    assert update(h, None, given.half(), True) is None  # α stored by the half-precision torch ops: left to them too


def test_each_alignment_and_shape_of_the_stream_is_its_own_kernel_specialisation(monkeypatch):
    keys = []
    monkeypatch.setattr(fused._Launcher, "__call__", lambda self, key, *rest: keys.append(key))
    g = torch.Generator().manual_seed(5)
    update = fused.fused_update(MeanShift(shift=torch.ones(C)), probe(g), 1.0, "tokens", torch.device("cpu"))
    flat = torch.randn(4 * 6 * C + 8, generator=g).half()
    for h in (flat[:4 * 6 * C].view(4, 6, C), flat[8:8 + 4 * 6 * C].view(4, 6, C), flat[1:1 + 4 * 6 * C].view(4, 6, C),
              flat[:3 * 6 * C].view(3, 6, C)):
        update(h, None)
    assert keys[0] == keys[1] and len({keys[0], keys[2], keys[3]}) == 3  # 16-byte aligned twice, 2-byte, fewer rows


@pytest.mark.parametrize("layout,shape", [("channels", (2, C, 4, 4)), ("tokens", (2, 6, C))])
def test_stored_alpha_and_records_run_in_the_kernel_and_match_torch_ops(layout, shape, monkeypatch):
    from dsas_core.hooks import _SiteHook

    base = torch.randn(*shape, generator=torch.Generator().manual_seed(2)).half()
    model = Source(base)
    full_calls = []
    monkeypatch.setattr(_SiteHook, "full", lambda self, output: full_calls.append(1))
    results = {}
    for fused_on in (True, False):
        with attach([Site("s", model, None, layout)], {concept(): 1.5}, record_alpha=True) as handle, torch.no_grad():
            handle.fused = fused_on
            outs = []
            for reuse, t in (("store", base), ("load", base.flip(0))):
                handle.alpha_reuse = reuse
                model.t = t
                outs.append(model())
            assert (next(iter(model._forward_hooks.values())).plan[0].fused is not None) == fused_on
            results[fused_on] = outs, [r.alpha for r in handle.records]
    assert full_calls == []
    (kernel, kernel_alpha), (ops, ops_alpha) = results[True], results[False]
    assert all(torch.allclose(a.float(), b.float(), atol=4e-3, rtol=2e-3) for a, b in zip(kernel, ops))
    assert all(a.dtype == torch.float32 and torch.allclose(a, b, atol=2e-3) for a, b in zip(kernel_alpha, ops_alpha))
    assert torch.equal(kernel_alpha[1], kernel_alpha[0])  # the "load" call steered with the stored α


@pytest.mark.parametrize("layout,shape", [("tokens", (2, 3, 600)), ("channels", (1, 8, 64, 64))])
def test_wide_and_large_streams_take_the_other_block_shapes(layout, shape):
    g = torch.Generator().manual_seed(3)
    width = shape[1] if layout == "channels" else shape[-1]
    scaler, shift = probe(g, width), MeanShift(shift=torch.randn(width, generator=g))
    h = torch.randn(*shape, generator=g)
    out = fused.fused_update(shift, scaler, 1.2, layout, torch.device("cpu"))(h, None)
    ref = reference(h, layout, scaler, shift, 1.2, None)
    assert ((out.double() - ref).abs() <= 8 * torch.finfo(torch.float32).eps * ref.abs().clamp_min(1.0)).all()


@pytest.mark.parametrize("layout,shape", [("channels", (2, C, 4, 4)), ("tokens", (2, 6, C))])
def test_the_hook_takes_the_fused_update_for_one_adaptive_concept_and_matches_torch_ops(layout, shape):
    model = Source(torch.randn(*shape, generator=torch.Generator().manual_seed(2)).half())
    c = concept()
    outs = {}
    for fused_on in (True, False):
        with attach([Site("s", model, None, layout)], {c: 1.5}) as handle, torch.no_grad():
            handle.fused = fused_on
            outs[fused_on] = model()
            hook = next(iter(model._forward_hooks.values()))
            assert (hook.plan[0].fused is not None) == fused_on
    assert not torch.equal(outs[True], model.t)
    # two half-precision paths, α in float32 (fused) or in half (torch ops), one rounding of the result each
    assert torch.allclose(outs[True].float(), outs[False].float(), atol=4e-3, rtol=2e-3)


@pytest.mark.parametrize("layout,shape,memory", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_plain_steering_and_alpha_per_sample_run_in_the_kernel_without_a_probe(layout, shape, memory, dtype):
    from dsas_core import PromptScaler

    g = torch.Generator().manual_seed(5)
    per_sample = torch.rand(shape[0], generator=g)
    prompt = PromptScaler(weight=torch.randn(6, generator=g), bias=torch.tensor(0.1))  # its α: the source's
    asked = []

    def source(batch, rows):  # the hook's: α per sample, paired by rows
        asked.append((batch, rows))
        return per_sample if rows is None else per_sample[rows]

    rows = torch.arange(shape[0]).flip(0)
    for name, transform in transforms(g).items():
        h = torch.randn(*shape, generator=g).to(dtype).contiguous(memory_format=memory)
        plain = fused.fused_update(transform, None, 0.7, layout, torch.device("cpu"))
        each = fused.fused_update(transform, prompt, 0.7, layout, torch.device("cpu"), source=source)
        assert (plain.mode, each.mode) == (fused.CONSTANT, fused.PER_SAMPLE)
        for out, alpha in [(plain(h, rows), None), (each(h, rows), per_sample[rows])]:
            ref = reference(h, layout, None, transform, 0.7, None, alpha)
            assert out.dtype == dtype and out.shape == h.shape and out.stride() == h.stride()
            tol = max(torch.finfo(dtype).eps, 8 * torch.finfo(torch.float32).eps) * ref.abs().clamp_min(1.0)
            assert ((out.double() - ref).abs() <= tol).all(), (name, alpha is None)
            assert not torch.equal(out, h)
    assert asked == [(shape[0], rows)] * 3


@pytest.mark.parametrize("kind", ["prompt scaler", "plain"])
@pytest.mark.parametrize("layout,shape", [("tokens", (4, 6, C)), ("channels", (4, C, 3, 5))])
def test_the_hook_runs_plain_and_prompt_scaled_steering_in_the_kernel_with_the_torch_ops_numbers(
        layout, shape, kind):
    from fused_helpers import one_site_prompt_concept

    g = torch.Generator().manual_seed(6)
    prompt = kind == "prompt scaler"
    c = one_site_prompt_concept("itic", g) if prompt else concept("itic")
    model = Source(torch.randn(*shape, generator=g).half())
    pooled = torch.randn(4, 6, generator=g)  # (B, D_text)
    outs, modes = {}, {}
    for kernel in (True, False):
        with attach([Site("s", model, None, layout)], {c: 1.5}, adaptive=prompt) as handle, torch.no_grad():
            handle.fused = kernel  # False: the torch ops
            for rows in (None, torch.tensor([2, 3, 2, 3])):
                handle.alpha_rows = rows
                for flip in (False, True):
                    handle.context = {"prompt_pooled": pooled.flip(0) if flip else pooled}
                    outs[kernel, rows is None, flip] = model()
            step = next(iter(model._forward_hooks.values())).plan[0]
            modes[kernel] = getattr(step.fused, "mode", None), step.keeps_alpha
    assert modes == {True: (fused.PER_SAMPLE if prompt else fused.CONSTANT, False), False: (None, True)}
    for key in [(unpaired, flip) for unpaired in (True, False) for flip in (False, True)]:
        out = outs[(True, *key)]
        assert out.dtype == torch.float16 and out.stride() == model.t.stride() and not torch.equal(out, model.t)
        # float32 arithmetic rounded once (kernel) against one mixed-precision addcmul (torch ops)
        assert torch.allclose(out.float(), outs[(False, *key)].float(), atol=2e-3, rtol=1e-3)
    # α follows the prompts and their pairing; plain steering's α ≡ 1 follows neither
    assert torch.equal(outs[True, True, False], outs[True, True, True]) is not prompt
    assert torch.equal(outs[True, True, False], outs[True, False, False]) is not prompt


def test_two_concepts_at_a_site_keep_the_torch_ops():
    model = Source(torch.randn(2, 6, C).half())
    a, b = concept("mean_shift"), concept("itic")
    with attach([Site("s", model, None, "tokens")], {a: 1.0, b: 0.5}), torch.no_grad():
        model()
        hook = next(iter(model._forward_hooks.values()))
        assert [s.fused for s in hook.plan] == [None, None]


def test_every_plan_of_a_handle_keeps_its_compiled_kernels_in_the_handles_store(monkeypatch):
    import dsas_core.hooks as hooks

    stores, real = [], hooks.fused_update
    monkeypatch.setattr(hooks, "fused_update", lambda *args: stores.append(args[-1]) or real(*args))
    model = Source(torch.randn(2, 6, C).half())
    with attach([Site("s", model, None, "tokens")], {concept(): 1.0}) as handle, torch.no_grad():
        model()
        handle.strengths[next(iter(handle.strengths))] = 0.5  # a slider move: a new plan, the same store
        model()
    assert len(stores) == 2 and all(s is handle.launches for s in stores)
