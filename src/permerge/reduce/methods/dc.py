"""``dc``: dataset condensation with gradient matching (Zhao, Mopuri & Bilen, ICLR 2021).

Outer loop over freshly initialised networks; for each, ``outer_loop`` rounds of: for every
class, the gradient of the loss on a real batch and on that class's synthetic images,
compared by :func:`condense.gradient_distance`; one SGD step on the synthetic images; then
``inner_loop`` epochs of training the network on the (detached) synthetic set, so later
rounds match gradients along the trajectory the synthetic data itself induces.
"""

from __future__ import annotations

import time

import torch

from ...augment import SiameseAugment
from ...progress import progress_bar
from ..condense import (
    RealSampler,
    clamp_,
    cross_entropy,
    finite_or_raise,
    fresh_net,
    gradient_distance,
    init_synthetic,
    net_factory,
    synthetic_result,
)
from ..registry import MethodResult, ReduceContext, ReduceOptions, register_method


class DCOptions(ReduceOptions):
    """DC's settings: the paper's, with ``iterations`` 50 and the inner loop capped for CPUs
    (``outer_loop`` / ``inner_loop`` unset: :func:`loops_for`); ``net`` auto is the paper's MLP
    for grayscale images and the ConvNet for colour ones."""

    iterations: int = 50
    outer_loop: int | None = None
    inner_loop: int | None = None
    lr_img: float = 0.1
    momentum_img: float = 0.5
    lr_net: float = 0.01
    batch_real: int = 64
    batch_train: int = 256
    net: str = "auto"
    init: str = "herding"


def loops_for(ipc: int, outer_loop: int | None, inner_loop: int | None) -> tuple[int, int]:
    """DC's schedule: (1, 1) for one image per class, (10, 50) for ten, (50, 10) for 50.
    permerge keeps the outer loops but caps the inner loop at 5 epochs for CPU budgets."""
    if outer_loop is None:
        outer_loop = 1 if ipc == 1 else (10 if ipc <= 10 else 50)
    if inner_loop is None:
        inner_loop = 1 if ipc == 1 else 5
    return outer_loop, inner_loop


def gradient_matching(ctx: ReduceContext, o: DCOptions, *, label: str, augment: SiameseAugment | None) -> MethodResult:
    """The DC loop, with optional siamese augmentation (DSA)."""
    outer, inner = loops_for(ctx.ipc, o.outer_loop, o.inner_loop)
    # auto: the paper's MLP for grayscale (MNIST-like) data, the ConvNet for colour images
    factory, net_name = net_factory(ctx, o.net, "mlp" if ctx.data.image_shape[0] == 1 else "convnet")
    syn, labels, start = init_synthetic(ctx, o.init)
    syn.requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=o.lr_img, momentum=o.momentum_img)
    sample_real = RealSampler(ctx)
    norm, g, k = ctx.data.normalization.apply, ctx.generator, ctx.ipc
    history: list[float] = []
    t0 = time.perf_counter()
    with progress_bar(o.iterations, f"{label} ipc {k}", ctx.progress) as bar:
        for it in range(o.iterations):
            model = fresh_net(factory, g, ctx.device).train()
            params = [p for p in model.parameters() if p.requires_grad]
            net_opt = torch.optim.SGD(params, lr=o.lr_net)
            total = 0.0
            for ol in range(outer):
                loss = syn.new_zeros(())
                for i, c in enumerate(ctx.classes):
                    xr, xs = sample_real(c, o.batch_real), syn[i * k : (i + 1) * k]
                    if augment is not None:
                        p = augment.sample(g)
                        xr, xs = augment(xr, p), augment(xs, p)
                    yr = torch.full((len(xr),), c, dtype=torch.long, device=ctx.device)
                    g_real = [t.detach() for t in torch.autograd.grad(cross_entropy(model, norm(xr), yr), params)]
                    g_syn = torch.autograd.grad(
                        cross_entropy(model, norm(xs), labels[i * k : (i + 1) * k]), params, create_graph=True
                    )
                    loss = loss + gradient_distance(list(g_syn), g_real)
                (syn.grad,) = torch.autograd.grad(loss, [syn])
                opt.step()
                clamp_(syn)
                total += finite_or_raise(loss, label, it) / len(ctx.classes)
                if ol == outer - 1:
                    break
                x_fixed = syn.detach()
                for _ in range(inner):  # train the network on the synthetic set
                    order = torch.randperm(len(x_fixed), generator=g).to(ctx.device)
                    for s in range(0, len(order), o.batch_train):
                        idx = order[s : s + o.batch_train]
                        xb = x_fixed[idx]
                        if augment is not None:
                            xb = augment(xb, augment.sample(g))
                        net_loss = cross_entropy(model, norm(xb), labels[idx])
                        net_opt.zero_grad(set_to_none=True)
                        net_loss.backward()
                        net_opt.step()
            history.append(total / outer)
            bar.advance(loss=history[-1])
    extra = {"o.outer_loop": outer, "o.inner_loop": inner, "seconds_matching": time.perf_counter() - t0}
    return synthetic_result(syn, labels, start, history, net_name, **extra)


@register_method("dc", DCOptions, kind="condensation")
def dc(ctx: ReduceContext, o: DCOptions) -> MethodResult:
    """Gradient matching (DC) on fresh networks; ConvNet or the merged architecture."""
    return gradient_matching(ctx, o, label="dc", augment=None)
