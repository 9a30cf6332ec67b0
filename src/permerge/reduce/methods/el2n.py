"""``el2n``: keep the samples with the largest EL2N score (Paul et al., 2021).

EL2N(x, y) = || softmax(f(x)) - onehot(y) ||_2, computed with ``--model`` when given, else
with a proxy MLP trained for ``proxy_epochs`` epochs (see :func:`features.proxy_model`).
Large scores mark hard or atypical samples. ``keep="hard"`` (the paper's choice, made for
pruning *away* easy data) is poor at 1-10 images per class, where typical samples matter
more; ``keep="easy"`` takes the lowest scores instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import PermergeError
from ..coreset import select_per_class
from ..features import predict_proba, proxy_model
from ..registry import MethodResult, ReduceContext, ReduceOptions, register_method


def el2n_scores(proba: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    onehot = F.one_hot(labels, proba.shape[1]).to(proba.dtype)
    return (proba - onehot).norm(dim=1)


class EL2NOptions(ReduceOptions):
    """Which end of the EL2N ranking to keep, and the proxy model's training."""

    keep: str = "hard"
    proxy_epochs: int = 2


@register_method("el2n", EL2NOptions, kind="coreset")
def el2n(ctx: ReduceContext, o: EL2NOptions) -> MethodResult:
    """EL2N scores from ``--model`` (or a 2-epoch proxy MLP); keep the hardest (or easiest)."""
    if o.keep not in ("hard", "easy"):
        raise PermergeError(f"el2n: keep must be 'hard' or 'easy', got {o.keep!r}")
    model = ctx.model
    scorer = "model"
    if model is None:
        model = proxy_model(ctx.data, ctx.generator, epochs=o.proxy_epochs, device=ctx.device)
        scorer = f"proxy-mlp256-{o.proxy_epochs}ep"
    scores = el2n_scores(predict_proba(model, ctx.data, device=ctx.device), ctx.data.labels)
    sign = -1.0 if o.keep == "hard" else 1.0

    def pick(rows: torch.Tensor, k: int, _g: torch.Generator) -> torch.Tensor:
        return torch.argsort(sign * rows, stable=True)[:k]

    return select_per_class(ctx, scores, pick, {"scorer": scorer})
