"""Shared pieces of the fused-update tests: a probe, the affine transforms, a float64 reference, a toy site."""

import torch
from torch import nn

from dsas_core import Concept, ConceptConfig, PromptScaler, SiteSteer, fit_from_activations
from dsas_core.scaler import ProbeScaler
from dsas_core.transforms import ITIc, Lineas, MeanShift, Transform

C = 40  # site width


def probe(g: torch.Generator, width: int = C) -> ProbeScaler:
    """A logistic scaler with random folded weights."""
    z = torch.zeros(2)
    return ProbeScaler(weight=torch.randn(width, generator=g) / 5, bias=torch.tensor(0.3), mean=torch.zeros(width),
                       components=torch.zeros(2, width), scale=torch.ones(2), coef=z, intercept=torch.tensor(0.0))


def transforms(g: torch.Generator) -> dict[str, Transform]:
    """Every transform whose update is affine."""
    return {"mean_shift": MeanShift(shift=torch.randn(C, generator=g)),
            "itic": ITIc(direction=torch.randn(C, generator=g), sigma=torch.tensor(0.7)),
            "lineas": Lineas(omega=1 + torch.randn(C, generator=g) / 3, beta=torch.randn(C, generator=g))}


def reference(h: torch.Tensor, layout: str, scaler: ProbeScaler | None, transform: Transform, lam: float,
              rows: torch.Tensor | None, per_sample: torch.Tensor | None = None) -> torch.Tensor:
    """x + λ·α·Δ in float64, α of sample rows[b] when rows are given; without a scaler α is ``per_sample`` (B,),
    or 1."""
    x = (h.movedim(1, -1) if layout == "channels" else h).double()
    if scaler is None:
        alpha = torch.ones(()) if per_sample is None else per_sample.view(-1, *[1] * (x.ndim - 1))
        alpha = alpha.double()
    else:
        alpha = torch.sigmoid(x @ scaler.weight.double() + scaler.bias.double())[..., None]
    if rows is not None:
        alpha = alpha[rows]
    a, d = transform.affine()
    delta = d.double() if a is None else a.double() * x + d.double()
    y = x + lam * alpha * delta
    return y.movedim(-1, 1) if layout == "channels" else y


class Source(nn.Module):
    """A module whose output is a fixed tensor: a site with nothing else around it."""

    def __init__(self, t: torch.Tensor) -> None:
        super().__init__()
        self.t = t

    def forward(self) -> torch.Tensor:
        return self.t


def concept(transform: str = "mean_shift") -> Concept:
    """A probe-scaled concept on the one site "s", fitted on random activations (gate 0: not gated)."""
    g = torch.Generator().manual_seed(1)
    acts = {k: {"s": torch.randn(16, C, generator=g) + (i == 0)} for i, k in enumerate(("source", "target", "control"))}
    return fit_from_activations(f"c_{transform}", acts["source"], acts["target"], acts["control"],
                                transform=transform, scaler="probe", gate=0.0, progress=False)


def one_site_prompt_concept(transform: str, g: torch.Generator) -> Concept:
    """A prompt-scaler concept on the one site "s" (text width 6)."""
    update = transforms(g)[transform]
    steer = SiteSteer(update, PromptScaler(weight=torch.randn(6, generator=g), bias=torch.tensor(0.1)))
    cfg = ConceptConfig(name="p", transform=transform, scaler="prompt", sites=["s"], site_widths={"s": C},
                        scaler_input_width=6)
    return Concept(cfg, {"s": steer})
