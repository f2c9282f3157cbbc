"""E2E-DSAS: learn the steering map and the scaler together, end to end through the model.

Every site gets a trainable per-coordinate affine map (``lineas``: ω⊙h + β) and a trainable scaler head
(``e2e``: sigmoid, or a ReLU kept in [0, 1]). With all of them attached at λ = 1, the model runs on the source,
target and control inputs; the loss is

    Σ_sites  W₂²(steered source, target) / var(target)                       distributional term (1-D, per coordinate)
  + μ · Σ_sites  ‖steered control − unsteered control‖² / ‖unsteered control‖²   retain term (keep control in place)
  + ν · Σ_sites  mean(|ω − 1| + |β| / scale)                                 optional sparsity

on pooled (per-input mean) activations. The model's own weights are frozen and never change. Adapters supply the
forward pass: ``forward(set_name, indices, collector)`` runs the model on those inputs of the set, setting
``collector.mask`` first where padding must be left out of the means.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .collect import PooledCollector
from .concept import Concept, ConceptConfig, SiteSteer
from .errors import DsasError
from .fitting import fit_site
from .hooks import Site, attach
from .scaler import E2EScaler, ProbeScaler
from .transforms import Lineas, _match_quantiles

Forward = Callable[[str, list[int], PooledCollector], None]
SETS = ("source", "target", "control")


@dataclass
class E2EConfig:
    """Hyper-parameters of E2E training (none is given by the paper: these are measured defaults)."""

    steps: int = 300
    lr: float = 1e-2
    retain_weight: float = 1.0
    sparsity: float = 0.0
    head: str = "sigmoid"  # or "relu"
    val_fraction: float = 0.25
    eval_every: int = 10
    patience: int = 60
    seed: int = 0

    def __post_init__(self) -> None:
        if self.head not in ("sigmoid", "relu"):
            raise DsasError(f"E2E head must be 'sigmoid' or 'relu', got {self.head!r}.")
        if not 0.0 <= self.val_fraction < 0.9 or self.steps < 1 or self.lr <= 0 or self.retain_weight < 0:
            raise DsasError("E2E settings out of range: need steps >= 1, lr > 0, retain_weight >= 0, "
                            f"0 <= val_fraction < 0.9 (got {self}).")


def add_e2e_arguments(parser: argparse.ArgumentParser) -> None:
    """The E2E settings as command-line flags (``dsas fit`` and ``dsas llm fit`` share them)."""
    d = E2EConfig()
    parser.add_argument("--e2e-steps", type=int, default=d.steps, help="E2E training steps (--scaler e2e)")
    parser.add_argument("--e2e-lr", type=float, default=d.lr, help="E2E learning rate")
    parser.add_argument("--retain-weight", type=float, default=d.retain_weight,
                        help="E2E weight of keeping control activations")
    parser.add_argument("--e2e-head", default=d.head, choices=["sigmoid", "relu"], help="E2E scaler head")


def e2e_config_from_args(args: argparse.Namespace) -> E2EConfig:
    """The ``E2EConfig`` those flags (and ``--seed``) describe."""
    return E2EConfig(steps=args.e2e_steps, lr=args.e2e_lr, retain_weight=args.retain_weight, head=args.e2e_head,
                     seed=args.seed)


def w2_per_site(steered: Tensor, target: Tensor) -> Tensor:
    """Mean over coordinates of the squared 1-D Wasserstein-2 distance, by sorting, over the target's variance."""
    x, y = _match_quantiles(steered, target)  # (n, d) each, sorted per column
    return (x - y).pow(2).mean() / target.var(0).mean().clamp_min(1e-12)


def retain_per_site(steered: Tensor, reference: Tensor) -> Tensor:
    """‖steered − reference‖² over ‖reference‖², averaged over inputs."""
    return (steered - reference).pow(2).sum(-1).mean() / reference.pow(2).sum(-1).mean().clamp_min(1e-12)


def _collect(sites: Sequence[Site], forward: Forward, set_name: str, idx: list[int], keep_grad: bool) -> dict[str, Tensor]:
    with PooledCollector(sites, keep_grad=keep_grad) as col:
        forward(set_name, idx, col)
    return col.pooled() if not keep_grad else {k: torch.cat(v) for k, v in col.store.items()}


def train_e2e(
    name: str,
    sites: Sequence[Site],
    forward: Forward,
    counts: dict[str, int],
    config: E2EConfig | None = None,
    model: nn.Module | None = None,
    progress: bool = True,
    **concept_config: Any,
) -> tuple[Concept, dict[str, Any]]:
    """Train a ``lineas`` + ``e2e`` concept; returns it and a training report (losses, W₂ and retain per site).

    ``counts``: number of inputs in each of the sets "source", "target", "control". ``model``: the whole model,
    whose parameters are kept out of the autograd graph while training (else only the hooked modules').
    """
    cfg = config or E2EConfig()
    missing = [s for s in SETS if counts.get(s, 0) < 4]
    if missing:
        raise DsasError(f"E2E training needs at least 4 inputs in each set; too few in {missing}.")
    gen = torch.Generator().manual_seed(cfg.seed)
    split: dict[str, tuple[list[int], list[int]]] = {}
    for s in SETS:
        perm = torch.randperm(counts[s], generator=gen).tolist()
        n_val = int(round(cfg.val_fraction * counts[s])) if cfg.val_fraction > 0 else 0
        split[s] = (sorted(perm[n_val:]), sorted(perm[:n_val]))

    with torch.no_grad():  # unsteered references, and a probe to warm-start each scaler head
        ref = {s: _collect(sites, forward, s, list(range(counts[s])), keep_grad=False) for s in SETS}
    pairs: dict[str, SiteSteer] = {}
    for site in sites:
        train = {s: ref[s][site.name][split[s][0]] for s in SETS}
        probe_pair, _ = fit_site(train["source"], train["target"], train["control"], "mean_shift", "probe", gate=0.0)
        assert isinstance(probe_pair.scaler, ProbeScaler)
        width = ref["source"][site.name].shape[-1]
        pairs[site.name] = SiteSteer(Lineas.identity(width), E2EScaler.from_probe(probe_pair.scaler, cfg.head == "relu"))
    widths = {s.name: int(ref["source"][s.name].shape[-1]) for s in sites}
    concept = Concept(ConceptConfig(name=name, transform="lineas", scaler="e2e", sites=[s.name for s in sites],
                                    site_widths=widths, gate=0.0, **concept_config), pairs)
    device = next(iter(ref["source"].values())).device
    params = [p for pair in pairs.values() for m in (pair.transform, pair.scaler) for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    scale = {s: ref["target"][s].abs().mean().clamp_min(1e-12) for s in widths}

    def loss_on(which: int) -> tuple[Tensor, dict[str, float], dict[str, float]]:
        steered = {s: _collect(sites, forward, s, split[s][which], keep_grad=True) for s in ("source", "control")}
        w2 = {site: w2_per_site(steered["source"][site], ref["target"][site][split["target"][which]]) for site in widths}
        keep = {site: retain_per_site(steered["control"][site], ref["control"][site][split["control"][which]])
                for site in widths}
        total = sum(w2.values()) + cfg.retain_weight * sum(keep.values())
        if cfg.sparsity > 0:
            total = total + cfg.sparsity * sum(((p.transform.omega - 1).abs().mean() +
                                                (p.transform.beta.abs() / scale[s]).mean()) for s, p in pairs.items())
        return total, {k: float(v.detach()) for k, v in w2.items()}, {k: float(v.detach()) for k, v in keep.items()}

    with torch.no_grad():
        w2_before = {s: float(w2_per_site(ref["source"][s], ref["target"][s])) for s in widths}
    frozen = _freeze([model] if model is not None else [s.module for s in sites])
    best: tuple[float, dict[str, Any]] | None = None
    history: list[dict[str, float]] = []
    since_best = 0
    try:
        with attach(sites, {concept: 1.0}):
            bar = tqdm(range(cfg.steps), desc=f"E2E {name}", disable=not progress, leave=False)
            for step in bar:
                opt.zero_grad()
                loss, _, _ = loss_on(0)
                loss.backward()
                opt.step()
                if step % cfg.eval_every == 0 or step == cfg.steps - 1:
                    val_which = 1 if cfg.val_fraction > 0 else 0
                    with torch.no_grad():
                        val, _, _ = loss_on(val_which)
                    history.append({"step": step, "train": float(loss.detach()), "val": float(val)})
                    bar.set_postfix(train=f"{float(loss.detach()):.4f}", val=f"{float(val):.4f}")
                    if best is None or float(val) < best[0]:
                        best = (float(val), copy.deepcopy({k: (p.transform.state_dict(), p.scaler.state_dict())
                                                           for k, p in pairs.items()}))
                        since_best = 0
                    else:
                        since_best += cfg.eval_every
                        if since_best >= cfg.patience:
                            break
            assert best is not None
            for k, (t_state, s_state) in best[1].items():
                pairs[k].transform.load_state_dict(t_state)
                pairs[k].scaler.load_state_dict(s_state)
            with torch.no_grad():
                steered = {s: _collect(sites, forward, s, list(range(counts[s])), keep_grad=False) for s in ("source", "control")}
    finally:
        _restore(frozen)
    w2_after = {s: float(w2_per_site(steered["source"][s].to(device), ref["target"][s])) for s in widths}
    retain_after = {s: float(retain_per_site(steered["control"][s].to(device), ref["control"][s]).sqrt()) for s in widths}
    for s in widths:
        concept.config.diagnostics[s] = {"gated": False, "w2_before": w2_before[s], "w2_after": w2_after[s],
                                         "control_moved": retain_after[s], "n_source": counts["source"],
                                         "n_target": counts["target"], "n_control": counts["control"]}
    concept.config.fitted_on.setdefault("e2e", {}).update(vars(cfg))
    report = {"history": history, "w2_before": w2_before, "w2_after": w2_after, "control_moved": retain_after,
              "best_val": best[0]}
    return concept, report


def _freeze(modules: Sequence[nn.Module]) -> list[tuple[nn.Parameter, bool]]:
    """Turn off gradients of the model's own parameters (restored afterwards)."""
    seen: dict[int, tuple[nn.Parameter, bool]] = {}
    for root in modules:
        for p in root.parameters():
            seen.setdefault(id(p), (p, p.requires_grad))
            p.requires_grad_(False)
    return list(seen.values())


def _restore(saved: list[tuple[nn.Parameter, bool]]) -> None:
    for p, flag in saved:
        p.requires_grad_(flag)
