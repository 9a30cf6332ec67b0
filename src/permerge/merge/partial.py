"""Partial merging: merge the best-matched units of each group, keep the rest of both models.

A permutation merge forces every unit of B onto a unit of A; between models trained on
different datasets many units have no counterpart, and averaging them destroys both. A
partial merge (PLeaS, Nasery et al. 2025; ZipIt!'s partial zipping is the same idea by
layer) merges only the ``m`` best-matched pairs of a group and keeps the other ``n - m``
units of *each* model side by side, so a group grows from ``n`` to ``2n - m`` units. The
width budget ``w`` (1 = the size of a source, 2 = both models side by side) sets
``m = round((2 - w) n)`` in every group.

Written as matrices on the concatenated features ``[f_A; f_B]``: a merged group's features
are ``M [f_A; f_B]`` (``M`` averages a merged pair, copies a kept unit) and a consumer of the
group reads ``U^T`` of them (``U`` copies a merged unit back to both sides, a kept unit to its
own side, and nothing to the other). Every parameter is therefore

    P' = sum over sources s of (M_s on the axis that produces the group, U_s on axes that read it)

with ``1/2`` for parameters whose output axis belongs to no group (the head, as in a
``lam = 0.5`` merge). At ``w = 2`` the merged network is both networks side by side with the
mean of their logits; at ``w = 1`` it is the permutation merge. Axis 0 of a parameter is its
output axis (PyTorch's Linear, ConvNd, norms, biases); the fx-derived spec does the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..permutation.spec import PermutationSpec


@dataclass(frozen=True)
class GroupSplit:
    """Which (aligned) positions of a group are merged; the others are kept from both models."""

    merged: torch.Tensor  # positions i where A's unit i and aligned B's unit i become one
    kept: torch.Tensor  # positions kept twice: once from A, once from B

    @property
    def width(self) -> int:
        return len(self.merged) + 2 * len(self.kept)


def choose_split(scores: torch.Tensor, width: float) -> GroupSplit:
    """Merge the ``round((2 - width) n)`` pairs with the highest match score (none at width 2)."""
    n = len(scores)
    m = max(0, min(n, round((2.0 - width) * n)))
    order = torch.argsort(scores, descending=True, stable=True)
    return GroupSplit(merged=order[:m].sort().values, kept=order[m:].sort().values)


def _expand(idx: torch.Tensor, block: int) -> torch.Tensor:
    """Unit indices -> flat indices when a unit spans ``block`` consecutive inputs (flatten)."""
    if block == 1:
        return idx
    return (idx[:, None] * block + torch.arange(block)).reshape(-1)


def _along(t: torch.Tensor, axis: int, split: GroupSplit, block: int, side: int, merge_coef: float) -> torch.Tensor:
    """One source's contribution along one axis: merged units (times ``merge_coef``), then
    A's kept units, then B's kept units (zeros for the other source's kept units)."""
    merged = t.index_select(axis, _expand(split.merged, block)) * merge_coef
    kept = t.index_select(axis, _expand(split.kept, block))
    zeros = torch.zeros_like(kept)
    parts = [merged, kept, zeros] if side == 0 else [merged, zeros, kept]
    return torch.cat(parts, dim=axis)


def partial_merge_state(
    spec: PermutationSpec,
    splits: dict[str, GroupSplit],
    state_a: dict[str, torch.Tensor],
    state_b_aligned: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """The merged (possibly wider) state dict; ``state_b_aligned`` is B after the permutation."""
    out: dict[str, torch.Tensor] = {}
    for name, a in state_a.items():
        b = state_b_aligned[name]
        if not a.is_floating_point():  # e.g. BatchNorm's num_batches_tracked
            out[name] = a.clone()
            continue
        axes = {axis: (group, block) for axis, group, block in spec.by_param.get(name, ())}
        total = torch.zeros(())
        for side, t in enumerate((a, b)):
            t = t.clone()
            coef = 1.0 if 0 in axes else 0.5  # no grouped output axis: a plain average
            for axis, (group, block) in sorted(axes.items()):
                t = _along(t, axis, splits[group], block, side, 0.5 if axis == 0 else 1.0)
            total = total + coef * t
        out[name] = total.contiguous()
    return out
