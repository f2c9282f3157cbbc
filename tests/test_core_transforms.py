"""Transforms recover planted structure at activation scales 1e-2, 1 and 1e2."""

import pytest
import torch

from dsas_core import DsasError, ITIc, Lineas, LinearAct, MeanShift
from dsas_core.transforms import transform_class
from helpers import D, N, SCALES, cloud, unit


@pytest.mark.parametrize("scale", SCALES)
def test_mean_shift_recovers_a_planted_shift_within_one_percent(scale):
    shift = 4 * unit(seed=1)
    src = cloud(N, scale, seed=2, noise=0.01)
    tgt = cloud(N, scale, seed=3, shift=shift, noise=0.01)
    t = MeanShift.fit(src, tgt)
    err = (t.shift.double() - shift * scale).norm() / (shift * scale).norm()
    assert err <= 1e-2


@pytest.mark.parametrize("scale", SCALES)
def test_itic_direction_has_cosine_above_0_99_with_the_planted_one(scale):
    u = unit(seed=4)
    t = ITIc.fit(cloud(N, scale, seed=5), cloud(N, scale, seed=6, shift=4 * u))
    assert float(t.direction.double() @ u) >= 0.99
    assert t.sigma.item() > 0


def _reference_linear_act(src, tgt):
    """Independent sort-and-regress computation, coordinate by coordinate, in float64."""
    omega, beta = [], []
    for j in range(src.shape[1]):
        x = sorted(src[:, j].tolist())
        y = sorted(tgt[:, j].tolist())
        xm, ym = sum(x) / len(x), sum(y) / len(y)
        sxx = sum((a - xm) ** 2 for a in x)
        sxy = sum((a - xm) * (b - ym) for a, b in zip(x, y))
        omega.append(sxy / sxx)
        beta.append(ym - sxy / sxx * xm)
    return torch.tensor(omega, dtype=torch.float64), torch.tensor(beta, dtype=torch.float64)


@pytest.mark.parametrize("scale", SCALES)
def test_linear_act_matches_an_independent_sort_and_regress_to_1e_5(scale):
    g = torch.Generator().manual_seed(7)
    src = torch.randn(N, D, generator=g, dtype=torch.float64) * scale
    tgt = (torch.randn(N, D, generator=g, dtype=torch.float64) * 2 + 1) * scale
    t = LinearAct.fit(src, tgt)
    omega, beta = _reference_linear_act(src, tgt)
    assert torch.allclose(t.omega.double(), omega, rtol=1e-5, atol=0)
    assert torch.allclose(t.beta.double(), beta, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("scale", SCALES)
def test_linear_act_leaves_values_outside_the_source_support_untouched(scale):
    g = torch.Generator().manual_seed(8)
    src = torch.randn(N, D, generator=g) * scale
    t = LinearAct.fit(src, src * 3 + scale)
    h = torch.stack([src.max(0).values * 1.5 + scale, src.min(0).values * 1.5 - scale])  # outside, both sides
    assert torch.equal(t.delta(h), torch.zeros_like(h))
    inside = src.mean(0, keepdim=True)
    expected = (t.omega - 1) * inside + t.beta
    assert torch.allclose(t.delta(inside), expected, rtol=1e-6, atol=0)


def test_linear_act_with_unequal_counts_interpolates_the_longer_sorted_set():
    src = torch.arange(4, dtype=torch.float64).reshape(4, 1)  # 0 1 2 3
    tgt = torch.arange(7, dtype=torch.float64).reshape(7, 1) * 2  # 0 2 .. 12, resampled at ranks 0, 2, 4, 6
    t = LinearAct.fit(src, tgt)
    assert t.omega.item() == pytest.approx(4.0, abs=1e-6)
    assert t.beta.item() == pytest.approx(0.0, abs=1e-6)


def test_lineas_starts_as_the_identity():
    t = Lineas.fit(cloud(N, 1.0, seed=9), cloud(N, 1.0, seed=10, shift=unit()))
    h = torch.randn(3, 5, D)
    assert torch.equal(t.delta(h), torch.zeros_like(h))
    assert sum(p.numel() for p in t.parameters() if p.requires_grad) == 2 * D


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(0, D), "need at least 2"),
    (torch.zeros(1, D), "need at least 2"),
    (torch.full((N, D), float("nan")), "NaN or inf"),
    (torch.full((N, D), float("inf")), "NaN or inf"),
    (torch.zeros(N, D + 1), "width"),
    (torch.zeros(N), "shape (n, d)"),
])
def test_bad_activation_sets_are_refused_with_a_clear_error(bad, message):
    with pytest.raises(DsasError, match=__import__("re").escape(message)):
        MeanShift.fit(bad, cloud(N, 1.0, seed=11).float())


def test_an_unknown_transform_name_lists_the_known_ones():
    with pytest.raises(DsasError, match="choose one of .*linear_act"):
        transform_class("lineaer_act")
