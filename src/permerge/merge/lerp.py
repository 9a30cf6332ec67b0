"""Linear interpolation of weights: the merge itself, once B is aligned to A."""

from __future__ import annotations

import copy

import torch
from torch import nn


def lerp_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], lam: float) -> dict[str, torch.Tensor]:
    """``(1 - lam) * a + lam * b`` for float tensors; integer buffers (BN counters) from ``a``."""
    out = {}
    for k, va in a.items():
        vb = b[k]
        out[k] = torch.lerp(va, vb.to(va.dtype), lam) if va.is_floating_point() else va.clone()
    return out


def lerp_models(a: nn.Module, b: nn.Module, lam: float) -> nn.Module:
    """A new module holding the interpolation of ``a`` and ``b`` (both left unchanged)."""
    merged = copy.deepcopy(a)
    merged.load_state_dict(lerp_state(a.state_dict(), b.state_dict(), lam))
    return merged.eval()
