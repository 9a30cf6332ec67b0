"""Activation matching: align units whose activations correlate on the merge data.

Statistics stream over batches (sums of x, x^2 and the cross-product per group), so memory
is O(width^2) whatever the amount of data. Features are read at the nodes the fx spec marks
as carrying each group (after the nonlinearity); conv maps contribute every spatial position.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import fx, nn
from torch.func import functional_call

from ..errors import AlignmentError
from ..permutation.fx import trace
from ..permutation.spec import PermutationSpec
from ..progress import progress_bar
from .lap import AssignmentSolver
from .registry import Alignment, AlignProblem, register


class AMOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    batch_size: int = Field(500, ge=1)
    max_samples: int = Field(20_000, ge=1, description="merge-data samples used (balanced across sources)")
    criterion: str = Field("correlation", pattern="^(correlation|inner)$")
    seed: int = 0


def probe_module(model: nn.Module, nodes: Sequence[str], with_output: bool = False) -> fx.GraphModule:
    """A traced view of ``model`` (the trace its spec was derived from, so node names match;
    it shares the model's modules and parameters) that returns ``{node name: activation}`` for
    ``nodes``, or ``(output, that dict)`` with ``with_output``."""
    gm = trace(model)
    by_name = {n.name: n for n in gm.graph.nodes}
    missing = [n for n in nodes if n not in by_name]
    if missing:
        raise AlignmentError(f"probe nodes {missing} not found in the traced model")
    out = next(n for n in gm.graph.nodes if n.op == "output")
    probes = {k: by_name[k] for k in nodes}
    out.args = ((out.args[0], probes),) if with_output else (probes,)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def _features(t: torch.Tensor, axis: int = 1) -> torch.Tensor:
    """(samples, units): every position along the other axes is one more sample."""
    return t.movedim(axis, -1).reshape(-1, t.shape[axis]) if t.ndim > 2 or axis != 1 else t


class _Stats:
    def __init__(self, n: int) -> None:
        self.count = 0
        self.sa = torch.zeros(n, dtype=torch.float64)
        self.sb = torch.zeros(n, dtype=torch.float64)
        self.saa = torch.zeros(n, dtype=torch.float64)
        self.sbb = torch.zeros(n, dtype=torch.float64)
        self.sab = torch.zeros(n, n, dtype=torch.float64)

    def add(self, fa: torch.Tensor, fb: torch.Tensor) -> None:
        fa, fb = fa.double().cpu(), fb.double().cpu()
        self.count += fa.shape[0]
        self.sa += fa.sum(0)
        self.sb += fb.sum(0)
        self.saa += fa.pow(2).sum(0)
        self.sbb += fb.pow(2).sum(0)
        self.sab += fa.T @ fb

    def similarity(self, criterion: str) -> torch.Tensor:
        n = max(1, self.count)
        if criterion == "inner":
            return self.sab / n
        ma, mb = self.sa / n, self.sb / n
        cov = self.sab / n - torch.outer(ma, mb)
        sa = (self.saa / n - ma.pow(2)).clamp_min(0).sqrt()
        sb = (self.sbb / n - mb.pow(2)).clamp_min(0).sqrt()
        return cov / (torch.outer(sa, sb) + 1e-8)


@torch.no_grad()
def activation_correlations(problem: AlignProblem, opts: AMOptions) -> dict[str, torch.Tensor]:
    """Per group, the ``n x n`` similarity of A's unit i and B's unit j over the merge data."""
    spec: PermutationSpec = problem.spec
    if problem.data is None:
        raise AlignmentError("activation matching needs merge data (--data)")
    if not spec.probes:
        raise AlignmentError("the permutation spec has no activation probes (hand-written spec?)")
    node_group = {n: g for g, nodes in spec.probes.items() for n in nodes}
    gm = probe_module(problem.model, list(node_group)).to(problem.device).eval()
    stats = {g: _Stats(spec.groups[g].size) for g in spec.probes}
    per_source = max(1, opts.max_samples // len(problem.data.sources))
    data = problem.data.sample(per_source, seed=opts.seed)
    steps = -(-len(data) // opts.batch_size)
    sa = {k: v.to(problem.device) for k, v in problem.state_a.items()}
    sb = {k: v.to(problem.device) for k, v in problem.state_b.items()}
    with progress_bar(steps, "activation matching", enabled=problem.progress) as bar:
        for x, _ in data.batches(opts.batch_size, device=problem.device):
            acts_a = functional_call(gm, sa, (x,))
            acts_b = functional_call(gm, sb, (x,))
            for node, g in node_group.items():
                axis = spec.probe_axes.get(node, 1)
                stats[g].add(_features(acts_a[node], axis), _features(acts_b[node], axis))
            bar.advance()
    return {g: s.similarity(opts.criterion) for g, s in stats.items()}


@register("am", AMOptions, needs_data=True, summary="activation matching on merge data")
def am_method(problem: AlignProblem, opts: AMOptions) -> Alignment:
    t0 = time.perf_counter()
    sims = activation_correlations(problem, opts)
    perm = {}
    mean_corr = {}
    solver = AssignmentSolver()
    for g, c in sims.items():
        _, cols = solver.solve(c, maximize=True, warm=False)  # a cold solve: SciPy's answer, ties included
        perm[g] = torch.from_numpy(cols.astype(np.int64))
        mean_corr[g] = float(c[torch.arange(len(cols)), perm[g]].mean())
    # groups no traced node exposes (units inside a leaf module such as a transformer
    # encoder layer's MLP) keep their order: identity is always a valid permutation
    unprobed = sorted(set(problem.spec.groups) - set(perm))
    for g in unprobed:
        perm[g] = torch.arange(problem.spec.groups[g].size)
    return Alignment(
        perm,
        {
            "seconds": time.perf_counter() - t0,
            "mean_matched_similarity": mean_corr,
            "assignment_backend": solver.used(),
            **({"unprobed_groups": unprobed} if unprobed else {}),
        },
    )
