"""``uncertainty``: keep the samples the scoring model is least confident about.

Least-confidence score 1 - max_c p(c | x) (Coleman et al., 2020; DeepCore's default), from
``--model`` or the proxy MLP. Like EL2N it favours atypical samples, which is the point
for active learning and a handicap at a handful of images per class.
"""

from __future__ import annotations

import torch

from ..coreset import select_per_class
from ..features import predict_proba, proxy_model
from ..registry import MethodResult, ReduceContext, ReduceOptions, register_method


class UncertaintyOptions(ReduceOptions):
    """The proxy model's training when no ``--model`` is given."""

    proxy_epochs: int = 2


@register_method("uncertainty", UncertaintyOptions, kind="coreset")
def uncertainty(ctx: ReduceContext, o: UncertaintyOptions) -> MethodResult:
    """Least-confidence scores from ``--model`` (or a 2-epoch proxy MLP); keep the highest."""
    model = ctx.model
    scorer = "model"
    if model is None:
        model = proxy_model(ctx.data, ctx.generator, epochs=o.proxy_epochs, device=ctx.device)
        scorer = f"proxy-mlp256-{o.proxy_epochs}ep"
    scores = 1.0 - predict_proba(model, ctx.data, device=ctx.device).max(1).values

    def pick(rows: torch.Tensor, k: int, _g: torch.Generator) -> torch.Tensor:
        return torch.argsort(-rows, stable=True)[:k]

    return select_per_class(ctx, scores, pick, {"scorer": scorer})
