"""Shared machinery of coreset methods: class-balanced selection of real samples."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .registry import MethodResult, ReduceContext

# (class-local features or scores, k, generator) -> k distinct local indices, in pick order
Selector = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]


def select_per_class(
    ctx: ReduceContext, per_sample: torch.Tensor, selector: Selector, info: dict[str, object] | None = None
) -> MethodResult:
    """Run ``selector`` on each class's rows of ``per_sample``; gather the chosen real images.

    ``per_sample`` is indexed like ``ctx.data`` (features ``N x D`` or scores ``N``). Classes
    are visited in ascending id order, and every class contributes exactly ``ctx.ipc``
    distinct samples (the API has already checked that each class has that many).
    """
    chosen: list[torch.Tensor] = []
    for c in ctx.classes:
        idx = ctx.class_indices(c)
        local = selector(per_sample[idx], ctx.ipc, ctx.generator)
        if local.numel() != ctx.ipc or local.unique().numel() != ctx.ipc:
            raise RuntimeError(f"selector returned {local.tolist()} for k={ctx.ipc} (bug)")
        chosen.append(idx[local])
    sel = torch.cat(chosen)
    images = ctx.data.to_pixels(ctx.data.images[sel])  # indexing copies: no alias of the dataset
    return MethodResult(images=images, labels=ctx.data.labels[sel].clone(), source_indices=sel, info=dict(info or {}))
