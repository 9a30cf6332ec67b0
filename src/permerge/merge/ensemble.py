"""The output ensemble: a baseline that merges predictions, not weights (2x the compute)."""

from __future__ import annotations

import torch
from torch import nn


class OutputEnsemble(nn.Module):
    """``log((1 - lam) softmax(A(x)) + lam softmax(B(x)))``: log-probabilities as logits, so
    accuracy and cross-entropy are computed exactly as for a single model."""

    def __init__(self, model_a: nn.Module, model_b: nn.Module, lam: float = 0.5) -> None:
        super().__init__()
        self.a, self.b, self.lam = model_a, model_b, lam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pa = torch.log_softmax(self.a(x), dim=1)
        pb = torch.log_softmax(self.b(x), dim=1)
        if self.lam <= 0:
            return pa
        if self.lam >= 1:
            return pb
        w = torch.tensor([1 - self.lam, self.lam], dtype=pa.dtype, device=pa.device).log()
        return torch.logsumexp(torch.stack([pa + w[0], pb + w[1]]), dim=0)
