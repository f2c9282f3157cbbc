"""On a CUDA device with Triton: the compiled one-kernel update (not the interpreter) against a float64 reference
in every layout, dtype, transform and mode; its direct launches against its entry point; and the hook's lanes
(DSAS, α recording, plain steering, the prompt scaler) against the torch ops, call after call."""

import pytest
import torch

from dsas_core import fused
from dsas_core.hooks import Site, attach
from fused_helpers import C, Source, concept, one_site_prompt_concept, probe, reference, transforms

pytestmark = pytest.mark.gpu
DEV = torch.device("cuda")
CASES = [("channels", (4, C, 5, 3), torch.contiguous_format), ("channels", (4, C, 5, 3), torch.channels_last),
         ("tokens", (4, 7, C), torch.contiguous_format), ("tokens", (9, C), torch.contiguous_format)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def needs_the_kernel():
    if not fused.available(DEV):
        pytest.skip("Triton cannot run the kernel on this CUDA device")


def tolerance(dtype: torch.dtype, ref: torch.Tensor) -> torch.Tensor:
    """One rounding to the stream's dtype plus a few float32 roundings, relative to the reference."""
    return max(torch.finfo(dtype).eps, 8 * torch.finfo(torch.float32).eps) * ref.abs().clamp_min(1.0)


@pytest.mark.parametrize("layout,shape,memory", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_compiled_kernel_matches_the_reference_and_its_direct_launch_its_entry_point(layout, shape, memory,
                                                                                           dtype):
    g = torch.Generator().manual_seed(0)
    scaler = probe(g)
    for name, transform in transforms(g).items():
        for rows in [None, torch.tensor([2, 3, 2, 3])] if len(shape) > 2 else [None]:
            h = torch.randn(*shape, generator=g).to(dtype).contiguous(memory_format=memory)
            update = fused.fused_update(transform, scaler, 0.7, layout, DEV)
            hd, rd = h.to(DEV).contiguous(memory_format=memory), None if rows is None else rows.to(DEV)
            first, second = update(hd, rd), update(hd, rd)  # Triton's entry point, then the compiled launcher
            ref = reference(h, layout, scaler, transform, 0.7, rows)
            assert first.dtype == dtype and first.stride() == hd.stride() and first.device == hd.device
            assert ((first.cpu().double() - ref).abs() <= tolerance(dtype, ref)).all(), (name, rows)
            assert torch.equal(first, second), (name, rows)
            assert update.launch.launches.direct  # the specialisation kept for direct launches


@pytest.mark.parametrize("layout,shape,memory", CASES)
def test_alpha_written_by_one_call_steers_the_next_one_on_the_gpu(layout, shape, memory):
    g = torch.Generator().manual_seed(4)
    scaler, shift = probe(g), transforms(g)["mean_shift"]
    update = fused.fused_update(shift, scaler, 0.7, layout, DEV)
    h = torch.randn(*shape, generator=g).half().contiguous(memory_format=memory)
    hd = h.to(DEV).contiguous(memory_format=memory)
    x = (h.movedim(1, -1) if layout == "channels" else h).double()  # width last
    alpha = torch.full((*x.shape[:-1], 1), -1.0, device=DEV)
    out = update(hd, None, alpha)
    expected = torch.sigmoid(x @ scaler.weight.double() + scaler.bias.double())[..., None]
    assert (alpha.cpu().double() - expected).abs().max() < 1e-6
    assert torch.equal(out, update(hd, None))
    assert torch.equal(update(hd, None, alpha, True), out)  # read back: the same update


@pytest.mark.parametrize("layout,shape,memory", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_plain_steering_and_alpha_per_sample_match_the_reference_on_the_gpu(layout, shape, memory, dtype):
    from dsas_core import PromptScaler

    g = torch.Generator().manual_seed(5)
    per_sample = torch.rand(shape[0], generator=g)
    prompt = PromptScaler(weight=torch.randn(6, generator=g), bias=torch.tensor(0.1))
    on_device = per_sample.to(DEV)
    for name, transform in transforms(g).items():
        h = torch.randn(*shape, generator=g).to(dtype).contiguous(memory_format=memory)
        hd = h.to(DEV).contiguous(memory_format=memory)
        plain = fused.fused_update(transform, None, 0.7, layout, DEV)
        each = fused.fused_update(transform, prompt, 0.7, layout, DEV, source=lambda batch, rows: on_device)
        for out, alpha in [(plain(hd, None), None), (each(hd, None), per_sample)]:
            ref = reference(h, layout, None, transform, 0.7, None, alpha)
            assert out.dtype == dtype and out.stride() == hd.stride()
            assert ((out.cpu().double() - ref).abs() <= tolerance(dtype, ref)).all(), (name, alpha is None)


@pytest.mark.parametrize("layout,shape", [("channels", (4, C, 4, 4)), ("tokens", (4, 6, C))])
@pytest.mark.parametrize("config", ["dsas", "record", "plain", "prompt"])
def test_the_hooks_lanes_steer_like_the_torch_ops_call_after_call(layout, shape, config):
    g = torch.Generator().manual_seed(6)
    prompt = config == "prompt"
    c = (one_site_prompt_concept("itic", g) if prompt else concept("itic")).to(DEV)
    model = Source(torch.randn(*shape, generator=g).half().to(DEV))
    pooled = torch.randn(4, 6, generator=g).to(DEV)  # (B, D_text): the prompt scaler's input
    outs, records = {}, {}
    for kernel in (True, False):
        with attach([Site("s", model, None, layout)], {c: 1.5}, adaptive=config != "plain",
                    record_alpha=config == "record") as handle, torch.no_grad():
            handle.fused = kernel  # False: the torch ops
            for rows in (None, torch.tensor([2, 3, 2, 3], device=DEV)):
                handle.alpha_rows = rows
                handle.context = {"prompt_pooled": pooled}
                outs[kernel, rows is None] = [model() for _ in range(3)]  # the first call opens the lane
            hook = next(iter(model._forward_hooks.values()))
            assert (hook.plan[0].fused is not None) == kernel
            assert (hook.lane is not None) == kernel  # later calls went straight to the kernel
            records[kernel] = [r.alpha.float() for r in handle.records]
    for unpaired in (True, False):
        kernel, ops = outs[True, unpaired], outs[False, unpaired]
        assert all(torch.equal(out, kernel[0]) for out in kernel[1:])  # the lane launches what the first call did
        assert kernel[0].dtype == torch.float16 and not torch.equal(kernel[0], model.t)
        assert torch.allclose(kernel[0].float(), ops[0].float(), atol=4e-3, rtol=2e-3)
    if config == "record":
        assert len(records[True]) == len(records[False]) == 6
        assert all(torch.allclose(a, b, atol=2e-3) for a, b in zip(records[True], records[False]))
