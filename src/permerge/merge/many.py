"""Merging N models: align every model to the average of the others (MergeMany).

Each round visits the models in a seeded random order; model ``i`` is weight-matched to the
mean of the other (already aligned) models, until a round changes no permutation.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..align.weight_matching import weight_matching
from ..checkpoint import Checkpoint, check_compatible
from ..permutation.spec import Permutation, PermutationSpec, apply_permutation
from .core import spec_for


def _mean_state(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in states[0].items():
        out[k] = (
            torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v.clone()
        )
    return out


def merge_many(
    ckpts: list[Checkpoint], *, max_rounds: int = 50, seed: int = 0, spec: PermutationSpec | None = None
) -> tuple[nn.Module, list[Permutation], dict[str, int]]:
    """Return the average of all models after aligning them to a common basin."""
    if len(ckpts) < 2:
        raise ValueError("merge_many needs at least two models")
    for c in ckpts[1:]:
        check_compatible(ckpts[0], c)
    spec = spec or spec_for(ckpts[0])
    originals = [c.model.state_dict() for c in ckpts]
    perms = [spec.identity() for _ in ckpts]
    aligned = [dict(s) for s in originals]
    g = torch.Generator().manual_seed(seed)
    rounds = 0
    for rounds in range(1, max_rounds + 1):  # noqa: B007
        changed = False
        for i in torch.randperm(len(ckpts), generator=g).tolist():
            target = _mean_state([aligned[j] for j in range(len(ckpts)) if j != i])
            new, _ = weight_matching(spec, target, originals[i], init=perms[i], seed=seed + rounds)
            if any(not torch.equal(new[k], perms[i][k]) for k in new):
                changed = True
                perms[i] = new
                aligned[i] = apply_permutation(spec, new, originals[i])
        if not changed:
            break
    merged = copy.deepcopy(ckpts[0].model)
    merged.load_state_dict(_mean_state(aligned))
    return merged.eval(), perms, {"rounds": rounds}
