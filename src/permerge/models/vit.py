"""A small Vision Transformer that trains on MNIST / Fashion-MNIST / CIFAR-10 on a CPU.

``vit:tiny`` is 4 pre-norm blocks of width 64 with 4 heads on 7x7 patches (16 tokens on
28x28 images) plus a class token and learned position embeddings; ``vit:tiny-p4-d6-w96-h3``
style suffixes set the patch size, depth, width and heads. Attention is written out
(q/k/v projection, ``scaled_dot_product_attention``, output projection) so the derived
spec permutes the residual stream (embeddings, class token, every block's writes, norms),
each MLP's hidden units, and within each block's heads the q/k/v units (one permutation
shared by every head; see ``permutation/ops/attention.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .registry import register

PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"patch": 7, "depth": 4, "dim": 64, "heads": 4},
    "small": {"patch": 4, "depth": 6, "dim": 128, "heads": 4},
}
KEYS = {"p": "patch", "d": "depth", "w": "dim", "h": "heads"}


def parse_vit(extra: str) -> dict[str, int]:
    """``tiny-p4-d2`` -> {"patch": 4, "depth": 2, "dim": 64, "heads": 4}; ValueError if bad."""
    fields = dict(PRESETS["tiny"])
    for part in (p for p in extra.lower().replace(",", "-").split("-") if p):
        if part in PRESETS:
            fields.update(PRESETS[part])
        elif part[:1] in KEYS and part[1:].isdigit():
            fields[KEYS[part[:1]]] = int(part[1:])
        else:
            raise ValueError(part)
    return fields


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        h = F.scaled_dot_product_attention(q, k, v)
        return self.proj(h.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c, h, w = cfg.in_shape
        p, dim = cfg.patch, cfg.dim
        if dim % cfg.heads or h < p or w < p:
            raise ValueError(f"ViT needs width divisible by heads and images of at least one {p}x{p} patch")
        self.patch_embed = nn.Conv2d(c, dim, p, stride=p)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, (h // p) * (w // p) + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, cfg.heads) for _ in range(cfg.depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


register("vit")(ViT)
