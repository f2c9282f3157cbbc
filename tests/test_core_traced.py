"""The update torch.compile traces: every concept of a site read from one packed tensor, the float32 arithmetic of
the reference, gates and plain steering respected, and concepts without an affine logistic form left to the full
path."""

import dataclasses

import pytest
import torch

from dsas_core import Concept, DsasError, fit_from_activations, traced
from dsas_core.concept import SiteSteer
from dsas_core.hooks import Site, _SiteHook, attach
from dsas_core.traced import update
from dsas_core.transforms import LinearAct
from fused_helpers import C, Source, concept, probe, reference, transforms


def named(name, transform, scaler, gated=False):
    """The helper concept on site "s" with another name, transform and scaler."""
    base = concept()
    diagnostics = {"s": {**base.config.diagnostics["s"], "gated": gated}}  # a concept's gates live in its config
    config = dataclasses.replace(base.config, name=name, diagnostics=diagnostics)
    return Concept(config, {"s": SiteSteer(transform, scaler)})


class Placed(Source):
    """A fixed output from a module with a parameter: attaching learns the device from it."""

    def __init__(self, t):
        super().__init__(t)
        self.anchor = torch.nn.Parameter(torch.zeros(1))


def site_hook(module):
    return next(h for h in module._forward_hooks.values() if isinstance(h, _SiteHook))


@pytest.mark.parametrize("layout,shape", [("tokens", (4, 7, C)), ("channels", (4, C, 5, 3))])
@pytest.mark.parametrize("adaptive", [True, False])
def test_compiled_steering_of_several_concepts_matches_the_float64_reference(layout, shape, adaptive, monkeypatch):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(*shape, generator=g)
    parts = {name: (t, probe(g)) for name, t in transforms(g).items()}  # mean shift, ITI-c, LinEAS (scaled)
    parts["gated"] = (transforms(g)["mean_shift"], probe(g))
    lams = {"mean_shift": 0.7, "itic": -0.4, "lineas": 1.3, "gated": 2.0}
    concepts = {named(n, t, s, gated=n == "gated"): lams[n] for n, (t, s) in parts.items()}
    traced_calls = []
    monkeypatch.setattr(traced, "update", lambda *a: traced_calls.append(1) or update(*a))
    source = Placed(h)
    with attach([Site("s", source, layout=layout)], concepts, adaptive=adaptive) as handle:
        packed = site_hook(source).packed
        assert packed.tables.shape == (1, 4, 3, C + 1) and packed.index == 0
        assert packed.flags == ((False, False), (False, False), (True, False), (False, True))
        compiled = torch.compile(source, backend="eager")
        with torch.no_grad():
            got = compiled()
            handle.strengths["lineas"] = -0.5  # a slider move: the packed λ is the handle's own tensor
            moved = compiled()
    assert traced_calls  # the graph was traced through the packed form
    # each concept's λ·α·Δ read from the unsteered stream, added up; a gate (α ≡ 0) holds only while adaptive
    want = h.double()
    for name, (t, s) in parts.items():
        if adaptive and name == "gated":
            continue
        want = want + reference(h, layout, s if adaptive else always_on(), t, lams[name], None) - h.double()
    assert (got.double() - want).abs().max().item() < 1e-4
    assert (moved - got).abs().max().item() > 1e-3


def always_on():
    """A logistic scaler with α = sigmoid(60) = 1 in float64 to 26 digits: plain steering for the reference."""
    s = probe(torch.Generator().manual_seed(9))
    s.weight.zero_()
    s.bias.fill_(60.0)
    return s


def test_a_site_with_a_concept_without_an_affine_logistic_form_keeps_the_full_path():
    g = torch.Generator().manual_seed(2)
    h = torch.randn(3, 5, C, generator=g)
    act = named("act", LinearAct(omega=torch.full((C,), 1.5), beta=torch.zeros(C), low=-torch.ones(C),
                                 high=torch.ones(C)), probe(g))
    source = Placed(h)
    with attach([Site("s", source)], {act: 1.0}):
        assert site_hook(source).packed is None
        eager = source()
        with torch.no_grad():
            compiled = torch.compile(source, backend="eager")()
    assert (compiled - eager).abs().max().item() < 1e-5


def test_sites_of_one_width_share_one_packed_tensor_and_compile_to_the_eager_result():
    g = torch.Generator().manual_seed(3)
    widths = {"a": C, "b": C, "c": 24}
    acts = {k: {s: torch.randn(16, w, generator=g) + (i == 0) for s, w in widths.items()}
            for i, k in enumerate(("source", "target", "control"))}
    shared = fit_from_activations("shared", acts["source"], acts["target"], acts["control"], transform="mean_shift",
                                  scaler="probe", gate=0.0, progress=False)
    modules = {s: Placed(torch.randn(2, 3, w, generator=g)) for s, w in widths.items()}
    with attach([Site(s, m) for s, m in modules.items()], {shared: 1.5}):
        packed = {s: site_hook(m).packed for s, m in modules.items()}
        assert packed["a"].tables is packed["b"].tables
        assert packed["a"].tables.shape == (2, 1, 3, C + 1)
        assert sorted([packed["a"].index, packed["b"].index]) == [0, 1]
        assert packed["c"].tables.shape == (1, 1, 3, 24 + 1) and packed["c"].index == 0
        eager = {s: m() for s, m in modules.items()}
        with torch.no_grad():
            compiled = {s: torch.compile(m, backend="eager")() for s, m in modules.items()}
    for s in widths:
        assert (compiled[s] - eager[s]).abs().max().item() < 1e-5
        assert (eager[s] - modules[s].t).abs().max().item() > 1e-2  # steered


@pytest.mark.parametrize("shape,match", [((2, 3, C + 1), "produced width 41 but the concept was fitted on width 40"),
                                         ((4, 3, C), "not the stream this site expects")])
def test_under_compile_a_stream_of_another_width_and_a_failed_stream_check_raise_the_eager_errors(shape, match):
    def refuse_batches_of_four(output):
        if output.shape[0] == 4:
            raise DsasError("not the stream this site expects")

    torch._dynamo.reset()  # a frame that raised while tracing runs eagerly from then on: trace this one afresh
    source = Placed(torch.randn(*shape))
    with attach([Site("s", source)], {concept(): 1.0}, checks={"s": refuse_batches_of_four}):
        assert site_hook(source).packed is not None
        with pytest.raises(DsasError, match=match):
            source()
        with torch.no_grad(), pytest.raises(DsasError, match=match):
            torch.compile(source, backend="eager")()
