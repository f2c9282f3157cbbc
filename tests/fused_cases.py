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


def test_plain_steering_and_two_concepts_keep_the_torch_ops():
    model = Source(torch.randn(2, 6, C).half())
    a, b = concept("mean_shift"), concept("itic")
    for concepts, adaptive in [({a: 1.0}, False), ({a: 1.0, b: 0.5}, True)]:
        with attach([Site("s", model, None, "tokens")], concepts, adaptive=adaptive), torch.no_grad():
            model()
            hook = next(iter(model._forward_hooks.values()))
            assert len(hook.plan) == len(concepts) and all(step.fused is None for step in hook.plan)
