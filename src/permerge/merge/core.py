"""Merging two checkpoints: align B to A (or not), interpolate, repair statistics.

``merge_models`` is the one way the CLI, the demo and experiments merge; methods are
``average`` and ``ensemble`` (baselines) plus every registered alignment method.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..align import AlignProblem, get_method
from ..align.registry import available as align_methods
from ..checkpoint import Checkpoint, check_compatible
from ..data.mergedata import MergeData
from ..errors import PermergeError
from ..permutation.fx import derive_spec
from ..permutation.spec import Permutation, PermutationSpec, apply_permutation
from .bn import has_batchnorm, repair, reset_bn
from .ensemble import OutputEnsemble
from .lerp import lerp_models

BASELINES = ("average", "ensemble")


def methods() -> list[str]:
    return [*BASELINES, *align_methods()]


@dataclass
class MergeResult:
    model: nn.Module
    method: str
    lam: float
    perm: Permutation | None = None
    spec: PermutationSpec | None = None
    info: dict[str, Any] = field(default_factory=dict)


def spec_for(ckpt: Checkpoint) -> PermutationSpec:
    return derive_spec(ckpt.model, torch.zeros(1, *ckpt.config.in_shape))


def align(
    a: Checkpoint,
    b: Checkpoint,
    method: str,
    data: MergeData | None = None,
    *,
    options: dict[str, Any] | None = None,
    spec: PermutationSpec | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[Permutation, PermutationSpec, dict[str, Any]]:
    """Find the permutation of B that aligns it to A with a registered method."""
    check_compatible(a, b)
    m = get_method(method)
    opts = m.parse_options(options)
    if m.needs_data and data is None:
        raise PermergeError(f"method {method} needs merge data: pass --data SPEC [SPEC ...]")
    spec = spec or spec_for(a)
    problem = AlignProblem(
        model=copy.deepcopy(a.model),
        state_a=a.model.state_dict(),
        state_b=b.model.state_dict(),
        spec=spec,
        data=data,
        device=torch.device(device),
        progress=progress,
    )
    result = m.fn(problem, opts)
    # a method that completes its options from the data (STE's budget) reports them itself
    return result.perm, spec, {"options": opts.model_dump(), **result.info}


def aligned_copy(b: Checkpoint, spec: PermutationSpec, perm: Permutation) -> nn.Module:
    model = copy.deepcopy(b.model)
    model.load_state_dict(apply_permutation(spec, perm, b.model.state_dict()))
    return model.eval()


def interpolate_pair(
    model_a: nn.Module,
    model_b: nn.Module,
    lam: float,
    data: MergeData | None,
    *,
    bn_reset: bool,
    use_repair: bool,
    device: str | torch.device = "cpu",
) -> nn.Module:
    merged = lerp_models(model_a, model_b, lam)
    if data is None:
        return merged
    if use_repair:
        return repair(merged, model_a, model_b, lam, data.combined(), device=device)
    if bn_reset and has_batchnorm(merged):
        return reset_bn(merged, data.combined(), device=device)
    return merged


@torch.no_grad()
def merge_data_loss(
    model: nn.Module, data: MergeData, max_per_source: int = 2000, device: str | torch.device = "cpu"
) -> float:
    """Mean cross-entropy on (a fixed sample of) the merge data: the criterion for ``--lam auto``."""
    s = data.sample(max_per_source)
    model.to(device).eval()
    total, n = 0.0, 0
    for x, y in s.batches(1000, device=device):
        total += float(F.cross_entropy(model(x), y, reduction="sum"))
        n += len(y)
    return total / n


def merge_models(
    a: Checkpoint,
    b: Checkpoint,
    *,
    method: str = "wm",
    lam: float | str = 0.5,
    data: MergeData | None = None,
    bn_reset: bool | None = None,
    use_repair: bool = False,
    options: dict[str, Any] | None = None,
    spec: PermutationSpec | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> MergeResult:
    """Merge B into A. ``lam="auto"`` picks lam in {0, 0.05, ..., 1} by merge-data loss.

    ``bn_reset=None`` means: reset BatchNorm statistics whenever the model has BN and merge
    data is given (a BN model averaged without it is broken).
    """
    if method not in methods():
        raise PermergeError(f"unknown merge method {method!r}; known: {', '.join(methods())}")
    if isinstance(lam, bool) or (isinstance(lam, str) and lam != "auto"):  # True would pass as 1.0
        raise PermergeError(f"--lam must be a number in [0, 1] or 'auto', got {lam!r}")
    if isinstance(lam, float | int) and not 0.0 <= float(lam) <= 1.0:
        raise PermergeError(f"--lam must lie in [0, 1], got {lam}")
    if lam == "auto" and data is None:
        raise PermergeError("--lam auto picks lam on merge data: pass --data")
    check_compatible(a, b)
    if bn_reset is None:
        bn_reset = data is not None and has_batchnorm(a.model)
    if bn_reset and data is None:
        raise PermergeError("--bn-reset needs merge data (--data)")
    t0 = time.perf_counter()
    info: dict[str, Any] = {
        "method": method,
        "data": data.names if data else None,
        "bn_reset": bool(bn_reset),
        "repair": use_repair,
    }
    perm, model_b, spec_used = None, b.model, None
    if method not in BASELINES:
        perm, spec_used, ainfo = align(a, b, method, data, options=options, spec=spec, device=device, progress=progress)
        info["align"] = ainfo
        model_b = aligned_copy(b, spec_used, perm)
    elif options:
        raise PermergeError(f"method {method} takes no options")

    def build(at: float) -> nn.Module:
        if method == "ensemble":
            return OutputEnsemble(a.model, b.model, at).eval()
        return interpolate_pair(
            a.model, model_b, at, data, bn_reset=bool(bn_reset), use_repair=use_repair, device=device
        )

    if lam == "auto":
        assert data is not None
        grid = [i / 20 for i in range(21)]
        losses = [merge_data_loss(build(at), data, device=device) for at in grid]
        best = min(range(len(grid)), key=lambda i: losses[i])
        lam_value = grid[best]
        info["lam_auto"] = {"grid": grid, "merge_data_loss": losses, "chosen": lam_value}
    else:
        lam_value = float(lam)
    merged = build(lam_value)
    info["seconds"] = time.perf_counter() - t0
    return MergeResult(model=merged, method=method, lam=lam_value, perm=perm, spec=spec_used, info=info)
