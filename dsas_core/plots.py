"""Pareto plots shared by ``dsas eval`` and ``dsas llm eval``: one panel per score, one curve per method, every
point labelled with its strength λ. matplotlib is imported only when a plot is drawn."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

Curves = dict[str, list[dict[str, float]]]  # method label -> points, one per strength (λ = 0 first)


@dataclass(frozen=True)
class Axis:
    """Which key of the points an axis shows, its label, a factor (100 for %), an optional symlog threshold and an
    optional reference line (in the plotted unit)."""

    key: str
    label: str
    factor: float = 1.0
    symlog: float | None = None
    line: float | None = None


@dataclass(frozen=True)
class Panel:
    """One panel: the curves and the two axes they are drawn on."""

    curves: Curves
    x: Axis
    y: Axis


def plot_panels(panels: Sequence[Panel], path: Path | str, title: str, size: tuple[float, float] = (5.0, 4.2),
                dpi: int = 100, styles: dict[str, str] | None = None) -> None:
    """Draw the panels side by side into a PNG; ``styles`` maps a method label to a matplotlib format ("o--")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = styles or {}
    fig, axes = plt.subplots(1, len(panels), figsize=(size[0] * len(panels), size[1]), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        x, y = panel.x, panel.y
        for name, pts in panel.curves.items():
            xs = [x.factor * p[x.key] for p in pts]
            ys = [y.factor * p[y.key] for p in pts]
            ax.plot(xs, ys, styles.get(name, "o-"), label=name)
            for px, py, p in zip(xs[1:], ys[1:], pts[1:]):
                ax.annotate(f"{p['strength']:g}", (px, py), fontsize=7, textcoords="offset points", xytext=(3, 3))
        if x.symlog is not None:
            ax.set_xscale("symlog", linthresh=x.symlog)
        if x.line is not None:
            ax.axvline(x.line, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(x.label)
        ax.set_ylabel(y.label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
