"""``random``: K uniformly drawn real samples per class, the baseline every method must beat."""

from __future__ import annotations

import torch

from ..coreset import select_per_class
from ..registry import MethodResult, ReduceContext, ReduceOptions, register_method


@register_method("random", kind="coreset")
def random_coreset(ctx: ReduceContext, _opts: ReduceOptions) -> MethodResult:
    """Uniform class-balanced sample (seeded); needs no model."""

    def pick(rows: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
        return torch.randperm(rows.shape[0], generator=g)[:k]

    return select_per_class(ctx, torch.zeros(len(ctx.data)), pick, {"features": "none"})
