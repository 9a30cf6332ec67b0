"""Shared machinery of condensation methods (DC, DSA, DM).

Synthetic images are a float32 tensor in [0, 1] pixel scale (the unit an ``ImageSet``
stores), optimised directly and clamped back to [0, 1] after every step; the source
normalisation is applied on the way into the network, exactly as for real images. All
randomness (initial images, real batches, network initialisations, augmentations) comes
from the context's ``torch.Generator``; network weights are drawn under a forked global
RNG seeded from it, so reducing never reads or disturbs the global torch seed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DivergedError, PermergeError
from ..models import build_model, model_config_for
from .convnet import ConvNet
from .features import last_linear
from .registry import MethodResult, ReduceContext

NetFactory = Callable[[], nn.Module]


def net_factory(ctx: ReduceContext, net: str, auto_default: str = "convnet") -> tuple[NetFactory, str]:
    """The matching network.

    ``auto``: the ``--model`` architecture if one was given, else ``auto_default`` (each
    method says which); ``convnet`` / ``convnet:W`` (width W, default 32); or any permerge
    architecture spec (``mlp``, ``mlp:256x256``, ``cnn``, ...)."""
    shape, k = ctx.data.image_shape, ctx.data.num_classes
    name = net.strip().lower()
    if name == "auto":
        if ctx.net_factory is not None:
            return ctx.net_factory, ctx.net_name or "model"
        name = auto_default
    if name.startswith("convnet"):
        _, _, w = name.partition(":")
        try:
            width = int(w) if w else 32
        except ValueError:
            width = 0
        if width < 1:  # convnet:0 used to die in a modulo by zero inside GroupNorm setup
            raise PermergeError(f"bad ConvNet width in {net!r} (use e.g. convnet:128)")
        return (lambda: ConvNet(shape, k, width=width)), f"convnet:{width}"
    cfg = model_config_for(name, shape, num_classes=k)
    return (lambda: build_model(cfg)), name


def fresh_net(factory: NetFactory, g: torch.Generator, device: torch.device) -> nn.Module:
    """A newly initialised network whose weights are a function of ``g`` alone."""
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = factory()
    return net.to(device)


def reinit_factory(model: nn.Module) -> NetFactory:
    """Factory for 'the same architecture as this trained model, freshly initialised'."""

    def make() -> nn.Module:
        net = copy.deepcopy(model)
        for m in net.modules():
            if hasattr(m, "reset_parameters") and m is not net:
                m.reset_parameters()  # type: ignore[operator]
        return net.train()

    return make


def embedder(net: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> features before the last linear layer`` for DM's embedding."""
    if isinstance(net, ConvNet):
        return net.embed
    head = last_linear(net)
    store: list[torch.Tensor] = []
    head.register_forward_hook(lambda _m, inp, _o: store.append(inp[0]))

    def run(x: torch.Tensor) -> torch.Tensor:
        store.clear()
        net(x)
        return store[0].flatten(1)

    return run


class RealSampler:
    """Random real batches of one class, as pixel-scale float tensors on the device."""

    def __init__(self, ctx: ReduceContext) -> None:
        self.data, self.g, self.device = ctx.data, ctx.generator, ctx.device
        self.index = {c: ctx.class_indices(c) for c in ctx.classes}

    def __call__(self, c: int, n: int) -> torch.Tensor:
        idx = self.index[c]
        pick = idx[torch.randperm(len(idx), generator=self.g)[:n]]
        return self.data.to_pixels(self.data.images[pick], self.device)


def init_synthetic(ctx: ReduceContext, init: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``ipc`` starting images per class: ``real`` (random real samples, seeded), ``herding``
    (the herding coreset on normalised pixels: typical samples, a better start at tiny ipc)
    or ``noise`` (uniform in [0, 1]). Returns (images, labels, source indices or None)."""
    c, h, w = ctx.data.image_shape
    labels = torch.tensor(ctx.classes, dtype=torch.long).repeat_interleave(ctx.ipc)
    if init == "noise":
        imgs = torch.rand(len(labels), c, h, w, generator=ctx.generator)
        return imgs.to(ctx.device), labels.to(ctx.device), None
    if init not in ("real", "herding"):
        raise PermergeError(f"init must be 'real', 'herding' or 'noise', got {init!r}")
    picks = []
    for k in ctx.classes:
        idx = ctx.class_indices(k)
        if init == "herding":
            from .methods.herding import herding_order

            picks.append(idx[herding_order(ctx.data.to_input(ctx.data.images[idx]).flatten(1), ctx.ipc)])
        else:
            picks.append(idx[torch.randperm(len(idx), generator=ctx.generator)[: ctx.ipc]])
    sel = torch.cat(picks)
    imgs = ctx.data.to_pixels(ctx.data.images[sel])  # indexing copies: no alias of the dataset
    return imgs.to(ctx.device), labels.to(ctx.device), sel


def gradient_distance(g_syn: list[torch.Tensor], g_real: list[torch.Tensor]) -> torch.Tensor:
    """DC's layer-wise distance: for each weight tensor, reshape to ``out x rest`` and sum
    ``1 - cos`` over output rows; summed over layers. One-dimensional tensors (biases,
    norm scales) are skipped, as in the DC paper, since a single row carries no direction."""
    total = g_syn[0].new_zeros(())
    for gs, gr in zip(g_syn, g_real, strict=True):
        if gs.ndim == 1:
            continue
        a, b = gs.reshape(gs.shape[0], -1), gr.reshape(gr.shape[0], -1)
        cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-6)
        total = total + (1 - cos).sum()
    return total


def clamp_(x: torch.Tensor) -> None:
    with torch.no_grad():
        x.clamp_(0.0, 1.0)


def finite_or_raise(loss: torch.Tensor, method: str, it: int) -> float:
    v = float(loss.detach())
    if v != v or v in (float("inf"), float("-inf")):
        raise DivergedError(f"{method}: matching loss became {v} at iteration {it}; lower lr_img")
    return v


def cross_entropy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(net(x), y)


def synthetic_result(
    syn: torch.Tensor,
    labels: torch.Tensor,
    start: torch.Tensor | None,
    history: list[float],
    net_name: str,
    **info: object,
) -> MethodResult:
    """What every condensation method returns: the images, and in ``info`` the matching-loss
    history, the matching network and the real samples it started from (for the record)."""
    return MethodResult(
        images=syn.detach().cpu().clone(),
        labels=labels.cpu(),
        info={
            "loss_history": history,
            "net": net_name,
            "init_indices": None if start is None else start.tolist(),
            **info,
        },
    )
