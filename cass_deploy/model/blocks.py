"""Transformer building blocks written for export: attention by hand (matmul + softmax, no
SDPA), an optional key mask, no in-place ops on views, free batch dimension."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# Added to attention logits of masked keys. Finite (no NaN when a row has no valid key) and
# representable in fp16, far below any real logit.
MASK_BIAS = -1.0e4


def sincos_pos_embed(grid: tuple[int, int], dim: int) -> Tensor:
    """2-D sine-cosine position embedding ``[Hp * Wp, dim]`` (row-major; MAE style).

    Half the channels encode the row, half the column; ``dim`` must be divisible by 4.
    """
    hp, wp = grid
    if dim % 4 != 0:
        raise ValueError(f"embed dim {dim} must be divisible by 4 for the sin-cos position embedding")
    quarter = dim // 4
    omega = 1.0 / (10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    rows = torch.arange(hp, dtype=torch.float64).repeat_interleave(wp)  # [P]
    cols = torch.arange(wp, dtype=torch.float64).repeat(hp)  # [P]
    out_r = rows[:, None] * omega[None, :]
    out_c = cols[:, None] * omega[None, :]
    emb = torch.cat([out_r.sin(), out_r.cos(), out_c.sin(), out_c.cos()], dim=1)
    return emb.float()


class PatchEmbed(nn.Module):
    """images ``[B, 3, H, W]`` → tokens ``[B, P, D]``; every token sees exactly its own patch.

    ``stem="patch"``: one ``patch × patch`` convolution of stride ``patch`` (plain ViT).
    ``stem="conv"``: three non-overlapping strided convolutions with GELU between them,
    kernels = strides = ``(patch/4, 2, 2)``, widths ``(D/3, 2D/3, D)`` — still a stride-``patch``
    patchify with the same receptive field, but it trains much faster from scratch (measured
    here: mAP@0.5 0.08 → 0.18 on synthetic roadside scenes after 800 steps).
    """

    def __init__(self, patch_size: int, dim: int, in_chans: int = 3, stem: str = "conv") -> None:
        super().__init__()
        if stem == "patch":
            self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
            self.stem = None
        elif stem == "conv":
            if patch_size % 4:
                raise ValueError(f"the conv stem needs a patch size divisible by 4, got {patch_size}")
            c1, c2 = max(8, dim // 3), max(16, 2 * dim // 3)
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, c1, kernel_size=patch_size // 4, stride=patch_size // 4),
                nn.GELU(),
                nn.Conv2d(c1, c2, kernel_size=2, stride=2),
                nn.GELU(),
            )
            self.proj = nn.Conv2d(c2, dim, kernel_size=2, stride=2)
        else:
            raise ValueError(f"stem must be 'patch' or 'conv', got {stem!r}")

    @property
    def skip_channels(self) -> int:
        """Channels of the stride-``patch/4`` features :meth:`forward_with_skip` returns (0: none)."""
        return 0 if self.stem is None else self.stem[0].out_channels

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_with_skip(images)[0]

    def forward_with_skip(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """images → (tokens ``[B, P, D]``, the conv stem's first features ``[B, S, H/(patch/4), W/(patch/4)]``
        after GELU, or None for the patch stem)."""
        if self.stem is None:
            return self.proj(images).flatten(2).transpose(1, 2), None
        skip = self.stem[1](self.stem[0](images))
        x = self.stem[3](self.stem[2](skip))
        return self.proj(x).flatten(2).transpose(1, 2), skip


class Attention(nn.Module):
    """Multi-head self-attention. ``key_mask [B, N]`` bool: False keys receive no attention."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """x ``[B, N, D]`` → ``[B, N, D]``."""
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, h, N, dh]
        logits = torch.matmul(q * self.scale, k.transpose(-2, -1))  # [B, h, N, N]
        if key_mask is not None:
            bias = (~key_mask).to(logits.dtype) * MASK_BIAS  # [B, N]
            logits = logits + bias[:, None, None, :]
        attn = torch.softmax(logits, dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, n, d)
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``.

    ``layer_scale > 0``: each branch is multiplied by a learned per-channel scale starting at that
    value (CaiT's LayerScale), so a deep stack starts close to the identity and trains like a
    shallow one in a short budget; 0 leaves the branches unscaled (and adds no parameters).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, layer_scale: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, max(1, int(round(dim * mlp_ratio))))
        self.ls1 = nn.Parameter(torch.full((dim,), float(layer_scale))) if layer_scale > 0 else None
        self.ls2 = nn.Parameter(torch.full((dim,), float(layer_scale))) if layer_scale > 0 else None

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """x ``[B, N, D]``, key_mask ``[B, N]`` bool or None → ``[B, N, D]``."""
        a = self.attn(self.norm1(x), key_mask)
        x = x + (a if self.ls1 is None else a * self.ls1)
        m = self.mlp(self.norm2(x))
        return x + (m if self.ls2 is None else m * self.ls2)
