"""derive_spec: for every built-in architecture a random permutation from the derived spec
changes the weights but not the function; unsupported ops are refused by name."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from permerge.errors import AlignmentError
from permerge.models import build_model, model_config_for
from permerge.permutation.fx import derive_spec
from permerge.permutation.spec import PermutationSpec, apply_permutation

ATOL = 1e-5


def randomize_(model: nn.Module, g: torch.Generator) -> nn.Module:
    """Non-trivial norm statistics and affine parameters, so that a wrongly permuted BN/LN
    would change the output (fresh ones are 0/1 everywhere and would hide such a bug)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d | nn.GroupNorm | nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.5, generator=g)
            if isinstance(m, nn.Linear | nn.Conv2d) and m.bias is not None:
                m.bias.normal_(0.0, 0.1, generator=g)
            if isinstance(m, nn.MultiheadAttention) and m.in_proj_bias is not None:
                m.in_proj_bias.normal_(0.0, 0.1, generator=g)
    return model.eval()


def non_identity_perm(spec: PermutationSpec, g: torch.Generator) -> dict[str, torch.Tensor]:
    perm = spec.random(g)
    for k, p in perm.items():
        if len(p) > 1 and torch.equal(p, torch.arange(len(p))):
            perm[k] = p.roll(1)
    return perm


def first_and_head(model: nn.Module) -> tuple[str, str]:
    layers = [n for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    return layers[0], layers[-1]


def check_permutation_invariance(model: nn.Module, in_shape: tuple[int, ...], seed: int = 0) -> PermutationSpec:
    g = torch.Generator().manual_seed(seed)
    randomize_(model, g)
    x = torch.randn(6, *in_shape, generator=g)
    spec = derive_spec(model, x[:2])
    assert spec.groups, "no permutation groups found"
    state = {k: v.clone() for k, v in model.state_dict().items()}
    perm = non_identity_perm(spec, g)
    permuted = apply_permutation(spec, perm, state)
    # the spec's axes are the ones that move: every tensor in it changed, no other did
    for k, v in state.items():
        assert permuted[k].shape == v.shape
        if k in spec.by_param:
            assert not torch.equal(permuted[k], v), f"{k} did not change"
        else:
            assert torch.equal(permuted[k], v), f"{k} changed but is not in the spec"
    # the model's own input axis and the head's output axis are never permuted
    first, head = first_and_head(model)
    axes = {(a.param, a.axis) for grp in spec.groups.values() for a in grp.axes}
    assert (f"{first}.weight", 1) not in axes
    assert (f"{head}.weight", 0) not in axes and (f"{head}.bias", 0) not in axes
    assert (f"{head}.weight", 1) in axes  # ... while the head's inputs follow the last group
    with torch.no_grad():
        before = model(x)
        model.load_state_dict(permuted)
        after = model(x)
        model.load_state_dict(state)
    assert before.std() > 1e-3  # a meaningful function
    torch.testing.assert_close(after, before, atol=ATOL, rtol=1e-5)
    return spec


@settings(max_examples=15, deadline=None)
@given(
    widths=st.lists(st.integers(2, 40), min_size=1, max_size=4),
    channels=st.sampled_from([1, 3]),
    seed=st.integers(0, 2**16),
)
def test_mlp_random_architectures(widths, channels, seed):
    torch.manual_seed(seed)
    cfg = model_config_for("mlp:" + "x".join(map(str, widths)), (channels, 8, 8))
    spec = check_permutation_invariance(build_model(cfg), cfg.in_shape, seed)
    assert sorted(g.size for g in spec.groups.values()) == sorted(widths)


@pytest.mark.parametrize(
    ("arch", "in_shape", "kwargs", "n_groups"),
    [
        ("cnn", (1, 28, 28), {}, 4),
        ("cnn:0.5", (3, 32, 32), {}, 4),
        ("vgg11:0.25", (3, 32, 32), {}, 8),
        ("vgg11:0.25", (1, 28, 28), {}, 8),
        ("vgg16:0.25", (3, 32, 32), {}, 13),
        ("vgg16:0.25", (3, 32, 32), {"norm": "none"}, 13),
        ("vgg11:0.25", (3, 32, 32), {"norm": "ln"}, 8),
        # ResNet-20: 3 residual streams + 9 block-internal groups
        ("resnet20", (3, 32, 32), {"norm": "bn"}, 12),
        ("resnet20", (3, 32, 32), {"norm": "ln"}, 12),
        ("resnet20:x2", (3, 32, 32), {"norm": "bn"}, 12),
        ("resnet20:x2", (3, 32, 32), {"norm": "ln"}, 12),
        ("resnet20", (1, 28, 28), {"norm": "none"}, 12),
        # ViT: the residual stream + per block a within-head q/k/v group and an MLP group
        ("vit:tiny-d2", (1, 28, 28), {}, 5),
        ("vit:tiny-p4-d1-w32-h2", (3, 32, 32), {}, 3),
    ],
)
def test_builtin_architectures(arch, in_shape, kwargs, n_groups):
    torch.manual_seed(0)
    cfg = model_config_for(arch, in_shape, **kwargs)
    spec = check_permutation_invariance(build_model(cfg), in_shape)
    assert len(spec.groups) == n_groups


def test_resnet_residual_stream_is_one_group():
    model = build_model(model_config_for("resnet20", (3, 32, 32)))
    spec = derive_spec(model, torch.randn(1, 3, 32, 32))
    stem = next(
        g for g in spec.groups.values() if ("conv1.weight", 0, 1) in {(a.param, a.axis, a.block) for a in g.axes}
    )
    params = {a.param for a in stem.axes}
    # the stem's outputs, every first-stage block's output BN and the next stage's inputs
    for p in (
        "bn1.weight",
        "layers.0.bn2.weight",
        "layers.1.bn2.weight",
        "layers.2.bn2.weight",
        "layers.3.conv1.weight",
        "layers.3.shortcut.0.weight",
    ):
        assert p in params
    assert stem.size == 16


def test_cnn_flatten_moves_blocks():
    model = build_model(model_config_for("cnn", (1, 28, 28)))
    spec = derive_spec(model, torch.randn(1, 1, 28, 28))
    blocks = {(a.param, a.axis): a.block for g in spec.groups.values() for a in g.axes}
    assert blocks[("7.weight", 1)] == 7 * 7  # 64 channels of 7x7 feed the first linear
    assert all(b == 1 for k, b in blocks.items() if k != ("7.weight", 1))


class FunctionalNet(nn.Module):
    """Exercises the functional / method forms the tracer must understand."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 12)
        self.ln = nn.LayerNorm(12)
        self.bn1d = nn.BatchNorm1d(12)
        self.head = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.conv(x)))
        h = h + 0.5 * torch.relu(self.conv2(h))  # residual add + scalar scale
        h = F.max_pool2d(h, 2)
        h = h.view(h.size(0), -1)
        h = torch.tanh(self.ln(self.fc(h)))
        h = self.bn1d(h).relu()
        return self.head(h)


def test_functional_forms():
    torch.manual_seed(0)
    spec = check_permutation_invariance(FunctionalNet(), (1, 8, 8))
    assert len(spec.groups) == 2  # conv+conv2 share the residual stream; fc's units


def test_derive_spec_leaves_model_alone():
    torch.manual_seed(0)
    model = build_model(model_config_for("vgg11:0.25", (3, 32, 32))).train()
    model[1].eval()  # e.g. a frozen BN inside a model being trained
    state = {k: v.clone() for k, v in model.state_dict().items()}
    derive_spec(model, torch.randn(4, 3, 32, 32))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # BN stats untouched
    assert model.training and not model[1].training and model[2].training
    model.eval()
    derive_spec(model, torch.randn(2, 3, 32, 32))
    assert not any(m.training for m in model.modules())


# --- refused models --------------------------------------------------------------------


class CatNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.a(x), self.b(x)], dim=1))


class AttnNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        y, _ = self.attn(h, h, h)
        return self.head(y)


class GroupedConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(2, 4, 3), nn.Conv2d(4, 4, 3, groups=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(self.c1(x)).mean((2, 3))


class GroupNorm2Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.gn, self.head = nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.adaptive_avg_pool2d(self.gn(self.c1(x)), 1).flatten(1))


class GroupNormSumNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 4, 3), nn.Conv2d(1, 4, 3)
        self.gn, self.head = nn.GroupNorm(2, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.adaptive_avg_pool2d(self.gn(self.c1(x) + self.c2(x)), 1).flatten(1))


class GatedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.a(x) * torch.sigmoid(self.b(x)))


class CumsumNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Linear(4, 3), nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cumsum(self.a(x), dim=1))  # order-dependent over the units


class PickNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Linear(4, 3), nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.a(x)[:, :2])  # the first two units, by position


class BranchNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow cannot be traced
            return self.a(x)
        return -self.a(x)


@pytest.mark.parametrize(
    ("model", "shape", "needle"),
    [
        (CatNet(), (2, 4), r"unsupported function cat at node cat"),
        (CumsumNet(), (2, 4), r"unsupported function cumsum at node cumsum \(test_perm_fx.py:\d+: .*cumsum"),
        (PickNet(), (2, 4), r"unsupported function getitem at node getitem .*part of a permuted channel axis"),
        (GroupedConvNet(), (1, 2, 6, 6), r"grouped convolution \(c2\)"),
        (GroupNormSumNet(), (1, 1, 6, 6), r"GroupNorm with 2 groups needs a permutation within its groups"),
        (BranchNet(), (2, 4), r"cannot trace BranchNet"),
    ],
    ids=["cat", "cumsum", "slice", "grouped-conv", "groupnorm-2-of-a-sum", "control-flow"],
)
def test_unsupported_ops_are_refused(model, shape, needle):
    with pytest.raises(AlignmentError, match=needle):
        derive_spec(model, torch.randn(*shape))


@pytest.mark.parametrize(
    ("model", "shape"),
    [(GatedNet(), (2, 4)), (AttnNet(), (2, 5, 4)), (GroupNorm2Net(), (2, 1, 6, 6))],
    ids=["gating", "mha", "groupnorm-2"],
)
def test_formerly_refused_models_now_derive(model, shape):
    """A gate ties both branches' units; attention keeps its heads and permutes the stream."""
    torch.manual_seed(0)
    check_permutation_invariance(model, shape[1:])


def test_wrong_example_input():
    model = build_model(model_config_for("cnn", (3, 32, 32)))
    with pytest.raises(AlignmentError, match=r"example input of shape \(1, 1, 28, 28\)"):
        derive_spec(model, torch.randn(1, 1, 28, 28))
