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

import numpy as np
import torch
from torch import nn

from ..errors import PermergeError
from ..models import ModelConfig, build_model
from ..models.config import CHANNEL_SLOTS
from ..models.registry import channels_of
from ..permutation.spec import PermutationSpec


@dataclass(frozen=True)
class Zip:
    """How one group of ``n`` units per model becomes ``n'`` merged units.

    ``merge`` (``n' x 2n``) forms each merged unit from the concatenated units ``[A; B]``
    (rows average a cluster); ``unmerge`` (``2n x n'``) gives each original unit the merged
    unit that replaces it. Column blocks ``[:n]``/``[n:]`` are model A's / model B's.
    """

    merge: torch.Tensor
    unmerge: torch.Tensor

    @property
    def width(self) -> int:
        return self.merge.shape[0]

    def side(self, s: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Model ``s``'s blocks: ``M_s`` (``n' x n``) and ``U_s`` (``n x n'``)."""
        n = self.merge.shape[1] // 2
        return self.merge[:, s * n : (s + 1) * n], self.unmerge[s * n : (s + 1) * n]

    @classmethod
    def from_clusters(cls, clusters: list[list[int]], n: int) -> Zip:
        """Clusters of indices into ``[A; B]`` (``0..2n-1``), one merged unit each."""
        unmerge = torch.zeros(2 * n, len(clusters))
        for c, members in enumerate(clusters):
            unmerge[members, c] = 1.0
        return cls(merge=(unmerge / unmerge.sum(0, keepdim=True)).T.contiguous(), unmerge=unmerge)


def pair_zip(scores: torch.Tensor, width: float | None = None, kept: int | None = None) -> Zip:
    """PLeaS's partial merge of an aligned group: keep ``kept`` pairs ``(A_i, B_i)`` apart
    (default ``round((width - 1) n)``), those with the lowest match score, and merge the rest."""
    n = len(scores)
    if kept is None:
        assert width is not None
        m = max(0, min(n, round((2.0 - width) * n)))
    else:
        m = n - max(0, min(n, kept))
    order = torch.argsort(scores, descending=True, stable=True)
    merged, apart = order[:m].sort().values.tolist(), order[m:].sort().values.tolist()
    clusters = [[i, n + i] for i in merged] + [[i] for i in apart] + [[n + i] for i in apart]
    return Zip.from_clusters(clusters, n)


def _apply(t: torch.Tensor, axis: int, mat: torch.Tensor, block: int, outer: int = 1) -> torch.Tensor:
    """Contract ``t``'s ``axis`` (``outer`` repeats of ``n`` units, each ``block`` wide) with
    ``mat`` (``n x n'``)."""
    moved = t.movedim(axis, -1)
    lead = moved.shape[:-1]
    units = moved.reshape(*lead, outer, -1, block)  # (..., outer, n, block)
    out = torch.einsum("...onb,nm->...omb", units, mat.to(t.dtype))
    return out.reshape(*lead, -1).movedim(-1, axis)


def merge_state(
    spec: PermutationSpec,
    zips: dict[str, Zip],
    state_a: dict[str, torch.Tensor],
    state_b: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """The merged (possibly wider) state dict: ``sum_s M_s P_s U_s^T`` per parameter."""
    out: dict[str, torch.Tensor] = {}
    for name, a in state_a.items():
        if not a.is_floating_point():  # e.g. BatchNorm's num_batches_tracked
            out[name] = a.clone()
            continue
        axes = {axis: (group, block) for axis, group, block in spec.by_param.get(name, ())}
        total = torch.zeros(())
        for s, t in enumerate((a, state_b[name])):
            coef = 1.0 if 0 in axes else 0.5  # no grouped output axis: a plain average
            for axis, (group, block) in sorted(axes.items()):
                m_s, u_s = zips[group].side(s)
                t = _apply(t, axis, m_s.T if axis == 0 else u_s, block, spec.outer.get((name, axis), 1))
            total = total + coef * t
        out[name] = total.contiguous()
    return out


def allocate_kept(
    spec: PermutationSpec, scores: dict[str, torch.Tensor], cost: dict[str, int], budget: float
) -> dict[str, int]:
    """How many pairs of each group to keep apart so that the merged model costs at most
    ``budget`` times a source. ``cost``: what each parameter costs in a source, its size for a
    parameter budget or its multiply-adds per image for a compute budget (both grow with the
    widths of the parameter's grouped axes alike).

    Greedy, one pair at a time: among the groups whose next pair still fits, keep apart the
    pair that buys the most mismatch per unit of cost, ``(1 - score) / extra cost``. A
    group's extra cost depends on how wide its neighbours already are (a kept unit adds a row
    to the layers that produce it and a column to those that read it), so it is recomputed
    after every pick. PLeaS chooses one ratio per layer from a FLOP budget with a quadratic
    program; scoring single pairs lets the badly matched units of any layer go first, and
    needs no solver."""
    groups = list(spec.groups)
    sizes = np.array([spec.groups[g].size for g in groups], dtype=np.float64)
    names = [n for n in cost if n in spec.by_param]
    # exponent[p, g]: how many axes of parameter p the group g spans
    exponent = np.zeros((len(names), len(groups)))
    for i, name in enumerate(names):
        for _, group, _ in spec.by_param[name]:
            exponent[i, groups.index(group)] += 1
    fixed = sum(v for k, v in cost.items() if k not in spec.by_param)
    sizes_p = np.array([cost[n] for n in names], dtype=np.float64)
    limit = budget * (fixed + sizes_p.sum())
    worst_first = [torch.sort(scores[g].double().cpu()).values.numpy() for g in groups]
    kept = np.zeros(len(groups))

    def total(k: np.ndarray) -> np.ndarray:  # the cost for each row of k (rows: candidates)
        return fixed + np.exp(np.log1p(k / sizes) @ exponent.T) @ sizes_p

    now = total(kept[None])[0]
    while True:
        trial = kept[None] + np.eye(len(groups))
        extra = total(trial) - now
        open_ = (kept < sizes) & (now + extra <= limit)
        if not open_.any():
            break
        gain = np.array([1.0 - w[int(k)] if k < len(w) else 0.0 for w, k in zip(worst_first, kept, strict=True)])
        value = np.where(open_, np.maximum(gain, 1e-9) / np.maximum(extra, 1e-12), -np.inf)
        g = int(np.argmax(value))
        kept[g] += 1
        now += extra[g]
    return {g: int(k) for g, k in zip(groups, kept, strict=True)}


# Architectures whose layers can be widened one by one (MLP hidden widths, per-layer channels)
PER_LAYER = ("mlp", *CHANNEL_SLOTS)


def widened_config(cfg: ModelConfig, template: nn.Module, state: dict[str, torch.Tensor], fix: str) -> ModelConfig:
    """The config whose model has ``state``'s shapes: same as ``cfg`` at width 1; an MLP's
    hidden widths, or a width multiplier for the other architectures when every layer widened
    alike, else their per-layer channel counts. ``fix``: what the error tells the user to
    change when no config fits."""
    ref = template.state_dict()
    if all(ref[k].shape == state[k].shape for k in ref):
        return cfg
    candidates = []
    if cfg.arch == "mlp":
        linears = [n for n, m in template.named_modules() if isinstance(m, nn.Linear)]
        candidates.append(cfg.model_copy(update={"hidden": tuple(state[f"{n}.weight"].shape[0] for n in linears[:-1])}))
    else:
        ratios = {state[k].shape[0] / ref[k].shape[0] for k in ref if ref[k].ndim and state[k].shape != ref[k].shape}
        candidates += [cfg.model_copy(update={"width": cfg.width * r}) for r in sorted(ratios)]
        per_layer = channels_of(cfg, state)
        if per_layer is not None:
            candidates.append(per_layer)
    for c in candidates:
        built = build_model(c).state_dict()
        if all(built[k].shape == state[k].shape for k in built) and set(built) == set(state):
            return c
    raise PermergeError(
        f"a partial merge of {cfg.describe()} gives layer widths that no {cfg.arch} config expresses; {fix}"
    )
