"""PLeaS' refit: layer by layer, the weights that best reproduce the merged sources' features.

For each Linear and Conv2d layer of the merged model, in the order the forward pass runs them,
the inputs it actually receives (the merged model's features so far, already refitted) are
regressed onto its targets: the two sources' outputs of that layer, merged as its output units
were (``M [z_A; z_B]``; the plain mean where the output has no permutation group, e.g. the
head). A ridge regression in closed form, accumulated over chunks of inputs. A convolution is
a linear map on image patches, so its rows are the unfolded patches, one per output position.

Cost: an image gives hundreds of patch rows per layer, so each image contributes at most
``positions`` of them (drawn at random per chunk and layer; a Linear layer over tokens is
sampled the same way): rows that neighbour each other in an image say nearly the same thing,
and the Gram matrix of the first ResNet stage shrinks 16-fold. The targets come from *one*
forward pass of each source per chunk, with every layer's sampled outputs kept (the sources do
not change while the merged model is refitted); only the merged model is run once per layer,
because its inputs change as earlier layers are refitted. Memory: the sampled targets of every
layer at once (a ResNet-20 x1 at 2,000 refit images: about 2,000 x 64 x 794 floats, 0.4 GB),
plus one Gram matrix.

BatchNorm: the targets are the sources' pre-normalisation outputs; after each layer the merged
model's BatchNorm statistics are re-estimated on the merge images, so the next layer is fitted
to the features it will see once the merge pipeline re-estimates them at the end.
Anything the regression cannot express (grouped convolutions, string or non-zero padding,
1-d / 3-d / transposed convolutions) raises instead of being skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..data.imageset import ImageSet
from ..errors import PermergeError
from ..permutation.spec import PermutationSpec
from ..progress import progress_bar
from .bn import has_batchnorm, reset_bn
from .partial import Zip

CHUNK = 256  # images per forward pass while accumulating the normal equations
POSITIONS = 64  # patch rows (or tokens) each image gives each layer at most


class _Stop(Exception):
    """Ends a forward pass once the layer of interest has run (later layers are not needed)."""


def _check(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv1d | nn.Conv3d | nn.ConvTranspose1d | nn.ConvTranspose2d | nn.ConvTranspose3d):
            raise PermergeError(
                f"pleas refit=ls: layer {name} ({type(m).__name__}) is not supported; "
                "use --opt refit=none --finetune kd"
            )
        if isinstance(m, nn.Conv2d) and (m.groups != 1 or isinstance(m.padding, str) or m.padding_mode != "zeros"):
            raise PermergeError(
                f"pleas refit=ls: layer {name} is a grouped or non-zero-padded convolution, which the "
                "least-squares refit does not express; use --opt refit=none --finetune kd"
            )


def _layers(model: nn.Module) -> dict[str, nn.Linear | nn.Conv2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}


def layer_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the Linear and Conv2d layers in the order a forward pass on ``x`` runs them
    (definition order can differ: a ResNet block defines its shortcut after its convolutions)."""
    order: list[str] = []
    hooks = [
        m.register_forward_hook(lambda mod, i, o, n=n: order.append(n) if n not in order else None)
        for n, m in _layers(model).items()
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return order


def _capture(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """The input of layer ``name`` on ``x``; the pass stops there."""
    seen: dict[str, torch.Tensor] = {}

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        seen["t"] = inp[0]
        raise _Stop

    h = model.get_submodule(name).register_forward_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        h.remove()
    return seen["t"]


def _by_position(z: torch.Tensor, conv: bool) -> torch.Tensor:
    """A layer's outputs (or inputs) as (image, unit, position): a convolution's channels over
    its pixels, a Linear layer's features over its tokens (one position without tokens)."""
    if conv:
        return z.flatten(2)
    return z.reshape(len(z), -1, z.shape[-1]).transpose(1, 2)


def _rows(flat: torch.Tensor, pick: torch.Tensor | None) -> torch.Tensor:
    """(image, unit, position) -> one row per image and picked position (all without a pick)."""
    if pick is not None:
        flat = flat[:, :, pick]
    return flat.transpose(1, 2).reshape(-1, flat.shape[1])


def _design(mod: nn.Module, h: torch.Tensor, pick: torch.Tensor | None) -> torch.Tensor:
    """The rows the layer maps linearly, at the same picked positions as its targets: features,
    or a convolution's unfolded patches (one column per output position)."""
    if isinstance(mod, nn.Conv2d):
        assert isinstance(mod.padding, tuple)  # str padding refused by _check
        patches = F.unfold(h, mod.kernel_size, dilation=mod.dilation, padding=mod.padding, stride=mod.stride)
        return _rows(patches, pick)
    return _rows(_by_position(h, False), pick)


def _outputs(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every named layer's output on ``x`` (its first call's), from one forward pass."""
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable[[nn.Module, object, torch.Tensor], None]:
        def hook(mod: nn.Module, inp: object, out: torch.Tensor) -> None:
            seen.setdefault(name, out)

        return hook

    hooks = [model.get_submodule(n).register_forward_hook(keep(n)) for n in names]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


class _OutMerge(NamedTuple):
    """How a layer's output units were merged: ``matrix`` (merged units x 2 n) on an axis laid
    out as (``outer``, n units, ``block``), e.g. a q/k/v projection repeats its units 3 x heads."""

    matrix: torch.Tensor
    outer: int = 1
    block: int = 1


def _merge_rows(ra: torch.Tensor, rb: torch.Tensor, merge: _OutMerge | None) -> torch.Tensor:
    """The sources' output rows merged as the layer's output units were: ``M [z_A; z_B]`` on
    every (outer, block) slot, their mean where the output has no permutation group."""
    if merge is None:
        return 0.5 * (ra + rb)
    r = len(ra)
    both = torch.cat([ra.reshape(r, merge.outer, -1, merge.block), rb.reshape(r, merge.outer, -1, merge.block)], dim=2)
    return torch.einsum("mk,rokb->romb", merge.matrix.to(ra), both).reshape(r, -1)


def _targets(
    a: nn.Module,
    b: nn.Module,
    merges: dict[str, _OutMerge | None],
    x: torch.Tensor,
    positions: int,
    g: torch.Generator,
) -> tuple[dict[str, list[torch.Tensor]], dict[str, list[torch.Tensor | None]]]:
    """Per layer and chunk: the merged target rows and the positions they were picked at, from
    one forward pass of each source per chunk (hooks on every layer)."""
    conv = {n: isinstance(m, nn.Conv2d) for n, m in _layers(a).items()}
    targets: dict[str, list[torch.Tensor]] = {n: [] for n in merges}
    picks: dict[str, list[torch.Tensor | None]] = {n: [] for n in merges}
    for c in x.split(CHUNK):
        za, zb = _outputs(a, list(merges), c), _outputs(b, list(merges), c)
        for n in merges:
            fa, fb = _by_position(za[n], conv[n]), _by_position(zb[n], conv[n])
            p = fa.shape[2]
            pick = torch.randperm(p, generator=g)[:positions].to(fa.device) if p > positions else None
            targets[n].append(_merge_rows(_rows(fa, pick), _rows(fb, pick), merges[n]))
            picks[n].append(pick)
    return targets, picks


def _fit_layer(
    name: str,
    merged: nn.Module,
    x: torch.Tensor,
    targets: list[torch.Tensor],
    picks: list[torch.Tensor | None],
    ridge: float,
) -> float:
    """Solve the ridge problem of one layer, write its weights; return the relative residual."""
    mod = merged.get_submodule(name)
    assert isinstance(mod, nn.Linear | nn.Conv2d)  # layer_order lists only these
    gram = cross = None
    energy = torch.zeros((), dtype=torch.float64)
    for c, t, pick in zip(x.split(CHUNK), targets, picks, strict=True):
        rows = _design(mod, _capture(merged, name, c), pick).double()
        if mod.bias is not None:
            rows = torch.cat([rows, torch.ones(len(rows), 1, dtype=rows.dtype, device=rows.device)], dim=1)
        t = t.double()
        gram = rows.T @ rows if gram is None else gram + rows.T @ rows
        cross = rows.T @ t if cross is None else cross + rows.T @ t
        energy = energy + t.square().sum().cpu()
    assert gram is not None and cross is not None
    reg = torch.eye(len(gram), dtype=gram.dtype, device=gram.device) * ridge * gram.diagonal().mean()
    sol = torch.linalg.solve(gram + reg, cross)  # (inputs [+ 1], outputs)
    weight = sol[:-1] if mod.bias is not None else sol
    w = mod.weight
    w.copy_(weight.T.reshape(w.shape).to(w.dtype))
    if mod.bias is not None:
        mod.bias.copy_(sol[-1].to(w.dtype))
    # ||R sol - t||^2 = t't - 2 sol'R't + sol'R'R sol, from the accumulated sums
    resid = energy.to(sol) - 2 * (sol * cross).sum() + (sol * (gram @ sol)).sum()
    return float(resid.clamp_min(0).sqrt() / energy.to(sol).sqrt().clamp_min(1e-12))


@torch.no_grad()
def ls_refit(
    merged: nn.Module,
    a: nn.Module,
    b_aligned: nn.Module,
    spec: PermutationSpec,
    zips: dict[str, Zip],
    x: torch.Tensor,
    ridge: float,
    bn_data: ImageSet | None = None,
    positions: int = POSITIONS,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """Refit every Linear and Conv2d layer of ``merged`` in forward order (in place); return
    each layer's relative residual. ``bn_data``: the merge images BatchNorm statistics are
    re-estimated on after each layer (models with BatchNorm only). ``positions``: patch rows
    (tokens) per image and layer at most; ``progress``: a bar over the layers."""
    _check(merged)
    bn = has_batchnorm(merged) and bn_data is not None
    order = layer_order(merged, x[:2])
    merges: dict[str, _OutMerge | None] = {}
    for name in order:
        param = f"{name}.weight"
        out = next(((grp, block) for ax, grp, block in spec.by_param.get(param, ()) if ax == 0), None)
        merges[name] = None if out is None else _OutMerge(zips[out[0]].merge, spec.outer.get((param, 0), 1), out[1])
    targets, picks = _targets(a, b_aligned, merges, x, positions, torch.Generator().manual_seed(seed))
    residuals = {}
    with progress_bar(len(order), "pleas refit", enabled=progress) as bar:
        for name in order:
            residuals[name] = _fit_layer(name, merged, x, targets.pop(name), picks.pop(name), ridge)
            if bn:
                assert bn_data is not None
                reset_bn(merged, bn_data, device=x.device)
                merged.eval()
            bar.advance(residual=residuals[name])
    return residuals
