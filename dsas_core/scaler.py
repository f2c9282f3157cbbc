"""Scalers α: *when* and *how strongly* to steer, per token or per image position, in [0, 1].

``ProbeScaler`` is the paper's: PCA to r components (scores standardised to unit variance), then an L2 logistic
regression (C = 1, balanced classes) on pooled *source* (steer here) vs *control* (leave alone) activations,
folded into a single ``sigmoid(w·h + b)``. A site whose k-fold held-out accuracy is below the gate is switched
off (α ≡ 0). ``ConstantScaler`` is α ≡ 1: plain steering. ``PromptScaler`` is the same folded probe read once per
input from a pooled prompt embedding the adapter puts in the handle's context, its α applied to every position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .errors import DsasError, check_activations, check_same_width
from .linear import fit_logistic, fit_pca

DEFAULT_COMPONENTS = 5
DEFAULT_GATE = 0.75
DEFAULT_FOLDS = 5


def logit_column(h: Tensor, weight_row: Tensor, bias_row: Tensor) -> Tensor:
    """w·h + b per position as a column, (..., d) -> (..., 1), from ``weight_row`` (1, d) and ``bias_row`` (1,).

    Eagerly: one matrix-vector product with its bias (one kernel); for a feature map seen width-last (a
    ``movedim`` view of a contiguous (B, d, ...) map) a batched one over (B, d, positions), which reads the map in
    place — a plain product would first copy it to make the width contiguous (at SD 1.5's 320 × 16² on one CPU
    thread 170 µs against 10). While ``torch.compile`` traces: a product and a sum over the width, which inductor
    fuses with the ops around it; a matrix product stays a separate library call on GPUs (inductor turns one with a
    single output column into a sum only on the CPU), reading a float32 copy of a half-precision stream that the
    fused form never writes."""
    if torch.compiler.is_compiling():
        return (h * weight_row).sum(-1, keepdim=True) + bias_row
    if h.ndim >= 3 and h.stride(-1) != 1:
        maps = h.movedim(-1, 1)  # (B, d, ...)
        if maps.is_contiguous():
            flat = maps.view(maps.shape[0], maps.shape[1], -1)  # (B, d, P)
            z = torch.baddbmm(bias_row.view(1, 1, 1), weight_row.expand(flat.shape[0], 1, -1), flat)  # (B, 1, P)
            return z.view(*h.shape[:-1], 1)
    return torch.nn.functional.linear(h, weight_row, bias_row)


@dataclass
class ProbeFit:
    """What fitting a probe measured, kept in the concept's diagnostics."""

    accuracy: float  # k-fold held-out balanced accuracy, source vs control
    gated: bool  # accuracy < gate: α ≡ 0 at this site
    n_source: int
    n_control: int


class Scaler(nn.Module):
    """Base class: ``forward(h (..., d)) -> α (...)`` in float32."""

    kind: ClassVar[str]
    names: ClassVar[tuple[str, ...]] = ()
    reads_context: ClassVar[bool] = False  # True: called as ``forward(h, context)`` with the handle's context
    per_input: ClassVar[bool] = False  # True: one α per input, from ``context[context_key]`` alone (input_alpha)
    context_key: ClassVar[str | None] = None
    gated: bool = False

    def __init__(self, **tensors: Tensor) -> None:
        super().__init__()
        for key in self.names:
            self.register_buffer(key, tensors[key].detach().to(torch.float32).clone())

    def tensors(self) -> dict[str, Tensor]:
        """The learned state, for safetensors."""
        return {k: getattr(self, k) for k in self.names}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> "Scaler":
        """Rebuild from :meth:`tensors`."""
        return cls(**{k: tensors[k] for k in cls.names})

    @classmethod
    def expected_shapes(cls, width: int, n_components: int) -> dict[str, tuple[int, ...]]:
        """Shape of each saved tensor."""
        return {}

    def column(self, h: Tensor, context: dict[str, Any] | None = None) -> Tensor:
        """α as a column, (..., d) -> (..., 1), ready to scale an update (the hooks' hot path)."""
        out = self.forward(h, context) if self.reads_context else self.forward(h)
        return out.unsqueeze(-1)

    def logistic(self) -> tuple[Tensor, Tensor] | None:
        """(w (d,), b ()) with α = sigmoid(w·h + b) at every position; None for any other form."""
        return None

    def input_alpha(self, context: dict[str, Any] | None, batch: int) -> Tensor:
        """α per input, (batch,) or (1,) for one input shared by the batch, where ``per_input`` is True."""
        raise NotImplementedError(f"the {self.kind!r} scaler reads the activations: its α is not one per input.")


class ConstantScaler(Scaler):
    """α ≡ 1 everywhere: plain (non-adaptive) steering."""

    kind = "constant"

    def forward(self, h: Tensor) -> Tensor:
        return torch.ones(h.shape[:-1], dtype=torch.float32, device=h.device)


class ProbeScaler(Scaler):
    """Per-position α = sigmoid(w·h + b), with the PCA + logistic regression folded into (w, b).

    The unfolded pieces are kept for inspection: ``mean`` (d,), ``components`` (r, d), ``scale`` (r,),
    ``coef`` (r,), ``intercept`` ().
    """

    kind = "probe"
    names = ("weight", "bias", "mean", "components", "scale", "coef", "intercept")

    def __init__(self, **tensors: Tensor) -> None:
        super().__init__(**tensors)
        self.register_buffer("weight_row", self.weight[None].clone(), persistent=False)  # (1, d)
        self.register_buffer("bias_row", self.bias[None].clone(), persistent=False)  # (1,)

    def forward(self, h: Tensor) -> Tensor:
        return self.column(h).squeeze(-1)  # (..., d) -> (...)

    def column(self, h: Tensor, context: dict[str, Any] | None = None) -> Tensor:
        return torch.sigmoid(logit_column(h, self.weight_row, self.bias_row))  # (..., d) -> (..., 1)

    def logistic(self) -> tuple[Tensor, Tensor]:
        return self.weight, self.bias

    @classmethod
    def expected_shapes(cls, width: int, n_components: int) -> dict[str, tuple[int, ...]]:
        r = n_components
        return {"weight": (width,), "bias": (), "mean": (width,), "components": (r, width), "scale": (r,),
                "coef": (r,), "intercept": ()}

    @classmethod
    def fit(
        cls, source: Tensor, control: Tensor, n_components: int = DEFAULT_COMPONENTS, gate: float = DEFAULT_GATE,
        folds: int = DEFAULT_FOLDS, seed: int = 0, groups: Tensor | None = None,
    ) -> tuple["ProbeScaler", ProbeFit]:
        """Fit on pooled source (n_s, d) vs control (n_c, d); returns the scaler and its diagnostics.

        ``groups`` (n_s + n_c,) keeps rows of one group (e.g. one prompt at several denoising steps) in the same
        fold, so the held-out accuracy is measured on unseen prompts.
        """
        s = check_activations(source, "source activations (scaler)")
        c = check_activations(control, "control activations (scaler)")
        check_same_width(s, c, "source activations", "control activations")
        x = torch.cat([s, c])  # (n, d)
        y = torch.cat([torch.ones(len(s)), torch.zeros(len(c))])
        if groups is None:
            groups = torch.arange(len(x))
        elif groups.shape != (len(x),):
            raise DsasError(f"groups must have one entry per sample ({len(x)}), got shape {tuple(groups.shape)}.")
        k, smallest_train = _folds(groups[: len(s)], groups[len(s):], folds)
        limit = min(smallest_train, x.shape[1])
        if not 1 <= n_components <= limit:
            raise DsasError(
                f"n_components={n_components} is too large: with {len(s)} source and {len(c)} control samples "
                f"of width {x.shape[1]}, a {k}-fold split leaves {smallest_train} training samples, so at most "
                f"{limit} components can be estimated. Use n_components <= {limit} (--components in the CLI), or give "
                "more prompts (16-32 per list)."
            )
        accuracy = _held_out_accuracy(x, y, groups, n_components, k, seed)
        w, b, parts = _fit_folded(x, y, n_components)
        scaler = cls(weight=w, bias=b, **parts)
        scaler.gated = accuracy < gate
        return scaler, ProbeFit(accuracy=accuracy, gated=scaler.gated, n_source=len(s), n_control=len(c))


class PromptScaler(Scaler):
    """One α per input, applied to every position: ``sigmoid(w·e + b)`` where ``e`` (B, D) is the input's pooled
    prompt embedding, read from ``context["prompt_pooled"]`` (the adapter puts it there before each forward).

    ``(w, b)`` is a folded :class:`ProbeScaler` fitted on pooled prompt embeddings of source vs control inputs;
    its input width D is the embedding's, not the site's (``ConceptConfig.scaler_input_width``).
    """

    kind = "prompt"
    names = ("weight", "bias")
    reads_context = True
    per_input = True
    context_key: ClassVar[str] = "prompt_pooled"

    def forward(self, h: Tensor, context: dict[str, Any] | None = None) -> Tensor:
        alpha = self.input_alpha(context, h.shape[0])  # (B,), or (1,): one prompt for the whole batch
        return alpha.view(-1, *([1] * (h.ndim - 2))).expand(h.shape[:-1])  # (B, ...) every position alike

    def input_alpha(self, context: dict[str, Any] | None, batch: int) -> Tensor:
        e = (context or {}).get(self.context_key)  # (B, D)
        if e is None:
            raise DsasError("the 'prompt' scaler needs the pooled prompt embedding in the handle's context "
                            f"(context[{self.context_key!r}]); steer through an adapter's steer()/attach().")
        if e.ndim != 2 or e.shape[-1] != self.weight.shape[0] or e.shape[0] not in (1, batch):
            raise DsasError(
                f"the 'prompt' scaler expected a pooled prompt embedding of shape ({batch}, "
                f"{self.weight.shape[0]}), got {tuple(e.shape)}: the concept was fitted with another text encoder.")
        return torch.sigmoid(e.float() @ self.weight + self.bias)  # (B,) or (1,)

    @classmethod
    def expected_shapes(cls, width: int, n_components: int) -> dict[str, tuple[int, ...]]:
        return {"weight": (width,), "bias": ()}

    @classmethod
    def from_probe(cls, probe: ProbeScaler) -> "PromptScaler":
        """The prompt scaler with a fitted probe's folded weights and gate."""
        scaler = cls(weight=probe.weight, bias=probe.bias)
        scaler.gated = probe.gated
        return scaler


def _folds(source_groups: Tensor, control_groups: Tensor, folds: int) -> tuple[int, int]:
    """(number of cross-validation folds, training rows left by the largest held-out fold)."""
    n_groups = [len(torch.unique(g)) for g in (source_groups, control_groups)]
    k = min(folds, *n_groups)
    if k < 2:
        raise DsasError(f"the scaler needs at least 2 distinct source and 2 distinct control inputs, got "
                        f"{n_groups[0]} and {n_groups[1]}: add prompts to the smaller set.")
    n = len(source_groups) + len(control_groups)
    return k, n - -(-n // k)


def max_components(source_groups: Tensor, control_groups: Tensor, width: int, folds: int = DEFAULT_FOLDS) -> int:
    """The most principal components a probe can estimate from these samples: one group id per source row
    (n_s,) and per control row (n_c,), inputs of ``width`` features."""
    return min(_folds(source_groups, control_groups, folds)[1], width)


def _fit_folded(x: Tensor, y: Tensor, r: int) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """PCA(r) + logistic regression, folded: α = sigmoid(w̃·h + b̃) with w̃ = Pᵀ(coef/scale), b̃ = b − w̃·μ."""
    pca = fit_pca(x, r)
    coef, intercept = fit_logistic(pca.scores(x), y)
    w = pca.components.T @ (coef / pca.scale)  # (d,)
    b = intercept - w @ pca.mean
    parts = {"mean": pca.mean, "components": pca.components, "scale": pca.scale, "coef": coef, "intercept": intercept}
    return w, b, parts


def _held_out_accuracy(x: Tensor, y: Tensor, groups: Tensor, r: int, k: int, seed: int) -> float:
    """Stratified, group-aware k-fold balanced accuracy of the folded probe."""
    gen = torch.Generator().manual_seed(seed)
    fold = torch.empty(len(y), dtype=torch.long)
    for label in (0, 1):
        members = torch.unique(groups[y == label])
        members = members[torch.randperm(len(members), generator=gen)]
        for i, g in enumerate(members.tolist()):
            fold[(groups == g) & (y == label)] = i % k
    pred = torch.empty_like(y)
    for f in range(k):
        test = fold == f
        w, b, _ = _fit_folded(x[~test], y[~test], r)
        pred[test] = ((x[test] @ w + b) > 0).to(y.dtype)
    recall = [((pred == y) & (y == label)).sum() / (y == label).sum() for label in (0, 1)]
    return float((recall[0] + recall[1]) / 2)


class E2EScaler(Scaler):
    """A scaler head trained end to end with the transform: α = sigmoid(w·h + b), or with ``relu`` set,
    clamp(w·h + b, 0, 1) (a ReLU kept inside [0, 1]). Trainable: ``weight`` (d,), ``bias`` ()."""

    kind = "e2e"
    names = ("weight", "bias", "relu")

    def __init__(self, **tensors: Tensor) -> None:
        nn.Module.__init__(self)
        self.weight = nn.Parameter(tensors["weight"].detach().to(torch.float32).clone())
        self.bias = nn.Parameter(tensors["bias"].detach().to(torch.float32).clone())
        self.register_buffer("relu", tensors["relu"].detach().to(torch.float32).clone())
        self.use_relu = bool(self.relu.item())  # read once here, never in the hot path

    def forward(self, h: Tensor) -> Tensor:
        return self.column(h).squeeze(-1)  # (..., d) -> (...)

    def column(self, h: Tensor, context: dict[str, Any] | None = None) -> Tensor:
        z = logit_column(h, self.weight[None], self.bias[None])  # (..., d) -> (..., 1)
        return z.clamp(0.0, 1.0) if self.use_relu else torch.sigmoid(z)

    def logistic(self) -> tuple[Tensor, Tensor] | None:
        return None if self.use_relu else (self.weight, self.bias)

    @classmethod
    def from_probe(cls, probe: ProbeScaler, relu: bool = False) -> "E2EScaler":
        """Warm start at a fitted probe; the ReLU head matches the sigmoid's slope at α = ½."""
        w, b = probe.weight.detach(), probe.bias.detach()
        if relu:
            w, b = w / 4, b / 4 + 0.5
        return cls(weight=w, bias=b, relu=torch.tensor(float(relu)))

    @classmethod
    def expected_shapes(cls, width: int, n_components: int) -> dict[str, tuple[int, ...]]:
        return {"weight": (width,), "bias": (), "relu": ()}


SCALERS: dict[str, type[Scaler]] = {c.kind: c for c in (ProbeScaler, ConstantScaler, PromptScaler, E2EScaler)}
SCALER_NAMES = ("probe", "prompt", "constant", "e2e")  # every name the config accepts; adapters supply the rest


def scaler_class(name: str) -> type[Scaler]:
    """Look a per-site scaler up by name, with an error listing the known ones."""
    if name in SCALERS:
        return SCALERS[name]
    if name in SCALER_NAMES:
        raise DsasError(f"scaler {name!r} is not available in this version; use one of {sorted(SCALERS)}.")
    raise DsasError(f"unknown scaler {name!r}; choose one of {list(SCALER_NAMES)}.")
