"""Errors raised by dsas, and the checks shared by every entry point.

Every error says what was received, what was expected, and how to fix it.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor


class DsasError(ValueError):
    """Bad input to dsas: the message names the problem and the fix."""


def loading_failed(what: str, err: Exception, fix: str) -> DsasError:
    """The error for a model that would not load: the library's reason, without its pointer to a traceback dsas
    does not print, then ``fix``, and a word on the hub when ``HF_HUB_OFFLINE`` keeps it out of reach."""
    reason = str(err).replace(" Please check out the root cause in the stacktrace above.", "").strip()
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    note = " (HF_HUB_OFFLINE is set: only models already in the local cache load)" if offline else ""
    return DsasError(f"could not load {what}: {reason}\n{fix}{note}.")


def check_activations(x: Tensor, what: str, min_rows: int = 2) -> Tensor:
    """Validate a (n, d) activation matrix: enough rows, finite values. Returns it as float64."""
    if not isinstance(x, Tensor):
        raise DsasError(f"{what}: expected a torch.Tensor of shape (n, d), got {type(x).__name__}.")
    if x.ndim != 2:
        raise DsasError(
            f"{what}: expected pooled activations of shape (n, d), got shape {tuple(x.shape)}. "
            "Pool over tokens/positions first (dsas_core.collect does this)."
        )
    if x.shape[0] < min_rows:
        raise DsasError(
            f"{what}: got {x.shape[0]} sample(s), need at least {min_rows}. "
            "Give more prompts/texts in this set (32 per set is a good default)."
        )
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).any(dim=1).sum())
        raise DsasError(
            f"{what}: {bad} of {x.shape[0]} samples contain NaN or inf. The model produced non-finite "
            "activations: run it in float32 (or bf16 instead of fp16) and check the inputs."
        )
    return x.detach().to(torch.float64)


def check_same_width(a: Tensor, b: Tensor, what_a: str, what_b: str) -> None:
    """Raise if two activation matrices have different widths."""
    if a.shape[-1] != b.shape[-1]:
        raise DsasError(
            f"{what_a} has width {a.shape[-1]} but {what_b} has width {b.shape[-1]}: both must come from "
            "the same site of the same model."
        )
