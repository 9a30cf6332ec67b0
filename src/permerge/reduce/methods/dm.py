"""``dm``: distribution matching (Zhao & Bilen, WACV 2023).

Every iteration draws a randomly initialised network (never trained) and, per class,
matches the mean embedding (features before the last linear layer) of a real batch and of
the synthetic images: loss = sum_c || mean f(real_c) - mean f(syn_c) ||^2. No bi-level
optimisation, so it is the cheapest condensation method per iteration. As in the paper the
real and synthetic batches go through the same siamese augmentation (``dsa=True``).
"""

from __future__ import annotations

import time

import torch

from ...augment import default_augment
from ...progress import progress_bar
from ..condense import (
    RealSampler,
    clamp_,
    embedder,
    finite_or_raise,
    fresh_net,
    init_synthetic,
    net_factory,
    synthetic_result,
)
from ..registry import MethodResult, ReduceContext, ReduceOptions, register_method


class DMOptions(ReduceOptions):
    """DM's settings (the paper's, with 400 iterations for CPUs); ``pool`` > 0: IDM's model pool."""

    iterations: int = 400
    lr_img: float = 1.0
    momentum_img: float = 0.5
    batch_real: int = 64
    net: str = "auto"
    init: str = "herding"
    dsa: bool = True
    flip: bool | None = None
    pool: int = 0
    pool_train_steps: int = 1
    pool_max_steps: int = 100
    pool_lr: float = 0.01


@register_method("dm", DMOptions, kind="condensation")
def dm(ctx: ReduceContext, o: DMOptions) -> MethodResult:
    """Match per-class mean embeddings under random networks; cheapest condensation method.

    ``pool > 0`` matches under *partially trained* networks instead (the model sampling of
    IDM, Zhao et al., CVPR 2023): a pool of ``pool`` networks, one used per iteration in turn,
    then trained ``pool_train_steps`` SGD steps on a real balanced batch; a network is
    re-initialised once it has had ``pool_max_steps`` steps, so the pool spans early training.
    """
    factory, net_name = net_factory(ctx, o.net)
    aug = default_augment(ctx.data.image_shape[0], o.flip) if o.dsa else None
    syn, labels, start = init_synthetic(ctx, o.init)
    syn.requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=o.lr_img, momentum=o.momentum_img)
    sample_real = RealSampler(ctx)
    norm, g, k = ctx.data.normalization.apply, ctx.generator, ctx.ipc
    nets: list[tuple[torch.nn.Module, int]] = []
    history: list[float] = []
    t0 = time.perf_counter()
    with progress_bar(o.iterations, f"dm ipc {k}", ctx.progress) as bar:
        for it in range(o.iterations):
            if o.pool > 0:
                slot = it % o.pool
                if slot >= len(nets) or nets[slot][1] >= o.pool_max_steps:
                    fresh = (fresh_net(factory, g, ctx.device).train(), 0)
                    nets[slot : slot + 1] = [fresh]
                model, trained = nets[slot]
                _train_on_real(model, ctx, sample_real, o.pool_train_steps, o.pool_lr, o.batch_real)
                nets[slot] = (model, trained + o.pool_train_steps)
            else:
                model = fresh_net(factory, g, ctx.device).train()
            for p in model.parameters():
                p.requires_grad_(False)
            embed = embedder(model)
            loss = syn.new_zeros(())
            for i, c in enumerate(ctx.classes):
                xr, xs = sample_real(c, o.batch_real), syn[i * k : (i + 1) * k]
                if aug is not None:
                    aug_params = aug.sample(g)
                    xr, xs = aug(xr, aug_params), aug(xs, aug_params)
                with torch.no_grad():
                    mr = embed(norm(xr)).mean(0)
                loss = loss + ((mr - embed(norm(xs)).mean(0)) ** 2).sum()
            (syn.grad,) = torch.autograd.grad(loss, [syn])
            if o.pool > 0:
                for p in model.parameters():
                    p.requires_grad_(True)
            opt.step()
            clamp_(syn)
            history.append(finite_or_raise(loss, "dm", it) / len(ctx.classes))
            bar.advance(loss=history[-1])
    extra = {"augment_ops": None if aug is None else list(aug.ops), "seconds_matching": time.perf_counter() - t0}
    return synthetic_result(syn, labels, start, history, net_name, **extra)


def _train_on_real(
    model: torch.nn.Module, ctx: ReduceContext, sample_real: RealSampler, steps: int, lr: float, per_class: int
) -> None:
    """A few plain SGD steps of ``model`` on balanced real batches (``per_class / 4`` images per
    class); no momentum, since the optimiser does not outlive one call."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    norm = ctx.data.normalization.apply
    per = max(1, per_class // 4)
    for _ in range(steps):
        parts = [sample_real(c, per) for c in ctx.classes]
        x = torch.cat(parts)
        y = torch.cat([torch.full((len(p),), c, dtype=torch.long) for p, c in zip(parts, ctx.classes, strict=True)])
        loss = torch.nn.functional.cross_entropy(model(norm(x)), y.to(x.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
