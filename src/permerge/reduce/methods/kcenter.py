"""``kcenter``: k-center greedy (Sener & Savarese) in feature space, per class.

Each step adds the sample farthest from its nearest chosen centre, which greedily minimises
the covering radius (a 2-approximation of the optimal k-centre cover). The first centre is
the sample nearest the class mean rather than a random one, so the result needs no seed.
"""

from __future__ import annotations

import torch

from ..coreset import select_per_class
from ..features import features
from ..registry import MethodResult, ReduceContext, ReduceOptions, register_method


def kcenter_order(feats: torch.Tensor, k: int) -> torch.Tensor:
    """The first ``k`` k-center-greedy picks (local indices) for ``n x d`` features."""
    f = feats.double()
    first = int(((f - f.mean(0)) ** 2).sum(1).argmin())
    order = [first]
    nearest = ((f - f[first]) ** 2).sum(1)
    for _ in range(1, k):
        i = int(nearest.argmax())
        order.append(i)
        nearest = torch.minimum(nearest, ((f - f[i]) ** 2).sum(1))
    return torch.tensor(order, dtype=torch.long)


def covering_radius(feats: torch.Tensor, centers: torch.Tensor) -> float:
    """Largest distance from any sample to its nearest centre (what k-center minimises)."""
    f = feats.double()
    return float(torch.cdist(f, f[centers]).min(1).values.max())


@register_method("kcenter", kind="coreset")
def kcenter(ctx: ReduceContext, _opts: ReduceOptions) -> MethodResult:
    """k-center greedy on penultimate features of ``--model`` (or on normalised pixels)."""
    feats, source = features(ctx.model, ctx.data, ctx.device)
    return select_per_class(ctx, feats, lambda rows, k, _g: kcenter_order(rows, k), {"features": source})
