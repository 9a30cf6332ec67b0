"""Straight-through estimator (STE): learn the permutation from the merged model's loss.

A proxy weight set starts at A. Each step projects the proxy onto B's permutation orbit by
weight matching (warm-started from the last permutation, a few sweeps), forms the merged
model ``(1 - lam) A + lam pi(B)`` with the straight-through trick (forward uses pi(B),
backward sends its gradient to the proxy) and descends the merged model's cross-entropy on
merge-data batches. The kept permutation is the one whose merged model has the lowest loss
on the merge data (a fixed held-out part when there is enough data), never a test set.
"""

from __future__ import annotations

import time
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.func import functional_call

from ..budgets import ste_budget
from ..errors import AlignmentError
from ..permutation.spec import Permutation, permute_param
from ..progress import progress_bar
from .registry import Alignment, AlignProblem, register
from .weight_matching import WeightMatcher


class STEOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    # steps / lr / batch_size left unset are chosen from the merge data (permerge.budgets):
    # under 5,000 images 500 / 0.5 / 200, otherwise 2,000 / 0.1 / 500.
    steps: int | None = Field(None, ge=1, description="optimisation steps (default: from the merge data size)")
    epochs: float | None = Field(None, gt=0, description="passes over the largest merge source (instead of steps)")
    lr: float | None = Field(None, gt=0, description="default: from the merge data size")
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["constant", "step", "cosine"] = "step"  # step: x0.1 at 50% and 75%
    batch_size: int | None = Field(None, ge=2, description="default: from the merge data size")
    lam: float = Field(0.5, gt=0, lt=1, description="interpolation weight of B during training")
    wm_sweeps: int = Field(1, ge=1, description="weight-matching sweeps per projection (warm-started)")
    eval_every: int = Field(10, ge=1, description="score the current permutation every N steps")
    eval_samples: int = Field(2000, ge=10, description="merge samples per source used to score")
    holdout: float = Field(0.0, ge=0, lt=0.5, description="fraction of each source kept out for scoring")
    augment: Literal["none", "dsa"] = Field(
        "none", description="dsa: one random DSA operation per source per batch (a few images per class)"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _length(self) -> STEOptions:
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give steps or epochs, not both")
        return self


def _lr(opts: STEOptions, step: int, total: int) -> float:
    lr = float(opts.lr or 0.0)  # set by ste_budget before the loop
    if opts.schedule == "step":
        return lr * (0.1 ** ((step >= total * 0.5) + (step >= total * 0.75)))
    if opts.schedule == "cosine":
        return lr * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * step / total)).item())
    return lr


class _StraightThrough(torch.autograd.Function):
    """``a_part + lam * b`` forward; backward sends ``lam * grad`` to the proxy (the same values
    as ``a_part + lam * (b + (proxy - proxy.detach()))``, with two element-wise passes less)."""

    @staticmethod
    def forward(ctx, proxy: torch.Tensor, a_part: torch.Tensor, b: torch.Tensor, lam: float) -> torch.Tensor:
        ctx.lam = lam
        return a_part + lam * b

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        return grad * ctx.lam, None, None, None


def _finite(params: list[torch.Tensor]) -> bool:
    """Every entry finite. Any inf or NaN makes a sum non-finite, so one reduction per tensor
    answers the common case; only a sum that overflows takes the element-wise check."""
    with torch.no_grad():
        if bool(torch.isfinite(torch.stack([p.sum() for p in params])).all()):
            return True
        return all(bool(torch.isfinite(p).all()) for p in params)


@register("ste", STEOptions, needs_data=True, summary="straight-through estimator on merge data")
def ste_method(problem: AlignProblem, opts: STEOptions) -> Alignment:
    if problem.data is None:
        raise AlignmentError("STE needs merge data (--data)")
    t_start = time.perf_counter()
    dev = problem.device
    model = problem.model.to(dev)
    param_names = [n for n, _ in model.named_parameters()]
    state_a = {k: v.to(dev) for k, v in problem.state_a.items()}
    state_b = {k: v.to(dev) for k, v in problem.state_b.items()}
    spec = problem.spec
    # Costs are computed where the weights live (a GPU too); each step's three assignment
    # problems are warm-started from the previous step's dual variables (align/lap.py).
    matcher = WeightMatcher(spec, problem.state_b, device=dev)
    g = torch.Generator().manual_seed(opts.seed)

    data = problem.data
    score_set = data.sample(opts.eval_samples, seed=opts.seed)
    if opts.holdout > 0:
        from ..data.mergedata import MergeData

        train_parts, score_parts = [], []
        for s in data.sources:
            n_hold = int(len(s) * opts.holdout)
            order = torch.randperm(len(s), generator=g)
            if n_hold < 1 or len(s) - n_hold < 1:
                raise AlignmentError(f"merge source {s.name} is too small for holdout {opts.holdout}")
            score_parts.append(s.subset(order[:n_hold]))
            train_parts.append(s.subset(order[n_hold:]))
        data = MergeData(tuple(train_parts))
        score_set = MergeData(tuple(score_parts)).sample(opts.eval_samples, seed=opts.seed)

    opts, budget = ste_budget(opts, data)  # unset steps / lr / batch size from the data size
    budget.announce()
    total = budget.steps
    assert opts.lr is not None and opts.batch_size is not None
    batch_size = opts.batch_size

    proxy = {n: state_a[n].detach().clone().requires_grad_(True) for n in param_names}
    params = list(proxy.values())
    optim: torch.optim.Optimizer = (
        torch.optim.Adam(params, lr=opts.lr, weight_decay=opts.weight_decay)
        if opts.optimizer == "adam"
        else torch.optim.SGD(params, lr=opts.lr, momentum=opts.momentum, weight_decay=opts.weight_decay)
    )
    lam = opts.lam
    buffers = {k: v for k, v in state_a.items() if k not in proxy}
    a_part = {n: (1 - lam) * state_a[n] for n in param_names}  # the same every step

    def project(init: Permutation | None, sweeps: int) -> Permutation:
        perm, _ = matcher.match({k: v.detach() for k, v in proxy.items()}, init=init, max_iter=sweeps, generator=g)
        return perm

    permuted_b: dict[str, tuple[tuple[bytes, ...], torch.Tensor]] = {}

    def permute_b(perm: Permutation) -> dict[str, torch.Tensor]:
        """``apply_permutation(spec, perm, state_b)``, reusing tensors whose groups did not move."""
        out, on_dev = {}, None
        for k, v in state_b.items():
            key = tuple(perm[g].numpy().tobytes() for _, g, _ in spec.by_param.get(k, ()))
            hit = permuted_b.get(k)
            if hit is None or hit[0] != key:
                on_dev = on_dev or {g: p.to(dev) for g, p in perm.items()}
                hit = permuted_b[k] = (key, permute_param(spec, k, v, on_dev))
            out[k] = hit[1]
        return out

    def merged_params(perm: Permutation, straight_through: bool) -> dict[str, torch.Tensor]:
        pb = permute_b(perm)
        out = {}
        for n in param_names:
            # the forward value is (1 - lam) A + lam pi(B); straight through, the proxy gets lam * grad
            out[n] = (
                _StraightThrough.apply(proxy[n], a_part[n], pb[n], lam) if straight_through else a_part[n] + lam * pb[n]
            )
        for k in buffers:
            out[k] = pb[k].clone() if not pb[k].is_floating_point() else torch.lerp(state_a[k], pb[k], lam)
        return out

    @torch.no_grad()
    def score(perm: Permutation) -> float:
        # Train-mode forward so BatchNorm uses batch statistics (the merged model's running
        # statistics are meaningless before a BN reset); buffers are copies, so none leak.
        merged = merged_params(perm, straight_through=False)
        loss_sum, n = 0.0, 0
        model.train()
        for x, y in score_set.batches(1000, device=dev):
            loss_sum += float(F.cross_entropy(functional_call(model, merged, (x,)), y, reduction="sum"))
            n += len(y)
        return loss_sum / n

    t_wm = time.perf_counter()
    perm = project(None, 100)  # the proxy is A: the first projection is full weight matching
    wm_seconds = time.perf_counter() - t_wm
    best_perm, best_loss, best_step = perm, score(perm), 0
    initial_loss = best_loss
    history: list[dict[str, float]] = [{"step": 0, "score_loss": best_loss}]
    batches = data.balanced_batches(batch_size, g, device=dev, augment=opts.augment == "dsa")
    proj_time = 0.0
    last_scored: dict[str, torch.Tensor] | None = None
    model.train()
    t_loop = time.perf_counter()
    with progress_bar(total, "STE", enabled=problem.progress) as bar:
        for step in range(1, total + 1):
            t0 = time.perf_counter()
            perm = project(perm, opts.wm_sweeps)
            proj_time += time.perf_counter() - t0
            for group in optim.param_groups:
                group["lr"] = _lr(opts, step - 1, total)
            x, y = next(batches)
            loss = F.cross_entropy(functional_call(model, merged_params(perm, True), (x,)), y)
            if not torch.isfinite(loss):
                raise AlignmentError(f"STE diverged at step {step} (loss {loss.item()}); lower --opt lr")
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            if not _finite(params):  # a finite loss, an infinite step
                raise AlignmentError(f"STE diverged at step {step} (non-finite proxy weights); lower --opt lr")
            if step % opts.eval_every == 0 or step == total:
                final = project(perm, 100) if step == total else perm
                if last_scored is None or any(not torch.equal(final[k], last_scored[k]) for k in final):
                    score_loss = score(final)
                    last_scored = final
                    history.append({"step": step, "score_loss": score_loss, "train_loss": loss.item()})
                    if score_loss < best_loss:
                        best_perm, best_loss, best_step = final, score_loss, step
            bar.advance(loss=loss.item(), best=best_loss)
    loop = time.perf_counter() - t_loop
    model.eval()
    return Alignment(
        best_perm,
        {
            "seconds": time.perf_counter() - t_start,
            "steps": total,
            "seconds_per_step": loop / total,
            "projection_seconds_per_step": proj_time / total,
            "initial_wm_seconds": wm_seconds,
            "score_loss_initial": initial_loss,
            "score_loss_best": best_loss,
            "best_step": best_step,
            "scored_on": "held-out merge data" if opts.holdout > 0 else "merge data",
            "assignment_backend": matcher.assignment_backend,
            "assignment": matcher.solver_stats(),
            "history": history,
            "budget": budget.to_dict(),
            "options": opts.model_dump(),
        },
    )
