"""Weight matching: data-free coordinate descent over permutation groups.

Each step solves one linear assignment problem for one group, whose cost is the summed
similarity ``W_a W_b^T`` over every weight axis in the group, with B's other axes already
permuted by the current permutations of the other groups (git-re-basin, Ainsworth et al.).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from scipy.optimize import linear_sum_assignment

from ..permutation.spec import Permutation, PermutationSpec, permute_param
from .registry import Alignment, AlignProblem, register

_STAT_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


class WMOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    max_iter: int = Field(100, ge=1, description="maximum sweeps over all groups")
    seed: int = 0


def _unit_rows(w: torch.Tensor, axis: int, n: int) -> torch.Tensor:
    """``w`` as ``n x rest``: row ``i`` holds every weight attached to unit ``i``."""
    return w.movedim(axis, 0).reshape(n, -1)


class WeightMatcher:
    """Weight matching against a fixed B, reusable across many calls (STE calls it every step).

    Per group and axis it caches B's unit rows with the *other* groups' permutations applied,
    keyed by those permutations, so a call whose neighbours did not move only pays for one
    matrix product per axis and one assignment per group. Costs are built in float32
    (float64 on request): the assignment only needs their order.
    """

    def __init__(self, spec: PermutationSpec, state_b: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32):
        self.spec = spec
        self.dtype = dtype
        self.b = {k: v.detach().to(dtype) for k, v in state_b.items() if not k.endswith(_STAT_SUFFIXES)}
        self.names = list(spec.groups)
        self._rows_b: dict[tuple[str, int], tuple[tuple[bytes, ...], torch.Tensor]] = {}
        # Products W_a W_b^T per (group, axis), valid while A and the neighbours' permutations
        # are unchanged; cleared at every match() because A may differ between calls.
        self._products: dict[tuple[str, int], tuple[tuple[bytes, ...], torch.Tensor]] = {}

    def _others(self, p: str, i: int, perm: Permutation) -> tuple[bytes, ...]:
        ref = self.spec.groups[p].axes[i]
        return tuple(perm[g].numpy().tobytes() for _, g, _ in self.spec.by_param[ref.param] if g != p)

    def _b_rows(self, p: str, i: int, perm: Permutation, others: tuple[bytes, ...]) -> torch.Tensor:
        ref = self.spec.groups[p].axes[i]
        hit = self._rows_b.get((p, i))
        if hit is not None and hit[0] == others:
            return hit[1]
        wb = permute_param(self.spec, ref.param, self.b[ref.param], perm, skip_group=p)
        rows = _unit_rows(wb, ref.axis, self.spec.groups[p].size).contiguous()
        self._rows_b[(p, i)] = (others, rows)
        return rows

    def cost(self, p: str, a: dict[str, torch.Tensor], perm: Permutation) -> torch.Tensor:
        g = self.spec.groups[p]
        n = g.size
        c = torch.zeros(n, n, dtype=self.dtype)
        for i, ref in enumerate(g.axes):
            if ref.param not in self.b:
                continue  # BN running statistics are not part of the cost
            others = self._others(p, i, perm)
            hit = self._products.get((p, i))
            if hit is not None and hit[0] == others:
                c += hit[1]
                continue
            wa = _unit_rows(a[ref.param].detach().to(self.dtype), ref.axis, n)
            prod = wa @ self._b_rows(p, i, perm, others).T
            self._products[(p, i)] = (others, prod)
            c += prod
        return c

    def match(
        self,
        a: dict[str, torch.Tensor],
        *,
        init: Permutation | None = None,
        max_iter: int = 100,
        generator: torch.Generator | None = None,
    ) -> tuple[Permutation, dict[str, float]]:
        self._products.clear()
        perm = {k: v.clone() for k, v in (init or self.spec.identity()).items()}
        g = generator or torch.Generator().manual_seed(0)
        sweeps = 0
        for sweeps in range(1, max_iter + 1):  # noqa: B007  (sweeps is reported)
            improved = False
            for i in torch.randperm(len(self.names), generator=g).tolist():
                p = self.names[i]
                c = self.cost(p, a, perm).double()
                rows, cols = linear_sum_assignment(c.numpy(), maximize=True)
                new = torch.from_numpy(cols.astype(np.int64))
                idx = torch.arange(len(rows))
                old_score = float(c[idx, perm[p]].sum())
                new_score = float(c[idx, new].sum())
                if new_score > old_score + 1e-9 * max(1.0, abs(old_score)):
                    perm[p] = new
                    improved = True
            if not improved:
                break
        return perm, {"sweeps": sweeps}


def l2_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Euclidean distance between two weight sets (BN statistics excluded)."""
    total = 0.0
    for k, v in a.items():
        if v.is_floating_point() and not k.endswith(_STAT_SUFFIXES):
            total += float((v.double() - b[k].double()).pow(2).sum())
    return total**0.5


def weight_matching(
    spec: PermutationSpec,
    state_a: dict[str, torch.Tensor],
    state_b: dict[str, torch.Tensor],
    *,
    max_iter: int = 100,
    seed: int = 0,
    init: Permutation | None = None,
) -> tuple[Permutation, dict[str, float]]:
    """The permutation of B's units that maximises ``sum <W_a, pi(W_b)>`` (a local optimum)."""
    matcher = WeightMatcher(spec, state_b)
    return matcher.match(state_a, init=init, max_iter=max_iter, generator=torch.Generator().manual_seed(seed))


@register("wm", WMOptions, needs_data=False, summary="weight matching (data-free)")
def wm_method(problem: AlignProblem, opts: WMOptions) -> Alignment:
    t0 = time.perf_counter()
    perm, info = weight_matching(problem.spec, problem.state_a, problem.state_b, max_iter=opts.max_iter, seed=opts.seed)
    return Alignment(perm, {**info, "seconds": time.perf_counter() - t0})
