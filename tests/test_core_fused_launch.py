"""The compiled kernel's direct launch (dsas_core.fused._c_launch): where Triton's launcher object only passes its
arguments on to its C function, launches call that function with exactly what the object would have passed."""

from types import SimpleNamespace

import pytest
import torch

from dsas_core import fused
from dsas_core.transforms import MeanShift
from fused_helpers import C, probe

pytest.importorskip("triton")


class Flat:
    """A launcher object shaped like Triton 3.6's: scratch memory (none), then its own arguments, then ours."""

    global_scratch_size = profile_scratch_size = 0

    def __init__(self, calls: list) -> None:
        self.launch = lambda *args: calls.append(args)

    def __call__(self, gridX, gridY, gridZ, stream, function, *args):
        def scratch(size):
            return None if size == 0 else ("scratch", gridX * gridY * gridZ * size)

        self.launch(gridX, gridY, gridZ, stream, function, False, True, scratch(self.global_scratch_size),
                    scratch(self.profile_scratch_size), *args)


class Packed(Flat):
    """Shaped like Triton 3.8's: the kernel's arguments passed on as one tuple, after the launcher's own."""

    def __call__(self, gridX, gridY, gridZ, stream, function, metadata, launch_metadata, enter, leave, *args):
        self.launch(gridX, gridY, gridZ, stream, function, False, False, metadata, launch_metadata, enter, leave,
                    None, None, ["annotations"], "signature", args)


class PerGrid(Flat):
    """Passes a value computed from the grid: each launch needs the object."""

    def __call__(self, gridX, gridY, gridZ, stream, function, *args):
        self.launch(gridX, gridY, gridZ, stream, function, gridX * gridY * gridZ, *args)


class Twice(Flat):
    """Passes our arguments twice: each launch needs the object."""

    def __call__(self, gridX, gridY, gridZ, stream, function, *args):
        self.launch(gridX, gridY, gridZ, stream, function, *args, *args)


class Scratch(Flat):
    global_scratch_size = 8


class Reordering(Flat):
    """Reorders our arguments: each launch needs the object."""

    def __call__(self, gridX, gridY, gridZ, stream, function, *args):
        self.launch(gridX, gridY, gridZ, stream, function, *reversed(args))


@pytest.fixture
def on_gpu_0(monkeypatch):
    """CPU tensors taken for CUDA device 0's; Triton's stream getter gives 1000 + device."""
    import triton.runtime

    real_spec = fused._spec
    monkeypatch.setattr(fused, "available", lambda device: True)
    monkeypatch.setattr(fused, "_spec", lambda *a: (lambda s: s and ((*s[0][:2], 0, *s[0][3:]), *s[1:]))(real_spec(*a)))
    monkeypatch.setattr(fused, "_device_getter", lambda: lambda: 0)
    monkeypatch.setattr(triton.runtime, "driver",
                        SimpleNamespace(active=SimpleNamespace(get_current_stream=lambda device: 1000 + device)))


@pytest.mark.parametrize("kind,direct", [(Flat, True), (Packed, True), (PerGrid, False), (Scratch, False),
                                         (Reordering, False), (Twice, False)])
def test_launches_pass_the_c_function_what_the_launcher_object_would(on_gpu_0, monkeypatch, kind, direct):
    calls = []
    run = kind(calls)
    recorded = run.launch

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **constants: SimpleNamespace(run=run, function="function", packed_metadata="meta")

    monkeypatch.setattr(fused, "_kernel", lambda interpret: Kernel())
    g = torch.Generator().manual_seed(0)
    update = fused.fused_update(MeanShift(shift=torch.ones(C)), probe(g), 0.7, "tokens", torch.device("cpu"))
    h = torch.randn(2, 5, C, generator=g)
    update(h, None)  # Triton's entry point (here: compiles, launches nothing); the compiled kernel is kept
    (kept,) = update.launch.launches.direct.values()
    assert (kept[0] is recorded) is direct and (kept[0] is run) is not direct
    outs = [update(h, None), update.lane(h, None)(h)]  # the launcher's direct launch, the lane's
    assert len(calls) == 2
    spec = update.spec(h)
    for launched, out in zip(calls, outs):
        expected = []
        run.launch = lambda *args: expected.append(args)
        run(spec[1], 1, 1, 1000, "function", "meta", None, None, None,
            *update.arguments(spec, h, out, None, None, False)[2], *spec[2], *spec[3])
        run.launch = recorded
        assert launched == expected[0]
