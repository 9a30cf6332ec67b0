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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.func import functional_call

from ..budgets import ste_budget
from ..data.imageset import ImageSet
from ..data.mergedata import MergeData
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


def _finite(params: list[torch.Tensor]) -> bool:
    """Every entry finite. Any inf or NaN makes a sum non-finite, so one reduction per tensor
    answers the common case; only a sum that overflows takes the element-wise check."""
    with torch.no_grad():
        if bool(torch.isfinite(torch.stack([p.sum() for p in params])).all()):
            return True
        return all(bool(torch.isfinite(p).all()) for p in params)


def _split_holdout(data: MergeData, opts: STEOptions, g: torch.Generator) -> tuple[MergeData, ImageSet]:
    """(what STE trains on, what it scores permutations on): all of the merge data and a fixed
    sample of it, or with ``holdout`` a random part of each source kept out for scoring."""
    score_set = data.sample(opts.eval_samples, seed=opts.seed)
    if opts.holdout <= 0:
        return data, score_set
    train_parts, score_parts = [], []
    for s in data.sources:
        n_hold = int(len(s) * opts.holdout)
        order = torch.randperm(len(s), generator=g)
        if n_hold < 1 or len(s) - n_hold < 1:
            raise AlignmentError(f"merge source {s.name} is too small for holdout {opts.holdout}")
        score_parts.append(s.subset(order[:n_hold]))
        train_parts.append(s.subset(order[n_hold:]))
    return MergeData(tuple(train_parts)), MergeData(tuple(score_parts)).sample(opts.eval_samples, seed=opts.seed)


class _Merged:
    """The proxy (trained, starts at A), A and B on the device, and the merged model's
    parameters ``(1 - lam) A + lam pi(B)`` built from them for a permutation."""

    def __init__(self, problem: AlignProblem, lam: float) -> None:
        dev = problem.device
        self.model = problem.model.to(dev)
        self.spec, self.lam, self.dev = problem.spec, lam, dev
        self.names = [n for n, _ in self.model.named_parameters()]
        self.state_a = {k: v.to(dev) for k, v in problem.state_a.items()}
        self.state_b = {k: v.to(dev) for k, v in problem.state_b.items()}
        self.proxy = {n: self.state_a[n].detach().clone().requires_grad_(True) for n in self.names}
        self.buffers = [k for k in self.state_a if k not in self.proxy]
        self.a_part = {n: (1 - lam) * self.state_a[n] for n in self.names}  # the same every step
        self._permuted_b: dict[str, tuple[tuple[bytes, ...], torch.Tensor]] = {}

    def permute_b(self, perm: Permutation) -> dict[str, torch.Tensor]:
        """``apply_permutation(spec, perm, state_b)``, reusing tensors whose groups did not move."""
        out, on_dev = {}, None
        for k, v in self.state_b.items():
            key = tuple(perm[g].numpy().tobytes() for _, g, _ in self.spec.by_param.get(k, ()))
            hit = self._permuted_b.get(k)
            if hit is None or hit[0] != key:
                on_dev = on_dev or {g: p.to(self.dev) for g, p in perm.items()}
                hit = self._permuted_b[k] = (key, permute_param(self.spec, k, v, on_dev))
            out[k] = hit[1]
        return out

    def params(self, perm: Permutation) -> dict[str, torch.Tensor]:
        """The merged model's parameters ``(1 - lam) A + lam pi(B)`` and buffers, no gradient."""
        pb, lam = self.permute_b(perm), self.lam
        # (torch's foreach kernels would be one call for all tensors, but on the CPU they run
        # on one thread and took twice as long here)
        out = {n: self.a_part[n] + lam * pb[n] for n in self.names}
        for k in self.buffers:
            out[k] = pb[k].clone() if not pb[k].is_floating_point() else torch.lerp(self.state_a[k], pb[k], lam)
        return out

    def loss(self, perm: Permutation, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The merged model's training loss on a batch, and the merged parameters it was
        computed with (leaves: :meth:`backward` hands their gradient to the proxy)."""
        params = self.params(perm)
        leaves = [params[n].requires_grad_(True) for n in self.names]
        return F.cross_entropy(functional_call(self.model, params, (x,)), y), leaves

    def backward(self, loss: torch.Tensor, leaves: list[torch.Tensor]) -> None:
        """Straight through: the forward used pi(B), the backward treats it as the proxy, so
        the proxy's gradient is ``lam`` times the merged parameters' gradient."""
        loss.backward()
        for n, t in zip(self.names, leaves, strict=True):
            if t.grad is not None:
                self.proxy[n].grad = t.grad * self.lam

    @torch.no_grad()
    def score(self, perm: Permutation, score_set: ImageSet) -> float:
        # Train-mode forward so BatchNorm uses batch statistics (the merged model's running
        # statistics are meaningless before a BN reset); buffers are copies, so none leak.
        merged = self.params(perm)
        loss_sum, n = 0.0, 0
        self.model.train()
        for x, y in score_set.batches(1000, device=self.dev):
            loss_sum += float(F.cross_entropy(functional_call(self.model, merged, (x,)), y, reduction="sum"))
            n += len(y)
        return loss_sum / n


def _optimizer(params: list[torch.Tensor], opts: STEOptions) -> torch.optim.Optimizer:
    assert opts.lr is not None  # set by ste_budget
    if opts.optimizer == "adam":
        return torch.optim.Adam(params, lr=opts.lr, weight_decay=opts.weight_decay)
    # fused SGD: one kernel over all tensors (a twentieth of a step on the CPU). Its values equal
    # the per-tensor update's except in the last bit on short tensor tails (e.g. a 10-entry
    # bias); the permutations of the STE benchmark and the quick grid came out the same.
    fused = params[0].device.type in ("cpu", "cuda")
    return torch.optim.SGD(params, lr=opts.lr, momentum=opts.momentum, weight_decay=opts.weight_decay, fused=fused)


@dataclass
class _Best:
    """The best permutation so far by score loss, and what was scored."""

    perm: Permutation
    loss: float
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    last_scored: Permutation | None = None

    def offer(self, perm: Permutation, step: int, merged: _Merged, score_set: ImageSet, train_loss: float) -> None:
        """Score ``perm`` unless it is the one scored last; keep it if it is the best."""
        if self.last_scored is not None and all(torch.equal(perm[k], self.last_scored[k]) for k in perm):
            return
        score_loss = merged.score(perm, score_set)
        self.last_scored = perm
        self.history.append({"step": step, "score_loss": score_loss, "train_loss": train_loss})
        if score_loss < self.loss:
            self.perm, self.loss, self.step = perm, score_loss, step


@register("ste", STEOptions, needs_data=True, summary="straight-through estimator on merge data")
def ste_method(problem: AlignProblem, opts: STEOptions) -> Alignment:
    if problem.data is None:
        raise AlignmentError("STE needs merge data (--data)")
    t_start = time.perf_counter()
    merged = _Merged(problem, opts.lam)
    # Costs are computed where the weights live (a GPU too); each step's three assignment
    # problems are warm-started from the previous step's dual variables (align/lap.py).
    matcher = WeightMatcher(problem.spec, problem.state_b, device=problem.device)
    g = torch.Generator().manual_seed(opts.seed)
    data, score_set = _split_holdout(problem.data, opts, g)
    opts, budget = ste_budget(opts, data)  # unset steps / lr / batch size from the data size
    budget.announce()
    assert opts.batch_size is not None

    def project(init: Permutation | None, sweeps: int) -> Permutation:
        proxy = {k: v.detach() for k, v in merged.proxy.items()}
        return matcher.match(proxy, init=init, max_iter=sweeps, generator=g)[0]

    t_wm = time.perf_counter()
    perm = project(None, 100)  # the proxy is A: the first projection is full weight matching
    wm_seconds = time.perf_counter() - t_wm
    best = _Best(perm, merged.score(perm, score_set))
    best.history.append({"step": 0, "score_loss": best.loss})
    initial_loss = best.loss
    batches = data.balanced_batches(opts.batch_size, g, device=problem.device, augment=opts.augment == "dsa")
    t_loop = time.perf_counter()
    proj_time = _train(merged, opts, budget.steps, project, batches, best, score_set, problem.progress)
    loop = time.perf_counter() - t_loop
    merged.model.eval()
    total = budget.steps
    return Alignment(
        best.perm,
        {
            "seconds": time.perf_counter() - t_start,
            "steps": total,
            "seconds_per_step": loop / total,
            "projection_seconds_per_step": proj_time / total,
            "initial_wm_seconds": wm_seconds,
            "score_loss_initial": initial_loss,
            "score_loss_best": best.loss,
            "best_step": best.step,
            "scored_on": "held-out merge data" if opts.holdout > 0 else "merge data",
            "assignment_backend": matcher.assignment_backend,
            "assignment": matcher.solver_stats(),
            "history": best.history,
            "budget": budget.to_dict(),
            "options": opts.model_dump(),
        },
    )


def _train(
    merged: _Merged,
    opts: STEOptions,
    total: int,
    project: Callable[[Permutation | None, int], Permutation],
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    best: _Best,
    score_set: ImageSet,
    progress: bool,
) -> float:
    """The STE loop: project, step the proxy through the merged loss, score every
    ``eval_every`` steps (and the fully projected last one). Returns the projection seconds."""
    params = list(merged.proxy.values())
    optim = _optimizer(params, opts)
    proj_time = 0.0
    perm = best.perm
    merged.model.train()
    with progress_bar(total, "STE", enabled=progress) as bar:
        for step in range(1, total + 1):
            t0 = time.perf_counter()
            perm = project(perm, opts.wm_sweeps)
            proj_time += time.perf_counter() - t0
            for group in optim.param_groups:
                group["lr"] = _lr(opts, step - 1, total)
            x, y = next(batches)
            loss, leaves = merged.loss(perm, x, y)
            if not torch.isfinite(loss):
                raise AlignmentError(f"STE diverged at step {step} (loss {loss.item()}); lower --opt lr")
            optim.zero_grad(set_to_none=True)
            merged.backward(loss, leaves)
            optim.step()
            if not _finite(params):  # a finite loss, an infinite step
                raise AlignmentError(f"STE diverged at step {step} (non-finite proxy weights); lower --opt lr")
            if step % opts.eval_every == 0 or step == total:
                best.offer(project(perm, 100) if step == total else perm, step, merged, score_set, loss.item())
            bar.advance(loss=loss.item(), best=best.loss)
    return proj_time
