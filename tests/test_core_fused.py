"""The one-kernel update (dsas_core.fused): which concepts have a fused form, where it is not offered, the fallback
to torch ops when the kernel cannot run, and its numbers (tests/fused_cases.py, run by Triton's interpreter)."""

import contextlib
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dsas_core import fused
from dsas_core.hooks import Site, attach
from dsas_core.scaler import ConstantScaler, E2EScaler, PromptScaler
from dsas_core.transforms import LinearAct, MeanShift
from fused_helpers import C, Source, concept, probe, transforms

pytest.importorskip("triton")
HERE = Path(__file__).parent


def test_the_interpreted_kernel_cases_pass_in_a_fresh_process():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE / "fused_cases.py")],
                         cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    # every case of fused_cases.py (the kernel with a probe and without, 12 each, 3 transforms a case): none skipped
    assert re.search(r"^41 passed in", run.stdout, re.M), run.stdout[-600:]


def test_only_logistic_scalers_and_affine_updates_have_a_fused_form():
    g = torch.Generator().manual_seed(0)
    p = probe(g)
    assert [t.affine() is None for t in transforms(g).values()] == [False, False, False]
    act = LinearAct(omega=torch.ones(C), beta=torch.zeros(C), low=-torch.ones(C), high=torch.ones(C))
    assert act.affine() is None  # clamped to the source range: not affine
    assert p.logistic() is not None and E2EScaler.from_probe(p).logistic() is not None
    assert E2EScaler.from_probe(p, relu=True).logistic() is None
    assert ConstantScaler().logistic() is None and PromptScaler.from_probe(p).logistic() is None


def test_without_a_gpu_or_the_interpreter_the_fused_update_is_not_offered(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    g = torch.Generator().manual_seed(0)
    assert fused.fused_update(MeanShift(shift=torch.ones(C)), probe(g), 1.0, "tokens", torch.device("cpu")) is None
    monkeypatch.setattr(fused, "_kernel", lambda interpret: None)  # Triton not installed
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not fused.available(torch.device("cpu")) and not fused.available(torch.device("cuda"))


def test_strides_the_kernel_cannot_walk_are_left_to_torch_ops(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    g = torch.Generator().manual_seed(0)
    tokens = fused.fused_update(MeanShift(shift=torch.ones(C)), probe(g), 1.0, "tokens", torch.device("cpu"))
    assert tokens(torch.randn(C, 6).t(), None) is None  # (6, C), the width not contiguous
    channels = fused.fused_update(MeanShift(shift=torch.ones(C)), probe(g), 1.0, "channels", torch.device("cpu"))
    assert channels(torch.randn(2, 5, C, 3).transpose(1, 2), None) is None  # (2, C, 5, 3), neither layout


def test_a_kernel_that_fails_to_run_warns_once_and_steering_goes_on_with_torch_ops(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    model = Source(torch.randn(2, 6, C).half())

    class Broken:
        def __getitem__(self, grid):
            raise RuntimeError("no kernel image is available for execution on the device")

    with attach([Site("s", model, None, "tokens")], {concept(): 1.0}) as handle, torch.no_grad():
        handle.fused = False
        expected = model()
        handle.fused = True
        monkeypatch.setattr(fused, "_kernel", lambda interpret: Broken())
        with pytest.warns(UserWarning, match="fused steering kernel failed.*torch ops"):
            first = model()
        assert handle.fused is False and torch.equal(first, expected)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no second try, no second warning
            assert torch.equal(model(), expected)


def _recording_kernel(monkeypatch, launches: list) -> object:
    """A stand-in for the Triton kernel: its entry point (``kernel[grid](...)``, "jit") and its compiled kernel's
    launcher ("direct") append their arguments to ``launches``; Triton's stream getter gives 1000 + device."""
    import triton.runtime

    class Compiled:
        function, packed_metadata = "function", "metadata"

        def run(self, *args):
            launches.append(("direct", args))

    class Kernel:
        def __getitem__(self, grid):
            def go(*args, **constants):
                launches.append(("jit", grid, args, constants))
                return Compiled()
            return go

    stream = SimpleNamespace(get_current_stream=lambda device: 1000 + device)
    monkeypatch.setattr(triton.runtime, "driver", SimpleNamespace(active=stream))
    return Kernel()


def test_after_its_first_launch_a_specialisation_goes_straight_to_the_compiled_kernel(monkeypatch):
    from triton import knobs

    launches = []
    launch, constants = fused._Launcher(_recording_kernel(monkeypatch, launches), fused.Launches()), (True, False, 0, 16, 64)
    named = dict(zip(("HAS_SCALE", "HAS_ROWS", "ALPHA", "BLOCK_P", "BLOCK_C"), constants))
    launch("a", 3, ["h", "out"], [10, 20], [0.5], constants, 1)  # tensors, their pointers, the other arguments
    launch("a", 5, ["h2", "out2"], [11, 21], [0.5], constants, 1)
    launch("b", 3, ["h", "out"], [10, 20], [0.5], constants, 1)
    launch("c", 3, ["h", "out"], [10, 20], [0.5], constants, -1)  # the interpreter: no compiled kernel to keep
    launch("c", 3, ["h", "out"], [10, 20], [0.5], constants, -1)
    jit = ("jit", (3,), ("h", "out", 0.5), named)
    assert launches == [jit, ("direct", (5, 1, 1, 1001, "function", "metadata", None, None, None, 11, 21, 0.5, *constants)),
                        jit, jit, jit]
    launches.clear()
    monkeypatch.setattr(knobs.runtime, "launch_enter_hook", lambda *args: None)  # a profiler listens
    launch("a", 5, ["h2", "out2"], [11, 21], [0.5], constants, 1)
    assert launches == [("jit", (5,), ("h2", "out2", 0.5), named)]


def test_a_direct_launch_that_raises_falls_back_to_the_entry_point_for_good(monkeypatch):
    import triton.runtime

    launches = []

    class Compiled:
        function, packed_metadata = "function", "metadata"

        def run(self, *args):
            raise TypeError("this launcher takes its arguments otherwise")

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **constants: launches.append(args) or Compiled()

    monkeypatch.setattr(triton.runtime, "driver", SimpleNamespace(active=SimpleNamespace(get_current_stream=id)))
    launch = fused._Launcher(Kernel(), fused.Launches())
    for _ in range(3):
        launch("a", 3, ["h"], [10], [0.5], (True, False, 0, 16, 64), 0)
    assert launches == [("h", 0.5)] * 3 and launch.launches.direct == {} and not launch.launches.works


def _stand_in_gpu(monkeypatch, current: list[int] | None = None) -> list:
    """A GPU stand-in on CPU tensors: Triton's entry point and the compiled kernel's launcher record their
    arguments (nothing is computed), streams count as on CUDA device 0; ``current[0]``: the current device."""
    launches = []
    kernel = _recording_kernel(monkeypatch, launches)
    real_spec = fused._spec

    def on_device_0(*args):
        spec = real_spec(*args)
        return spec and ((*spec[0][:2], 0, *spec[0][3:]), *spec[1:])

    monkeypatch.setattr(fused, "available", lambda device: True)
    monkeypatch.setattr(fused, "_kernel", lambda interpret: kernel)
    monkeypatch.setattr(fused, "_spec", on_device_0)
    current = current or [0]
    monkeypatch.setattr(fused, "_device_getter", lambda: lambda: current[0])
    return launches


def test_a_lane_launches_exactly_what_the_launcher_launches_for_its_stream_and_rows(monkeypatch):
    from triton import knobs

    current = [0]
    launches = _stand_in_gpu(monkeypatch, current)
    g = torch.Generator().manual_seed(0)
    update = fused.fused_update(MeanShift(shift=torch.ones(C)), probe(g), 0.7, "tokens", torch.device("cpu"))
    h = torch.randn(2, 5, C, generator=g)
    for rows in [None, torch.tensor([1, 1])]:
        assert update.lane(h, rows) is None  # nothing compiled for this specialisation yet
        update(h, rows)  # Triton's entry point: compiles and keeps the kernel
        update(h, rows)  # the launcher's direct launch
        lane = update.lane(h, rows)
        out = lane(h)
        (kind, direct), (lane_kind, args) = launches[-2:]
        assert kind == lane_kind == "direct" and len(args) == len(direct)
        assert args[9:11] == (h.data_ptr(), out.data_ptr()) and args[:9] + args[11:] == direct[:9] + direct[11:]
        assert out.shape == h.shape and out.stride() == h.stride() and out.dtype == h.dtype
    lane, switched = update.lane(h, None), []
    assert lane(h[:1]) is None and lane(h.half()) is None  # another stream: the caller's full path
    shifted = torch.randn(h.numel() + 1, generator=g)[1:].view(h.shape)  # 4 bytes past a 16-byte boundary
    assert lane(shifted).shape == h.shape and launches[-1][0] == "jit"  # another specialisation: the launcher's
    monkeypatch.setattr(torch.cuda, "device", lambda index: switched.append(index) or contextlib.nullcontext())
    current[0] = 1
    assert lane(h).shape == h.shape and launches[-1][0] == "direct" and switched == [0]  # the launcher switches
    current[0] = 0
    monkeypatch.setattr(knobs.runtime, "launch_enter_hook", lambda *args: None)
    assert lane(h).shape == h.shape and launches[-1][0] == "jit"  # a profiler listens: Triton's entry point tells it
    assert switched == [0]
    monkeypatch.undo()


def test_a_recording_lane_launches_what_the_launcher_launches_and_keeps_the_alpha_it_wrote(monkeypatch):
    current = [0]
    launches = _stand_in_gpu(monkeypatch, current)
    g = torch.Generator().manual_seed(0)
    update = fused.fused_update(MeanShift(shift=torch.ones(C)), probe(g), 0.7, "channels", torch.device("cpu"))
    h = torch.randn(2, C, 3, 5, generator=g)
    for rows in [None, torch.tensor([1, 1])]:
        kept = []
        alpha = torch.empty(2, 3, 5, 1)
        update(h, rows, alpha)  # Triton's entry point: compiles and keeps the kernel that writes α
        update(h, rows, alpha)  # the launcher's direct launch
        assert update.lane(h, rows, keep=kept.append) is not None and update.lane(h, rows) is None  # its own kernel
        out = update.lane(h, rows, keep=kept.append)(h)
        (kind, direct), (lane_kind, args) = launches[-2:]
        assert kind == lane_kind == "direct" and len(args) == len(direct)
        ours = (9, 10, 16)  # h, out and α among the arguments (after grid, stream, function and the head)
        assert [args[i] for i in ours] == [h.data_ptr(), out.data_ptr(), kept[0].data_ptr()]
        assert [a for i, a in enumerate(args) if i not in ours] == [a for i, a in enumerate(direct) if i not in ours]
        assert direct[16] == alpha.data_ptr() and len(kept) == 1
        assert kept[0].shape == (2, 3, 5, 1) and kept[0].dtype == torch.float32
        assert out.shape == h.shape and out.stride() == h.stride()
    kept = []
    lane = update.lane(h, None, keep=kept.append)
    current[0] = 1  # the launcher switches device: it gets the α tensor the lane keeps
    monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())
    assert lane(h).shape == h.shape and launches[-1][1][16] == kept[0].data_ptr() and len(kept) == 1
    assert lane(h[:1]) is None and len(kept) == 1  # another stream: nothing kept, the caller's path records
    monkeypatch.undo()


def test_lanes_without_a_probe_launch_what_the_launcher_launches_with_alpha_per_sample_read_at_each_call(
        monkeypatch):
    launches = _stand_in_gpu(monkeypatch)
    g = torch.Generator().manual_seed(0)
    given = []

    def source(batch, rows):  # a new α tensor at every call, as each model call's prompts give
        given.append(torch.rand(batch, generator=g))
        return given[-1]

    shift = MeanShift(shift=torch.ones(C))
    plain = fused.fused_update(shift, None, 0.7, "tokens", torch.device("cpu"))
    each = fused.fused_update(shift, PromptScaler(weight=torch.ones(6), bias=torch.tensor(0.0)), 0.7, "tokens",
                              torch.device("cpu"), source=source)
    h, rows = torch.randn(2, 5, C, generator=g), torch.tensor([1, 1])
    for update, mode in [(plain, fused.CONSTANT), (each, fused.PER_SAMPLE)]:
        update(h, rows)  # Triton's entry point
        update(h, rows)  # the launcher's direct launch
        out = update.lane(h, rows)(h)
        (kind, direct), (lane_kind, args) = launches[-2:]
        assert kind == lane_kind == "direct" and len(args) == len(direct)
        assert args[-5:-2] == (False, False, mode)  # no scale, no rows in the kernel, the mode's α
        assert args[9:11] == (h.data_ptr(), out.data_ptr())
        if mode == fused.PER_SAMPLE:  # α of this call, as the launcher had the one of its call
            assert [args[16], direct[16]] == [given[-1].data_ptr(), given[-2].data_ptr()] and len(given) == 3
        assert args[:9] + args[11:16] + args[17:] == direct[:9] + direct[11:16] + direct[17:]
    assert plain.lane(h, rows, keep=print) is None  # no probe: no α to record


def test_a_lane_whose_launch_raises_sends_every_launch_back_to_the_entry_point(monkeypatch):
    _stand_in_gpu(monkeypatch)
    g = torch.Generator().manual_seed(0)
    update = fused.fused_update(MeanShift(shift=torch.ones(C)), probe(g), 0.7, "tokens", torch.device("cpu"))
    h = torch.randn(3, C, generator=g)
    update(h, None)
    lane = update.lane(h, None)
    store = update.launch.launches
    key, direct = next(iter(store.direct.items()))

    def broken(*args):
        raise TypeError("this launcher takes its arguments otherwise")

    monkeypatch.setattr(fused, "_direct_launch", lambda compiled: (broken, *direct[1:]))
    store.direct[key] = (broken, *direct[1:])
    assert update.lane(h, None)(h) is None and store.direct == {} and not store.works
    assert update.lane(h, None) is None and lane is not None
    monkeypatch.undo()


def test_the_hook_takes_the_lane_until_a_knob_the_rows_or_the_stream_change(monkeypatch):
    launches = _stand_in_gpu(monkeypatch)
    general = []
    real_call = fused.FusedUpdate.__call__
    monkeypatch.setattr(fused.FusedUpdate, "__call__", lambda self, *args: general.append(len(args)) or real_call(self, *args))
    model = Source(torch.randn(2, 6, C))
    with attach([Site("s", model, None, "tokens")], {concept(): 1.0}) as handle, torch.no_grad():
        def calls(n: int = 1) -> tuple[int, int]:
            before = len(launches), len(general)
            for _ in range(n):
                assert model().shape == model.t.shape
            return len(launches) - before[0], len(general) - before[1]

        assert calls() == (1, 1)  # Triton's entry point, then the lane is opened
        assert calls(3) == (3, 0)  # the lane: straight to the kernel
        handle.strengths["c_mean_shift"] = 0.5
        assert calls(2) == (2, 1)  # a new plan, then its lane
        handle.alpha_rows = torch.tensor([1, 1])
        assert calls(2) == (2, 1)  # other rows: a specialisation of its own
        handle.alpha_rows = torch.tensor([1, 1])  # equal, but another tensor: its pointer is what a kernel reads
        assert calls(2) == (2, 1)
        model.t = torch.randn(3, 6, C)
        handle.alpha_rows = None
        assert calls(2) == (2, 1)  # another stream shape
        handle.record_alpha = True
        assert calls(3) == (3, 1)  # α recorded: the launcher once, then the recording lane
        assert [r.call for r in handle.alpha_records()] == [0, 1, 2]
        handle.record_alpha = False
        handle.fused = False
        assert calls(2) == (0, 0)  # torch ops
        handle.fused = True
        handle.enabled = False
        assert calls(2) == (0, 0)
    monkeypatch.undo()


@pytest.mark.parametrize("kind", ["plain", "prompt scaler"])
def test_the_hook_takes_the_kernels_lane_for_plain_and_prompt_scaled_steering(monkeypatch, kind):
    from fused_helpers import one_site_prompt_concept

    launches = _stand_in_gpu(monkeypatch)
    general = []
    real_call = fused.FusedUpdate.__call__
    monkeypatch.setattr(fused.FusedUpdate, "__call__", lambda self, *args: general.append(1) or real_call(self, *args))
    g = torch.Generator().manual_seed(3)
    prompt = kind == "prompt scaler"
    model = Source(torch.randn(2, 6, C, generator=g))
    pooled = torch.randn(2, 6, generator=g)
    c = one_site_prompt_concept("itic", g) if prompt else concept("itic")
    with attach([Site("s", model, None, "tokens")], {c: 1.0}, adaptive=prompt) as handle, torch.no_grad():
        for texts, calls in [(pooled, 3), (pooled.flip(0), 2)]:  # a new pipeline call's prompts: the same lane
            handle.context = {"prompt_pooled": texts}
            for _ in range(calls):
                model()
        assert len(general) == 1 and [k[0] for k in launches] == ["jit"] + ["direct"] * 4  # then the lane
        assert launches[-1][1][-5:-2] == (False, False, fused.PER_SAMPLE if prompt else fused.CONSTANT)
        # α per sample read at each call: the prompts' α, computed once per text tensor (else the fixed pointer)
        alphas = [args[16] for _, args in launches[1:]]
        assert (alphas[0] == alphas[1] != alphas[2] == alphas[3]) is prompt
    monkeypatch.undo()
