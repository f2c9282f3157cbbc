"""Pooled-activation collection: the mean over tokens / positions of each site's output, per sample.

Only the pooled (B, d) means are kept (float32), which is all that fitting needs, in one growing buffer per site:
thousands of small long-lived tensors would pin freed activation memory in the C allocator's heap, and resident
memory would grow with the image size and the number of steps. The rows stay on the activations' device until
:meth:`PooledCollector.pooled` copies them to the CPU in one go, so collecting never waits for the device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .errors import DsasError
from .hooks import HookHandle, Site, observe


class PooledCollector(HookHandle):
    """Collect per-sample means at ``sites`` on every forward call while attached.

    Set ``mask`` (B, N) before a forward to average token sites over the masked-in tokens only (padding out);
    set ``rows`` (a slice or index tensor over the batch) to keep only some samples (e.g. the conditional half of a
    classifier-free-guidance batch); set ``enabled = False`` to skip calls (e.g. denoising steps not collected).
    Feature maps (B, d, H, W) are averaged over H and W.
    """

    def __init__(self, sites: Sequence[Site], keep_grad: bool = False) -> None:
        """``keep_grad=True`` keeps the pooled means on their device and in the autograd graph (E2E training)."""
        super().__init__()
        self.keep_grad = keep_grad
        self.sites = list(sites)
        self.mask: Tensor | None = None
        self.rows: slice | Tensor | None = None
        self.enabled = True
        self.store: dict[str, list[Tensor]] = {s.name: [] for s in self.sites}  # keep_grad: the pooled parts
        self._buffers: dict[str, tuple[Tensor, int]] = {}  # otherwise: (buffer (capacity, d), rows filled)
        observe(self.sites, self._take, into=self)

    def _take(self, site: Site, h: Tensor) -> None:
        if not self.enabled:
            return
        x = h if self.keep_grad else h.detach()  # (B, N, d) or (B, H, W, d)
        if x.ndim == 3 and self.mask is None:
            pooled = x.mean(1, dtype=torch.float32)  # no float32 copy of the whole map
        else:
            x = x.float()
            if site.layout == "channels":
                pooled = x.flatten(1, -2).mean(1)
            elif self.mask is not None and x.ndim == 3:
                if self.mask.shape != x.shape[:2]:
                    raise DsasError(f"site {site.name!r}: mask of shape {tuple(self.mask.shape)} does not match the "
                                    f"activations' (batch, tokens) = {tuple(x.shape[:2])}.")
                m = self.mask.to(x.device, torch.float32).unsqueeze(-1)  # (B, N, 1)
                pooled = (x * m).sum(1) / m.sum(1).clamp_min(1.0)
            else:
                pooled = x.flatten(1, -2).mean(1) if x.ndim > 2 else x
        if self.rows is not None:
            pooled = pooled[self.rows]
        if self.keep_grad:
            self.store[site.name].append(pooled)
            return
        buf, n = self._buffers.get(site.name, (None, 0))
        k = pooled.shape[0]
        if buf is None or n + k > buf.shape[0]:  # grow by doubling: few, early allocations
            grown = torch.empty(max(256, 2 * n, n + k), pooled.shape[-1], dtype=torch.float32, device=pooled.device)
            if buf is not None:
                grown[:n] = buf[:n]
            buf = grown
        buf[n:n + k] = pooled
        self._buffers[site.name] = (buf, n + k)

    def pooled(self) -> dict[str, Tensor]:
        """Every site's pooled activations, (n_samples_seen, d), in call order; on the CPU (with ``keep_grad``: on
        their device, in the autograd graph)."""
        empty = [s.name for s in self.sites if not (self.store[s.name] or s.name in self._buffers)]
        if empty:
            raise DsasError(f"no activations were collected at {empty[:3]}: these sites did not run. Check the "
                            "site names against the model (dsas sites MODEL).")
        if self.keep_grad:
            return {name: torch.cat(parts) for name, parts in self.store.items()}
        filled = {s.name: self._buffers[s.name] for s in self.sites}  # in site order
        return {name: buf[:n].to("cpu", copy=True) for name, (buf, n) in filled.items()}

    def clear(self) -> None:
        """Drop what was collected."""
        for parts in self.store.values():
            parts.clear()
        self._buffers.clear()
