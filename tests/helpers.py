"""Planted data and tiny modules shared by the core tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn

D, N = 64, 32
SCALES = (1e-2, 1.0, 1e2)


def unit(d: int = D, seed: int = 0) -> Tensor:
    """A random unit direction (d,), float64."""
    u = torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return u / u.norm()


def cloud(n: int, scale: float, seed: int, shift: Tensor | None = None, noise: float = 1.0) -> Tensor:
    """n samples (n, D): isotropic noise whose vectors have norm ≈ noise·scale, plus ``shift``·scale."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g, dtype=torch.float64) * (noise * scale / D**0.5)
    return x if shift is None else x + shift * scale


class Toy(nn.Module):
    """Two stacked linear layers; ``inner`` outputs (B, N, D) tokens, ``conv`` (B, D, H, W) maps."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.inner = nn.Linear(D, D)
        self.outer = nn.Linear(D, D)
        self.conv = nn.Conv2d(D, D, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.outer(torch.tanh(self.inner(x)))
