"""PLeaS' refit: layer by layer, the weights that best reproduce the merged sources' features.

For each Linear and Conv2d layer of the merged model, in the order the forward pass runs them,
the inputs it actually receives (the merged model's features so far, already refitted) are
regressed onto its targets: the two sources' outputs of that layer, merged as its output units
were (``M [z_A; z_B]``; the plain mean where the output has no permutation group, e.g. the
head). A ridge regression in closed form, accumulated over chunks of inputs, so its memory is
the Gram matrix, not the data. A convolution is a linear map on image patches, so its rows are
the unfolded patches (one per output position): an image gives hundreds of rows, which is why
conv nets need fewer refit images than MLPs.

BatchNorm: the targets are the sources' pre-normalisation outputs; after each layer the merged
model's BatchNorm statistics are re-estimated on the merge images, so the next layer is fitted
to the features it will see once the merge pipeline re-estimates them at the end.
Anything the regression cannot express (grouped convolutions, string or non-zero padding,
1-d / 3-d / transposed convolutions) raises instead of being skipped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.imageset import ImageSet
from ..errors import PermergeError
from ..permutation.spec import PermutationSpec
from .bn import has_batchnorm, reset_bn
from .partial import Zip

CHUNK = 256  # images per forward pass while accumulating the normal equations


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


def layer_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the Linear and Conv2d layers in the order a forward pass on ``x`` runs them
    (definition order can differ: a ResNet block defines its shortcut after its convolutions)."""
    order: list[str] = []
    hooks = [
        m.register_forward_hook(lambda mod, i, o, n=n: order.append(n) if n not in order else None)
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear | nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return order


def _capture(model: nn.Module, name: str, x: torch.Tensor, want: str) -> torch.Tensor:
    """The input (``want="in"``) or output of layer ``name`` on ``x``; the pass stops there."""
    seen: dict[str, torch.Tensor] = {}

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        seen["t"] = inp[0] if want == "in" else out
        raise _Stop

    h = model.get_submodule(name).register_forward_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        h.remove()
    return seen["t"]


def _design(mod: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Rows the layer maps linearly: features (any leading dims) or a convolution's patches."""
    if isinstance(mod, nn.Conv2d):
        assert isinstance(mod.padding, tuple)  # str padding refused by _check
        patches = F.unfold(h, mod.kernel_size, dilation=mod.dilation, padding=mod.padding, stride=mod.stride)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    return h.reshape(-1, h.shape[-1])


def _out_rows(mod: nn.Module, z: torch.Tensor) -> torch.Tensor:
    if isinstance(mod, nn.Conv2d):
        return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    return z.reshape(-1, z.shape[-1])


def _target(mod: nn.Module, za: torch.Tensor, zb: torch.Tensor, merge: torch.Tensor | None) -> torch.Tensor:
    """The sources' outputs merged as the layer's output units were: ``M [z_A; z_B]`` over the
    unit axis (channels of a convolution, last axis of a Linear), their mean without a group."""
    if merge is None:
        return 0.5 * (za + zb)
    if isinstance(mod, nn.Conv2d):
        return torch.einsum("oc,nchw->nohw", merge.to(za), torch.cat([za, zb], dim=1))
    return torch.cat([za, zb], dim=-1) @ merge.T.to(za)


def _fit_layer(
    name: str,
    mod: nn.Linear | nn.Conv2d,
    models: tuple[nn.Module, nn.Module, nn.Module],
    merge: torch.Tensor | None,
    x: torch.Tensor,
    ridge: float,
) -> float:
    """Solve the ridge problem of one layer, write its weights; return the relative residual."""
    merged, a, b = models
    gram = cross = None
    energy = torch.zeros((), dtype=torch.float64)
    bias = mod.bias is not None
    for c in x.split(CHUNK):
        rows = _design(mod, _capture(merged, name, c, "in")).double()
        if bias:
            rows = torch.cat([rows, torch.ones(len(rows), 1, dtype=rows.dtype, device=rows.device)], dim=1)
        t = _out_rows(mod, _target(mod, _capture(a, name, c, "out"), _capture(b, name, c, "out"), merge)).double()
        gram = rows.T @ rows if gram is None else gram + rows.T @ rows
        cross = rows.T @ t if cross is None else cross + rows.T @ t
        energy = energy + t.square().sum().cpu()
    assert gram is not None and cross is not None
    reg = torch.eye(len(gram), dtype=gram.dtype, device=gram.device) * ridge * gram.diagonal().mean()
    sol = torch.linalg.solve(gram + reg, cross)  # (inputs [+ 1], outputs)
    weight = sol[:-1] if bias else sol
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
) -> dict[str, float]:
    """Refit every Linear and Conv2d layer of ``merged`` in forward order (in place); return
    each layer's relative residual. ``bn_data``: the merge images BatchNorm statistics are
    re-estimated on after each layer (models with BatchNorm only)."""
    _check(merged)
    bn = has_batchnorm(merged) and bn_data is not None
    residuals = {}
    for name in layer_order(merged, x[:2]):
        mod = merged.get_submodule(name)
        assert isinstance(mod, nn.Linear | nn.Conv2d)  # layer_order lists only these
        group = next((grp for ax, grp, _ in spec.by_param.get(f"{name}.weight", ()) if ax == 0), None)
        merge = None if group is None else zips[group].merge
        residuals[name] = _fit_layer(name, mod, (merged, a, b_aligned), merge, x, ridge)
        if bn:
            assert bn_data is not None
            reset_bn(merged, bn_data, device=x.device)
            merged.eval()
    return residuals
