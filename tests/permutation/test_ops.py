"""One small model per op handler (permutation/ops/*): a random permutation of the derived
groups leaves the outputs equal, and the handler bound what it should."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_perm_fx import check_permutation_invariance
from torch import nn

from permerge.permutation.fx import derive_spec


class Depthwise(nn.Module):
    """Depthwise conv with a channel multiplier of 2: output channel c * 2 + j."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.dw = nn.Conv2d(2, 4, 3), nn.Conv2d(4, 8, 3, groups=4)
        self.bn, self.head = nn.BatchNorm2d(8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.bn(self.dw(F.relu(self.c1(x))))).amax((2, 3)))


class GroupNormPerChannel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.gn, self.head = nn.Conv2d(2, 4, 3), nn.GroupNorm(4, 4), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.silu(self.gn(self.c1(x))).sum(dim=(-1, -2)))


class Padded(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.head = nn.Conv2d(2, 4, 3), nn.Conv2d(4, 5, 3), nn.Linear(5, 3)
        self.pad = nn.ZeroPad2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.pad(F.hardswish(self.c1(x)), (1, 1, 1, 1))
        return self.head(self.c2(self.pad(h)).var(dim=(2, 3)))


class Unflatten(nn.Module):
    """conv map -> (N, C, H*W) -> back to (N, C, H, W): the channel axis survives both."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.head = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 1), nn.Linear(4 * 36, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(x).flatten(2).unflatten(2, (6, 6))
        return self.head(torch.relu(self.c2(h)).reshape(x.shape[0], -1))


class Tokens(nn.Module):
    """(N, T, D): softmax over the features, chunks and a stack over tokens, mean over tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.fc, self.head = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.flatten(2).transpose(1, 2))  # (N, 6, 4, 4) -> (N, 16, 6)
        h = h * torch.softmax(self.fc(self.drop(h)), dim=-1)  # a gate over the features
        a, b = h.chunk(2, dim=1)
        h = torch.stack([a, b], dim=1).sum(1) + a.amax(1, keepdim=True)
        return self.head(h.mean(1))


class DirectParameters(nn.Module):
    """Weights read directly: ``F.linear(x, self.w, self.b)`` and ``x @ self.m``."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 6)
        self.w, self.b = nn.Parameter(torch.randn(7, 6)), nn.Parameter(torch.randn(7))
        self.m = nn.Parameter(torch.randn(7, 5))
        self.scale = nn.Parameter(torch.rand(5) + 0.5)
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(F.linear(torch.relu(self.inp(x)), self.w, self.b))
        return self.head(torch.relu(h @ self.m) * self.scale)


class InputPreprocessing(nn.Module):
    """Ops with no handler are fine on the input: nothing permuted flows through them."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.head = nn.Conv2d(2, 4, 3), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cumsum(x, dim=-1).flip(-1)
        return self.head(torch.relu(self.c1(x)).mean((2, 3)))


@pytest.mark.parametrize(
    ("model", "in_shape", "sizes"),
    [
        (Depthwise(), (2, 8, 8), [4]),
        (GroupNormPerChannel(), (2, 6, 6), [4]),
        (Padded(), (2, 6, 6), [4, 5]),
        (Unflatten(), (2, 6, 6), [4, 4]),
        (Tokens(), (6, 4, 4), [8]),
        (DirectParameters(), (6,), [5, 6, 7]),
        (InputPreprocessing(), (2, 6, 6), [4]),
    ],
    ids=["depthwise-x2", "groupnorm-per-channel", "padding", "unflatten", "tokens", "direct-parameters", "input-ops"],
)
def test_op_handlers(model: nn.Module, in_shape: tuple[int, ...], sizes: list[int]) -> None:
    torch.manual_seed(0)
    spec = check_permutation_invariance(model, in_shape)
    assert sorted(g.size for g in spec.groups.values()) == sorted(sizes)


def test_depthwise_multiplier_is_a_block() -> None:
    spec = derive_spec(Depthwise(), torch.randn(1, 2, 8, 8))
    refs = {(a.param, a.axis): a.block for g in spec.groups.values() for a in g.axes}
    assert refs[("dw.weight", 0)] == 2 and refs[("bn.weight", 0)] == 2 and ("dw.weight", 1) not in refs


def test_within_head_groups() -> None:
    """q/k/v split into 4 heads of 16: one permutation of 16 units repeated in every head
    (12 repeats in the packed projection's outputs, 4 in the output projection's inputs)."""
    from permerge.models import build_model, model_config_for

    model = build_model(model_config_for("vit:tiny-d1", (1, 28, 28)))
    spec = derive_spec(model, torch.zeros(1, 1, 28, 28))
    refs = {(a.param, a.axis): (a.block, a.outer) for g in spec.groups.values() for a in g.axes}
    assert refs[("blocks.0.attn.qkv.weight", 0)] == (1, 12) and refs[("blocks.0.attn.proj.weight", 1)] == (1, 4)
    assert spec.groups["P_blocks.0.attn.qkv"].size == 16
    assert ("cls_token", 2) in refs and ("pos_embed", 2) in refs and ("pos_embed", 1) not in refs


class SeparateHeads(nn.Module):
    """q, k, v as separate projections split into heads: a q/k group and a v/out group."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.q, self.k, self.v = nn.Linear(3, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 6)
        self.out, self.head = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.flatten(2).transpose(1, 2))
        b, t, _ = h.shape
        q, k, v = (f(h).view(b, t, 2, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, 6)
        return self.head((h + self.out(y)).mean(1))


def test_separate_heads() -> None:
    torch.manual_seed(0)
    spec = check_permutation_invariance(SeparateHeads(), (3, 4, 4))
    assert sorted(g.size for g in spec.groups.values()) == [3, 4, 8]  # v/out, q/k (per head), stream
