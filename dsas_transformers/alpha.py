"""Per-token α of one generation, assembled from the core's per-call records, and rendered as ANSI or HTML.

The core records one α tensor (B, N) per forward call per site. In ``generate`` with the KV cache the first call
is the prefill (N = prompt length) and each later call one decode step (N = 1); without the cache every call
re-reads the whole sequence. :class:`AlphaTokens` lines the calls up along the sequence: position t holds the α
computed when token t was read, so prompt tokens are ``prefill`` and generated tokens are ``decode``.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass
class AlphaTokens:
    """α per site and token for one concept and one generation.

    ``by_site`` (S, B, T) float32 (NaN where a call was not recorded); ``sites`` (S,) names; ``ungated`` the sites
    whose α is live (adaptive and not gated off); ``ids`` (B, T) the tokens read; ``mask`` (B, T) 1 for real
    tokens, 0 for padding; ``phase`` (T,) ``"prefill"`` or ``"decode"``. The last generated token is never read by
    the model, so T is one less than the length of ``generate``'s output.
    """

    concept: str
    sites: list[str]
    ungated: list[str]
    by_site: Tensor
    ids: Tensor
    mask: Tensor
    phase: list[str]

    @property
    def mean(self) -> Tensor:
        """(B, T) mean α over the ungated sites (zeros if every site is gated off), NaN on padding."""
        live = [self.sites.index(s) for s in self.ungated]
        m = self.by_site[live].mean(0) if live else torch.zeros_like(self.by_site[0])
        return m.masked_fill(self.mask == 0, float("nan"))

    def site(self, name: str) -> Tensor:
        """(B, T) α at one site."""
        return self.by_site[self.sites.index(name)]

    def per_text(self, exclude: Sequence[int] = ()) -> Tensor:
        """(B,) the mean α (of :attr:`mean`) over each row's real tokens, leaving out the token ids in ``exclude``
        (e.g. ``tokenizer.all_special_ids``: fitting pools without special tokens by default)."""
        m = self.mean
        if exclude:
            m = m.masked_fill(torch.isin(self.ids, torch.tensor(list(exclude), dtype=self.ids.dtype)), float("nan"))
        return m.nanmean(dim=-1)

    def per_site(self, row: int | None = None) -> dict[str, float]:
        """The layer profile: mean α over the real tokens (of one row, or all rows) at each site."""
        rows = slice(None) if row is None else slice(row, row + 1)
        keep = self.mask[rows].bool()
        return {s: self.by_site[i][rows][keep].nanmean().item() for i, s in enumerate(self.sites)}

    def pieces(self, tokenizer: Any, row: int = 0) -> list[tuple[str, float]]:
        """(text piece, α) for the real tokens of one row; pieces keep the tokenizer's spacing."""
        keep = self.mask[row].bool()
        ids = self.ids[row][keep].tolist()
        alphas = self.mean[row][keep].tolist()
        return list(zip(token_pieces(tokenizer, ids), alphas))

    def ansi(self, tokenizer: Any, row: int = 0) -> str:
        """One terminal line: each token on a background from white (α = 0) to red (α = 1)."""
        out = []
        for piece, a in self.pieces(tokenizer, row):
            r, g, b = _colour(a)
            out.append(f"\x1b[48;2;{r};{g};{b}m\x1b[38;2;0;0;0m{piece}\x1b[0m")
        return "".join(out)

    def plain(self, tokenizer: Any, row: int = 0) -> str:
        """One line of text for files and pipes: each token followed by its α in brackets ('-' where unrecorded)."""
        return "".join(f"{piece}[{'-' if a != a else f'{a:.2f}'}]" for piece, a in self.pieces(tokenizer, row))

    def html(self, tokenizer: Any, row: int = 0) -> str:
        """An HTML ``<div>`` with one ``<span>`` per token, coloured like :meth:`ansi`, α in the tooltip."""
        spans = []
        for piece, a in self.pieces(tokenizer, row):
            r, g, b = _colour(a)
            text = html.escape(piece).replace("\n", "<br>")
            spans.append(f'<span style="background:rgb({r},{g},{b})" title="α={a:.3f}">{text}</span>')
        return f'<div class="dsas-alpha" style="font-family:monospace;white-space:pre-wrap">{"".join(spans)}</div>'


def _colour(a: float) -> tuple[int, int, int]:
    """White (α = 0) to red (α = 1); grey for an unrecorded α."""
    if a != a:  # NaN
        return 200, 200, 200
    a = min(max(a, 0.0), 1.0)
    return 255, int(round(255 * (1 - a))), int(round(255 * (1 - a)))


def token_pieces(tokenizer: Any, ids: list[int]) -> list[str]:
    """The text each token adds, by decoding growing prefixes (keeps spaces for BPE, SentencePiece, word level)."""
    pieces, previous = [], ""
    for i in range(len(ids)):
        text = tokenizer.decode(ids[: i + 1])
        pieces.append(text[len(previous):] if text.startswith(previous) else tokenizer.decode(ids[i : i + 1]))
        previous = text
    return pieces
