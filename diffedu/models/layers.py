"""The building blocks of the diffusion U-Net (lesson 03).

Each block follows Ho et al. (2020), "Denoising Diffusion Probabilistic Models", appendix B,
which in turn follows the PixelCNN++ / Wide-ResNet U-Net:

- ``timestep_embedding``: the sinusoidal position encoding of Vaswani et al. (2017), applied to t.
- ``TimeEmbedding``: that encoding followed by a two-layer MLP.
- ``ResBlock``: GroupNorm -> SiLU -> conv, plus the time embedding, GroupNorm -> SiLU -> dropout -> conv,
  with a residual connection.
- ``SelfAttention``: multi-head dot-product attention over the H*W pixel positions.
- ``CrossAttention``: the pixel positions attend to a sequence of text tokens (lesson 09; Rombach et
  al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models").
- ``Downsample`` / ``Upsample``: halve / double the spatial size.

Shapes use B (batch), C (channels), H, W (height, width), nh (heads), hd (channels per head),
L (text tokens) and D (the text encoder's width).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CrossAttention",
    "Downsample",
    "ResBlock",
    "SelfAttention",
    "TimeEmbedding",
    "Upsample",
    "group_norm",
    "timestep_embedding",
]


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm over ``channels`` split into ``groups`` groups (Wu & He, 2018).

    Every normalisation in the U-Net goes through this helper, so the group count is set in one place.
    """
    if channels % groups != 0:
        raise ValueError(
            f"GroupNorm needs channels divisible by groups, got channels={channels}, groups={groups}; "
            f"choose a group count that divides {channels}"
        )
    return nn.GroupNorm(num_groups=groups, num_channels=channels)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of timesteps, (B,) -> (B, dim).

    With ``half = dim // 2`` frequencies ``w_i = max_period ** (-i / half)`` for ``i = 0 .. half-1``,

        emb(t) = [sin(t * w_0), ..., sin(t * w_{half-1}), cos(t * w_0), ..., cos(t * w_{half-1})]

    so t = 0 maps to half zeros followed by half ones. Integer and float timesteps both work. For an
    odd ``dim`` a final column of zeros is appended.
    """
    if dim < 2:
        raise ValueError(f"timestep_embedding needs dim >= 2, got dim={dim}")
    if t.ndim != 1:
        raise ValueError(f"timestep_embedding expects t of shape (B,), got shape {tuple(t.shape)}")
    half = dim // 2
    exponents = torch.arange(half, device=t.device, dtype=torch.float32) / half
    freqs = torch.exp(-math.log(max_period) * exponents)  # (half,)
    angles = t.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # (B, 2*half)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))  # (B, dim)
    return emb


class TimeEmbedding(nn.Module):
    """Timestep embedding of DDPM: ``MLP(sinusoidal(t))``, (B,) -> (B, time_dim).

        emb = W_2 SiLU(W_1 timestep_embedding(t, sinusoidal_dim) + b_1) + b_2
    """

    def __init__(self, sinusoidal_dim: int, time_dim: int) -> None:
        super().__init__()
        self.sinusoidal_dim = sinusoidal_dim
        self.mlp = nn.Sequential(
            nn.Linear(sinusoidal_dim, time_dim),
            nn.SiLU(),
            nn.Linear(time_dim, time_dim),
        )

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, self.sinusoidal_dim))  # (B, time_dim)


class ResBlock(nn.Module):
    """Residual block conditioned on the time embedding, (B, C_in, H, W) -> (B, C_out, H, W).

        h = Conv3x3(SiLU(GroupNorm(x)))
        h = h + Linear(SiLU(emb))[:, :, None, None]          # one shift per channel
        h = Conv3x3(Dropout(SiLU(GroupNorm(h))))
        out = skip(x) + h

    ``skip`` is the identity when C_in == C_out and a 1x1 conv otherwise. The last conv starts at zero,
    so a fresh block is the identity (or the 1x1 projection) on its input.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        time_dim: int,
        *,
        dropout: float = 0.0,
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels, norm_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_proj = nn.Linear(time_dim, out_channels)
        self.norm2 = group_norm(out_channels, norm_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        if in_channels == out_channels:
            self.skip: nn.Module = nn.Identity()
        else:
            self.skip = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        h = h + self.time_proj(F.silu(emb))[:, :, None, None]  # (B, C_out) -> (B, C_out, 1, 1)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))  # (B, C_out, H, W)
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over pixel positions with a residual, (B, C, H, W) -> same.

    With ``h = GroupNorm(x)`` flattened to N = H*W tokens of C channels, and each head j using its
    own hd = C / num_heads channels of the 1x1-conv projections q, k, v:

        head_j = softmax(q_j k_j^T / sqrt(hd)) v_j                 # (N, hd)
        out    = x + Conv1x1(concat_j head_j)

    The output projection starts at zero, so a fresh block is the identity.
    """

    def __init__(self, channels: int, *, num_heads: int = 1, norm_groups: int = 32) -> None:
        super().__init__()
        if num_heads < 1 or channels % num_heads != 0:
            raise ValueError(
                f"SelfAttention needs channels divisible by num_heads, got channels={channels}, "
                f"num_heads={num_heads}; choose a head count that divides {channels}"
            )
        self.num_heads = num_heads
        self.norm = group_norm(channels, norm_groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, kernel_size=1)
        self.proj = nn.Conv2d(channels, channels, kernel_size=1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        nh = self.num_heads
        qkv = self.qkv(self.norm(x))  # (B, 3*C, H, W), channels ordered [q | k | v]
        qkv = qkv.reshape(B, 3, nh, C // nh, H * W)  # (B, 3, nh, hd, N)
        q, k, v = qkv.transpose(-1, -2).unbind(dim=1)  # each (B, nh, N, hd)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, nh, N, hd)
        h = h.transpose(-1, -2).reshape(B, C, H, W)  # (B, nh, hd, N) -> (B, C, H, W)
        return x + self.proj(h)


class CrossAttention(nn.Module):
    """Multi-head cross-attention from pixels to text tokens, with a residual, (B, C, H, W) -> same.

    Queries come from the image, keys and values from the context (one vector per text token), and
    padding tokens are never attended to. With ``h = GroupNorm(x)`` flattened to N = H*W positions,
    ``c`` the context (B, L, D) and ``m`` its mask (B, L) (True = a real token):

        q = Conv1x1_q(h)          (B, N, C)          one query per pixel
        k, v = Linear_kv(c)       (B, L, C) each     one key and one value per token
        head_j = softmax(q_j k_j^T / sqrt(hd) + log m) v_j           (log m = -inf at PAD: weight 0)
        out    = x + Conv1x1(concat_j head_j)

    Each pixel takes a weighted mean of the token values, with weights over the L tokens summing to
    1. The output projection starts at zero, so a fresh block is the identity: a model gains text
    conditioning without losing what it could do before.
    """

    def __init__(self, channels: int, context_dim: int, *, num_heads: int = 1, norm_groups: int = 32) -> None:
        super().__init__()
        if num_heads < 1 or channels % num_heads != 0:
            raise ValueError(
                f"CrossAttention needs channels divisible by num_heads, got channels={channels}, "
                f"num_heads={num_heads}; choose a head count that divides {channels}"
            )
        self.num_heads = num_heads
        self.norm = group_norm(channels, norm_groups)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.proj = nn.Conv2d(channels, channels, kernel_size=1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, context: Tensor, context_mask: Tensor | None = None) -> Tensor:
        q, k, v = self.qkv(x, context)  # (B, nh, N, hd), (B, nh, L, hd), (B, nh, L, hd)
        mask = None if context_mask is None else context_mask[:, None, None, :]  # (B, 1, 1, L): every head, pixel
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, N, hd)
        B, C, H, W = x.shape
        h = h.transpose(-1, -2).reshape(B, C, H, W)  # (B, nh, hd, N) -> (B, C, H, W)
        return x + self.proj(h)

    def qkv(self, x: Tensor, context: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries from the pixels, keys and values from the tokens, split into heads."""
        B, C, H, W = x.shape
        if context.ndim != 3 or context.shape[0] != B:
            raise ValueError(f"context must be (B={B}, L, D) token vectors, got shape {tuple(context.shape)}")
        nh, L = self.num_heads, context.shape[1]
        q = self.q(self.norm(x)).reshape(B, nh, C // nh, H * W).transpose(-1, -2)  # (B, nh, N, hd)
        kv = self.kv(context).reshape(B, L, 2, nh, C // nh)  # (B, L, 2, nh, hd), channels ordered [k | v]
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(dim=0)  # each (B, nh, L, hd)
        return q, k, v

    def attention_weights(self, x: Tensor, context: Tensor, context_mask: Tensor | None = None) -> Tensor:
        """The attention weights softmax(q k^T / sqrt(hd)) over the tokens, (B, nh, H*W, L); 0 at PAD.

        The same numbers `forward` uses inside ``scaled_dot_product_attention``, computed explicitly so they
        can be looked at (lesson 09 draws one map per word).
        """
        q, k, _ = self.qkv(x, context)
        scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # (B, nh, N, L)
        if context_mask is not None:
            scores = scores.masked_fill(~context_mask[:, None, None, :], float("-inf"))
        return scores.softmax(dim=-1)


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 conv, (B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour x2 then a 3x3 conv, (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, C, 2H, 2W)
