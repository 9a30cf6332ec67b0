"""Distillation finisher: teach a merged model what each source model knows, on merge data.

A permute-and-average merge of two networks that learned *different* features throws
information away; no choice of permutation gets it back. What the merge data can still do is
show the merged model, image by image, what the right source model would answer. Each merge
source is taught by its own model (source i by model i: the MNIST images by the MNIST model),
with soft targets at a temperature, so ten images per class carry the teachers' whole output
distribution, not just a label. With a few images per class a network memorises them within a
few dozen steps; one random DSA operation per source per batch (the same augmentation that
makes condensed sets generalise) turns them into a stream of new inputs on which the teachers
still answer. This is knowledge distillation (Hinton et al. 2015) used as the refit step of a
merge; it works after any merge method and on a single source model too (the "no merge"
baseline that tells what merging itself is worth). After a permutation merge the student's
hidden units are paired with each teacher's, so it can also be taught each teacher's hidden
activations ("hints"): hundreds of numbers per image where a logit has ten, which is what
helps when the merge data is one image per class.

The step budget is chosen from the merge data (see :func:`resolve_budget`) and recorded.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..align.activation_matching import probe_module
from ..augment import default_augment
from ..data.mergedata import MergeData
from ..errors import PermergeError
from ..progress import progress_bar

# Merge data below this many images (all sources together) counts as "a few images per
# class": it gets DSA augmentation and the longer budget. 10 images/class of two 10-class
# datasets is 200 images; a full training set is tens of thousands.
SMALL_DATA = 5000
# Step size of the disagreement inputs on small merge data (inputs are normalised to about unit
# scale). Chosen on the validation split: 0.1 beat 0 and 0.3 on 3 pairs (docs/RESULTS.md §8).
ADVERSARIAL = 0.1
# Weight of the hard labels on large merge data (a full training set): there the labels know
# more than the teachers (a jointly trained model beats the mean of the two sources' own
# accuracies), so the student should learn from both. Chosen on validation (RESULTS.md §8).
LABEL_WEIGHT = 0.5
# Weight of the feature hints on small merge data. Chosen on the validation split, 3 pairs, by
# the mean over 1 and 10 images/class (weights 0 / 1 / 3 / 10 / 30 at 1/class: 90.24 / 90.67 /
# 90.82 / 91.03 / lower; at 10/class 92.28 / 92.30 / 92.37 / 92.29): docs/RESULTS.md §8e.
HINT = 10.0
# Passes over large merge data: with the labels in the loss the student keeps improving past
# the two passes that soft targets alone needed (validation, RESULTS.md §8).
FULL_PASSES = 8
# Version of what the unset options do (the defaults above and in resolve_budget). Bump it with
# every change of a default: grid stores key a run by the options it was *given*, so without
# this a store would serve a run made under the old defaults as a run of the new ones (runs
# planned before it existed carry no version and never match). 2: feature hints on small merge
# data (RESULTS.md §8e) and augmentation chosen from the sources' recipes on large (§8f).
RECIPE = 2


class DistillOptions(BaseModel):
    """Settings of the distillation finisher (``--ft-opt key=value``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    steps: int | None = Field(None, ge=1, description="optimisation steps (default: chosen from the merge data)")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate (cosine decay to 0)")
    weight_decay: float = Field(0.0, ge=0)
    temperature: float = Field(2.0, gt=0, description="softmax temperature of teacher and student")
    loss: Literal["kl", "mse"] = Field(
        "kl",
        description="kl: soft targets at the temperature; mse: the teacher's logits themselves "
        "(squared error, the temperature unused)",
    )
    label_weight: float | None = Field(
        None,
        ge=0,
        le=1,
        description="weight of the hard-label loss (default: 0.5 on large merge data, else 0: soft targets only)",
    )
    batch_size: int = Field(256, ge=2, description="images per step, shared equally by the sources")
    augment: Literal["auto", "none", "dsa"] = Field(
        "auto",
        description="auto: DSA for small merge data (< 5,000 images) or when every source model was "
        "trained with augmentation (its checkpoint says so), none otherwise",
    )
    aug_groups: int = Field(
        32, ge=1, description="independent DSA draws per source per batch (more: more varied inputs)"
    )
    mixup: bool = Field(True, description="mix image pairs within a source (weight ~ U(0,1)); teachers label mixes")
    adversarial: float | None = Field(
        None,
        ge=0,
        description=(
            "step size of extra inputs moved towards student/teacher disagreement "
            "(default: 0.1 for small merge data, 0 = off otherwise)"
        ),
    )
    teacher: Literal["own", "ensemble"] = Field(
        "own", description="own: source i is taught by model i; ensemble: every image by the mean of both"
    )
    hint: float | None = Field(
        None,
        ge=0,
        description="weight of feature hints: every hidden layer of the student matches its own teacher's "
        "(B permuted to the merge) on each input (default: 10 for small merge data after a same-width "
        "permutation merge, else 0)",
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="bf16: forward passes in mixed precision (autocast; weights and Adam stay fp32), "
        "2-3x faster for CNNs on CPUs with bf16 instructions and on GPUs",
    )
    seed: int = 0


def resolve_budget(
    opts: DistillOptions, data: MergeData, can_hint: bool = False, sources_augmented: bool = False
) -> dict[str, Any]:
    """Steps and augmentation for this merge data, unless the options fix them.

    Small merge data (a few images per class): 2,000 steps with DSA. Chosen on the validation
    split (never the test set) with ``benchmarks/distill_recipe.py`` on MNIST vs Fashion-MNIST
    at 10 images/class: 1,500 / 3,000 steps gave 92.15 / 92.36 (docs/RESULTS.md §8), 2,000 is
    the compromise with time; disagreement inputs on (``ADVERSARIAL``), no hard labels, feature
    hints at ``HINT`` where ``can_hint`` (the teachers' units are aligned to the student's). Full
    data: ``FULL_PASSES`` passes over the largest source at the batch share, at least 1,000
    steps, with the hard labels at weight ``LABEL_WEIGHT``, and with DSA only where
    ``sources_augmented`` (every source model was trained with augmentation, so augmented views
    are inputs its teacher knows): on validation DSA was worth +1.2 on split CIFAR-10
    (crop-flip sources) and -0.2 on MNIST vs Fashion-MNIST (unaugmented sources), RESULTS.md §8f."""
    small = len(data) < SMALL_DATA
    augment = opts.augment if opts.augment != "auto" else ("dsa" if small or sources_augmented else "none")
    adversarial = opts.adversarial if opts.adversarial is not None else (ADVERSARIAL if small else 0.0)
    label_weight = opts.label_weight if opts.label_weight is not None else (0.0 if small else LABEL_WEIGHT)
    hint = opts.hint if opts.hint is not None else (HINT if small and can_hint else 0.0)
    if opts.steps is not None:
        steps, why = opts.steps, "given"
    elif small:
        steps, why = 2000, f"small merge data ({len(data)} images < {SMALL_DATA})"
    else:
        steps = max(1000, FULL_PASSES * data.epoch_steps(opts.batch_size))
        why = f"{FULL_PASSES} passes over {len(data)} images"
        if opts.augment == "auto":
            why += "; DSA: the sources trained with augmentation" if sources_augmented else "; no augmentation"
    return {
        "steps": steps,
        "augment": augment,
        "adversarial": adversarial,
        "label_weight": label_weight,
        "lr": opts.lr,
        "temperature": opts.temperature,
        "loss": opts.loss,
        "hint": hint,
        "reason": why,
    }


class Part(NamedTuple):
    """One source's share of a batch: inputs, labels, and for mixed inputs the partner's label
    and the mixing weight (1 where nothing was mixed)."""

    x: torch.Tensor
    y: torch.Tensor
    y_partner: torch.Tensor
    lam: torch.Tensor


def _source_batches(
    data: MergeData, batch_size: int, g: torch.Generator, device: torch.device, augment: bool, groups: int = 1
) -> Iterator[list[Part]]:
    """Endless balanced batches, kept apart per source (each source has its own teacher)."""
    k = len(data.sources)
    share = max(1, batch_size // k)
    augs = [default_augment(s.image_shape[0]) if augment else None for s in data.sources]
    orders = [torch.randperm(len(s), generator=g) for s in data.sources]
    pos = [0] * k
    while True:
        parts = []
        for i, s in enumerate(data.sources):
            take = min(share, len(s))
            if pos[i] + take > len(s):
                orders[i], pos[i] = torch.randperm(len(s), generator=g), 0
            idx = orders[i][pos[i] : pos[i] + take]
            pos[i] += take
            x, aug = s.to_pixels(s.images[idx], device), augs[i]
            if aug is not None:  # one DSA draw per group of consecutive images
                x = aug.grouped(x, [len(c) for c in idx.chunk(groups)], g)
            y = s.labels[idx].to(device)
            parts.append(Part(s.normalization.apply(x), y, y, torch.ones(len(y), device=device)))
        yield parts


def _mix(parts: list[Part], g: torch.Generator) -> list[Part]:
    """Mixup within each source: mixes stay in that source's domain, so its teacher still applies."""
    out = []
    for p in parts:
        lam = torch.rand(len(p.x), generator=g).to(p.x.device)
        partner = torch.randperm(len(p.x), generator=g).to(p.x.device)
        w = lam.view(-1, *([1] * (p.x.dim() - 1)))
        out.append(Part(w * p.x + (1 - w) * p.x[partner], p.y, p.y[partner], lam))
    return out


class _Net:
    """A model's forward that also returns its activations at the hint nodes (none without hints).

    The probe is an fx copy of the model that shares its modules and parameters, so training
    through it trains the model."""

    def __init__(self, model: nn.Module, nodes: Sequence[str] = ()) -> None:
        self.model, self.nodes = model, tuple(nodes)
        self.probe = probe_module(model, self.nodes, with_output=True) if self.nodes else None

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.probe is None:
            return self.model(x), []
        out, feats = self.probe(x)
        return out, [feats[n] for n in self.nodes]


@torch.no_grad()
def _batch_first(model: nn.Module, nodes: Sequence[str], data: MergeData, device: torch.device) -> tuple[str, ...]:
    """The hint nodes whose activations have one row per image (axis 0 the batch): those the
    sources' rows can be concatenated on. Others (an attention block's stacked q/k/v, say) are
    left out, found by running two batch sizes through ``model`` (in eval mode)."""
    s = data.sources[0]
    x = s.normalization.apply(s.to_pixels(s.images[:1], device)).expand(3, *s.image_shape)
    probe = probe_module(model, nodes)
    two, three = probe(x[:2]), probe(x[:3])
    return tuple(n for n in nodes if two[n].shape[0] == 2 and three[n].shape[0] == 3)


class _Target(NamedTuple):
    """What the teachers answer for a batch: probabilities at the temperature, logits, and (with
    hints) the own teacher's activations per hint node."""

    probs: torch.Tensor
    logits: torch.Tensor
    feats: list[torch.Tensor]


def _teach(teachers: Sequence[_Net], xs: Sequence[torch.Tensor], mode: str, t: float, grad: bool = False) -> _Target:
    """The teachers' answer for every image (``xs[i]``: source i's inputs; ``mode`` own: source
    i's teacher, ensemble: the mean over all teachers); ``grad``: keep the graph back to the
    inputs (the teachers' weights are frozen)."""
    probs, logits, feats = [], [], []
    with torch.set_grad_enabled(grad):
        for i, x in enumerate(xs):
            outs = [teachers[i](x)] if mode == "own" else [m(x) for m in teachers]
            probs.append(torch.stack([F.softmax(o / t, dim=1) for o, _ in outs]).mean(0))
            logits.append(torch.stack([o for o, _ in outs]).mean(0))
            feats.append(outs[0][1])
    return _Target(torch.cat(probs), torch.cat(logits), [torch.cat(f) for f in zip(*feats, strict=True)])


def _hint_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over hint nodes of the squared feature error relative to the teacher's feature
    energy, so layers of any scale weigh alike (FitNets' hints, Romero et al. 2015, on the units
    the alignment already paired)."""
    terms = []
    for s, q in zip(student, teacher, strict=True):
        qf = q.float()  # one fp32 copy of the teacher's feature (bf16 under autocast), used twice
        energy = torch.linalg.vector_norm(qf).square() / qf.numel()  # mean of q^2, no q^2 tensor
        terms.append(F.mse_loss(s.float(), qf) / (energy + 1e-8))
    return torch.stack(terms).mean()


def _loss(
    out: tuple[torch.Tensor, list[torch.Tensor]], target: _Target, parts: Sequence[Part], budget: dict[str, Any]
) -> torch.Tensor:
    """Soft-target KL at the budget's temperature (or, with loss mse, the squared error of the
    logits: all of the teacher's answer, scale included, where a softmax keeps only differences);
    with a label weight > 0 also the hard labels (both labels of a mixed input, weighted as the
    images were); with a hint weight > 0 also the feature hints."""
    logits, feats = out
    t, w, h = budget["temperature"], budget["label_weight"], budget.get("hint", 0.0)
    if budget.get("loss", "kl") == "mse":
        loss = F.mse_loss(logits.float(), target.logits.float())
    else:
        loss = F.kl_div(F.log_softmax(logits / t, dim=1), target.probs, reduction="batchmean") * t * t
    if w > 0:
        y, y2, lam = (torch.cat([getattr(p, f) for p in parts]) for f in ("y", "y_partner", "lam"))
        ce = F.cross_entropy(logits, y, reduction="none"), F.cross_entropy(logits, y2, reduction="none")
        loss = (1 - w) * loss + w * (lam * ce[0] + (1 - lam) * ce[1]).mean()
    if h > 0:
        loss = loss + h * _hint_loss(feats, target.feats)
    return loss


def _clean_pass(
    student: _Net,
    teachers: Sequence[_Net],
    parts: list[Part],
    mode: str,
    budget: dict[str, Any],
    weight: float,
) -> tuple[float, list[torch.Tensor] | None]:
    """Forward and backward (gradients scaled by ``weight``) on the batch as drawn; with
    disagreement inputs on, also return each input moved one signed-gradient step up the loss.

    A few images per class leave most of input space unseen; the student matches the teachers
    there only by luck. The inputs where it disagrees most are the informative ones (the idea of
    adversarial belief matching, Micaelli & Storkey 2019, and data-free adversarial
    distillation). The step follows the KL's whole input gradient (through the student and,
    with their weights frozen, the teachers: what was validated, docs/RESULTS.md §8a), and it
    comes from the backward pass that also trains the weights ("free" adversarial training,
    Shafahi et al. 2019) instead of a pass of its own. The teachers label the moved inputs, so no
    label is invented."""
    t, eps = budget["temperature"], budget["adversarial"]
    xs = [p.x.detach().requires_grad_(eps > 0) for p in parts]
    target = _teach(teachers, xs, mode, t, grad=eps > 0)  # the loss's full input gradient
    loss = _loss(student(torch.cat(xs)), target, parts, budget)
    _check_finite(loss)
    (loss * weight).backward()
    moved = [(xi + eps * _grad(xi).sign()).detach() for xi in xs] if eps > 0 else None
    return float(loss.item()), moved


def _grad(x: torch.Tensor) -> torch.Tensor:
    assert x.grad is not None  # x required grad and the loss depends on it
    return x.grad


def _check_finite(loss: torch.Tensor) -> None:
    if not torch.isfinite(loss):
        raise PermergeError(f"distillation diverged (loss {loss.item()}); lower --ft-opt lr")


def _step(student: _Net, teachers: Sequence[_Net], parts: list[Part], mode: str, budget: dict[str, Any]) -> float:
    """Accumulate one step's gradients (the batch, then its disagreement inputs, each half the
    weight: the mean over both, as one batch of twice the size); return the loss."""
    half = 0.5 if budget["adversarial"] > 0 else 1.0
    loss, moved = _clean_pass(student, teachers, parts, mode, budget, half)
    if moved is None:
        return loss
    adv = _loss(student(torch.cat(moved)), _teach(teachers, moved, mode, budget["temperature"]), parts, budget)
    _check_finite(adv)
    (adv * half).backward()
    return half * (loss + float(adv.item()))


@contextmanager
def _frozen(teachers: Sequence[nn.Module], student: nn.Module) -> Iterator[None]:
    """Teachers' weights without gradients while distilling (the input gradient of the
    disagreement step passes through them), restored afterwards."""
    own = {id(p) for p in student.parameters()}
    params = [p for m in teachers for p in m.parameters() if p.requires_grad and id(p) not in own]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def distill(
    student: nn.Module,
    teachers: Sequence[nn.Module],
    data: MergeData,
    opts: DistillOptions,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
    hint_nodes: Sequence[str] = (),
    sources_augmented: bool = False,
) -> dict[str, Any]:
    """Train ``student`` in place to match the teachers on (augmented) merge data; return info.

    ``hint_nodes``: fx nodes whose activations carry units the student shares with each teacher
    (the alignment's probes, with B's units permuted to the merge); used when ``opts.hint`` > 0.
    ``sources_augmented``: every teacher was trained with augmentation (see :func:`resolve_budget`)."""
    dev = torch.device(device)
    _check_request(opts, teachers, data, hint_nodes, dev)
    budget = resolve_budget(opts, data, bool(hint_nodes) and opts.teacher == "own", sources_augmented)
    total = int(budget["steps"])
    g = torch.Generator().manual_seed(opts.seed)
    for m in teachers:
        m.to(dev).eval()
    student.to(dev).train()
    nodes = _batch_first(teachers[0], hint_nodes, data, dev) if budget["hint"] > 0 else ()
    budget["hint"] = budget["hint"] if nodes else 0.0  # no probe with a row per image: no hints
    student_net, teacher_nets = _Net(student, nodes), [_Net(m, nodes) for m in teachers]
    # fused: one kernel over all parameters instead of a dozen per tensor (a seventh of a step)
    fused = dev.type in ("cpu", "cuda")  # where torch has the fused kernel
    optim = torch.optim.Adam(student.parameters(), lr=opts.lr, weight_decay=opts.weight_decay, fused=fused)
    batches = _source_batches(data, opts.batch_size, g, dev, budget["augment"] == "dsa", opts.aug_groups)
    t0, first, last = time.perf_counter(), float("nan"), float("nan")
    with _frozen(teachers, student), progress_bar(total, "distil", enabled=progress) as bar:
        for step in range(total):
            for group in optim.param_groups:
                group["lr"] = opts.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            parts = next(batches)
            if opts.mixup:
                parts = _mix(parts, g)
            optim.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=opts.precision == "bf16"):
                last = _step(student_net, teacher_nets, parts, opts.teacher, budget)
            optim.step()
            first = last if step == 0 else first
            bar.advance(loss=last)
    student.eval()
    return {
        **budget,
        "options": opts.model_dump(),
        "loss_first": first,
        "loss_last": last,
        "seconds": time.perf_counter() - t0,
    }


def _check_request(
    opts: DistillOptions, teachers: Sequence[nn.Module], data: MergeData, hint_nodes: Sequence[str], dev: torch.device
) -> None:
    """Refuse what the finisher cannot do, before any step: hints without aligned units, a
    teacher per source without one source per teacher, bf16 where autocast has none."""
    if opts.hint and (not hint_nodes or opts.teacher != "own"):
        raise PermergeError(
            "--ft-opt hint needs each teacher's hidden units aligned to the merged model's "
            "(a same-width permutation merge: wm, am, ste) and teacher=own"
        )
    if opts.teacher == "own" and len(teachers) != len(data.sources):
        raise PermergeError(
            f"distillation with teacher=own needs one merge source per model ({len(teachers)} models, "
            f"{len(data.sources)} sources); pass one --data spec per model or --ft-opt teacher=ensemble"
        )
    if opts.precision == "bf16" and dev.type not in ("cpu", "cuda"):
        raise PermergeError(f"--ft-opt precision=bf16 needs a CPU or CUDA device, not {dev.type}")


class FinisherInfo:
    """How ``permerge methods`` lists the finisher, beside the merge methods."""

    needs_data = True
    summary = "distil both source models into the merged one on the merge data (any method)"
    options = DistillOptions
