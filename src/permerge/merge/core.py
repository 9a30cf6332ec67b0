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
from pydantic import BaseModel, ValidationError
from torch import nn

from ..align import AlignProblem, get_method
from ..align.registry import available as align_methods
from ..align.registry import with_seed
from ..checkpoint import Checkpoint, check_compatible
from ..data.mergedata import MergeData
from ..errors import PermergeError, first_error
from ..models import ModelConfig
from ..permutation.spec import Permutation, PermutationSpec, apply_permutation
from .bn import default_bn_reset, has_batchnorm, repair, reset_bn
from .distill import DistillOptions, distill, resolve_budget
from .ensemble import OutputEnsemble
from .lerp import lerp_models
from .methods import mergers
from .size import size_vs_source
from .spec import spec_for

# Methods that align nothing: plain averaging, the output ensemble (both models, 2x compute)
# and "source", model A unchanged: the start of the "distil both teachers into one source
# model" baseline, which tells what merging itself is worth next to a finisher. The one list
# of them (with the summaries ``permerge methods`` prints).
BASELINES = {
    "average": "plain weight averaging (no alignment)",
    "ensemble": "average of output probabilities",
    "source": "model A unchanged (the start of a no-merge baseline)",
}
FINISHERS = ("none", "kd")


def methods() -> list[str]:
    return [*BASELINES, *align_methods(), *mergers()]


def options_class(method: str) -> type[BaseModel] | None:
    """The options class of a registered alignment method or merger; None for a baseline or
    an unknown name (reported where the method is looked up)."""
    if method in mergers():
        return mergers()[method].options
    if method in BASELINES or method not in align_methods():
        return None
    return get_method(method).options


def seeded(method: str, options: dict[str, Any] | None, seed: int | None) -> dict[str, Any] | None:
    """``options`` for ``method`` with the run's ``seed`` added when the method has a ``seed``
    option the caller left unset; baselines and unknown names pass through unchanged."""
    cls = options_class(method)
    return options if cls is None else with_seed(cls, options, seed)


@dataclass
class MergeResult:
    model: nn.Module
    method: str
    lam: float
    perm: Permutation | None = None
    spec: PermutationSpec | None = None
    info: dict[str, Any] = field(default_factory=dict)
    config: ModelConfig | None = None  # set when the merged model is not A's architecture (wider)


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
    finetune: str = "none",
    finetune_options: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    seed: int | None = None,
) -> MergeResult:
    """Merge B into A. ``lam="auto"`` picks lam in {0, 0.05, ..., 1} by merge-data loss.

    ``seed`` (the run's ``--seed``) seeds every seeded part whose options leave ``seed`` unset:
    the method (wm, am, ste, pleas, zipit) and the finisher.

    ``bn_reset=None`` means: reset BatchNorm statistics whenever the model has BN and merge
    data is given (a BN model averaged without it is broken). ``finetune="kd"`` then distils
    both source models into the merged one on the merge data (:mod:`.distill`).
    """
    _check_request(method, lam, data)
    options = seeded(method, options, seed)
    if finetune != "none":
        finetune_options = with_seed(DistillOptions, finetune_options, seed)
    ft_opts = _finetune_options(finetune, finetune_options, method, data)
    check_compatible(a, b)
    if bn_reset is None:
        bn_reset = default_bn_reset(a.model, data is not None)
    if bn_reset and data is None:
        raise PermergeError("--bn-reset needs merge data (--data)")
    t0 = time.perf_counter()
    info: dict[str, Any] = {
        "method": method,
        "data": data.names if data else None,
        "bn_reset": bool(bn_reset),
        "repair": use_repair,
    }
    if method in mergers():
        result = _run_merger(a, b, method, data, options, bool(bn_reset), device, progress)
    else:
        result = _interpolated(a, b, method, lam, data, options, spec, bool(bn_reset), use_repair, device, progress)
    result.info = {**info, **result.info}
    if ft_opts is not None:
        assert data is not None
        _finish(a, b, result, finetune, ft_opts, data, bool(bn_reset), device, progress)
    result.info["seconds"] = time.perf_counter() - t0
    result.info["size"] = size_vs_source(result.model, a.model, a.config.in_shape)
    if result.config is not None and result.config != a.config:  # wider than a source: say how
        result.info["size"]["model"] = result.config.describe()
    return result


def _finish(
    a: Checkpoint,
    b: Checkpoint,
    result: MergeResult,
    finetune: str,
    opts: DistillOptions,
    data: MergeData,
    bn_reset: bool,
    device: str | torch.device,
    progress: bool,
) -> None:
    """Distil both sources into ``result.model`` in place (each the teacher of its own merge
    data), record what the finisher chose, and re-estimate BatchNorm statistics afterwards:
    training moved the weights under the statistics the merge had set."""
    teachers, nodes = finisher_teachers(a, b, result, opts, data)
    stats = distill(
        result.model,
        teachers,
        data,
        opts,
        device=device,
        progress=progress,
        hint_nodes=nodes,
        sources_augmented=sources_augmented(a, b),
    )
    result.info["finetune"] = {"method": finetune, **stats}
    if bn_reset and has_batchnorm(result.model):
        result.model = reset_bn(result.model, data.combined(), device=device)


def sources_augmented(*sources: Checkpoint) -> bool:
    """Whether every source was trained with augmentation: the finisher's large-data budget
    then augments too (:func:`permerge.merge.distill.resolve_budget`)."""
    return all(c.trained_with_augmentation for c in sources)


def finisher_teachers(
    a: Checkpoint, b: Checkpoint, result: MergeResult, opts: DistillOptions, data: MergeData
) -> tuple[list[nn.Module], tuple[str, ...]]:
    """The finisher's teachers, and the nodes its feature hints read. Where hints will run (a
    permutation merge, and a hint weight > 0 once the budget is resolved for ``data``), B comes
    permuted to the merge, so unit i of every hidden layer means the same in the student and in
    both teachers; otherwise the sources as they are."""
    hints = result.method in align_methods() and resolve_budget(opts, data, can_hint=True)["hint"] > 0
    if not hints:
        return [a.model, b.model], ()
    assert result.spec is not None and result.perm is not None  # every alignment method sets them
    nodes = tuple(n for g in result.spec.probes.values() for n in g)
    return [a.model, aligned_copy(b, result.spec, result.perm)], nodes


def _check_request(method: str, lam: float | str, data: MergeData | None) -> None:
    if method not in methods():
        raise PermergeError(f"unknown merge method {method!r}; known: {', '.join(methods())}")
    if isinstance(lam, bool) or (isinstance(lam, str) and lam != "auto"):  # True would pass as 1.0
        raise PermergeError(f"--lam must be a number in [0, 1] or 'auto', got {lam!r}")
    if isinstance(lam, float | int) and not 0.0 <= float(lam) <= 1.0:
        raise PermergeError(f"--lam must lie in [0, 1], got {lam}")
    if lam == "auto" and data is None:
        raise PermergeError("--lam auto picks lam on merge data: pass --data")
    if lam == "auto" and method in mergers():
        raise PermergeError(f"method {method} builds its merged model itself: --lam auto does not apply")


def _run_merger(
    a: Checkpoint,
    b: Checkpoint,
    method: str,
    data: MergeData | None,
    options: dict[str, Any] | None,
    bn_reset: bool,
    device: str | torch.device,
    progress: bool,
) -> MergeResult:
    m = mergers()[method]
    opts = m.parse_options(options)
    if m.needs_data and data is None:
        raise PermergeError(f"method {method} needs merge data: pass --data SPEC [SPEC ...]")
    r = m.fn(a, b, data, opts, torch.device(device), progress)
    if bn_reset and data is not None and has_batchnorm(r.model):
        r.model = reset_bn(r.model, data.combined(), device=device)
    info = {"merger": {**r.info, "options": opts.model_dump()}}
    return MergeResult(r.model, method, 0.5, r.perm, r.spec, info, config=r.config)


def _interpolated(
    a: Checkpoint,
    b: Checkpoint,
    method: str,
    lam: float | str,
    data: MergeData | None,
    options: dict[str, Any] | None,
    spec: PermutationSpec | None,
    bn_reset: bool,
    use_repair: bool,
    device: str | torch.device,
    progress: bool,
) -> MergeResult:
    """Baselines and permutation merges: align (or not), then interpolate at ``lam``."""
    info: dict[str, Any] = {}
    perm, model_b, spec_used = None, b.model, None
    if method not in BASELINES:
        perm, spec_used, ainfo = align(a, b, method, data, options=options, spec=spec, device=device, progress=progress)
        info["align"] = ainfo
        model_b = aligned_copy(b, spec_used, perm)
    elif options:
        raise PermergeError(f"method {method} takes no options")

    def build(at: float) -> nn.Module:
        if method == "source":
            return copy.deepcopy(a.model).eval()
        if method == "ensemble":
            return OutputEnsemble(a.model, b.model, at).eval()
        return interpolate_pair(a.model, model_b, at, data, bn_reset=bn_reset, use_repair=use_repair, device=device)

    if lam == "auto":
        assert data is not None
        grid = [i / 20 for i in range(21)]
        losses = [merge_data_loss(build(at), data, device=device) for at in grid]
        lam_value = grid[min(range(len(grid)), key=lambda i: losses[i])]
        info["lam_auto"] = {"grid": grid, "merge_data_loss": losses, "chosen": lam_value}
    else:
        lam_value = float(lam)
    return MergeResult(build(lam_value), method, lam_value, perm, spec_used, info)


def _finetune_options(
    finetune: str, options: dict[str, Any] | None, method: str, data: MergeData | None
) -> DistillOptions | None:
    """Checked before any work: a bad finisher option fails in a second, not after the merge."""
    if finetune not in FINISHERS:
        raise PermergeError(f"unknown finisher {finetune!r}; known: {', '.join(FINISHERS)}")
    if finetune == "none":
        if options:
            raise PermergeError("--ft-opt given without --finetune kd")
        return None
    if data is None:
        raise PermergeError("--finetune kd distils on merge data: pass --data (one spec per model)")
    if method == "ensemble":
        raise PermergeError("--finetune needs one model to train; the output ensemble is two (use another method)")
    try:
        opts = DistillOptions(**(options or {}))
    except ValidationError as e:
        where, msg = first_error(e)
        raise PermergeError(f"invalid --ft-opt {where!r}: {msg}") from None
    if opts.hint and method not in align_methods():
        raise PermergeError(
            f"--ft-opt hint needs a same-width permutation merge (e.g. wm, am, ste) to pair the "
            f"teachers' units with the merged model's, not {method}"
        )
    return opts
