"""Steering transforms T: *how* to move an activation. Each returns the update ``T(h) − h``.

All transforms are fitted from pooled *source* (steer away from) and *target* (steer towards) activations,
(n, d) each, and act coordinate-wise on any tensor whose last dimension is d.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from .errors import DsasError, check_activations, check_same_width
from .linear import fit_logistic


class Transform(nn.Module):
    """Base class: ``delta(h) = T(h) − h`` for h (..., d) in float32."""

    kind: ClassVar[str]
    names: ClassVar[tuple[str, ...]]  # tensor names, in save order

    def __init__(self, **tensors: Tensor) -> None:
        super().__init__()
        for key in self.names:
            self.register_buffer(key, tensors[key].detach().to(torch.float32).clone())

    @property
    def width(self) -> int:
        """Activation width d."""
        return int(getattr(self, self.names[0]).shape[-1])

    def delta(self, h: Tensor) -> Tensor:
        """(..., d) -> (..., d), or a tensor broadcastable to it."""
        raise NotImplementedError

    def affine(self) -> tuple[Tensor | None, Tensor] | None:
        """(a, d) with ``delta(h) = a ⊙ h + d`` (a None: 0), each (d,); None when the update is not affine."""
        return None

    def tensors(self) -> dict[str, Tensor]:
        """The learned state, for safetensors."""
        return {k: getattr(self, k) for k in self.names}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> "Transform":
        """Rebuild from :meth:`tensors`."""
        return cls(**{k: tensors[k] for k in cls.names})

    @classmethod
    def fit(cls, source: Tensor, target: Tensor) -> "Transform":
        """Fit from pooled source (n_s, d) and target (n_t, d) activations."""
        raise NotImplementedError

    @classmethod
    def expected_shapes(cls, width: int) -> dict[str, tuple[int, ...]]:
        """Shape of each saved tensor for a site of this width."""
        return {k: (width,) for k in cls.names}


def _checked(source: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    s = check_activations(source, "source activations")
    t = check_activations(target, "target activations")
    check_same_width(s, t, "source activations", "target activations")
    return s, t


class MeanShift(Transform):
    """CAA / mean difference: ``T(h) = h + (μ_target − μ_source)``."""

    kind = "mean_shift"
    names = ("shift",)

    def delta(self, h: Tensor) -> Tensor:
        return self.shift  # (d,)

    def affine(self) -> tuple[Tensor | None, Tensor]:
        return None, self.shift

    @classmethod
    def fit(cls, source: Tensor, target: Tensor) -> "MeanShift":
        s, t = _checked(source, target)
        return cls(shift=t.mean(0) - s.mean(0))


class ITIc(Transform):
    """ITI-c: ``T(h) = h + σ·ŵ``, ŵ the unit normal of a logistic probe source-vs-target (pointing to target),
    σ the standard deviation of source ∪ target activations projected on ŵ."""

    kind = "itic"
    names = ("direction", "sigma")

    def __init__(self, **tensors: Tensor) -> None:
        super().__init__(**tensors)
        self.register_buffer("vector", self.sigma * self.direction, persistent=False)  # (d,), precomputed

    def delta(self, h: Tensor) -> Tensor:
        return self.vector  # (d,)

    def affine(self) -> tuple[Tensor | None, Tensor]:
        return None, self.vector

    @classmethod
    def expected_shapes(cls, width: int) -> dict[str, tuple[int, ...]]:
        return {"direction": (width,), "sigma": ()}

    @classmethod
    def fit(cls, source: Tensor, target: Tensor) -> "ITIc":
        s, t = _checked(source, target)
        x = torch.cat([s, t])  # (n, d)
        y = torch.cat([torch.zeros(len(s)), torch.ones(len(t))])
        mean = x.mean(0)
        rms = (x - mean).pow(2).mean().sqrt().clamp_min(torch.finfo(torch.float64).tiny)
        w, _ = fit_logistic((x - mean) / rms, y)  # one global scale keeps the direction undistorted
        norm = w.norm()
        if norm == 0:
            raise DsasError("itic: the probe found no direction separating source from target (all weights 0); "
                            "check that the source and target prompt lists differ.")
        direction = w / norm
        sigma = (x @ direction).std()
        return cls(direction=direction, sigma=sigma)


def _match_quantiles(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Sort each column; if counts differ, resample the longer sorted set to the shorter one's length by
    linear interpolation at evenly spaced ranks (equal counts: plain sorted pairing, as 1-D OT)."""
    xs, ys = x.sort(0).values, y.sort(0).values
    n = min(len(xs), len(ys))

    def resample(v: Tensor) -> Tensor:
        if len(v) == n:
            return v
        pos = torch.linspace(0, len(v) - 1, n, dtype=torch.float64)
        lo = pos.floor().long()
        hi = (lo + 1).clamp_max(len(v) - 1)
        frac = (pos - lo).unsqueeze(1)
        return v[lo] * (1 - frac) + v[hi] * frac

    return resample(xs), resample(ys)


class LinearAct(Transform):
    """Linear-AcT: per-dimension affine map ``ω⊙h + β`` from 1-D optimal transport (sort, then least squares),
    applied only to coordinates inside the source support ``[min, max]``; outside it h is untouched."""

    kind = "linear_act"
    names = ("omega", "beta", "low", "high")

    def delta(self, h: Tensor) -> Tensor:
        inside = (h >= self.low) & (h <= self.high)  # (..., d)
        return torch.where(inside, (self.omega - 1) * h + self.beta, torch.zeros((), dtype=h.dtype, device=h.device))

    @classmethod
    def fit(cls, source: Tensor, target: Tensor) -> "LinearAct":
        s, t = _checked(source, target)
        x, y = _match_quantiles(s, t)  # (n, d) each, sorted per column
        xm, ym = x.mean(0), y.mean(0)
        var = (x - xm).pow(2).sum(0)
        cov = ((x - xm) * (y - ym)).sum(0)
        flat = var <= var.max() * 1e-24  # constant coordinates: a pure shift
        omega = torch.where(flat, torch.ones_like(var), cov / torch.where(flat, torch.ones_like(var), var))
        beta = ym - omega * xm
        return cls(omega=omega, beta=beta, low=s.min(0).values, high=s.max(0).values)


class Lineas(Transform):
    """LinEAS-style trainable affine ``ω⊙h + β``; starts as the identity (ω = 1, β = 0) and is learned
    end to end. ``fit`` returns the identity: train it with the E2E trainer."""

    kind = "lineas"
    names = ("omega", "beta")

    def __init__(self, **tensors: Tensor) -> None:
        nn.Module.__init__(self)
        self.omega = nn.Parameter(tensors["omega"].detach().to(torch.float32).clone())
        self.beta = nn.Parameter(tensors["beta"].detach().to(torch.float32).clone())

    def delta(self, h: Tensor) -> Tensor:
        return (self.omega - 1) * h + self.beta

    def affine(self) -> tuple[Tensor | None, Tensor]:
        return self.omega - 1, self.beta

    @classmethod
    def identity(cls, width: int) -> "Lineas":
        """ω = 1, β = 0."""
        return cls(omega=torch.ones(width), beta=torch.zeros(width))

    @classmethod
    def fit(cls, source: Tensor, target: Tensor) -> "Lineas":
        s, t = _checked(source, target)
        return cls.identity(s.shape[1])


TRANSFORMS: dict[str, type[Transform]] = {c.kind: c for c in (MeanShift, ITIc, LinearAct, Lineas)}


def transform_class(name: str) -> type[Transform]:
    """Look a transform up by name, with an error listing the known ones."""
    try:
        return TRANSFORMS[name]
    except KeyError:
        raise DsasError(f"unknown transform {name!r}; choose one of {sorted(TRANSFORMS)}.") from None
