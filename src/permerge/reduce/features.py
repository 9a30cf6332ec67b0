"""Feature maps and per-sample scores for coreset selection.

With a trained model, a sample's feature is the model's *penultimate* activation: the input
of its last ``nn.Linear`` (for the paper's MLP, the last hidden ReLU output; for the CNN,
VGG and ResNet, the pooled features before the head). That is the space the model's
classifier is linear in, so class means and distances there reflect what the model learnt.

Without a model the fallback is the cheapest map that still carries class structure: the
normalised pixels, flattened (784-d for MNIST). Nothing is trained or random, so a coreset
made without ``--model`` depends only on the data and the seed.

Score-based methods (EL2N, uncertainty) need predicted probabilities. Without a model they
train a small *proxy* (an MLP with one hidden layer of 256 units, a couple of epochs of SGD,
seeded from the method's generator); see :func:`proxy_model`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data import ImageSet
from ..errors import ModelError
from ..models import build_model, model_config_for
from ..train import TrainConfig, train_model


def last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelError("model has no nn.Linear head, so it has no penultimate features")
    return linears[-1]


@torch.no_grad()
def penultimate_features(
    model: nn.Module, data: ImageSet, *, batch_size: int = 1000, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``N x D`` inputs of the model's last linear layer, in dataset order."""
    head = last_linear(model)
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, inp, _out: captured.append(inp[0].flatten(1).cpu()))
    was_training = model.training
    model.to(device).eval()
    try:
        for x, _ in data.batches(batch_size, device=device):
            model(x)
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(captured)


def pixel_features(data: ImageSet) -> torch.Tensor:
    """Fallback feature map: normalised pixels, flattened."""
    return data.to_input(data.images).flatten(1)


def features(model: nn.Module | None, data: ImageSet, device: torch.device | str = "cpu") -> tuple[torch.Tensor, str]:
    """Features for coreset selection and a short description of where they came from."""
    if model is None:
        return pixel_features(data), "pixels"
    return penultimate_features(model, data, device=device), "model-penultimate"


def proxy_model(
    data: ImageSet,
    generator: torch.Generator,
    *,
    epochs: int = 2,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> nn.Module:
    """A cheap scoring model when none is given: MLP (one hidden layer of 256), SGD lr 0.1.

    Two epochs is deliberately early in training: EL2N-style scores are most informative
    early, and it keeps the fallback to seconds on MNIST.
    """
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(model_config_for("mlp", data.image_shape, hidden=(256,), num_classes=data.num_classes))
    cfg = TrainConfig(epochs=epochs, batch_size=128, lr=0.1, val_fraction=0)
    train_model(model, data, cfg, seed=seed, device=device, progress=progress, description="proxy model")
    return model


@torch.no_grad()
def predict_proba(
    model: nn.Module, data: ImageSet, *, batch_size: int = 1000, device: torch.device | str = "cpu"
) -> torch.Tensor:
    model.to(device).eval()
    out = [F.softmax(model(x), dim=1).cpu() for x, _ in data.batches(batch_size, device=device)]
    return torch.cat(out)
