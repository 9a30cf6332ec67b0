"""Model size next to accuracy: parameters and multiply-adds per image.

A merge that keeps both networks (the output ensemble, a wider partial merge) is not the same
product as one the size of a source; every merged model reports both numbers so accuracy is
always read against cost.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


@torch.no_grad()
def model_size(model: nn.Module, in_shape: tuple[int, ...]) -> dict[str, Any]:
    """Parameters (unique tensors) and multiply-adds of one forward pass on one image.

    Multiply-adds count Linear and Conv layers (the cost that scales with width); norms,
    activations and pooling are a few percent more and are left out, as is usual."""
    macs = 0

    def count(mod: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(mod, nn.Linear):
            macs += mod.in_features * mod.out_features * (out.numel() // out.shape[-1])
        elif isinstance(mod, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            per_out = (mod.in_channels // mod.groups) * int(torch.tensor(mod.kernel_size).prod())
            macs += per_out * out.numel()

    hooks = [
        m.register_forward_hook(count)
        for m in model.modules()
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d)
    ]
    was_training = model.training
    try:
        model.eval()
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        model(torch.zeros(1, *in_shape, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return {"params": params, "macs": macs}


def size_vs_source(model: nn.Module, source: nn.Module, in_shape: tuple[int, ...]) -> dict[str, Any]:
    """``model_size`` plus ``relative``: parameters over those of one source model."""
    size = model_size(model, in_shape)
    return {**size, "relative": size["params"] / model_size(source, in_shape)["params"]}
