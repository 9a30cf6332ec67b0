"""``mtt``: matching training trajectories (Cazenavette et al., CVPR 2022).

First a few *expert* networks are trained on the real data with plain SGD and their
parameters are recorded after every epoch. Each iteration then starts a student at a
random expert checkpoint ``theta_t``, trains it ``syn_steps`` SGD steps on the synthetic
images (with a learned step size), and penalises how far it ends from the expert's later
checkpoint ``theta_{t+M}``, normalised by how far the expert itself moved:
``||theta_student - theta_{t+M}||^2 / ||theta_t - theta_{t+M}||^2``. The gradient flows
back through the unrolled student steps into the pixels.

Why it is here: DC and DM match one-step gradients or embeddings of *random* networks;
MTT matches where many steps of training *lead*, which is what a model trained on the set
afterwards experiences. With the matching network set to the architecture that will be
trained on the set (``net: auto`` = the paper's MLP for grayscale data) the experts and
students are cheap enough for a CPU: a few seconds per expert epoch, well under a second
per iteration on MNIST.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ...augment import SiameseAugment, default_augment
from ...errors import PermergeError
from ...progress import progress_bar
from ..condense import NetFactory, clamp_, finite_or_raise, fresh_net, init_synthetic, net_factory, synthetic_result
from ..registry import MethodResult, ReduceContext, ReduceOptions, register_method


class _Flat:
    """A network's trainable parameters as one flat vector (experts and students are points
    in this space) and back to the ``{name: tensor}`` dict ``functional_call`` wants."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        self.names = [n for n, p in net.named_parameters() if p.requires_grad]
        params = dict(net.named_parameters())
        self.shapes = [params[n].shape for n in self.names]
        self.sizes = [math.prod(s) for s in self.shapes]

    def get(self) -> torch.Tensor:
        params = dict(self.net.named_parameters())
        return torch.cat([params[n].detach().reshape(-1) for n in self.names]).clone()

    def forward(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(flat, self.sizes)
        params = {n: t.view(s) for n, t, s in zip(self.names, parts, self.shapes, strict=True)}
        return functional_call(self.net, params, (x,))


def _expert_trajectories(
    ctx: ReduceContext, factory: NetFactory, experts: int, epochs: int, lr: float, batch: int
) -> list[list[torch.Tensor]]:
    """``experts`` trajectories: parameters at the start and after each of ``epochs`` epochs of
    plain SGD on the real training data (no momentum, as the student uses no momentum)."""
    g = ctx.generator
    images, labels = ctx.data.images, ctx.data.labels
    trajectories = []
    with progress_bar(experts * epochs, "mtt experts", ctx.progress) as bar:
        for _ in range(experts):
            net = fresh_net(factory, g, ctx.device).train()
            f = _Flat(net)
            traj = [f.get()]
            opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=lr)
            for _ in range(epochs):
                order = torch.randperm(len(images), generator=g)
                total, n = 0.0, 0
                for s in range(0, len(order), batch):
                    idx = order[s : s + batch]
                    x = ctx.data.to_input(images[idx], ctx.device)
                    loss = F.cross_entropy(net(x), labels[idx].to(ctx.device))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total, n = total + float(loss.detach()), n + 1
                traj.append(f.get())
                bar.advance(loss=total / max(n, 1))
            trajectories.append(traj)
    return trajectories


class MTTOptions(ReduceOptions):
    """MTT's settings, sized for a CPU (two experts of ten epochs)."""

    iterations: int = 400
    experts: int = 2
    expert_epochs: int = 10
    lr_teacher: float = 0.01
    batch_teacher: int = 256
    max_start_epoch: int = 5
    match_epochs: int = 2
    syn_steps: int = 20
    batch_syn: int = 0
    lr_img: float = 10.0
    momentum_img: float = 0.5
    lr_lr: float = 1e-5
    syn_lr_init: float = 0.01
    net: str = "auto"
    init: str = "herding"
    dsa: bool = False
    flip: bool | None = None


def _unroll(
    flat: _Flat,
    w_start: torch.Tensor,
    syn: torch.Tensor,
    labels: torch.Tensor,
    syn_lr: torch.Tensor,
    steps: int,
    bs: int,
    aug: SiameseAugment | None,
    norm: Callable[[torch.Tensor], torch.Tensor],
    g: torch.Generator,
) -> torch.Tensor:
    """A student's ``steps`` SGD steps on the synthetic set from the expert's weights
    ``w_start``, kept in the graph (``create_graph``) so the matching loss reaches the images
    and the learned step size through every step."""
    w = w_start.clone().requires_grad_(True)
    for _ in range(steps):
        idx = torch.randperm(len(labels), generator=g)[:bs].to(syn.device)
        x = syn[idx]
        if aug is not None:
            x = aug(x, aug.sample(g))
        ce = F.cross_entropy(flat.forward(w, norm(x)), labels[idx])
        (grad,) = torch.autograd.grad(ce, [w], create_graph=True)
        w = w - syn_lr * grad
    return w


@register_method("mtt", MTTOptions, kind="condensation")
def mtt(ctx: ReduceContext, o: MTTOptions) -> MethodResult:
    """Trajectory matching: students trained on the set must end where real-data experts do.

    ``batch_syn`` 0 means every synthetic image in each student step (the whole set is tiny).
    ``max_start_epoch + match_epochs`` must not exceed ``expert_epochs``.
    """
    if o.max_start_epoch + o.match_epochs > o.expert_epochs:
        raise PermergeError(
            f"mtt: max_start_epoch ({o.max_start_epoch}) + match_epochs ({o.match_epochs}) "
            f"must be <= expert_epochs ({o.expert_epochs})"
        )
    factory, net_name = net_factory(ctx, o.net, "mlp" if ctx.data.image_shape[0] == 1 else "convnet")
    template = fresh_net(factory, ctx.generator, ctx.device).train()
    flat = _Flat(template)
    t0 = time.perf_counter()
    trajectories = _expert_trajectories(ctx, factory, o.experts, o.expert_epochs, o.lr_teacher, o.batch_teacher)
    seconds_experts = time.perf_counter() - t0

    aug = default_augment(ctx.data.image_shape[0], o.flip) if o.dsa else None
    syn, labels, start = init_synthetic(ctx, o.init)
    syn.requires_grad_(True)
    syn_lr = torch.tensor(float(o.syn_lr_init), device=ctx.device, requires_grad=True)
    opt_img = torch.optim.SGD([syn], lr=o.lr_img, momentum=o.momentum_img)
    opt_lr = torch.optim.SGD([syn_lr], lr=o.lr_lr, momentum=0.5)
    norm, g = ctx.data.normalization.apply, ctx.generator
    bs = len(labels) if o.batch_syn <= 0 else min(o.batch_syn, len(labels))
    history: list[float] = []
    with progress_bar(o.iterations, f"mtt ipc {ctx.ipc}", ctx.progress) as bar:
        for it in range(o.iterations):
            traj = trajectories[int(torch.randint(len(trajectories), (1,), generator=g))]
            t = int(torch.randint(o.max_start_epoch + 1, (1,), generator=g))
            w_start, w_target = traj[t], traj[t + o.match_epochs]
            w = _unroll(flat, w_start, syn, labels, syn_lr, o.syn_steps, bs, aug, norm, g)
            loss = ((w - w_target) ** 2).sum() / ((w_start - w_target) ** 2).sum()
            value = finite_or_raise(loss, "mtt", it)
            opt_img.zero_grad(set_to_none=True)
            opt_lr.zero_grad(set_to_none=True)
            loss.backward()
            opt_img.step()
            opt_lr.step()
            clamp_(syn)
            with torch.no_grad():
                syn_lr.clamp_(min=1e-6)  # a negative step size would train the student backwards
            history.append(value)
            bar.advance(loss=value)
    extra = {
        "learned_lr": float(syn_lr.detach()),
        "augment_ops": None if aug is None else list(aug.ops),
        "seconds_experts": seconds_experts,
        "seconds_matching": time.perf_counter() - t0 - seconds_experts,
    }
    return synthetic_result(syn, labels, start, history, net_name, **extra)
