"""Repairing the statistics of a merged model.

Averaging two aligned networks shrinks the variance of hidden activations (Jordan et al.,
REPAIR, 2022). With BatchNorm the running statistics are simply wrong after averaging, so
they are re-estimated on merge data (*BN reset*). Without BatchNorm, *REPAIR* rescales each
hidden layer's pre-activations so their per-unit mean and std equal the interpolation of
the two endpoint models' statistics; the correction is folded into that layer's weight and
bias, so the repaired model has the same architecture.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data import ImageSet

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, _BN) for m in model.modules())


def default_bn_reset(model: nn.Module, has_data: bool) -> bool:
    """``--bn-reset`` left unset: reset BatchNorm statistics whenever the model has BN and merge
    data is given (a BN model averaged without it is broken). The one place this rule lives."""
    return has_data and has_batchnorm(model)


@torch.no_grad()
def reset_bn(
    model: nn.Module,
    data: ImageSet,
    *,
    batch_size: int = 500,
    max_samples: int = 10_000,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Re-estimate every BatchNorm's running mean/var on ``data`` (exact average over batches)."""
    bns = [m for m in model.modules() if isinstance(m, _BN)]
    if not bns:
        return model
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    model.to(device).train()
    subset = (
        data
        if len(data) <= max_samples
        else data.subset(torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:max_samples])
    )
    for x, _ in subset.batches(batch_size, device=device):
        model(x)
    for m, mom in zip(bns, momenta, strict=True):
        m.momentum = mom
    return model.eval()


def _layer_stats(
    model: nn.Module, layers: list[str], data: ImageSet, device: str | torch.device, batch_size: int = 1000
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-unit mean and std of each named layer's output over ``data``."""
    sums: dict[str, list[torch.Tensor]] = {}
    hooks = []
    modules = dict(model.named_modules())

    def hook(name: str):
        def fn(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
            f = out.movedim(1, -1).reshape(-1, out.shape[1]).double()
            s = sums.setdefault(
                name,
                [torch.zeros(out.shape[1], dtype=torch.float64) for _ in range(2)]
                + [torch.zeros(1, dtype=torch.float64)],
            )
            s[0] += f.sum(0).cpu()
            s[1] += f.pow(2).sum(0).cpu()
            s[2] += f.shape[0]

        return fn

    for name in layers:
        hooks.append(modules[name].register_forward_hook(hook(name)))
    try:
        model.to(device).eval()
        with torch.no_grad():
            for x, _ in data.batches(batch_size, device=device):
                model(x)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for name, (s1, s2, n) in sums.items():
        mean = s1 / n
        out[name] = (mean, (s2 / n - mean.pow(2)).clamp_min(0).sqrt())
    return out


def repairable_layers(model: nn.Module, head: str | None = None) -> list[str]:
    """Hidden Linear/Conv layers with a bias (BN nets have none: they get a BN reset instead)."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None]
    head = head or (names[-1] if names else None)
    return [n for n in names if n != head]


@torch.no_grad()
def repair(
    merged: nn.Module,
    model_a: nn.Module,
    model_b: nn.Module,
    lam: float,
    data: ImageSet,
    *,
    max_samples: int = 5000,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """REPAIR ``merged`` (= lerp of ``model_a`` and aligned ``model_b``) in place."""
    if has_batchnorm(merged):
        return reset_bn(merged, data, max_samples=max_samples * 2, device=device)
    if len(data) > max_samples:
        data = data.subset(torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:max_samples])
    layers = repairable_layers(merged)
    sa = _layer_stats(model_a, layers, data, device)
    sb = _layer_stats(model_b, layers, data, device)
    modules = dict(merged.named_modules())
    for name in layers:  # in forward order: fixing one layer changes the next one's input
        mean_m, std_m = _layer_stats(merged, [name], data, device)[name]
        mean_t = (1 - lam) * sa[name][0] + lam * sb[name][0]
        std_t = (1 - lam) * sa[name][1] + lam * sb[name][1]
        scale = std_t / (std_m + 1e-8)
        layer = modules[name]
        w, b = layer.weight, layer.bias
        assert b is not None
        shape = (-1,) + (1,) * (w.ndim - 1)
        w.mul_(scale.view(shape).to(w.dtype))
        b.copy_(((b.double().cpu() - mean_m) * scale + mean_t).to(b.dtype))
    return merged.eval()
