"""ZipIt! (Stoica et al., ICLR 2024): merge features within and across models, by correlation.

A permutation pairs each unit of A with one of B. ZipIt! treats the ``2n`` units of both models
as one pool: on the merge data it computes the correlation of every pair of units (within
and across models, at the points the fx spec marks for each group) and greedily merges the
most correlated pair, ``n`` times, until the pool is back to ``n`` units. Two knobs from the
paper shape the greedy choice: ``alpha`` shrinks a merged unit's correlations (so a unit that
already absorbed two is less likely to absorb a third; ``alpha=0`` forbids it) and ``beta``
is each model's budget of *within-model* merges, as a fraction of its share of the merges
(``beta=0``: only cross-model merges, so the result is a permutation merge with the greedy
pairing; a test checks this).

Each group's clusters become a merge matrix (average of a cluster) and an unmerge matrix
(copy back to every member), applied to every parameter by :mod:`.partial`. Partial zipping
(``stop_layer=K``) merges only the first ``K`` groups in graph order and keeps both models'
units in the later ones, so both tails run side by side and the shared head averages their
logits (width between 1x and 2x).
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.func import functional_call

from ..align.activation_matching import _features, probe_module
from ..checkpoint import Checkpoint
from ..data.mergedata import MergeData
from ..errors import PermergeError
from ..models import build_model
from ..permutation.spec import Permutation, PermutationSpec
from .methods import MergerResult, merger_spec, register_merger
from .partial import PER_LAYER, Zip, merge_state, widened_config


class ZipItOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    alpha: float = Field(0.3, ge=0, le=1, description="shrinks a merged unit's correlations (0: merge once)")
    beta: float = Field(0.125, ge=0, le=1, description="within-model merge budget (fraction of a model's merges)")
    stop_layer: int | None = Field(None, ge=0, description="zip only the first K groups (None: all)")
    max_samples: int = Field(20_000, ge=10, description="merge-data samples for the correlations")
    batch_size: int = Field(500, ge=1)
    seed: int = 0


@torch.no_grad()
def joint_correlations(
    a: Checkpoint, b: Checkpoint, spec: PermutationSpec, data: MergeData, opts: ZipItOptions, device: torch.device
) -> dict[str, torch.Tensor]:
    """Per group, the ``2n x 2n`` correlation of the units of ``[A; B]`` on the merge data."""
    node_group = {n: g for g, nodes in spec.probes.items() for n in nodes}
    gm = probe_module(a.model, list(node_group)).to(device).eval()
    sa = {k: v.to(device) for k, v in a.model.state_dict().items()}
    sb = {k: v.to(device) for k, v in b.model.state_dict().items()}
    sums: dict[str, torch.Tensor] = {}
    prods: dict[str, torch.Tensor] = {}
    count: dict[str, int] = {}
    sample = data.sample(max(1, opts.max_samples // len(data.sources)), seed=opts.seed)
    for x, _ in sample.batches(opts.batch_size, device=device):
        fa, fb = functional_call(gm, sa, (x,)), functional_call(gm, sb, (x,))
        for node, g in node_group.items():
            axis = spec.probe_axes.get(node, 1)
            f = torch.cat([_features(fa[node], axis), _features(fb[node], axis)], dim=1).double().cpu()
            sums[g] = sums.get(g, 0) + f.sum(0)
            prods[g] = prods.get(g, 0) + f.T @ f
            count[g] = count.get(g, 0) + len(f)
    out = {}
    for g in sums:
        mean = sums[g] / count[g]
        cov = prods[g] / count[g] - torch.outer(mean, mean)
        std = cov.diagonal().clamp_min(0).sqrt()
        out[g] = cov / torch.outer(std, std).clamp_min(1e-12)
    return out


def zip_greedy(corr: torch.Tensor, alpha: float, beta: float) -> Zip:
    """ZipIt!'s greedy matching of ``2n`` units into ``n`` (see the module docstring)."""
    n = corr.shape[0] // 2
    sims = corr.double().numpy().copy()
    np.fill_diagonal(sims, -np.inf)
    origin = np.repeat([0, 1], n)
    alive = np.ones(2 * n, dtype=bool)
    clusters: list[list[int]] = [[i] for i in range(2 * n)]
    budget = [int(n // 2 * beta + 1e-4)] * 2  # each model's share of the n merges, times beta

    def close_within(model: int) -> None:
        sel = alive & (origin == model)
        sims[np.ix_(sel, sel)] = -np.inf

    for m in (0, 1):
        if budget[m] <= 0:
            close_within(m)
    for _ in range(n):
        flat = int(np.argmax(sims))
        i, j = sorted(divmod(flat, 2 * n))
        if not np.isfinite(sims[i, j]):
            raise PermergeError("zipit ran out of mergeable units (alpha=0 with beta=0 on a degenerate group?)")
        same = origin[i] == origin[j]
        clusters[i] += clusters[j]
        alive[j] = False
        merged = np.minimum(sims[i], sims[j])
        if alpha > 0:
            merged = merged * alpha
        else:  # a merged unit merges no more with either model
            merged[(origin == origin[i]) | (origin == origin[j])] = -np.inf
        sims[i, :], sims[:, i] = merged, merged
        sims[j, :], sims[:, j] = -np.inf, -np.inf
        sims[i, i] = -np.inf
        if same:
            budget[origin[i]] -= 1
            if budget[origin[i]] <= 0:
                close_within(int(origin[i]))
    kept = [sorted(clusters[i]) for i in range(2 * n) if alive[i]]
    return Zip.from_clusters(sorted(kept), n)


def _as_permutation(zips: dict[str, Zip]) -> Permutation | None:
    """The permutation a zip amounts to, when every cluster pairs one unit of A with one of B."""
    perm = {}
    for g, z in zips.items():
        n = z.unmerge.shape[0] // 2
        pairs = [z.unmerge[:, c].nonzero().flatten().tolist() for c in range(z.width)]
        if z.width != n or any(len(p) != 2 or p[0] >= n or p[1] < n for p in pairs):
            return None
        p = torch.empty(n, dtype=torch.long)
        for ia, ib in pairs:
            p[ia] = ib - n
        perm[g] = p
    return perm


@register_merger("zipit", ZipItOptions, needs_data=True, summary="ZipIt!: merge units within and across models")
def zipit(
    a: Checkpoint, b: Checkpoint, data: MergeData | None, opts: ZipItOptions, device: torch.device, progress: bool
) -> MergerResult:
    assert data is not None
    t0 = time.perf_counter()
    spec = merger_spec(a, "zipit")
    groups = list(spec.groups)
    if opts.stop_layer is not None and opts.stop_layer > len(groups):
        raise PermergeError(f"zipit stop_layer={opts.stop_layer}, but the model has {len(groups)} groups")
    first = groups if opts.stop_layer is None else groups[: opts.stop_layer]
    zipped = [g for g in first if g in spec.probes]  # a group without probes has no statistics
    sizes = {g: spec.groups[g].size for g in groups}
    # the widths are known before any statistics (a zipped group has n units, a kept one 2n):
    # a model that cannot take them is refused before the work
    shaped = {g: _paired(n) if g in zipped else _side_by_side(n) for g, n in sizes.items()}
    fix = (
        f"stop_layer={opts.stop_layer}: zip every group (no stop_layer), or use a model whose layers "
        f"widen one by one ({', '.join(PER_LAYER)})"
    )
    cfg = widened_config(a.config, a.model, merge_state(spec, shaped, a.model.state_dict(), b.model.state_dict()), fix)
    corr = joint_correlations(a, b, spec, data, opts, device)
    zips = {g: zip_greedy(corr[g], opts.alpha, opts.beta) if g in zipped else shaped[g] for g in groups}
    state = merge_state(spec, zips, a.model.state_dict(), b.model.state_dict())
    model = build_model(cfg)
    model.load_state_dict(state)
    info = {
        "zipped_groups": zipped,
        "widths": {g: z.width for g, z in zips.items()},
        "within_model_merges": {g: _within(z) for g, z in zips.items() if g in zipped},
        "seconds": time.perf_counter() - t0,
    }
    perm = _as_permutation(zips)
    return MergerResult(model=copy.deepcopy(model).to(device).eval(), config=cfg, perm=perm, spec=spec, info=info)


def _side_by_side(n: int) -> Zip:
    """Both models' ``n`` units kept: ``2n`` units, nothing merged."""
    return Zip.from_clusters([[i] for i in range(2 * n)], n)


def _paired(n: int) -> Zip:
    """Unit i of A merged with unit i of B: the shapes of any full zip of ``n`` units."""
    return Zip.from_clusters([[i, n + i] for i in range(n)], n)


def _within(z: Zip) -> int:
    """Merged units that hold two or more units of one model."""
    n = z.unmerge.shape[0] // 2
    return int(((z.unmerge[:n].sum(0) > 1) | (z.unmerge[n:].sum(0) > 1)).sum())
