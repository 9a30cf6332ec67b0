"""Model size next to accuracy: parameters and multiply-adds per image.

A merge that keeps both networks (the output ensemble, a wider partial merge) is not the same
product as one the size of a source; every merged model reports both numbers so accuracy is
always read against cost.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_COUNTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@torch.no_grad()
def macs_by_weight(model: nn.Module, in_shape: tuple[int, ...]) -> dict[str, int]:
    """Multiply-adds of one forward pass on one image, by the weight that does them: a Linear
    or Conv layer's weight costs its size once per output position (token, pixel), so when a
    merge widens its axes its multiply-adds grow exactly as its parameters do. Norms,
    activations, pooling and attention's own products are a few percent more and are left
    out, as is usual."""
    names: dict[nn.Module, str] = {m: n for n, m in model.named_modules() if isinstance(m, _COUNTED)}
    macs: dict[str, int] = {}

    def count(mod: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        channels = out.shape[-1] if isinstance(mod, nn.Linear) else out.shape[1]
        key = f"{names[mod]}.weight"
        weight = mod.get_parameter("weight")
        macs[key] = macs.get(key, 0) + weight.numel() * (out.numel() // channels)

    hooks = [m.register_forward_hook(count) for m in names]
    was_training = model.training
    try:
        model.eval()
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        model(torch.zeros(1, *in_shape, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return macs


def model_size(model: nn.Module, in_shape: tuple[int, ...]) -> dict[str, Any]:
    """Parameters (unique tensors) and multiply-adds of one forward pass on one image
    (:func:`macs_by_weight`)."""
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return {"params": params, "macs": sum(macs_by_weight(model, in_shape).values())}


def size_vs_source(model: nn.Module, source: nn.Module, in_shape: tuple[int, ...]) -> dict[str, Any]:
    """``model_size`` plus ``relative``: parameters over those of one source model."""
    size = model_size(model, in_shape)
    return {**size, "relative": size["params"] / model_size(source, in_shape)["params"]}
