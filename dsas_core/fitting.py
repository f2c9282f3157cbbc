"""Fit a concept from pooled activations: the transform on source vs target, the scaler on source vs control."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .concept import Concept, ConceptConfig, SiteSteer
from .errors import DsasError
from .scaler import DEFAULT_COMPONENTS, DEFAULT_GATE, ConstantScaler, ProbeScaler, Scaler, max_components
from .transforms import transform_class


def fit_site(
    source: Tensor, target: Tensor, control: Tensor | None, transform: str, scaler: str,
    n_components: int = DEFAULT_COMPONENTS, gate: float = DEFAULT_GATE, seed: int = 0,
    groups: tuple[Tensor, Tensor] | None = None,
) -> tuple[SiteSteer, dict[str, Any]]:
    """Fit one site from pooled (n, d) activations; returns the pair and its diagnostics.

    ``groups`` = (source groups (n_s,), control groups (n_c,)): rows sharing a group id (one prompt seen at several
    steps) stay in one cross-validation fold."""
    t = transform_class(transform).fit(source, target)
    diag: dict[str, Any] = {"n_source": int(source.shape[0]), "n_target": int(target.shape[0])}
    s: Scaler
    if scaler == "probe":
        if control is None:
            raise DsasError("the 'probe' scaler needs control activations (inputs to leave alone).")
        both = None if groups is None else torch.cat([groups[0], groups[1] + int(groups[0].max()) + 1])
        s, probe = ProbeScaler.fit(source, control, n_components=n_components, gate=gate, seed=seed, groups=both)
        diag |= {"accuracy": probe.accuracy, "gated": probe.gated, "n_control": probe.n_control}
    elif scaler == "constant":
        s = ConstantScaler()
        diag |= {"gated": False}
    else:
        raise DsasError(f"scaler {scaler!r} cannot be fitted from pooled activations here; use 'probe' or 'constant'.")
    return SiteSteer(t, s), diag


def fit_from_activations(
    name: str,
    source: Mapping[str, Tensor],
    target: Mapping[str, Tensor],
    control: Mapping[str, Tensor] | None,
    transform: str = "mean_shift",
    scaler: str = "probe",
    n_components: int = DEFAULT_COMPONENTS,
    gate: float = DEFAULT_GATE,
    seed: int = 0,
    groups: tuple[Tensor, Tensor] | None = None,
    progress: bool = True,
    cap_components: bool = False,
    **config: Any,
) -> Concept:
    """Fit a concept from ``{site: (n, d)}`` pooled activations of the three sets.

    ``cap_components``: use fewer than ``n_components`` where the samples or the narrowest site cannot support
    them (the number used is the config's), instead of raising. Extra keyword arguments go to
    :class:`ConceptConfig` (``source_text``, ``model_class``, ``fitted_on``, ...).
    """
    ConceptConfig(name=name, transform=transform, scaler=scaler, sites=["_"], site_widths={"_": 1})  # validate names early
    sites = list(source)
    for what, acts in (("target", target), ("control", control)):
        if acts is not None and set(acts) != set(sites):
            raise DsasError(f"{what} activations cover sites {sorted(acts)[:3]}..., source covers {sites[:3]}...: "
                            "collect all three sets at the same sites.")
    if cap_components and scaler == "probe" and control is not None and sites:
        first = sites[0]
        src_groups, ctl_groups = groups if groups is not None else (
            torch.arange(len(source[first])), torch.arange(len(control[first])) + len(source[first]))
        width = min(int(source[site].shape[-1]) for site in sites)
        n_components = min(n_components, max_components(src_groups, ctl_groups, width))
    pairs: dict[str, SiteSteer] = {}
    diagnostics: dict[str, dict[str, Any]] = {}
    for site in tqdm(sites, desc=f"fitting {name}", disable=not progress, leave=False):
        try:
            pairs[site], diagnostics[site] = fit_site(
                source[site], target[site], None if control is None else control[site], transform, scaler,
                n_components=n_components, gate=gate, seed=seed, groups=groups)
        except DsasError as err:
            raise DsasError(f"site {site!r}: {err}") from None
    widths = {site: int(source[site].shape[-1]) for site in sites}
    cfg = ConceptConfig(name=name, transform=transform, scaler=scaler, sites=sites, site_widths=widths,
                        n_components=n_components, gate=gate, diagnostics=diagnostics, **config)
    return Concept(cfg, pairs)
