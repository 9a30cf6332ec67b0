"""A model zoo written the way people write models (no torchvision/timm), kept tiny.

``ZOO`` maps a name to an entry; the tests in ``test_zoo.py`` are parametrised over it, so
adding an entry tests it (equivalence under random permutations, wm / am / ste) without
editing a test. ``build(name=..., seed=...)`` is also the ``--arch-code`` factory the CLI
tests use: ``--arch-code models:build --arch-arg name=vit_tiny``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

# --- a residual CNN pooled with .mean((2, 3)) -----------------------------------------


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(h)))


class ResCNN(nn.Module):
    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(ResBlock(width), nn.MaxPool2d(2), ResBlock(width))
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.stem(x))
        return self.head(h.mean((2, 3)))


# --- ResNet-18 with torchvision's module layout and state-dict keys -------------------


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet18(nn.Module):
    """torchvision.models.resnet18's structure (``layer1.0.conv1.weight``,
    ``layer2.0.downsample.0.weight``, ``fc.weight``, ...) at a width of ``base``."""

    def __init__(self, base: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.inplanes = base
        self.conv1 = nn.Conv2d(3, base, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(base, 2)
        self.layer2 = self._make_layer(base * 2, 2, stride=2)
        self.layer3 = self._make_layer(base * 4, 2, stride=2)
        self.layer4 = self._make_layer(base * 8, 2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(base * 8, classes)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


# --- ConvNeXt-style: depthwise conv, channels-last LayerNorm, inverted MLP, layer scale ---


class LayerNorm2d(nn.Module):
    """ConvNeXt's channels-first LayerNorm, written out (statistics over the channel axis)."""

    def __init__(self, c: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))
        self.drop_path = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dwconv(x).permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        h = self.pwconv2(self.act(self.pwconv1(self.norm(h))))
        h = (self.gamma * h).permute(0, 3, 1, 2)
        return x + self.drop_path(h)


class ConvNeXtTiny(nn.Module):
    def __init__(self, dim: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dim, 4, stride=4), LayerNorm2d(dim))
        self.stages = nn.Sequential(ConvNeXtBlock(dim), ConvNeXtBlock(dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(self.norm(x.mean([-2, -1])))


# --- ViT-tiny: patch conv, class token, position embedding, hand-written attention ----------


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        h = F.scaled_dot_product_attention(q, k, v)
        return self.proj(h.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Dropout(0.0), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTTiny(nn.Module):
    def __init__(self, dim: int = 32, depth: int = 4, heads: int = 2, patch: int = 4, side: int = 16) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        tokens = (side // patch) ** 2
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads, 2 * dim) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


# --- single-head attention: q/k and v/out groups inside the attention -----------------------


class SingleHeadNet(nn.Module):
    def __init__(self, dim: int = 16, qk: int = 12, vdim: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(3, dim)
        self.q, self.k, self.v = nn.Linear(dim, qk), nn.Linear(dim, qk), nn.Linear(dim, vdim)
        self.out = nn.Linear(vdim, dim)
        self.norm = nn.RMSNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.flatten(2).transpose(1, 2))  # (N, 3, H, W) -> (N, H * W, 3): a token per pixel
        a = torch.softmax(self.q(h) @ self.k(h).transpose(-2, -1) / 12**0.5, dim=-1)
        h = h + self.out(a @ self.v(h))
        return self.head(self.norm(h).amax(1))


# --- MLP-Mixer: token mixing through transposes -------------------------------------------


class MixerBlock(nn.Module):
    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, 2 * tokens), nn.GELU(), nn.Linear(2 * tokens, tokens))
        self.channel_mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class Mixer(nn.Module):
    def __init__(self, dim: int = 16, patch: int = 4, side: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, patch, stride=patch)
        self.blocks = nn.Sequential(MixerBlock((side // patch) ** 2, dim), MixerBlock((side // patch) ** 2, dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.blocks(x)).mean(dim=1))


# --- torch's own transformer modules, patches cut with unfold on the input ---------------


class TorchEncoder(nn.Module):
    def __init__(self, dim: int = 16, patch: int = 4) -> None:
        super().__init__()
        self.patch = patch
        self.embed = nn.Linear(3 * patch * patch, dim)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, 2, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Hardswish(), nn.Linear(dim, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch
        patches = x.unfold(2, p, p).unfold(3, p, p)  # (N, C, h, w, p, p): input only
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(x.shape[0], -1, 3 * p * p)
        h = self.embed(patches)
        h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], dim=1) + self.pos
        h = self.encoder(h)
        y, _ = self.attn(h, h, h)
        return self.head((h + y)[:, 0])


@dataclass(frozen=True)
class ZooEntry:
    build: Callable[[], nn.Module]
    in_shape: tuple[int, int, int]
    min_groups: int
    # parameters whose axis must be permuted (checks the derivation reached them)
    permuted: tuple[str, ...] = field(default_factory=tuple)


ZOO: dict[str, ZooEntry] = {
    "rescnn_mean": ZooEntry(ResCNN, (3, 16, 16), 3, ("head.weight",)),
    "resnet18_tv": ZooEntry(ResNet18, (3, 32, 32), 12, ("layer2.0.downsample.0.weight", "fc.weight")),
    "convnext": ZooEntry(ConvNeXtTiny, (3, 16, 16), 3, ("stem.1.weight", "stages.0.gamma", "stages.1.dwconv.weight")),
    "vit_tiny": ZooEntry(ViTTiny, (3, 16, 16), 5, ("cls_token", "pos_embed", "blocks.3.mlp.0.weight")),
    "single_head": ZooEntry(SingleHeadNet, (3, 4, 4), 3, ("q.weight", "k.weight", "v.weight", "out.weight")),
    "mixer": ZooEntry(Mixer, (3, 16, 16), 5, ("blocks.0.token_mlp.0.weight", "blocks.1.channel_mlp.0.weight")),
    "torch_encoder": ZooEntry(
        TorchEncoder, (3, 16, 16), 3, ("cls", "pos", "encoder.layers.1.linear1.weight", "attn.in_proj_weight")
    ),
}


def build(name: str = "vit_tiny", seed: int = 0) -> nn.Module:
    """``--arch-code`` factory: one zoo model, initialised from ``seed``."""
    torch.manual_seed(seed)
    return ZOO[name].build()
