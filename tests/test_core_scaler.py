"""The probe scaler separates planted source from control, at every scale, and gates sites with no signal."""

import pytest
import torch

from dsas_core import DsasError, ProbeScaler
from dsas_core.scaler import E2EScaler, scaler_class
from helpers import N, SCALES, cloud, unit


@pytest.mark.parametrize("scale", SCALES)
def test_probe_alpha_is_high_on_held_out_source_and_low_on_held_out_control(scale):
    """Source and control means 4σ apart along u, σ the norm of the noise vectors."""
    u = 4 * unit(seed=20)
    scaler, fit = ProbeScaler.fit(cloud(N, scale, seed=21, shift=u), cloud(N, scale, seed=22))
    held_src = cloud(500, scale, seed=23, shift=u).float()
    held_ctl = cloud(500, scale, seed=24).float()
    assert (scaler(held_src) >= 0.9).float().mean().item() >= 0.95
    assert (scaler(held_ctl) <= 0.1).float().mean().item() >= 0.95
    assert fit.accuracy == 1.0 and not fit.gated


@pytest.mark.parametrize("scale", SCALES)
def test_a_site_with_no_signal_is_gated_off(scale):
    scaler, fit = ProbeScaler.fit(cloud(N, scale, seed=25), cloud(N, scale, seed=26))
    assert fit.accuracy < 0.75
    assert scaler.gated


def test_folded_probe_equals_pca_then_logistic_regression():
    u = 4 * unit(seed=27)
    scaler, _ = ProbeScaler.fit(cloud(N, 1.0, seed=28, shift=u), cloud(N, 1.0, seed=29))
    h = cloud(10, 1.0, seed=30, shift=u / 2).float()
    scores = (h - scaler.mean) @ scaler.components.T / scaler.scale
    unfolded = torch.sigmoid(scores @ scaler.coef + scaler.intercept)
    assert torch.allclose(scaler(h), unfolded, atol=1e-5)


def test_more_components_than_samples_is_refused():
    with pytest.raises(DsasError, match="n_components=40 is too large"):
        ProbeScaler.fit(cloud(8, 1.0, seed=31), cloud(8, 1.0, seed=32), n_components=40)


def test_an_unknown_scaler_name_lists_the_known_ones():
    with pytest.raises(DsasError, match="choose one of .*probe"):
        scaler_class("probes")


def test_capped_components_use_what_the_samples_support_and_record_it():
    from dsas_core import fit_from_activations
    from dsas_core.scaler import max_components

    g = torch.Generator().manual_seed(0)
    acts = {site: torch.randn(8, width, generator=g) for site, width in (("a", 32), ("b", 6))}
    # 8 + 8 samples, 5 folds: the largest held-out fold has 4 rows, leaving 12; site "b" is only 6 wide
    assert max_components(torch.arange(8), torch.arange(8) + 8, 32) == 12
    assert max_components(torch.arange(8), torch.arange(8) + 8, 6) == 6
    concept = fit_from_activations("c", acts, acts, {s: a + 1 for s, a in acts.items()}, n_components=16,
                                   cap_components=True, progress=False)
    assert concept.config.n_components == 6
    assert {s.scaler.components.shape for s in concept.sites.values()} == {(6, 32), (6, 6)}
    with pytest.raises(DsasError, match="site 'a': n_components=16 is too large"):
        fit_from_activations("c", acts, acts, {s: a + 1 for s, a in acts.items()}, n_components=16, progress=False)


@pytest.mark.parametrize("kind", ["probe", "e2e"])
def test_under_compile_alpha_is_a_product_and_sum_that_matches_eager(kind):
    """While torch.compile traces, w·h + b is written as a product and a sum (fusable with the ops around it), not a
    matrix product: the traced graph has no linear/mm, and α agrees with the eager one."""
    probe, _ = ProbeScaler.fit(cloud(N, 1.0, seed=21, shift=4 * unit(seed=20)), cloud(N, 1.0, seed=22))
    scaler = probe if kind == "probe" else E2EScaler.from_probe(probe)
    h = cloud(2 * 5 * 3, 1.0, seed=27).float().reshape(2, 5, 3, -1)  # (B, H, W, d)
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    with torch.no_grad():
        eager = scaler.column(h)
        torch._dynamo.reset()
        compiled = torch.compile(scaler.column, backend=capture, fullgraph=True)(h)
    torch._dynamo.reset()
    targets = {str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"}
    assert graphs and not [t for t in targets if "linear" in t or "mm" in t or "matmul" in t], targets
    assert eager.shape == compiled.shape == (2, 5, 3, 1)
    assert torch.allclose(compiled, eager, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_the_logit_of_a_feature_map_seen_width_last_reads_the_map_in_place_and_equals_the_plain_product(dtype):
    from dsas_core.scaler import logit_column

    g = torch.Generator().manual_seed(0)
    maps = torch.randn(2, 8, 3, 5, generator=g).to(dtype)  # (B, d, H, W), contiguous
    w, b = torch.randn(1, 8, generator=g).to(dtype), torch.randn(1, generator=g).to(dtype)
    x = maps.movedim(1, -1)  # (B, H, W, d): width not contiguous
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        z = logit_column(x, w, b)
    assert "aten::clone" not in {e.name for e in prof.events()}  # no copy of the map (a plain product clones it)
    assert z.shape == (2, 3, 5, 1)
    tol = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-1}[dtype]  # |z| up to ≈ 8
    assert torch.allclose(z.float(), torch.nn.functional.linear(x.contiguous(), w, b).float(), atol=tol)
    assert torch.allclose(z.float(), (x.float() * w.float()).sum(-1, keepdim=True) + b.float(), atol=tol)


def test_logistic_regression_reaches_the_optimum_by_newton_and_agrees_with_lbfgs(monkeypatch):
    from dsas_core import linear

    g = torch.Generator().manual_seed(5)
    x = torch.randn(51, 16, generator=g, dtype=torch.float64)
    y = (torch.arange(51) % 3 == 0).long()  # unbalanced classes: the balanced weights matter
    x[y == 1] += 0.4

    def gradient(w, b):  # of C·Σ sᵢ·softplus(−mᵢ) + ½‖w‖² at (w, b), by autograd
        p = torch.cat([w, b[None]]).requires_grad_(True)
        n, n1 = len(y), y.sum()
        sw = torch.where(y > 0, n / (2 * n1), n / (2 * (n - n1))).double()
        margin = (2 * y - 1).double() * (x @ p[:-1] + p[-1])
        ((sw * torch.nn.functional.softplus(-margin)).sum() + 0.5 * p[:-1] @ p[:-1]).backward()
        return p.grad

    w, b = linear.fit_logistic(x, y)
    assert gradient(w, b).abs().max() <= 1e-10  # Newton: stopped at its gradient tolerance
    monkeypatch.setattr(linear, "NEWTON_MAX_FEATURES", 0)  # the L-BFGS path of wide inputs
    w2, b2 = linear.fit_logistic(x, y)
    assert gradient(w2, b2).abs().max() < 1e-6
    assert torch.allclose(w, w2, atol=1e-6) and abs(float(b - b2)) < 1e-6
