"""Hooks apply h + λ·α·(T(h) − h) exactly, leave no trace when removed, and refuse double attachment."""

import pytest
import torch

from dsas_core import DsasError, Site, attach, fit_from_activations
from helpers import D, N, Toy, cloud, unit


def make_concept(name="c", sites=("inner",), transform="mean_shift", scaler="probe", seed=0):
    u = 4 * unit(seed=seed)
    acts = {
        "source": {s: cloud(N, 1.0, seed=seed + 1, shift=u).float() for s in sites},
        "target": {s: cloud(N, 1.0, seed=seed + 2, shift=-u).float() for s in sites},
        "control": {s: cloud(N, 1.0, seed=seed + 3).float() for s in sites},
    }
    return fit_from_activations(name, acts["source"], acts["target"], acts["control"], transform=transform,
                                scaler=scaler, progress=False)


def toy_sites(model):
    return [Site("inner", model.inner), Site("outer", model.outer), Site("conv", model.conv, layout="channels")]


def inputs(seed=5):
    return torch.randn(2, 7, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("transform", ["mean_shift", "itic", "linear_act"])
@pytest.mark.parametrize("lam", [0.7, -1.3])
def test_hooked_output_equals_the_formula_written_out(transform, lam):
    model, x = Toy(), inputs()
    concept = make_concept(transform=transform)
    h = model.inner(x)
    steer = concept.sites["inner"]
    alpha = torch.sigmoid(h @ steer.scaler.weight + steer.scaler.bias).unsqueeze(-1)
    h_new = h + lam * alpha * (steer.transform.delta(h) + h - h)
    expected = model.outer(torch.tanh(h_new))
    with attach(toy_sites(model), {concept: lam}):
        got = model(x)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)


def test_channel_layout_applies_alpha_per_spatial_position():
    model = Toy()
    concept = make_concept(sites=("conv",))
    x = torch.randn(2, D, 3, 4, generator=torch.Generator().manual_seed(6))
    h = model.conv(x).movedim(1, -1)  # (B, H, W, D)
    s = concept.sites["conv"]
    expected = (h + 0.5 * torch.sigmoid(h @ s.scaler.weight + s.scaler.bias).unsqueeze(-1) * s.transform.shift).movedim(-1, 1)
    with attach(toy_sites(model), {concept: 0.5}, record_alpha=True) as handle:
        got = model.conv(x)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    assert handle.records[0].alpha.shape == (2, 3, 4)


def test_strength_zero_returns_the_input_bit_for_bit():
    model, x = Toy(), inputs()
    before = model(x)
    with attach(toy_sites(model), {make_concept(): 0.0}):
        assert torch.equal(model(x), before)


def test_outputs_are_bit_identical_after_remove_and_no_hooks_remain():
    model, x = Toy(), inputs()
    before = model(x)
    handle = attach(toy_sites(model), {make_concept(): 1.0})
    assert not torch.equal(model(x), before)
    handle.remove()
    assert torch.equal(model(x), before)
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


def test_an_exception_inside_the_context_manager_removes_the_hooks():
    model, x = Toy(), inputs()
    before = model(x)
    with pytest.raises(RuntimeError, match="boom"):
        with attach(toy_sites(model), {make_concept(): 1.0}):
            raise RuntimeError("boom")
    assert torch.equal(model(x), before)
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


def test_attaching_a_site_twice_raises():
    model = Toy()
    with attach(toy_sites(model), {make_concept("a"): 1.0}):
        with pytest.raises(DsasError, match="already steered"):
            attach(toy_sites(model), {make_concept("b"): 1.0})


def test_two_concepts_with_one_name_raise():
    with pytest.raises(DsasError, match="share the name 'same'"):
        attach(toy_sites(Toy()), {make_concept("same"): 1.0, make_concept("same", seed=9): 1.0})


def test_non_adaptive_mode_gives_alpha_one_everywhere_and_equals_plain_steering():
    model, x = Toy(), inputs()
    concept = make_concept()
    h = model.inner(x)
    expected = model.outer(torch.tanh(h + 0.8 * concept.sites["inner"].transform.shift))
    with attach(toy_sites(model), {concept: 0.8}, adaptive=False, record_alpha=True) as handle:
        got = model(x)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    assert torch.equal(handle.records[0].alpha, torch.ones(2, 7))


def test_two_concepts_at_one_site_add_their_updates_from_the_same_input():
    model, x = Toy(), inputs()
    a, b = make_concept("a"), make_concept("b", seed=40, transform="linear_act")
    h = model.inner(x)
    upd = 0
    for c, lam in ((a, 0.5), (b, -0.25)):
        s = c.sites["inner"]
        upd = upd + lam * torch.sigmoid(h @ s.scaler.weight + s.scaler.bias).unsqueeze(-1) * s.transform.delta(h)
    with attach(toy_sites(model), {a: 0.5, b: -0.25}):
        got = model(x)
    assert torch.allclose(got, model.outer(torch.tanh(h + upd)), atol=1e-6, rtol=0)


def test_changing_a_strength_between_calls_needs_no_reattach():
    model, x = Toy(), inputs()
    concept = make_concept()
    with attach(toy_sites(model), {concept: 1.0}) as handle:
        one = model(x)
        handle.strengths["c"] = 0.0
        zero = model(x)
        handle.strengths["c"] = 1.0
        again = model(x)
    assert torch.equal(zero, Toy()(x)) and torch.equal(one, again)


def test_gated_sites_get_alpha_zero_unless_steering_is_plain():
    model, x = Toy(), inputs()
    src, ctl = cloud(N, 1.0, seed=50).float(), cloud(N, 1.0, seed=51).float()  # no signal: gated
    concept = fit_from_activations("g", {"inner": src}, {"inner": src + 1}, {"inner": ctl}, progress=False)
    assert concept.config.diagnostics["inner"]["gated"] is True
    before = model(x)
    with attach(toy_sites(model), {concept: 1.0}, record_alpha=True) as handle:
        assert torch.equal(model(x), before)
        assert torch.equal(handle.records[0].alpha, torch.zeros(2, 7))
        handle.adaptive = False
        assert not torch.equal(model(x), before)


def test_fp16_activations_are_steered_in_float32_and_cast_back():
    model = Toy().half()
    x = inputs().half()
    concept = make_concept()
    h = model.inner(x)
    s = concept.sites["inner"]
    h32 = h.float()
    expected = (h32 + 0.5 * torch.sigmoid(h32 @ s.scaler.weight + s.scaler.bias).unsqueeze(-1) * s.transform.shift).half()
    with attach([Site("inner", model.inner)], {concept: 0.5}):
        got = model.inner(x)
    assert got.dtype == torch.float16
    assert torch.equal(got, expected)


def test_a_concept_of_another_width_is_refused_at_run_time():
    model = Toy()
    wide = fit_from_activations("w", {"inner": torch.randn(8, D + 2)}, {"inner": torch.randn(8, D + 2)},
                                None, scaler="constant", progress=False)
    with attach([Site("inner", model.inner)], {wide: 1.0}):
        with pytest.raises(DsasError, match="width 64 but the concept was fitted on width 66"):
            model(inputs())


def test_a_tuple_output_is_steered_at_the_chosen_index_only():
    class Pair(torch.nn.Module):
        def forward(self, x):
            return (x * 2, x * 3)

    mod, x = Pair(), inputs()
    concept = make_concept(sites=("pair",))
    with attach([Site("pair", mod, output_index=1)], {concept: 1.0}):
        first, second = mod(x)
    assert torch.equal(first, x * 2)
    assert not torch.equal(second, x * 3)



def run_both_paths(model, sites, concepts, x, adaptive=True, change=None, rows=None):
    """Outputs under no_grad (the inference fast path) and with gradients on (the full path)."""
    outs = []
    for grad in (False, True):
        with attach(sites, concepts, adaptive=adaptive) as handle, torch.set_grad_enabled(grad):
            handle.alpha_rows = rows
            if change is not None:
                model(x)
                change(handle)
            outs.append(model(x).detach())
    return outs


@pytest.mark.parametrize("transform", ["mean_shift", "itic", "linear_act"])
@pytest.mark.parametrize("scaler", ["probe", "constant"])
@pytest.mark.parametrize("adaptive", [True, False])
@pytest.mark.parametrize("rows", [None, [1, 1]])
def test_the_inference_fast_path_equals_the_full_path_bit_for_bit(transform, scaler, adaptive, rows):
    model, x = Toy(), inputs()
    a = make_concept("a", sites=("inner", "conv"), transform=transform, scaler=scaler)
    b = make_concept("b", sites=("inner",), seed=40, transform="linear_act")
    xs = {"inner": x, "conv": torch.randn(2, D, 3, 4, generator=torch.Generator().manual_seed(6))}
    for site, inp in xs.items():
        call = model.conv if site == "conv" else model
        fast, full = run_both_paths(call, toy_sites(model), {a: 0.7, b: -0.4}, inp, adaptive=adaptive,
                                    rows=None if rows is None else torch.tensor(rows))
        assert torch.equal(fast, full) and not torch.equal(fast, call(inp).detach())


def test_the_fast_path_follows_strength_and_mode_changes_between_calls():
    model, x = Toy(), inputs()
    concept = make_concept()
    for change in (lambda h: h.strengths.__setitem__("c", -2.0), lambda h: h.strengths.__setitem__("c", 0.0),
                   lambda h: setattr(h, "adaptive", False)):
        fast, full = run_both_paths(model, toy_sites(model), {concept: 1.0}, x, change=change)
        assert torch.equal(fast, full)
    with torch.no_grad():
        unsteered = model(x)
        with attach(toy_sites(model), {concept: 1.0}) as handle:
            handle.strengths["c"] = 0.0
            assert torch.equal(model(x), unsteered)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("site", ["inner", "conv"])
def test_plain_steering_of_half_activations_takes_the_fast_path_bit_for_bit(dtype, site):
    model = Toy().to(dtype)
    a = make_concept("a", sites=("inner", "conv"), transform="linear_act")
    b = make_concept("b", sites=("inner", "conv"), seed=40)
    x = inputs() if site == "inner" else torch.randn(2, D, 3, 4, generator=torch.Generator().manual_seed(6))
    call = model.conv if site == "conv" else model.inner
    fast, full = run_both_paths(call, toy_sites(model), {a: 0.7, b: -0.4}, x.to(dtype), adaptive=False)
    assert fast.dtype == dtype and torch.equal(fast, full) and not torch.equal(fast, call(x.to(dtype)))


def test_the_fast_path_steers_float64_activations_in_float32_like_the_full_path():
    model, x = Toy().double(), inputs().double()
    fast, full = run_both_paths(model.inner, [Site("inner", model.inner)], {make_concept(transform="linear_act"): 0.5}, x)
    assert fast.dtype == torch.float64 and torch.equal(fast, full) and not torch.equal(fast, model.inner(x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_fast_path_takes_alpha_of_half_activations_in_their_dtype_and_updates_in_float32(dtype):
    model, x = Toy().to(dtype), inputs().to(dtype)
    concept = make_concept(transform="linear_act")
    fast, full = run_both_paths(model.inner, [Site("inner", model.inner)], {concept: 0.5}, x)
    with torch.no_grad():
        h = model.inner(x)  # (B, T, d) in dtype
        steer = concept.sites["inner"]
        w, b = steer.scaler.weight_row.to(dtype), steer.scaler.bias_row.to(dtype)
        alpha = torch.sigmoid(torch.nn.functional.linear(h, w, b))  # (B, T, 1) in dtype
        expected = (h.float() + 0.5 * alpha.float() * steer.transform.delta(h.float())).to(dtype)
    assert fast.dtype == dtype and torch.equal(fast, expected)
    assert not torch.equal(fast, full)  # the full path's α is float32 ...
    assert (fast.float() - full.float()).abs().max() <= 2 * (full.float().abs().max() * torch.finfo(dtype).eps)  # ... a rounding apart



@pytest.mark.parametrize("rows", [None, [1, 1]])
def test_stored_alpha_and_alpha_records_take_the_fast_path_and_equal_the_full_path(rows, monkeypatch):
    from dsas_core.hooks import _SiteHook

    model, x = Toy(), inputs()
    concept = make_concept("a", sites=("inner", "outer"))
    full_calls = []
    full = _SiteHook.full
    monkeypatch.setattr(_SiteHook, "full", lambda self, output: full_calls.append(1) or full(self, output))
    results = {}
    for grad in (False, True):
        with attach(toy_sites(model), {concept: 0.7}, record_alpha=True) as handle, torch.set_grad_enabled(grad):
            handle.alpha_rows = None if rows is None else torch.tensor(rows)
            outs = []
            for reuse, inp in (("store", x), ("load", x.flip(0)), ("off", x.flip(0))):
                handle.alpha_reuse = reuse
                outs.append(model(inp).detach())
            results[grad] = outs, [(r.site, r.call, r.alpha) for r in handle.records]
        if not grad:
            assert full_calls == []  # no_grad: every call took the fast path
    (fast, fast_records), (slow, slow_records) = results[False], results[True]
    assert all(torch.equal(a, b) for a, b in zip(fast, slow))
    assert [(s, c) for s, c, _ in fast_records] == [(s, c) for s, c, _ in slow_records] and len(fast_records) == 6
    assert all(torch.equal(a, b) for (_, _, a), (_, _, b) in zip(fast_records, slow_records))
    assert not torch.equal(fast[1], fast[2])  # "load" reused the first call's α instead of computing its own
    assert torch.equal(fast_records[2][2], fast_records[0][2])  # the record of the "load" call is the stored α


def prompt_concept(shared=True, width_in=6):
    """A prompt-scaler concept on the toy's inner and outer sites: one scaler for both, or two different ones."""
    from dsas_core import Concept, ConceptConfig, PromptScaler, SiteSteer
    from dsas_core.transforms import MeanShift

    g = torch.Generator().manual_seed(3)
    scalers = [PromptScaler(weight=torch.randn(width_in, generator=g), bias=torch.tensor(0.1))]
    other = PromptScaler(weight=torch.randn(width_in, generator=g), bias=torch.tensor(-0.2))
    scalers.append(scalers[0] if shared else other)
    sites = {s: SiteSteer(MeanShift(shift=torch.randn(D, generator=g)), sc)
             for s, sc in zip(("inner", "outer"), scalers)}
    cfg = ConceptConfig(name="p", transform="mean_shift", scaler="prompt", sites=list(sites),
                        site_widths={s: D for s in sites}, scaler_input_width=width_in)
    return Concept(cfg, sites)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("rows", [None, [1, 1]])
def test_a_prompt_scaler_computes_alpha_once_per_call_on_the_fast_path_like_the_full_path(shared, rows, monkeypatch):
    from dsas_core import PromptScaler

    model, x = Toy(), inputs()
    concept = prompt_concept(shared)
    pooled = torch.randn(2, 6, generator=torch.Generator().manual_seed(4))  # (B, D_text)
    computed = []
    alpha_of = PromptScaler.input_alpha
    monkeypatch.setattr(PromptScaler, "input_alpha", lambda self, *a: computed.append(1) or alpha_of(self, *a))
    results = {}
    for grad in (False, True):
        with attach(toy_sites(model), {concept: 0.9}, record_alpha=True) as handle, torch.set_grad_enabled(grad):
            handle.alpha_rows = None if rows is None else torch.tensor(rows)
            outs = []
            calls = (("off", pooled), ("off", pooled.flip(0)), ("off", pooled.flip(0).clone()), ("store", pooled),
                     ("load", pooled.flip(0)))  # a new context each call: α computed again, except when loaded
            for reuse, prompts in calls:
                handle.context, handle.alpha_reuse = {"prompt_pooled": prompts}, reuse
                outs.append(model(x).detach())
            results[grad] = outs, [r.alpha for r in handle.records], len(computed)
        computed.clear()
    (fast, fast_alpha, fast_computed), (full, full_alpha, full_computed) = results[False], results[True]
    assert all(torch.equal(a, b) for a, b in zip(fast, full))
    assert all(torch.equal(a, b) for a, b in zip(fast_alpha, full_alpha))
    assert not torch.equal(fast[0], fast[1]) and torch.equal(fast[1], fast[2])  # α follows the prompts
    assert torch.equal(fast[4], fast[0])  # "load" reused the stored α of the first prompts
    assert full_computed == 8 and fast_computed == (4 if shared else 8)  # 4 computing calls × 2 sites on the full path
    assert fast_alpha[0].shape == (2, 7) and torch.equal(fast_alpha[0][:, :1].expand(2, 7), fast_alpha[0])


def test_recording_alpha_on_the_fast_path_adds_no_tensor_op():
    from torch.profiler import ProfilerActivity, profile

    model, x = Toy(), inputs()
    concept = make_concept("a", sites=("inner", "outer"))
    ops = {}
    for record in (False, True):
        with attach(toy_sites(model), {concept: 0.7}, record_alpha=record) as handle, torch.no_grad():
            model(x)  # the plan is made; then one call profiled
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                model(x)
            ops[record] = sorted(e.name for e in prof.events() if e.name.startswith("aten::"))
            records = handle.records
    assert ops[True] == ops[False]  # α kept as the hook computed it: no view, no detach, no copy
    assert [r.alpha.shape for r in records] == [(2, 7)] * 4 and records[-1].column.shape == (2, 7, 1)


@pytest.mark.parametrize("layout,shape", [("tokens", (4, 6, 40)), ("channels", (4, 40, 3, 5))])
def test_one_probe_concept_on_a_float32_stream_runs_as_one_call_with_the_general_paths_exact_result(layout, shape):
    from fused_helpers import Source, concept

    model = Source(torch.randn(*shape, generator=torch.Generator().manual_seed(2)))
    c = concept("itic")
    outs, forms = {}, {}
    for one_call in (True, False):
        with attach([Site("s", model, None, layout)], {c: 1.5}) as handle, torch.no_grad():
            handle.fused = one_call  # False: the general torch ops
            for rows in (None, torch.tensor([2, 3, 2, 3])):  # also α paired across a CFG batch
                handle.alpha_rows = rows
                outs[one_call, rows is None] = model()
            forms[one_call] = next(iter(model._forward_hooks.values())).plan[0]
    assert forms[True].fused is not None and not forms[True].keeps_alpha and forms[False].fused is None
    for unpaired in (True, False):
        assert torch.equal(outs[True, unpaired], outs[False, unpaired])  # the same ops: bit for bit
        assert outs[True, unpaired].shape == shape and not torch.equal(outs[True, unpaired], model.t)
    assert not torch.equal(outs[True, True], outs[True, False])
    with attach([Site("s", model, None, layout)], {c: 1.5}, record_alpha=True) as handle, torch.no_grad():
        assert torch.equal(model(), outs[True, True])  # α recorded: the general path, the same numbers
        assert len(handle.records) == 1


@pytest.mark.parametrize("layout,shape", [("tokens", (4, 6, 40)), ("channels", (4, 40, 3, 5))])
def test_the_one_call_form_keeps_a_lane_while_knobs_rows_and_stream_stay_with_the_same_numbers(monkeypatch, layout,
                                                                                              shape):
    from dsas_core import hooks
    from fused_helpers import Source, concept

    model = Source(torch.randn(*shape, generator=torch.Generator().manual_seed(3)))
    general, real_fast = [], hooks._SiteHook.fast
    monkeypatch.setattr(hooks._SiteHook, "fast", lambda self, output: general.append(1) or real_fast(self, output))
    rows = torch.tensor([2, 3, 2, 3])
    with attach([Site("s", model, None, layout)], {concept("itic"): 1.5}) as handle, torch.no_grad():
        expected = {}
        handle.fused = False  # the general torch ops
        for r in (None, rows):
            handle.alpha_rows = r
            expected[r is None] = model()
        handle.fused, handle.alpha_rows = True, None
        assert [torch.equal(model(), expected[True]) for _ in range(3)] == [True] * 3
        handle.alpha_rows = rows
        assert [torch.equal(model(), expected[False]) for _ in range(2)] == [True] * 2
        model.t = model.t[:2]  # another stream: the full path, then its own lane
        handle.alpha_rows = None
        assert [model().shape[0] for _ in range(2)] == [2, 2]
    assert len(general) == 2 + 1 + 1 + 1  # the general calls, then each first call after a change; the rest lanes


@pytest.mark.parametrize("case", ["plain", "half", "two concepts"])
def test_the_general_fast_path_keeps_a_lane_with_the_same_numbers(monkeypatch, case):
    from dsas_core import hooks
    from fused_helpers import Source, concept

    t = torch.randn(4, 6, 40, generator=torch.Generator().manual_seed(5))
    model = Source(t.half() if case == "half" else t)
    first = concept("linear_act" if case == "plain" else "mean_shift")  # a constant plain update: one call instead
    concepts = {first: 1.5, concept("itic"): -0.5} if case == "two concepts" else {first: 1.5}
    general, real_fast = [], hooks._SiteHook.fast
    monkeypatch.setattr(hooks._SiteHook, "fast", lambda self, output: general.append(1) or real_fast(self, output))
    with attach([Site("s", model, None, "tokens")], concepts, adaptive=case != "plain") as handle, torch.no_grad():
        steered = model()  # the fast path, which opens the lane
        assert [torch.equal(model(), steered) for _ in range(3)] == [True] * 3
        handle.strengths[first.name] = 0.5
        moved = model()
        assert torch.equal(model(), moved) and not torch.equal(moved, steered)
        assert next(iter(model._forward_hooks.values())).lane is not None
    assert len(general) == 2  # 6 calls: the first, and the first after λ moved


@pytest.mark.parametrize("kind", ["prompt scaler", "plain"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout,shape", [("tokens", (4, 6, 40)), ("channels", (4, 40, 3, 5))])
def test_prompt_scaled_and_plain_steering_run_as_one_call_in_the_streams_dtype_with_the_general_paths_result(
        monkeypatch, layout, shape, dtype, kind):
    from dsas_core import hooks
    from dsas_core.one_call import OffsetUpdate
    from fused_helpers import Source, concept, one_site_prompt_concept

    g = torch.Generator().manual_seed(6)
    prompt = kind == "prompt scaler"
    c, other = ((one_site_prompt_concept("itic", g), one_site_prompt_concept("lineas", g)) if prompt
                else (concept("itic"), concept("lineas")))
    model = Source(torch.randn(*shape, generator=g).to(dtype))
    pooled = torch.randn(4, 6, generator=g)  # (B, D_text)
    general, real_fast = [], hooks._SiteHook.fast
    monkeypatch.setattr(hooks._SiteHook, "fast", lambda self, output: general.append(1) or real_fast(self, output))
    outs, forms = {}, {}
    for one_call in (True, False):
        with attach([Site("s", model, None, layout)], {c: 1.5}, adaptive=prompt) as handle, torch.no_grad():
            handle.fused = one_call  # False: the general torch ops
            for rows in (None, torch.tensor([2, 3, 2, 3])):  # also α paired across a CFG batch
                handle.alpha_rows = rows
                for flip in (False, True, False):  # a new model call each time: α follows its prompts
                    handle.context = {"prompt_pooled": pooled.flip(0) if flip else pooled}
                    outs[one_call, rows is None, flip] = model()
            forms[one_call] = next(iter(model._forward_hooks.values())).plan[0].fused
        assert len(general) == 2  # the first call of each rows setting; the rest on its lane
        general.clear()
    assert isinstance(forms[True], OffsetUpdate) and forms[False] is None
    for key in [(unpaired, flip) for unpaired in (True, False) for flip in (False, True)]:
        out = outs[(True, *key)]
        assert torch.equal(out, outs[(False, *key)])  # the same op: bit for bit
        assert out.dtype == dtype and out.shape == shape and out.stride() == model.t.stride()
        assert not torch.equal(out, model.t)
    # α follows the prompts and their pairing; plain steering's α ≡ 1 follows neither
    assert torch.equal(outs[True, True, False], outs[True, True, True]) is not prompt
    assert torch.equal(outs[True, True, False], outs[True, False, False]) is not prompt
    with attach([Site("s", model, None, layout)], {other: 1.5}, adaptive=prompt) as handle, torch.no_grad():
        handle.context = {"prompt_pooled": pooled}
        model()  # an update that reads the stream (LinEAS): the general path
        assert next(iter(model._forward_hooks.values())).plan[0].fused is None


def test_half_streams_and_two_concepts_at_a_site_take_no_one_call_form():
    from fused_helpers import Source, concept

    a, b = concept("mean_shift"), concept("itic")
    for t, concepts in [(torch.randn(2, 6, 40).half(), {a: 1.0}), (torch.randn(2, 6, 40), {a: 1.0, b: 0.5})]:
        model = Source(t)
        with attach([Site("s", model, None, "tokens")], concepts), torch.no_grad():
            model()
            plan = next(iter(model._forward_hooks.values())).plan
            assert len(plan) == len(concepts) and all(step.fused is None for step in plan)
